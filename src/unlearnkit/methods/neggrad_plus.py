"""NegGrad+: a forget objective on the forget set balanced by cross-entropy on retain data."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unlearnkit.components.batching import cycled_batches, shuffled_batches
from unlearnkit.components.distributed import sharded_mean
from unlearnkit.components.loop import optimise_until
from unlearnkit.errors import InvalidHyperparameterError
from unlearnkit.methods.ascent import ForgetObjectiveMethod
from unlearnkit.methods.base import MethodRun, UnlearnContext, check_count, check_positive
from unlearnkit.methods.registry import register_method


@register_method("neggrad_plus")
class NegGradPlus(ForgetObjectiveMethod):
    """NegGrad+: minimise ``alpha * CE(retain batch) + (1 - alpha) * forget loss``.

    From "Towards Unbounded Machine Unlearning" (Kurmanji, Triantafillou, Hayes, Triantafillou;
    NeurIPS 2023, https://arxiv.org/abs/2302.09880), where it is the strong baseline of SCRUB:
    gradient ascent on the forget set held in place by descent on the retain set. Each step
    pairs a batch of forget instances with the next batch of retain data (reshuffled, seeded,
    each time it is used up); a pass is a pass over the forget set. The stopping rule is the
    shared one: the goal is checked after every step and the run stops when every instance
    meets it, or at a cap.

    ``preset="paper"``: forget loss ``-CE(g(x_f), y_f)`` (relabeling: ``CE`` toward the new
    labels), SGD at lr 1e-3 with momentum 0.9 and weight decay 1e-4, BatchNorm in training
    mode. The default preset uses the bounded hinge forget loss, Adam at 1e-4 and frozen
    BatchNorm statistics (see :class:`~unlearnkit.methods.ascent.ForgetObjectiveMethod`).

    Data: the model, the forget set and retain data of any size
    (``data_access = "forget+retain"``); ``result.retain_used`` is its size.

    Args:
        alpha: Weight of the retain term in ``[0, 1]``, 0.99 (the forget term gets
            ``1 - alpha``; 1 is plain fine-tuning on the retain data under the stopping rule).
        batch_size: Forget instances per step, 32.
        retain_batch_size: Retain instances per step, 64.
        **kwargs: The shared hyperparameters of
            :class:`~unlearnkit.methods.ascent.ForgetObjectiveMethod` (preset, optimizer, lr,
            momentum, weight_decay, forget_loss, forget_margin, stop_margin, bn_mode, caps).

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), model(torch.rand(2, 4)).argmax(1)
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="neggrad_plus", retain=retain, lr=0.05, alpha=0.5)
        >>> result.converged, result.metrics["acc/forget/after"], result.retain_used
        (True, 0.0, 10)
    """

    summary = "Forget objective balanced by CE on retain data (Kurmanji et al., NeurIPS 2023)."
    data_access = "forget+retain"
    supports_relabel = True
    supports_unseen = True

    def __init__(self, *, alpha: float = 0.99, batch_size: int = 32, retain_batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive(batch_size=batch_size, retain_batch_size=retain_batch_size)
        check_count(batch_size=batch_size, retain_batch_size=retain_batch_size)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise InvalidHyperparameterError(f"alpha must be a number in [0, 1], got {alpha!r}")
        self.alpha, self.batch_size, self.retain_batch_size = alpha, batch_size, retain_batch_size

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        assert context.retain is not None  # guaranteed by the data contract
        model, request = context.model, context.request
        x, y, new, targets = request.inputs, request.known_labels, request.new_labels, context.loss_targets
        xr, yr = context.retain
        retain_batches = cycled_batches(xr.shape[0], self.retain_batch_size, context.generator)

        def loss_fn(idx: torch.Tensor) -> torch.Tensor:
            r = next(retain_batches)
            # Under torchrun each rank takes its share of the retain batch (the forget term is
            # computed in full on every rank: the forget set is small).
            retain_term = sharded_mean(r, lambda rows: F.cross_entropy(model(xr[rows]), yr[rows]))
            if self.alpha == 1:
                return retain_term  # no forget term at all (0 * an unbounded loss could be NaN)
            forget_term = self.forget_term(
                model(x[idx]), y[idx], None if new is None else new[idx], None if targets is None else targets[idx]
            )
            return self.alpha * retain_term + (1 - self.alpha) * forget_term

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
        return MethodRun.from_loop(outcome, final_loss=outcome.losses[-1] if outcome.losses else None)
