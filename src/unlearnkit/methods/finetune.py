"""FT: fine-tune on the retain data only, the NeurIPS 2023 machine-unlearning challenge baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from unlearnkit.components.loop import train_for_epochs
from unlearnkit.components.optim import make_optimizer
from unlearnkit.methods.base import (
    FROM_PRESET,
    MethodRun,
    UnlearnContext,
    UnlearningMethod,
    check_count,
    check_non_negative,
    check_positive,
)
from unlearnkit.methods.registry import register_method


@register_method("finetune")
class FineTune(UnlearningMethod):
    """Fine-tuning on the retain data only (FT): forgetting by "catastrophic forgetting".

    The baseline of the NeurIPS 2023 Machine Unlearning challenge (Triantafillou et al.,
    "Are we making progress in unlearning? Findings from the first NeurIPS unlearning
    competition", 2024, https://arxiv.org/abs/2406.09073; starting kit
    https://github.com/unlearning-challenge/starting-kit): SGD with momentum 0.9 and weight
    decay 5e-4, a cosine schedule over the epochs (stepped once per epoch, as the kit does), one
    epoch of cross-entropy on the retain set. The forget set is never trained on; it is only
    read once at the end to report whether the goal holds.

    The run has a fixed schedule: exactly ``ceil(n_retain / batch_size) * epochs`` steps,
    ``stop_reason="fixed_schedule"``, and ``converged`` says whether every forget instance is
    misclassified at the end (which fine-tuning does not promise). Misclassification requests
    only.

    ``preset="paper"``: lr 1e-3 (the kit's value). The default preset uses lr 1e-2, since a user
    often holds only a small part of the training set and one epoch at 1e-3 then barely moves
    the weights.

    Data: the model, the forget set (read, never trained on) and retain data of any size
    (``data_access = "forget+retain"``); ``result.retain_used`` is its size.

    Args:
        preset: ``"default"`` or ``"paper"``; explicit values override the preset's.
        lr: Initial learning rate, ``1e-2`` / ``1e-3``.
        epochs: Passes over the retain data, 1.
        batch_size: Retain instances per step, 64.
        momentum: SGD momentum, 0.9.
        weight_decay: SGD weight decay, 5e-4.

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 1])
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="finetune", retain=retain, batch_size=4)
        >>> result.steps, result.stop_reason, result.retain_used
        (3, 'fixed_schedule', 10)
    """

    summary = "Fine-tune on the retain data only (NeurIPS 2023 unlearning challenge baseline)."
    data_access = "forget+retain"
    supports_relabel = False
    supports_unseen = False
    goal_driven = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {"default": {"lr": 1e-2}, "paper": {"lr": 1e-3}}

    # Hyperparameters, stored by _set_params from the keyword arguments (typed here for readers and checkers).
    lr: float
    epochs: int
    batch_size: int
    momentum: float
    weight_decay: float

    def __init__(
        self,
        *,
        preset: str = "default",
        lr: float = FROM_PRESET,
        epochs: int = 1,
        batch_size: int = 64,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        self._set_params(
            preset, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay
        )
        check_positive(lr=self.lr, epochs=self.epochs, batch_size=self.batch_size)
        check_count(epochs=self.epochs, batch_size=self.batch_size)
        check_non_negative(momentum=self.momentum, weight_decay=self.weight_decay)

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        assert context.retain is not None  # guaranteed by the data contract
        model = context.model
        x, y = context.retain
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer("sgd", params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        steps, losses = train_for_epochs(
            model, optimizer, x, y, epochs=self.epochs, batch_size=self.batch_size, generator=context.generator,
            schedule=self._schedule(optimizer), schedule_every="epoch", penalty=self._penalty(params),
            progress=context.progress, desc=self.name,
        )
        details = {"final_loss": losses[-1] if losses else None, **self._details(params)}
        return MethodRun(steps, self.epochs, context.goal_holds(), "fixed_schedule", details)

    # Hooks for variants of fine-tuning (l1_sparse): the same loop, another schedule or penalty.

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The learning-rate schedule, stepped once per epoch: cosine over the epochs."""
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)

    def _penalty(self, params: list[nn.Parameter]) -> Callable[[int], Tensor] | None:
        """A term added to every step's loss (called with the epoch); none for plain fine-tuning."""
        return None

    def _details(self, params: list[nn.Parameter]) -> dict[str, Any]:
        """Method-specific figures for the result, after the run."""
        return {}
