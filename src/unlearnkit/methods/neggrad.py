"""NegGrad: gradient ascent on the forget set, the instance-wise paper's naive baseline."""

from __future__ import annotations

import torch

from unlearnkit.components.batching import shuffled_batches
from unlearnkit.components.loop import optimise_until
from unlearnkit.components.losses import forget_loss
from unlearnkit.components.stopping import StopRule
from unlearnkit.methods.base import MethodRun, UnlearnContext, UnlearningMethod, check_non_negative, check_positive
from unlearnkit.methods.registry import register_method


@register_method("neggrad")
class NegGrad(UnlearningMethod):
    """Gradient ascent on the forget instances (relabeling: descent toward the new labels).

    The naive baseline of "Learning to Unlearn: Instance-wise Unlearning for Pre-trained
    Classifiers" (Cha et al., AAAI 2024, https://arxiv.org/abs/2301.11578): minimise
    ``-CE(g(x_f), y_f)`` over batches of the forget set with SGD, checking after every step and
    stopping when every instance is misclassified (relabeling: minimise ``CE(g(x_f), y'_f)``
    until every instance is predicted as its new label). Nothing holds the rest of the model in
    place, so it is expected to damage accuracy on other data.

    Data: the model and the forget set only.

    Args:
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Forget instances per step.
        max_passes: Cap on passes over the forget set (the paper: 1000).
        max_steps: Cap on optimiser steps (``None``: none).
        max_seconds: Cap on wall time (``None``: none).

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), model(torch.rand(2, 4)).argmax(1)
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="neggrad", lr=0.5)
        >>> result.converged, result.metrics["acc/forget/after"]
        (True, 0.0)
    """

    summary = "Gradient ascent on the forget set; the naive baseline (Cha et al., AAAI 2024)."
    data_access = "forget"
    supports_relabel = True

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        batch_size: int = 32,
        max_passes: int | None = 1000,
        max_steps: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        check_positive(lr=lr, batch_size=batch_size)
        check_non_negative(
            momentum=momentum, weight_decay=weight_decay, max_passes=max_passes,
            max_steps=max_steps, max_seconds=max_seconds,
        )
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_passes = max_passes
        self.max_steps = max_steps
        self.max_seconds = max_seconds

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        model, request = context.model, context.request
        x, y, new = request.inputs, request.labels, request.new_labels
        optimizer = torch.optim.SGD(
            model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            return forget_loss(model(x[idx]), y[idx], None if new is None else new[idx])

        outcome = optimise_until(
            model,
            optimizer,
            loss_fn=loss_fn,
            make_pass=lambda _: shuffled_batches(len(request), self.batch_size, context.generator),
            monitor=context.monitor(StopRule(self.max_passes, self.max_steps, self.max_seconds)),
            progress=context.progress,
            desc=self.name,
        )
        return MethodRun.from_loop(outcome, final_loss=outcome.losses[-1] if outcome.losses else None)
