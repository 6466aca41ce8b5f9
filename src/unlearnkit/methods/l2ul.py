"""Instance-wise unlearning with adversarial anchors (ADV) and weight importance (ADV+IMP).

"Learning to Unlearn: Instance-wise Unlearning for Pre-trained Classifiers", Sungmin Cha,
Sungjun Cho, Dasol Hwang, Honglak Lee, Taesup Moon, Moontae Lee; AAAI 2024;
https://arxiv.org/abs/2301.11578.
"""

from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import asdict, dataclass
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from unlearnkit.components.attacks import calibrated_targeted_pgd, default_l2_eps
from unlearnkit.components.augment import shifted_copies
from unlearnkit.components.batching import (
    balanced_other_classes,
    cycled_batches,
    random_other_classes,
    shuffled_batches,
)
from unlearnkit.components.importance import mas_importance, min_max_normalise
from unlearnkit.components.loop import optimise_until
from unlearnkit.components.losses import distillation_loss
from unlearnkit.components.regularizers import anchored_penalty, mean_weight
from unlearnkit.components.step_size import StepSizeTrial, search_learning_rate
from unlearnkit.methods.ascent import ASCENT_PRESETS, ForgetObjectiveMethod
from unlearnkit.methods.base import (
    FROM_PRESET,
    MethodRun,
    UnlearnContext,
    check_choice,
    check_count,
    check_non_negative,
    check_positive,
    optional,
)
from unlearnkit.methods.registry import register_method
from unlearnkit.utils.modules import predict_logits
from unlearnkit.utils.precision import PRECISION_CHOICES, resolve_precision

#: Default Linf radius when ``pgd_norm="linf"`` and no ``pgd_eps`` is given.
DEFAULT_LINF_EPS = 8 / 255

ANCHOR_PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "anchor_targets": "balanced", "anchor_loss": "kl", "anchor_weight": 50.0, "shift_anchors": 1,
        "pgd_steps": 50, "pgd_rounds": 4, "drop_unreached": True, "pgd_stop_margin": 3.0,
        "adv_batch_size": 64, "attack_precision": "auto",
    },
    "paper": {
        "anchor_targets": "random", "anchor_loss": "ce", "anchor_weight": None, "shift_anchors": 0,
        "pgd_steps": 100, "pgd_rounds": 1, "drop_unreached": False, "pgd_stop_margin": None,
        "adv_batch_size": 256, "attack_precision": "fp32",
    },
}


