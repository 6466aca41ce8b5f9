"""The stopping rule: stop the moment every forget instance meets its goal, or at a cap.

The instance-wise paper checks the forget set after every optimiser step and stops as soon as
all of it is misclassified (or relabeled). A run that reaches a cap first has not converged, and
says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.errors import NonFiniteError
from unlearnkit.utils.modules import predict_logits


def label_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``logit[label] - max(other logits)`` per row: positive when ``label`` is predicted.

    Example:
        >>> label_margin(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([0])).tolist()
        [1.0]
    """
    own = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf"))
    return own - others.max(dim=1).values


def goal_met(
    logits: Tensor,
    labels: Tensor,
    new_labels: Tensor | None = None,
    margin: float = 0.0,
    loss_targets: Tensor | None = None,
) -> Tensor:
    """Which instances meet their unlearning goal, as a boolean tensor.

    Misclassification (``new_labels`` is ``None``): the prediction is not the label, and with
    ``margin > 0`` the best other logit beats the label's by more than ``margin``.
    Relabeling: the prediction is the new label, by more than ``margin`` with ``margin > 0``.
    Unseen (``loss_targets`` given): the cross-entropy on the label has reached its target
    (``margin`` does not apply).

    Example:
        >>> logits = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
        >>> goal_met(logits, torch.tensor([0, 0])).tolist()
        [False, True]
        >>> goal_met(logits, torch.tensor([0, 0]), margin=2.5).tolist()
        [False, False]
    """
    if loss_targets is not None:
        return F.cross_entropy(logits, labels, reduction="none") >= loss_targets
    if new_labels is None:
        if margin <= 0:
            return logits.argmax(dim=1) != labels
        return label_margin(logits, labels) < -margin
    if margin <= 0:
        return logits.argmax(dim=1) == new_labels
    return label_margin(logits, new_labels) > margin


@dataclass(frozen=True)
class StopRule:
    """When to stop an iterative unlearning run.

    Args:
        max_passes: Cap on passes over the method's data (the paper: 1000). ``None``: no cap.
        max_steps: Cap on optimiser steps. ``None``: no cap; 0 changes nothing.
        max_seconds: Cap on wall time. ``None``: no cap.
        margin: Logit margin by which each instance must meet its goal (0: just cross).
    """

    max_passes: int | None = 1000
    max_steps: int | None = None
    max_seconds: float | None = None
    margin: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_passes", "max_steps", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


@dataclass(frozen=True)
class StopDecision:
    """The outcome of one check: whether to stop, whether the goal holds, and why."""

    stop: bool
    converged: bool
    reason: str
    goal_share: float


@dataclass
class StopMonitor:
    """Applies a :class:`StopRule` to a model and its forget set, check after check.

    Args:
        rule: The caps and margin.
        inputs: Forget inputs on the model's device.
        labels: Their labels.
        new_labels: New labels in relabeling mode, else ``None``.
        loss_targets: Per-instance loss targets for the ``unseen`` goal, else ``None``.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)); _ = model.bias.zero_()
        >>> monitor = StopMonitor(StopRule(max_steps=3), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
        >>> monitor.check(model, steps=0, passes=0).reason
        'continue'
        >>> monitor.check(model, steps=3, passes=3).reason
        'max_steps'
    """

    rule: StopRule
    inputs: Tensor
    labels: Tensor
    new_labels: Tensor | None = None
    loss_targets: Tensor | None = None
    started: float = field(default_factory=time.perf_counter)
    checks: int = 0

    @property
    def elapsed(self) -> float:
        """Seconds since the clock started."""
        return time.perf_counter() - self.started

    def goal(self, model: nn.Module) -> Tensor:
        """Per-instance goal flags for the model as it is now (eval mode, no gradients).

        Raises:
            NonFiniteError: If the model's logits on the forget set are NaN or infinite.
        """
        logits = predict_logits(model, self.inputs)
        if not torch.isfinite(logits).all():
            raise NonFiniteError(
                f"the model's logits on the forget set became NaN or infinite (check {self.checks}); "
                "the run was stopped and its model discarded (try a smaller learning rate)"
            )
        return goal_met(logits, self.labels, self.new_labels, self.rule.margin, self.loss_targets)

    def check(self, model: nn.Module, *, steps: int, passes: int) -> StopDecision:
        """Checks the goal, then the caps; the goal wins when both hold."""
        self.checks += 1
        met = self.goal(model)
        share = float(met.float().mean())
        if bool(met.all()):
            return StopDecision(True, True, "goal_reached", share)
        rule = self.rule
        if rule.max_steps is not None and steps >= rule.max_steps:
            return StopDecision(True, False, "max_steps", share)
        if rule.max_passes is not None and passes >= rule.max_passes:
            return StopDecision(True, False, "max_passes", share)
        if rule.max_seconds is not None and self.elapsed >= rule.max_seconds:
            return StopDecision(True, False, "max_seconds", share)
        return StopDecision(False, False, "continue", share)
