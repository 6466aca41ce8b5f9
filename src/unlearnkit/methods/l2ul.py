"""Instance-wise unlearning with adversarial anchors (ADV) and weight importance (ADV+IMP).

"Learning to Unlearn: Instance-wise Unlearning for Pre-trained Classifiers", Sungmin Cha,
Sungjun Cho, Dasol Hwang, Honglak Lee, Taesup Moon, Moontae Lee; AAAI 2024;
https://arxiv.org/abs/2301.11578.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearnkit.components.attacks import default_l2_eps, targeted_pgd
from unlearnkit.components.batching import cycled_batches, random_other_classes, shuffled_batches
from unlearnkit.components.importance import mas_importance, min_max_normalise
from unlearnkit.components.loop import optimise_until
from unlearnkit.components.losses import forget_loss
from unlearnkit.components.regularizers import importance_weighted_l2
from unlearnkit.components.stopping import StopRule
from unlearnkit.methods.base import (
    MethodRun,
    UnlearnContext,
    UnlearningMethod,
    check_choice,
    check_non_negative,
    check_positive,
)
from unlearnkit.methods.registry import register_method
from unlearnkit.utils.modules import clone_parameters, predict_logits

#: Default Linf radius when ``pgd_norm="linf"`` and no ``pgd_eps`` is given.
DEFAULT_LINF_EPS = 8 / 255


@register_method("l2ul_adv")
class L2ULAdv(UnlearningMethod):
    """Instance-wise unlearning with adversarial examples as anchors ("ADV").

    Before unlearning, a targeted L2 PGD attack on the *original* model makes ``n_adv`` copies
    of each forget instance, each pushed toward a random other class and labelled with that
    class. Unlearning then minimises, per step,
    ``forget_loss(D_f batch) * b_f / (b_f + b_a) + CE(adv batch, targets) * b_a / (b_f + b_a)``
    with SGD, where the forget loss is ``-CE(labels)`` (misclassification) or ``CE(new labels)``
    (relabeling). The adversarial copies stand in for the missing retain data: they pin the
    decision boundaries near the forget instances. Each pass runs over the adversarial set in
    batches of ``adv_batch_size``, cycling the forget set alongside in batches of
    ``forget_batch_size``; the forget set is checked after every step and the run stops the moment
    every instance meets its goal.

    Paper: Cha et al., "Learning to Unlearn: Instance-wise Unlearning for Pre-trained
    Classifiers", AAAI 2024, https://arxiv.org/abs/2301.11578.

    Differences from the released code (see the README): random targets never equal the true
    label; the L2 radius scales with the input size when not given; the forget and adversarial
    batches go through the model in one forward pass.

    Data: the model and the forget set only.

    Args:
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        forget_batch_size: Forget instances per step.
        adv_batch_size: Adversarial examples per step.
        n_adv: Adversarial copies per forget instance (paper: 20 for CIFAR-10).
        pgd_eps: Attack radius. ``None``: for L2, ``4.0 * sqrt(input_dim / 3072)`` (the paper's
            4.0 on 32x32x3 inputs, scaled to the input size); for Linf, 8/255.
        pgd_steps: Attack steps.
        pgd_step_size: Attack step length. ``None``: ``pgd_eps / 40`` (the paper's 0.1 at 4.0).
        pgd_norm: ``"l2"`` (the paper) or ``"linf"``.
        max_passes: Cap on passes over the adversarial set (the paper: 1000).
        max_steps: Cap on optimiser steps (``None``: none).
        max_seconds: Cap on wall time of the unlearning loop (``None``: none).
    """

    summary = "Gradient ascent anchored by adversarial examples of the forget set (ADV; Cha et al., AAAI 2024)."
    data_access = "forget"
    supports_relabel = True
    uses_importance = False

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        forget_batch_size: int = 32,
        adv_batch_size: int = 256,
        n_adv: int = 20,
        pgd_eps: float | None = None,
        pgd_steps: int = 100,
        pgd_step_size: float | None = None,
        pgd_norm: Literal["l2", "linf"] = "l2",
        max_passes: int | None = 1000,
        max_steps: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        check_positive(
            lr=lr, forget_batch_size=forget_batch_size, adv_batch_size=adv_batch_size, n_adv=n_adv,
            pgd_eps=pgd_eps, pgd_step_size=pgd_step_size,
        )
        check_non_negative(
            momentum=momentum, weight_decay=weight_decay, pgd_steps=pgd_steps, max_passes=max_passes,
            max_steps=max_steps, max_seconds=max_seconds,
        )
        check_choice("pgd_norm", pgd_norm, ("l2", "linf"))
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.forget_batch_size = forget_batch_size
        self.adv_batch_size = adv_batch_size
        self.n_adv = n_adv
        self.pgd_eps = pgd_eps
        self.pgd_steps = pgd_steps
        self.pgd_step_size = pgd_step_size
        self.pgd_norm = pgd_norm
        self.max_passes = max_passes
        self.max_steps = max_steps
        self.max_seconds = max_seconds

    def attack_eps(self, input_shape: tuple[int, ...]) -> float:
        """The attack radius for inputs of ``input_shape`` (the given one, or the scaled default)."""
        if self.pgd_eps is not None:
            return float(self.pgd_eps)
        return default_l2_eps(input_shape) if self.pgd_norm == "l2" else DEFAULT_LINF_EPS

    def attack_step_size(self, input_shape: tuple[int, ...]) -> float:
        """The attack step length (the given one, or ``eps / 40``)."""
        if self.pgd_step_size is not None:
            return float(self.pgd_step_size)
        return self.attack_eps(input_shape) / 40.0

    def resolved_params(self, context: UnlearnContext) -> dict[str, Any]:
        params = self.get_params()
        params["pgd_eps"] = self.attack_eps(context.request.input_shape)
        params["pgd_step_size"] = self.attack_step_size(context.request.input_shape)
        return params

    def _make_anchors(self, context: UnlearnContext) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Adversarial copies of the forget instances from the model as it is (the original)."""
        request, shape = context.request, context.request.input_shape
        started = time.perf_counter()
        inputs = request.inputs.repeat_interleave(self.n_adv, dim=0)
        sources = request.labels.repeat_interleave(self.n_adv, dim=0)
        targets = random_other_classes(sources, context.num_classes, context.generator)
        adversarial = targeted_pgd(
            context.model,
            inputs,
            targets,
            eps=self.attack_eps(shape),
            steps=self.pgd_steps,
            step_size=self.attack_step_size(shape),
            norm=self.pgd_norm,
            input_range=request.input_range,
            generator=context.generator,
        )
        reached = predict_logits(context.model, adversarial).argmax(dim=1) == targets
        details = {
            "attack/examples": int(inputs.shape[0]),
            "attack/success_rate": float(reached.float().mean()),
            "attack/seconds": time.perf_counter() - started,
        }
        return adversarial, targets, details

    def _penalty(self, context: UnlearnContext) -> tuple[Any, dict[str, Any]]:
        """The regulariser added to the loss (none for ADV)."""
        return None, {}

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        model, request = context.model, context.request
        x, y, new = request.inputs, request.labels, request.new_labels
        adversarial, targets, details = self._make_anchors(context)
        penalty, penalty_details = self._penalty(context)
        details.update(penalty_details)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        forget_batches = cycled_batches(len(request), self.forget_batch_size, context.generator)

        def make_pass(_: int) -> list[tuple[Tensor, Tensor]]:
            adv_batches = shuffled_batches(adversarial.shape[0], self.adv_batch_size, context.generator)
            return [(next(forget_batches), a) for a in adv_batches]

        def loss_fn(batch: tuple[Tensor, Tensor]) -> Tensor:
            f_idx, a_idx = batch
            b_f, b_a = len(f_idx), len(a_idx)
            # One forward pass over both parts (BatchNorm sees the mixed batch).
            logits = model(torch.cat([x[f_idx], adversarial[a_idx]]))
            forget_part = forget_loss(logits[:b_f], y[f_idx], None if new is None else new[f_idx])
            anchor_part = F.cross_entropy(logits[b_f:], targets[a_idx])
            loss = forget_part * (b_f / (b_f + b_a)) + anchor_part * (b_a / (b_f + b_a))
            return loss if penalty is None else loss + penalty()

        outcome = optimise_until(
            model,
            optimizer,
            loss_fn=loss_fn,
            make_pass=make_pass,
            monitor=context.monitor(StopRule(self.max_passes, self.max_steps, self.max_seconds)),
            progress=context.progress,
            desc=self.name,
        )
        return MethodRun.from_loop(outcome, **details)


@register_method("l2ul")
class L2UL(L2ULAdv):
    """Instance-wise unlearning with adversarial anchors and weight importance ("ADV+IMP").

    ADV (see :class:`L2ULAdv`) plus ``reg_lambda * sum_j 0.5 * (1 - Omega_j) * (theta_j -
    theta0_j)^2``, where ``Omega`` is MAS importance computed on the forget set only and min-max
    normalised per parameter tensor to ``[0, 1]``: weights that matter for the forget instances
    are free to move, the others are anchored to the original weights ``theta0``.

    Paper: Cha et al., "Learning to Unlearn: Instance-wise Unlearning for Pre-trained
    Classifiers", AAAI 2024, https://arxiv.org/abs/2301.11578.

    Data: the model and the forget set only.

    Args:
        reg_lambda: Weight of the importance regulariser (paper: 1).
        importance_batch_size: Forget instances per MAS gradient.
        **kwargs: Every argument of :class:`L2ULAdv`.

    Example:
        >>> import torch, unlearnkit
        >>> from unlearnkit.data import load_digits_split
        >>> from unlearnkit.models import SmallCNN
        >>> torch.manual_seed(0) and None
        >>> model = SmallCNN(in_channels=1, num_classes=10, image_size=8)
        >>> data = load_digits_split()
        >>> result = unlearnkit.unlearn(
        ...     model, forget=(data.x_train[:4], data.y_train[:4]), method="l2ul", n_adv=2,
        ...     pgd_steps=5, max_steps=3)
        >>> result.steps <= 3, sorted(result.details)[:2]
        (True, ['attack/examples', 'attack/seconds'])
    """

    summary = "ADV plus a MAS weight-importance regulariser toward the original (ADV+IMP; Cha et al., AAAI 2024)."
    uses_importance = True

    def __init__(self, *, reg_lambda: float = 1.0, importance_batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_non_negative(reg_lambda=reg_lambda)
        check_positive(importance_batch_size=importance_batch_size)
        self.reg_lambda = reg_lambda
        self.importance_batch_size = importance_batch_size

    def _penalty(self, context: UnlearnContext) -> tuple[Any, dict[str, Any]]:
        model = context.model
        importance = min_max_normalise(
            mas_importance(model, context.request.inputs, batch_size=self.importance_batch_size)
        )
        freedom = {name: 1.0 - omega for name, omega in importance.items()}
        reference = clone_parameters(model)
        mean_importance = float(
            sum(o.sum() for o in importance.values()) / max(1, sum(o.numel() for o in importance.values()))
        )

        def penalty() -> Tensor:
            return self.reg_lambda * importance_weighted_l2(model, reference, freedom)

        return penalty, {"importance/mean": mean_importance}
