"""unlearnkit: machine unlearning of trained PyTorch classifiers.

Forget specific training instances from a trained classifier without retraining it, keep its
accuracy on everything else, and keep the evidence.

Example:
    >>> import unlearnkit as uk
    >>> "l2ul" in uk.list_methods()
    True
"""

from unlearnkit.api import evaluate, unlearn
from unlearnkit.errors import (
    CheckpointError,
    DataContractError,
    DeletionCapacityError,
    InvalidHyperparameterError,
    InvalidModelError,
    InvalidRequestError,
    NonFiniteError,
    UnknownMethodError,
    UnlearnkitError,
)
from unlearnkit.methods import UnlearningMethod, create_method, list_methods, register_method
from unlearnkit.receipt import build_receipt, write_receipt
from unlearnkit.request import ForgetRequest
from unlearnkit.result import InstanceOutcome, UnlearnResult
from unlearnkit.scenarios.evidence import VerdictThresholds, gather_evidence, model_figures
from unlearnkit.tuning import TuneResult, tune

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataContractError",
    "DeletionCapacityError",
    "ForgetRequest",
    "InstanceOutcome",
    "InvalidHyperparameterError",
    "InvalidModelError",
    "InvalidRequestError",
    "NonFiniteError",
    "UnknownMethodError",
    "UnlearnResult",
    "UnlearningMethod",
    "UnlearnkitError",
    "VerdictThresholds",
    "build_receipt",
    "create_method",
    "evaluate",
    "gather_evidence",
    "list_methods",
    "model_figures",
    "register_method",
    "tune",
    "TuneResult",
    "unlearn",
    "write_receipt",
]
