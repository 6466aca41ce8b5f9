"""Unlearning methods, registered by name.

Importing this package registers every built-in method.
"""

from unlearnkit.methods.ascent import ForgetObjectiveMethod
from unlearnkit.methods.base import FROM_PRESET, MethodRun, UnlearnContext, UnlearningMethod
from unlearnkit.methods.l2ul import L2UL, L2ULAdv
from unlearnkit.methods.neggrad import NegGrad
from unlearnkit.methods.registry import METHODS, create_method, list_methods, method_class, register_method

__all__ = [
    "FROM_PRESET",
    "ForgetObjectiveMethod",
    "L2UL",
    "METHODS",
    "L2ULAdv",
    "MethodRun",
    "NegGrad",
    "UnlearnContext",
    "UnlearningMethod",
    "create_method",
    "list_methods",
    "method_class",
    "register_method",
]