@dataclass(frozen=True)
class Anchors:
    """The inputs that hold the model in place near the forget instances.

    Attributes:
        inputs: Adversarial and shifted copies of the forget instances.
        labels: The class each should keep (the attack target, or the instance's label).
        teacher: The original model's output distribution on each, for the KL anchor loss.
    """

    inputs: Tensor
    labels: Tensor
    teacher: Tensor | None

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@register_method("l2ul_adv")
class L2ULAdv(ForgetObjectiveMethod):
    """Instance-wise unlearning with adversarial examples as anchors ("ADV").

    Before unlearning, a targeted PGD attack on the *original* model makes ``n_adv`` copies of
    each forget instance, each pushed toward another class. Unlearning then minimises the forget
    loss on the forget set plus a loss that keeps the original model's behaviour on these
    anchors: they stand in for the missing retain data and pin the decision boundaries near the
    forget instances. Each pass runs over the anchors in batches of ``adv_batch_size``, cycling
    the forget set alongside in batches of ``forget_batch_size``; the forget set is checked after
    every step and the run stops the moment every instance meets its goal (by ``stop_margin``).

    ``preset="paper"`` is the released recipe: random targets, one attack at radius ``pgd_eps``
    whose copies are all kept (reached or not), ``-CE`` on the forget batch and ``CE`` toward the
    targets on the anchors weighted by the two batch sizes, SGD at 1e-3, BatchNorm in training
    mode. The default preset makes it hold on models nobody tuned it for: targets spread evenly
    over the classes; the radius grown per copy (x2 per round, ``pgd_rounds - 1`` times at most) until the copy
    reaches its target, and copies that never do are dropped; shifted copies of each forget
    instance that the original still assigns to its class (they keep the rest of that class);
    the anchors keep the original's full output distribution (KL) with weight ``anchor_weight``;
    the bounded hinge forget loss, Adam at 1e-4 and frozen BatchNorm statistics.

    Paper: Cha et al., "Learning to Unlearn: Instance-wise Unlearning for Pre-trained
    Classifiers", AAAI 2024, https://arxiv.org/abs/2301.11578.

    Data: the model and the forget set only.

    Args (``default`` / ``paper`` preset values where they differ):
        forget_batch_size: Forget instances per step, 32.
        adv_batch_size: Anchors per step, 64 / 256. Smaller batches make each step cheaper; a
            pass over the anchors then takes more, smaller steps (measured on CIFAR-10, k = 16:
            107 steps of 80 images instead of 63 of 272, a third of the time).
        n_adv: Adversarial copies per forget instance, 20 (the paper's CIFAR-10 setting).
        anchor_targets: ``"balanced"`` / ``"random"``: how target classes are drawn.
        anchor_loss: ``"kl"`` (keep the original's output distribution) / ``"ce"`` (keep the
            target class).
        anchor_weight: Weight of the anchor loss, 50 / ``None`` (``None``: the paper's weights
            ``b_f / (b_f + b_a)`` and ``b_a / (b_f + b_a)`` by batch size).
        shift_anchors: Also anchor every copy of each forget instance shifted by up to this many
            pixels that the original still assigns to its class, 1 / 0 (off). Used only for
            ``(N, C, H, W)`` inputs.
        pgd_eps: Initial attack radius. ``None``: for L2, ``4.0 * sqrt(input_dim / 3072)`` (the
            paper's 4.0 on 32x32x3 inputs, scaled to the input size); for Linf, 8/255.
        pgd_steps: Attack steps, 50 / 100.
        pgd_step_size: Attack step length. ``None``: ``2.5 * eps / pgd_steps`` (the paper's 0.1
            at eps 4.0 and 100 steps), per copy.
        pgd_norm: ``"l2"`` (the paper) or ``"linf"``.
        pgd_rounds: Attack rounds, the radius doubling each round for copies that have not
            reached their target, 4 / 1.
        pgd_stop_margin: Early exit of the attack: a copy stops at the first step where the
            original prefers its target by more than this many logits, and leaves the batch,
            3.0 / ``None`` (every copy takes every step, as the released code).
        attack_precision: ``"auto"`` / ``"fp32"``: ``"auto"`` runs the attack's forward and
            backward passes under bf16 autocast on CUDA devices that support it (about twice
            the throughput) and in fp32 on CPUs, where bf16 is many times slower; ``"bf16"``
            forces it. Whether a copy reached its target is always checked in fp32, so the
            anchors kept are ones the original model really assigns to their target.
        drop_unreached: Train only on copies that reached their target, ``True`` / ``False``.
        **kwargs: The shared hyperparameters of
            :class:`~unlearnkit.methods.ascent.ForgetObjectiveMethod` (preset, optimizer, lr,
            momentum, weight_decay, forget_loss, forget_margin, stop_margin, bn_mode, caps).
    """

    summary = "Forget-set ascent anchored by adversarial examples of the forget set (ADV; Cha et al., AAAI 2024)."
    data_access = "forget"
    supports_relabel = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        name: {**ASCENT_PRESETS[name], **ANCHOR_PRESETS[name]} for name in ASCENT_PRESETS
    }
    supports_auto_lr = True

    # Hyperparameters, stored by _set_params from the keyword arguments (typed here for readers and checkers).
    forget_batch_size: int
    adv_batch_size: int
    n_adv: int
    anchor_targets: str
    anchor_loss: str
    anchor_weight: float | None
    shift_anchors: int
    pgd_eps: float | None
    pgd_steps: int
    pgd_step_size: float | None
    pgd_norm: str
    pgd_rounds: int
    drop_unreached: bool
    pgd_stop_margin: float | None
    attack_precision: str

    def __init__(
        self,
        *,
        forget_batch_size: int = 32,
        adv_batch_size: int = FROM_PRESET,
        n_adv: int = 20,
        anchor_targets: str = FROM_PRESET,
        anchor_loss: str = FROM_PRESET,
        anchor_weight: float | None = FROM_PRESET,
        shift_anchors: int = FROM_PRESET,
        pgd_eps: float | None = None,
        pgd_steps: int = FROM_PRESET,
        pgd_step_size: float | None = None,
        pgd_norm: str = "l2",
        pgd_rounds: int = FROM_PRESET,
        drop_unreached: bool = FROM_PRESET,
        pgd_stop_margin: float | None = FROM_PRESET,
        attack_precision: str = FROM_PRESET,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._set_params(
            self.preset, forget_batch_size=forget_batch_size, adv_batch_size=adv_batch_size, n_adv=n_adv,
            anchor_targets=anchor_targets, anchor_loss=anchor_loss, anchor_weight=anchor_weight,
            shift_anchors=shift_anchors, pgd_eps=pgd_eps, pgd_steps=pgd_steps, pgd_step_size=pgd_step_size,
            pgd_norm=pgd_norm, pgd_rounds=pgd_rounds, drop_unreached=drop_unreached,
            pgd_stop_margin=pgd_stop_margin, attack_precision=attack_precision,
        )
        check_positive(
            forget_batch_size=self.forget_batch_size, adv_batch_size=self.adv_batch_size, n_adv=self.n_adv,
            pgd_rounds=self.pgd_rounds,
            **optional(pgd_eps=self.pgd_eps, pgd_step_size=self.pgd_step_size, anchor_weight=self.anchor_weight),
        )
        check_non_negative(**optional(pgd_stop_margin=self.pgd_stop_margin))
        check_count(
            forget_batch_size=self.forget_batch_size, adv_batch_size=self.adv_batch_size, n_adv=self.n_adv,
            pgd_steps=self.pgd_steps, pgd_rounds=self.pgd_rounds, shift_anchors=self.shift_anchors,
        )
        check_choice("pgd_norm", self.pgd_norm, ("l2", "linf"))
        check_choice("anchor_targets", self.anchor_targets, ("balanced", "random"))
        check_choice("anchor_loss", self.anchor_loss, ("kl", "ce"))
        check_choice("drop_unreached", self.drop_unreached, (True, False))
        check_choice("attack_precision", self.attack_precision, PRECISION_CHOICES)

    def attack_eps(self, input_shape: tuple[int, ...]) -> float:
        """The initial attack radius for inputs of ``input_shape`` (given, or the scaled default)."""
        if self.pgd_eps is not None:
            return float(self.pgd_eps)
        return default_l2_eps(input_shape) if self.pgd_norm == "l2" else DEFAULT_LINF_EPS

    def attack_step_size(self, input_shape: tuple[int, ...]) -> float:
        """The attack step length at the initial radius (given, or ``2.5 * eps / pgd_steps``)."""
        if self.pgd_step_size is not None:
            return float(self.pgd_step_size)
        return 2.5 * self.attack_eps(input_shape) / max(self.pgd_steps, 1)

    def resolved_params(self, context: UnlearnContext) -> dict[str, Any]:
        params = self.get_params()
        params["pgd_eps"] = self.attack_eps(context.request.input_shape)
        params["pgd_step_size"] = self.attack_step_size(context.request.input_shape)
        return params

    def _make_anchors(self, context: UnlearnContext) -> tuple[Anchors, dict[str, Any]]:
        """Anchors from the model as it is (the original): adversarial and shifted copies."""
        model, request, generator = context.model, context.request, context.generator
        started = time.perf_counter()
        inputs = request.inputs.repeat_interleave(self.n_adv, dim=0)
        if self.anchor_targets == "balanced":
            targets = balanced_other_classes(request.known_labels, self.n_adv, context.num_classes, generator)
        else:
            targets = random_other_classes(
                request.known_labels.repeat_interleave(self.n_adv, dim=0), context.num_classes, generator
            )
        attack = calibrated_targeted_pgd(
            model, inputs, targets, eps=self.attack_eps(request.input_shape), rounds=self.pgd_rounds,
            steps=self.pgd_steps, step_size=self.pgd_step_size, norm=self.pgd_norm,  # type: ignore[arg-type]
            input_range=request.input_range, generator=generator, stop_margin=self.pgd_stop_margin,
            precision=self.attack_precision, data_parallel=True,  # under torchrun: ranks share the copies
        )
        keep = attack.reached if self.drop_unreached else torch.ones_like(attack.reached)
        anchor_inputs, anchor_labels = [attack.adversarial[keep]], [targets[keep]]
        n_shifted = 0
        if self.shift_anchors > 0 and request.inputs.dim() == 4:
            copies, source = shifted_copies(request.inputs, self.shift_anchors)
            if request.input_range is not None:
                copies = copies.clamp(*request.input_range)
            still = predict_logits(model, copies).argmax(dim=1) == request.known_labels[source]
            anchor_inputs.append(copies[still])
            anchor_labels.append(request.known_labels[source][still])
            n_shifted = int(still.sum())
        anchors_x, anchors_y = torch.cat(anchor_inputs), torch.cat(anchor_labels)
        teacher = None
        if self.anchor_loss == "kl" and len(anchors_x):
            teacher = F.softmax(predict_logits(model, anchors_x), dim=1)
        reached_eps = attack.eps[attack.reached]
        details = {
            "attack/examples": int(inputs.shape[0]),
            "attack/success_rate": float(attack.reached.float().mean()),
            "attack/first_round_success_rate": attack.first_round_success,
            "attack/eps_initial": self.attack_eps(request.input_shape),
            "attack/eps_mean_reached": float(reached_eps.mean()) if reached_eps.numel() else None,
            "attack/eps_max_reached": float(reached_eps.max()) if reached_eps.numel() else None,
            "attack/seconds": time.perf_counter() - started,
            "attack/precision": resolve_precision(context.device, self.attack_precision),
            "anchors/adversarial": int(keep.sum()),
            "anchors/shifted": n_shifted,
        }
        if not len(anchors_x):
            warnings.warn(
                f"{self.name}: no adversarial copy reached its target and no shifted copy kept its "
                "class; unlearning runs without anchors (raise pgd_eps or pgd_rounds)",
                stacklevel=3,
            )
        return Anchors(anchors_x, anchors_y, teacher), details

    def _search_lr(
        self,
        context: UnlearnContext,
        anchors: Anchors,
        loss_fn: Callable[[tuple[Tensor, Tensor]], Tensor],
        make_pass: Callable[[int], list[tuple[Tensor, Tensor]]],
    ) -> tuple[float, list[StepSizeTrial]]:
        """``lr="auto"``: probe rates against the anchors, the retain proxy this method may see."""
        model, request = context.model, context.request
        probe = itertools.cycle(make_pass(0))
        proxy_before = predict_logits(model, anchors.inputs).argmax(dim=1)

        def take_step(optimizer: torch.optim.Optimizer) -> float:
            self.train_mode(model)
            loss = loss_fn(next(probe))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        def objective() -> float:
            logits = predict_logits(model, request.inputs)
            return float(self.forget_term(logits, request.known_labels, request.new_labels, context.loss_targets))

        def agreement() -> float:
            return float((predict_logits(model, anchors.inputs).argmax(dim=1) == proxy_before).float().mean())

        return search_learning_rate(
            model, make_optimizer=lambda rate: self.make_optimizer(model, rate), take_step=take_step,
            forget_objective=objective, proxy_agreement=agreement,
        )

    def _penalty(self, context: UnlearnContext) -> tuple[Callable[[], Tensor] | None, dict[str, Any]]:
        """The regulariser added to the loss (none for ADV)."""
        return None, {}

    def _anchor_term(self, logits: Tensor, anchors: Anchors, idx: Tensor) -> Tensor:
        if anchors.teacher is not None:
            return distillation_loss(logits, anchors.teacher[idx])
        return F.cross_entropy(logits, anchors.labels[idx])

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        model, request = context.model, context.request
        x, y, new, targets = request.inputs, request.known_labels, request.new_labels, context.loss_targets
        anchors, details = self._make_anchors(context)
        penalty, penalty_details = self._penalty(context)
        details.update(penalty_details)
        forget_batches = cycled_batches(len(request), self.forget_batch_size, context.generator)
        empty = torch.zeros(0, dtype=torch.long, device=x.device)

        def make_pass(_: int) -> list[tuple[Tensor, Tensor]]:
            if not len(anchors):
                return [(f, empty) for f in shuffled_batches(len(request), self.forget_batch_size, context.generator)]
            adv_batches = shuffled_batches(len(anchors), self.adv_batch_size, context.generator)
            return [(next(forget_batches), a.to(x.device)) for a in adv_batches]

        def loss_fn(batch: tuple[Tensor, Tensor]) -> Tensor:
            f_idx, a_idx = batch
            b_f, b_a = len(f_idx), len(a_idx)
            # One forward pass over both parts (BatchNorm in training mode sees the mixed batch).
            logits = model(torch.cat([x[f_idx], anchors.inputs[a_idx]]))
            loss = self.forget_term(
                logits[:b_f], y[f_idx], None if new is None else new[f_idx], None if targets is None else targets[f_idx]
            )
            if b_a:
                anchor = self._anchor_term(logits[b_f:], anchors, a_idx)
                if self.anchor_weight is None:  # the paper's weighting by batch sizes
                    loss = loss * (b_f / (b_f + b_a)) + anchor * (b_a / (b_f + b_a))
                else:
                    loss = loss + self.anchor_weight * anchor
            return loss if penalty is None else loss + penalty()

        lr = self.lr
        if lr == "auto" and not len(anchors):
            lr = self.presets[self.preset]["lr"]
            warnings.warn(f"{self.name}: lr='auto' has no anchors to judge by; using the preset's lr {lr}", stacklevel=3)
            details["lr/chosen"] = lr
        elif lr == "auto":
            lr, trials = self._search_lr(context, anchors, loss_fn, make_pass)
            details["lr/chosen"] = lr
            details["lr/trials"] = [asdict(t) for t in trials]
        outcome = optimise_until(
            model,
            self.make_optimizer(model, lr),
            loss_fn=loss_fn,
            make_pass=make_pass,
            monitor=context.monitor(self.stop_rule()),
            set_train_mode=self.train_mode,
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
        reg_lambda: Weight of the importance regulariser, 1 (both presets).
        importance_batch_size: Forget instances per MAS gradient, 32.
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
        >>> result.steps <= 3, result.hyperparams["preset"], "attack/success_rate" in result.details
        (True, 'default', True)
    """

    summary = "ADV plus a MAS weight-importance regulariser toward the original (ADV+IMP; Cha et al., AAAI 2024)."

    def __init__(self, *, reg_lambda: float = 1.0, importance_batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_non_negative(reg_lambda=reg_lambda)
        check_positive(importance_batch_size=importance_batch_size)
        check_count(importance_batch_size=importance_batch_size)
        self.reg_lambda = reg_lambda
        self.importance_batch_size = importance_batch_size

    def _penalty(self, context: UnlearnContext) -> tuple[Callable[[], Tensor] | None, dict[str, Any]]:
        model = context.model
        importance = min_max_normalise(
            mas_importance(model, context.request.inputs, batch_size=self.importance_batch_size)
        )
        freedom = {name: 1.0 - omega for name, omega in importance.items()}
        return anchored_penalty(model, freedom, self.reg_lambda), {"importance/mean": mean_weight(importance)}
