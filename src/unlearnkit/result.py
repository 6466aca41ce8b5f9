"""What an unlearning call returns: the new model and the evidence of what happened."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from unlearnkit.request import Goal, InstanceId

#: Version of the JSON layout written by :meth:`UnlearnResult.to_dict`.
RESULT_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class InstanceOutcome:
    """What happened to one forget instance.

    Attributes:
        id: The instance's id from the request.
        label: Its training label.
        new_label: The requested new label (relabeling mode), else ``None``.
        pred_before: The original model's prediction.
        pred_after: The unlearned model's prediction.
        margin_before: ``logit[target] - max(other logits)`` under the original model, where the
            target is the new label in relabeling mode and the training label otherwise.
        margin_after: The same under the unlearned model.
        goal_met: Whether the instance meets its goal after unlearning (misclassified,
            predicted as its new label, or with its loss at its ``unseen`` target), at zero
            margin; ``UnlearnResult.converged`` also asks for the method's ``stop_margin``.
        loss_before: Cross-entropy on the training label under the original model.
        loss_after: The same under the unlearned model.
        loss_target: The ``unseen`` goal's target loss, else ``None``.
        content_sha256: sha256 of the instance's input as float32 and its label
            (:func:`~unlearnkit.request.instance_sha256`): what a receipt names, so that an
            auditor can check which content was forgotten without storing it.
    """

    id: InstanceId
    label: int
    new_label: int | None
    pred_before: int
    pred_after: int
    margin_before: float
    margin_after: float
    goal_met: bool
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    loss_target: float | None = None
    content_sha256: str = ""


@dataclass
class UnlearnResult:
    """The outcome of one unlearning call.

    Attributes:
        model: The unlearned model: a new object unless ``inplace=True`` was asked for.
        method: Registry name of the method.
        goal: ``"misclassify"``, ``"relabel"`` or ``"unseen"``.
        hyperparams: Every resolved hyperparameter of the method.
        seed: The seed of every random choice.
        converged: Whether every forget instance met its goal when the run stopped.
        stop_reason: ``goal_reached``, ``max_steps``, ``max_passes`` or ``max_seconds``; or
            ``fixed_schedule`` for methods that run a fixed number of steps without checking
            the goal (fine-tuning, retraining), where ``converged`` says whether the goal
            happens to hold at the end.
        steps: Optimiser steps taken.
        passes: Passes over the method's data.
        seconds: Wall time of the call, from validation to the final check.
        outcomes: One :class:`InstanceOutcome` per forget instance, in request order.
        metrics: Summary figures: ``acc/forget/before``, ``acc/forget/after`` (percent),
            ``loss/forget/before``, ``loss/forget/after`` (mean cross-entropy); in relabeling mode
            ``relabel/before``, ``relabel/after``; for ``unseen``, ``unseen/before``,
            ``unseen/after`` (percent of instances at their loss target).
        details: Method-specific figures (e.g. the attack's success rate).
        retain_used: Number of retain instances the method read (0 for forget-only methods).
        model_sha256_before: Hash of the original model's state dict.
        model_sha256_after: Hash of the unlearned model's state dict.
        versions: Library versions the run used.
        device: Where the run happened.
    """

    model: nn.Module
    method: str
    goal: Goal
    hyperparams: dict[str, Any]
    seed: int
    converged: bool
    stop_reason: str
    steps: int
    passes: int
    seconds: float
    outcomes: list[InstanceOutcome]
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    retain_used: int = 0
    model_sha256_before: str = ""
    model_sha256_after: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, as JSON-ready Python values."""
        data = {k: v for k, v in self.__dict__.items() if k != "model"}
        data["outcomes"] = [asdict(o) for o in self.outcomes]
        data["schema_version"] = RESULT_SCHEMA_VERSION
        return data

    def __repr__(self) -> str:
        return (
            f"UnlearnResult(method={self.method!r}, goal={self.goal!r}, converged={self.converged}, "
            f"steps={self.steps}, seconds={self.seconds:.2f}, "
            f"acc_forget={self.metrics.get('acc/forget/after', float('nan')):.1f})"
        )
