"""Exceptions raised by unlearnkit.

Every error a user can cause derives from :class:`UnlearnkitError`, so callers can catch one
type; each subclass also derives from the built-in exception that fits it (``ValueError`` for
bad input, ``RuntimeError`` for a run that went wrong), so generic handlers keep working.
"""

from __future__ import annotations


class UnlearnkitError(Exception):
    """Base class of every error unlearnkit raises on purpose."""


class InvalidRequestError(UnlearnkitError, ValueError):
    """A forget request is malformed: empty, mismatched shapes, labels out of range, ..."""


class DeletionCapacityError(InvalidRequestError):
    """A valid request that an exact-deletion model cannot absorb without being retrained (every
    S3T shard would lose all its checkpoints). Demos and benchmarks record the run as
    unsupported; the message says what to retrain."""


class InvalidModelError(UnlearnkitError, ValueError):
    """A model cannot be unlearned as given: non-finite weights, wrong output shape, ..."""


class UnknownMethodError(UnlearnkitError, KeyError):
    """A method name is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly instead.
        return str(self.args[0]) if self.args else ""


class InvalidHyperparameterError(UnlearnkitError, ValueError):
    """A method was configured with an unknown or out-of-range hyperparameter."""


class DataContractError(UnlearnkitError, ValueError):
    """A method was handed data it declared it does not use, or lacks data it needs."""


class NonFiniteError(UnlearnkitError, RuntimeError):
    """A loss, gradient or weight became NaN or infinite during unlearning.

    The partially updated model is discarded: unlearnkit never returns a model with
    non-finite weights.
    """


class CheckpointError(UnlearnkitError, ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model it is loaded into."""


class LedgerError(UnlearnkitError, RuntimeError):
    """The ledger of deletion requests refused an operation or cannot be used.

    Raised for a missing or corrupt ledger, a request the ledger refuses (empty, duplicate ids,
    ids already requested, a duplicate request id, a request in the wrong state) and a commit
    that could not be completed; a refused or failed operation leaves the ledger and its model
    files unchanged.
    """


class LedgerBusyError(LedgerError):
    """Another process holds the workspace's writer lock (it is applying requests)."""


class LedgerVersionError(LedgerError):
    """The ledger was written by a newer unlearnkit (its schema version is newer than this code's)."""
