"""NegGrad: gradient ascent on the forget set, the instance-wise paper's naive baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from unlearnkit.components.batching import shuffled_batches
from unlearnkit.components.loop import optimise_until
from unlearnkit.methods.ascent import ForgetObjectiveMethod
from unlearnkit.methods.base import MethodRun, UnlearnContext, check_count, check_positive
from unlearnkit.methods.registry import register_method


@register_method("neggrad")
class NegGrad(ForgetObjectiveMethod):
    """Gradient ascent on the forget instances (relabeling: descent toward the new labels).

    The naive baseline of "Learning to Unlearn: Instance-wise Unlearning for Pre-trained
    Classifiers" (Cha et al., AAAI 2024, https://arxiv.org/abs/2301.11578): minimise the forget
    loss over batches of the forget set, checking after every step and stopping when every
    instance meets its goal. Nothing holds the rest of the model in place.

    ``preset="paper"``: ``-CE(g(x_f), y_f)`` with SGD (lr 1e-3, momentum 0.9, weight decay
    1e-4), BatchNorm in training mode; the loss is unbounded and often diverges to NaN on small
    models (the run then raises :class:`~unlearnkit.errors.NonFiniteError`). The default preset
    uses the bounded hinge loss, Adam at 1e-4 and frozen BatchNorm statistics instead.

    Data: the model and the forget set only.

    Args:
        batch_size: Forget instances per step, 32.
        **kwargs: The shared hyperparameters of
            :class:`~unlearnkit.methods.ascent.ForgetObjectiveMethod` (preset, optimizer, lr,
            momentum, weight_decay, forget_loss, forget_margin, stop_margin, bn_mode, caps).

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), model(torch.rand(2, 4)).argmax(1)
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="neggrad", lr=0.05)
        >>> result.converged, result.metrics["acc/forget/after"], result.hyperparams["preset"]
        (True, 0.0, 'default')
    """

    summary = "Gradient ascent on the forget set; the naive baseline (Cha et al., AAAI 2024)."
    data_access = "forget"
    supports_relabel = True

    def __init__(self, *, batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive(batch_size=batch_size)
        check_count(batch_size=batch_size)
        self.batch_size = batch_size

    def _penalty(self, context: UnlearnContext) -> tuple[Callable[[], torch.Tensor] | None, dict[str, Any]]:
        """The regulariser added to the loss, with details to record (none for NegGrad itself).

        Called once before the first step, on the original model; subclasses return a callable
        giving the penalty on the current weights (see
        :mod:`unlearnkit.methods.neggrad_regularized`).
        """
        return None, {}

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        model, request = context.model, context.request
        x, y, new, targets = request.inputs, request.known_labels, request.new_labels, context.loss_targets
        penalty, details = self._penalty(context)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            loss = self.forget_term(
                model(x[idx]), y[idx], None if new is None else new[idx], None if targets is None else targets[idx]
            )
            return loss if penalty is None else loss + penalty()

        outcome = optimise_until(
            model,
            self.make_optimizer(model),
            loss_fn=loss_fn,
            make_pass=lambda _: shuffled_batches(len(request), self.batch_size, context.generator),
            monitor=context.monitor(self.stop_rule()),
            set_train_mode=self.train_mode,
            progress=context.progress,
            desc=self.name,
        )
        return MethodRun.from_loop(outcome, final_loss=outcome.losses[-1] if outcome.losses else None, **details)
