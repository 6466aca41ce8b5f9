"""Unlearning methods, registered by name.

Importing this package registers every built-in method.
"""

from unlearnkit.methods.acu import ACU, fit_analytic_head, prepare_analytic_memory
from unlearnkit.methods.ascent import ForgetObjectiveMethod
from unlearnkit.methods.bad_teacher import BadTeacher
from unlearnkit.methods.base import FROM_PRESET, MethodRun, UnlearnContext, UnlearningMethod
from unlearnkit.methods.blindspot import Blindspot
from unlearnkit.methods.boundary_shrink import BoundaryShrink
from unlearnkit.methods.finetune import FineTune
from unlearnkit.methods.gs_lora import GSLoRA
from unlearnkit.methods.gu import GeometricUnlearning
from unlearnkit.methods.iau import IAU
from unlearnkit.methods.l1_sparse import L1Sparse
from unlearnkit.methods.l2ul import L2UL, L2ULAdv
from unlearnkit.methods.laf import LAF
from unlearnkit.methods.neggrad import NegGrad
from unlearnkit.methods.neggrad_plus import NegGradPlus
from unlearnkit.methods.neggrad_regularized import NegGradEWC, NegGradL2, NegGradMAS, RegularizedNegGrad
from unlearnkit.methods.random_label import RandomLabel
from unlearnkit.methods.registry import METHODS, create_method, list_methods, method_class, register_method
from unlearnkit.methods.retrain import Retrain
from unlearnkit.methods.s3t import S3T
from unlearnkit.methods.salun import SalUn
from unlearnkit.methods.scrub import Scrub
from unlearnkit.methods.ssd import SSD

__all__ = [
    "ACU",
    "BadTeacher",
    "Blindspot",
    "BoundaryShrink",
    "FROM_PRESET",
    "FineTune",
    "ForgetObjectiveMethod",
    "GeometricUnlearning",
    "GSLoRA",
    "IAU",
    "L1Sparse",
    "L2UL",
    "L2ULAdv",
    "LAF",
    "METHODS",
    "MethodRun",
    "NegGrad",
    "NegGradEWC",
    "NegGradL2",
    "NegGradMAS",
    "NegGradPlus",
    "RandomLabel",
    "RegularizedNegGrad",
    "Retrain",
    "S3T",
    "SSD",
    "SalUn",
    "Scrub",
    "UnlearnContext",
    "UnlearningMethod",
    "create_method",
    "fit_analytic_head",
    "list_methods",
    "method_class",
    "prepare_analytic_memory",
    "register_method",
]
