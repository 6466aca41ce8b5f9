"""Unlearning methods, registered by name.

Importing this package registers every built-in method.
"""

from unlearnkit.methods.ascent import ForgetObjectiveMethod
from unlearnkit.methods.base import FROM_PRESET, MethodRun, UnlearnContext, UnlearningMethod
from unlearnkit.methods.finetune import FineTune
from unlearnkit.methods.gu import GeometricUnlearning
from unlearnkit.methods.l2ul import L2UL, L2ULAdv
from unlearnkit.methods.neggrad import NegGrad
from unlearnkit.methods.neggrad_plus import NegGradPlus
from unlearnkit.methods.neggrad_regularized import NegGradEWC, NegGradL2, NegGradMAS, RegularizedNegGrad
from unlearnkit.methods.random_label import RandomLabel
from unlearnkit.methods.registry import METHODS, create_method, list_methods, method_class, register_method
from unlearnkit.methods.retrain import Retrain

__all__ = [
    "FROM_PRESET",
    "FineTune",
    "GeometricUnlearning",
    "ForgetObjectiveMethod",
    "L2UL",
    "METHODS",
    "L2ULAdv",
    "MethodRun",
    "NegGrad",
    "NegGradEWC",
    "NegGradL2",
    "NegGradMAS",
    "NegGradPlus",
    "RandomLabel",
    "RegularizedNegGrad",
    "Retrain",
    "UnlearnContext",
    "UnlearningMethod",
    "create_method",
    "list_methods",
    "method_class",
    "register_method",
]
