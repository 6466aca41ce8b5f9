"""One forget request applied with one method, evaluated on named splits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from unlearnkit.errors import DeletionCapacityError, NonFiniteError
from unlearnkit.methods.base import RetainData
from unlearnkit.methods.registry import create_method
from unlearnkit.metrics.accuracy import evaluate
from unlearnkit.request import ForgetRequest
from unlearnkit.result import UnlearnResult

Status = Literal["converged", "not_converged", "diverged", "unsupported"]


@dataclass
class RunRecord:
    """The record of one method on one request, ready for a table or JSON.

    Attributes:
        method: Method name.
        seed: Seed of the run.
        goal: ``"misclassify"``, ``"relabel"`` or ``"unseen"``.
        status: ``converged``, ``not_converged`` (a cap, or a fixed schedule, ended the run
            before the goal held), ``diverged`` (the run produced NaN or infinity and its model
            was discarded) or ``unsupported`` (the method does not take this goal; not run).
        error: The error message of a diverged run, or why the evidence of a finished run could
            not be gathered.
        metrics: ``acc/<split>`` after unlearning (and ``relabel`` in relabeling mode), percent;
            empty for a diverged run.
        result: :meth:`UnlearnResult.to_dict` of the run; ``None`` for a diverged run.
        evidence: What the ``evidence`` callable of :func:`run_request` made of the result
            (e.g. :func:`~unlearnkit.scenarios.evidence.gather_evidence`), else ``None``.
    """

    method: str
    seed: int
    goal: str
    status: Status
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None

    @property
    def steps(self) -> int | None:
        """Optimiser steps of the run (``None`` if it diverged)."""
        return None if self.result is None else self.result["steps"]

    @property
    def seconds(self) -> float | None:
        """Wall time of the run (``None`` if it diverged)."""
        return None if self.result is None else self.result["seconds"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def run_request(
    model: nn.Module,
    request: ForgetRequest,
    method: str,
    *,
    splits: Mapping[str, tuple[Tensor, Tensor]],
    seed: int = 0,
    hyperparams: Mapping[str, Any] | None = None,
    retain: RetainData | None = None,
    heldout: RetainData | None = None,
    progress: bool = False,
    evidence: Callable[[UnlearnResult], dict[str, Any]] | None = None,
) -> RunRecord:
    """Applies ``method`` to ``request`` on a copy of ``model`` and evaluates the result.

    A run that diverges is recorded as ``diverged`` with its error instead of raising, so that a
    table of several methods still shows the others; every other error propagates.

    Args:
        model: The original model (not modified).
        request: The forget request.
        method: Registered method name.
        splits: Named ``(inputs, labels)`` to evaluate after unlearning, e.g. retain and test.
        seed: Seed of the run.
        hyperparams: The method's hyperparameters.
        retain: Retain data, for methods that use it.
        heldout: Data the model never saw, to calibrate ``goal="unseen"``.
        progress: Show progress bars.
        evidence: Called with the result of a finished run; what it returns is recorded as
            the run's evidence.

    Raises:
        InvalidRequestError: If the request has no labels: the run is measured against them
            (refused before the method runs).
    """
    labels = request.require_labels("the request has no labels; a run is measured against the forget set's labels")
    algorithm = create_method(method, **dict(hyperparams or {}))
    try:
        result = algorithm.unlearn(model, request, retain=retain, heldout=heldout, seed=seed, progress=progress)
    except NonFiniteError as err:
        return RunRecord(method, seed, request.goal, "diverged", error=str(err))
    except DeletionCapacityError as err:
        # An exact-deletion model that cannot absorb this request without retraining.
        return RunRecord(method, seed, request.goal, "unsupported", error=str(err))
    named = dict(splits)
    named["forget"] = (request.inputs, labels)
    if request.new_labels is not None:
        named["relabel"] = (request.inputs, request.new_labels)
    metrics = evaluate(result.model, named)
    metrics["loss/forget"] = result.metrics["loss/forget/after"]
    if "unseen/after" in result.metrics:
        metrics["unseen"] = result.metrics["unseen/after"]
    status: Status = "converged" if result.converged else "not_converged"
    gathered, error = None, None
    if evidence is not None:
        try:
            gathered = evidence(result)
        except (ValueError, NonFiniteError) as err:
            # E.g. a model whose logits overflow on the test data: the run stands, its evidence
            # could not be measured, and the record says why.
            error = f"evidence could not be gathered: {err}"
    return RunRecord(
        method, seed, request.goal, status, error=error, metrics=metrics, result=result.to_dict(), evidence=gathered
    )
