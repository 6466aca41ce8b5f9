"""A plain reference implementation of the instance-wise unlearning loop (ADV+IMP), for timing.

This is *our* reimplementation of the loop structure of the code released with Cha et al.,
"Learning to Unlearn: Instance-wise Unlearning for Pre-trained Classifiers" (AAAI 2024,
https://arxiv.org/abs/2301.11578), written the straightforward way, one thing at a time. It is
not the released code (which needs CUDA, advertorch and torchvision). It exists so that
``benchmarks/speed.py`` can compare ``unlearnkit``'s batched ``l2ul`` with the same algorithm run
the way it is usually written:

1. adversarial anchors: one forget example at a time, one adversarial copy at a time, a
   targeted L2 PGD loop on a batch of one (``pgd_steps`` steps, random start, the radius and
   step of ``l2ul``'s resolved hyperparameters; with ``pgd_rounds > 1`` the radius and step of a
   copy that missed its target are doubled and it is attacked again, as ``l2ul``'s default
   preset does);
2. MAS importance with a loop over the forget examples, one backward pass per example;
3. the optimisation loop of the released code: the anchors in shuffled batches, the forget set
   cycled alongside, the loss of the chosen preset on one forward pass over the forget batch and
   the anchor batch together (as ``l2ul``), the importance regulariser summed parameter by
   parameter, and after every step a separate evaluation forward pass over the whole forget set
   that stops the run the moment every instance meets its goal.

Where it differs from ``l2ul`` on purpose (the outcome is comparable, not bit-identical):

- random starts are drawn per copy (``l2ul`` draws them for the whole batch at once);
- MAS importance is the mean over examples of ``|grad ||f(x_i)|| |`` (per example, the MAS
  paper's definition); ``l2ul`` and the released code take ``|grad|`` of the batch mean;
- ``two_forward_passes=True`` runs the anchor batch and the forget batch through the model
  separately, as the released code does. With ``bn_mode="train"`` (the paper preset) that is a
  different algorithm, not just a slower one: BatchNorm then normalises the forget batch with its
  own statistics and its running statistics move twice per step toward those of a batch of
  forget instances alone (on MNIST, k = 16, seed 0, the two-pass loop reached 0 % on the forget
  set at 15 % test accuracy where the one-pass loop and ``l2ul`` never reached it). Off by
  default, so that the outcome stays comparable with ``l2ul``.

Gradients of the attack are taken with respect to the input only (``torch.autograd.grad``); the
released code's advertorch attack calls ``loss.backward()`` and so also computes every weight
gradient, which would make this reference slower still.

Misclassification requests with the L2 attack only.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.augment import shifted_copies
from unlearnkit.components.batching import balanced_other_classes, random_other_classes
from unlearnkit.components.stopping import label_margin


@dataclass(frozen=True)
class PaperLoopConfig:
    """Hyperparameters of the reference loop: the names and meanings of ``l2ul``'s.

    Build it from ``l2ul``'s resolved hyperparameters (``UnlearnResult.hyperparams``) with
    :meth:`from_hyperparams` so that both runs use the same values.

    Attributes:
        n_adv: Adversarial copies per forget example.
        anchor_targets: ``"balanced"`` or ``"random"`` target classes.
        anchor_loss: ``"kl"`` (keep the original's output distribution) or ``"ce"`` (keep the
            target class).
        anchor_weight: Weight of the anchor loss; ``None``: the paper's weights by batch size.
        shift_anchors: Also anchor the shifted copies (up to this many pixels) of each forget
            example that the original still assigns to its class; 0: none.
        pgd_eps: Initial L2 radius.
        pgd_steps: PGD steps per round.
        pgd_step_size: PGD step length at the initial radius (scaled with the radius in later
            rounds).
        pgd_rounds: Attack rounds; the radius doubles for a copy that missed its target.
        pgd_stop_margin: Early exit of a copy's attack once its target leads by this many
            logits; ``None``: every step.
        drop_unreached: Keep only the copies that reached their target.
        forget_batch_size: Forget examples per step.
        adv_batch_size: Anchors per step.
        optimizer: ``"sgd"`` or ``"adam"``.
        lr: Learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay.
        forget_loss: ``"ce"`` (``-CE``) or ``"hinge"`` (bounded margin loss).
        forget_margin: Margin of the hinge loss.
        stop_margin: Logit margin by which every forget example must be misclassified to stop.
        bn_mode: ``"train"`` (BatchNorm statistics move) or ``"freeze"``.
        reg_lambda: Weight of the importance regulariser (0: ADV without IMP).
        max_passes: Cap on passes over the anchors.
        max_steps: Cap on optimiser steps (``None``: none).
        input_range: Clamp range of the inputs (``None``: unbounded).
        two_forward_passes: Run the anchor batch and the forget batch through the model
            separately (the released code) instead of as one batch (``l2ul``).
    """

    n_adv: int = 20
    anchor_targets: str = "random"
    anchor_loss: str = "ce"
    anchor_weight: float | None = None
    shift_anchors: int = 0
    pgd_eps: float = 4.0
    pgd_steps: int = 100
    pgd_step_size: float = 0.1
    pgd_rounds: int = 1
    pgd_stop_margin: float | None = None
    drop_unreached: bool = False
    forget_batch_size: int = 32
    adv_batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    forget_loss: str = "ce"
    forget_margin: float = 0.5
    stop_margin: float = 0.0
    bn_mode: str = "train"
    reg_lambda: float = 1.0
    max_passes: int | None = 1000
    max_steps: int | None = None
    input_range: tuple[float, float] | None = (0.0, 1.0)
    two_forward_passes: bool = False

    @classmethod
    def from_hyperparams(
        cls,
        hyperparams: Mapping[str, Any],
        input_range: tuple[float, float] | None = (0.0, 1.0),
        *,
        two_forward_passes: bool = False,
    ) -> PaperLoopConfig:
        """The configuration with the same values as ``l2ul``'s resolved ``hyperparams``.

        Raises:
            ValueError: For settings the reference does not implement (Linf attack, ``lr="auto"``,
                a time cap).
        """
        if hyperparams.get("pgd_norm", "l2") != "l2":
            raise ValueError("the reference loop implements the L2 attack only")
        if not isinstance(hyperparams.get("lr"), (int, float)):
            raise ValueError(f"the reference loop needs a numeric lr, got {hyperparams.get('lr')!r}")
        if hyperparams.get("max_seconds") is not None:
            raise ValueError("the reference loop has no time cap; pass max_seconds=None")
        names = {f.name for f in fields(cls)} - {"input_range", "two_forward_passes"}
        values = {name: hyperparams[name] for name in names if name in hyperparams}
        return cls(**values, input_range=input_range, two_forward_passes=two_forward_passes)


@dataclass
class PaperLoopResult:
    """The outcome of :func:`paper_unlearn`.

    Attributes:
        model: The unlearned model (a copy; the caller's is untouched).
        steps: Optimiser steps taken.
        passes: Passes over the anchors completed.
        converged: Whether every forget example met its goal when the loop stopped.
        stop_reason: ``goal_reached``, ``max_steps`` or ``max_passes``.
        seconds: Wall time of the whole call.
        phase_seconds: Wall time of ``attack``, ``importance``, ``loop`` and, within the loop,
            ``checks`` (the evaluation passes after each step).
        attack_success_rate: Share of adversarial copies that reached their target.
        anchors: Number of anchors trained on (adversarial plus shifted copies).
    """

    model: nn.Module
    steps: int
    passes: int
    converged: bool
    stop_reason: str
    seconds: float
    phase_seconds: dict[str, float] = field(default_factory=dict)
    attack_success_rate: float = 0.0
    anchors: int = 0


def l2_pgd_single(
    model: nn.Module,
    image: Tensor,
    target: int,
    *,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator,
    input_range: tuple[float, float] | None,
    stop_margin: float | None = None,
) -> Tensor:
    """Targeted L2 PGD on one image (a batch of one), from a random start in the ball.

    Each step lowers the cross-entropy toward ``target`` along the L2-normalised input gradient,
    projects back into the ball of radius ``eps`` around ``image`` and clamps to
    ``input_range``. The model must be in eval mode.

    Args:
        model: The classifier.
        image: One input, ``(1, ...)``.
        target: The class to move toward.
        eps: L2 radius.
        step_size: Step length.
        steps: Number of steps.
        generator: Source of the random start.
        input_range: ``(low, high)`` or ``None``.
        stop_margin: Stop at the first step where the target's logit leads every other by
            more than this (``l2ul``'s ``pgd_stop_margin``); ``None``: take every step.

    Returns:
        The adversarial image, ``(1, ...)``, detached.
    """
    label = torch.tensor([target], device=image.device)
    direction = torch.randn(image.shape, generator=generator).to(image)
    radius = float(torch.rand(1, generator=generator)) * eps
    x = image + direction / direction.norm().clamp_min(1e-12) * radius
    if input_range is not None:
        x = x.clamp(*input_range)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        if stop_margin is not None and float(label_margin(logits.detach(), label)) > stop_margin:
            break
        loss = F.cross_entropy(logits, label)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x - step_size * grad / grad.norm().clamp_min(1e-12)
            delta = x - image
            norm = float(delta.norm())
            if norm > eps:
                delta = delta * (eps / norm)
            x = image + delta
            if input_range is not None:
                x = x.clamp(*input_range)
    return x.detach()


def per_example_mas(model: nn.Module, inputs: Tensor) -> dict[str, Tensor]:
    """MAS importance with one backward pass per example: ``mean_i |d ||f(x_i)||_2 / d theta|``.

    The model runs in eval mode; its ``.grad`` fields are cleared afterwards.
    """
    model.eval()
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    importance = {name: torch.zeros_like(p) for name, p in params.items()}
    n = inputs.shape[0]
    for i in range(n):
        model.zero_grad(set_to_none=True)
        model(inputs[i : i + 1]).norm(p=2, dim=1).mean().backward()
        for name, p in params.items():
            if p.grad is not None:
                importance[name] += p.grad.abs() / n
    model.zero_grad(set_to_none=True)
    return importance


def _forgotten(logits: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Which examples are misclassified (by more than ``margin`` when it is positive)."""
    if margin <= 0:
        return logits.argmax(dim=1) != labels
    return label_margin(logits, labels) < -margin


def _set_train_mode(model: nn.Module, bn_mode: str) -> None:
    model.train()
    if bn_mode == "freeze":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _cycled(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    while True:
        yield from torch.randperm(n, generator=generator).split(batch_size)


def paper_unlearn(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    config: PaperLoopConfig,
    *,
    num_classes: int,
    seed: int = 0,
) -> PaperLoopResult:
    """Forgets ``(inputs, labels)`` (misclassification) with the plain ADV+IMP loop.

    Args:
        model: The original classifier; not modified.
        inputs: Forget inputs ``(k, ...)``.
        labels: Their labels ``(k,)``.
        config: Hyperparameters (build them from ``l2ul``'s with
            :meth:`PaperLoopConfig.from_hyperparams`).
        num_classes: Number of classes.
        seed: Seed of the target classes, random starts and shuffles. The targets are drawn
            first from a generator seeded with ``seed``, exactly as ``l2ul`` draws them, so both
            attack the same (copy, target) pairs.

    Returns:
        The unlearned model and how the run went.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    phase: dict[str, float] = {}
    k = inputs.shape[0]

    # 1. Adversarial anchors, one forget example and one copy at a time.
    tick = time.perf_counter()
    if config.anchor_targets == "balanced":
        targets = balanced_other_classes(labels, config.n_adv, num_classes, generator)
    else:
        targets = random_other_classes(labels.repeat_interleave(config.n_adv), num_classes, generator)
    model.eval()
    trainable = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    adv_inputs, adv_labels, reached = [], [], []
    for i in range(k):
        image = inputs[i : i + 1]
        for j in range(config.n_adv):
            target = int(targets[i * config.n_adv + j])
            eps, step = config.pgd_eps, config.pgd_step_size
            for _ in range(config.pgd_rounds):
                adv = l2_pgd_single(
                    model, image, target, eps=eps, step_size=step, steps=config.pgd_steps,
                    generator=generator, input_range=config.input_range, stop_margin=config.pgd_stop_margin,
                )
                with torch.no_grad():
                    hit = int(model(adv).argmax(dim=1)) == target
                if hit:
                    break
                eps, step = 2 * eps, 2 * step
            reached.append(hit)
            if hit or not config.drop_unreached:
                adv_inputs.append(adv)
                adv_labels.append(target)
    for p, flag in zip(model.parameters(), trainable):
        p.requires_grad_(flag)
    anchor_x = [torch.cat(adv_inputs)] if adv_inputs else []
    anchor_y = [torch.tensor(adv_labels, dtype=torch.long)] if adv_labels else []
    if config.shift_anchors > 0 and inputs.dim() == 4:
        copies, source = shifted_copies(inputs, config.shift_anchors)
        if config.input_range is not None:
            copies = copies.clamp(*config.input_range)
        with torch.no_grad():
            still = model(copies).argmax(dim=1) == labels[source]
        anchor_x.append(copies[still])
        anchor_y.append(labels[source][still])
    anchors = torch.cat(anchor_x) if anchor_x else inputs[:0]
    anchor_labels = torch.cat(anchor_y) if anchor_y else labels[:0]
    teacher = None
    if config.anchor_loss == "kl" and len(anchors):
        with torch.no_grad():
            teacher = F.softmax(model(anchors), dim=1)
    phase["attack"] = time.perf_counter() - tick

    # 2. MAS importance, one example at a time; the regulariser's weights are 1 - normalised.
    tick = time.perf_counter()
    free: dict[str, Tensor] = {}
    if config.reg_lambda > 0:
        for name, omega in per_example_mas(model, inputs).items():
            low, high = omega.min(), omega.max()
            normalised = (omega - low) / (high - low) if high > low else torch.zeros_like(omega)
            free[name] = 1.0 - normalised
    original = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    phase["importance"] = time.perf_counter() - tick

    # 3. The loop: a step, then an evaluation of the whole forget set.
    tick = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    hinge_margin = max(config.forget_margin, config.stop_margin)
    forget_batches = _cycled(k, config.forget_batch_size, generator)
    check_seconds = 0.0

    def goal_reached() -> bool:
        nonlocal check_seconds
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            done = bool(_forgotten(model(inputs), labels, config.stop_margin).all())
        check_seconds += time.perf_counter() - t0
        return done

    steps = passes = 0
    done = goal_reached()
    stop_reason = "goal_reached" if done else "max_passes"
    while not done:
        if config.max_passes is not None and passes >= config.max_passes:
            stop_reason = "max_passes"
            break
        if len(anchors):
            anchor_batches = list(torch.randperm(len(anchors), generator=generator).split(config.adv_batch_size))
        else:
            anchor_batches = [None] * math.ceil(k / config.forget_batch_size)
        for a_idx in anchor_batches:
            f_idx = next(forget_batches)
            _set_train_mode(model, config.bn_mode)
            out_a: Tensor | None = None
            if a_idx is None:
                out_f = model(inputs[f_idx])
            elif config.two_forward_passes:  # anchors first, as in the released code
                out_a = model(anchors[a_idx])
                out_f = model(inputs[f_idx])
            else:
                both = model(torch.cat([inputs[f_idx], anchors[a_idx]]))
                out_f, out_a = both[: len(f_idx)], both[len(f_idx) :]
            if config.forget_loss == "hinge":
                loss = F.relu(hinge_margin + label_margin(out_f, labels[f_idx])).mean()
            else:
                loss = -F.cross_entropy(out_f, labels[f_idx])
            if a_idx is not None and out_a is not None:  # (both or neither)
                if teacher is not None:
                    anchor = F.kl_div(F.log_softmax(out_a, dim=1), teacher[a_idx], reduction="batchmean")
                else:
                    anchor = F.cross_entropy(out_a, anchor_labels[a_idx])
                b_f, b_a = len(f_idx), len(a_idx)
                if config.anchor_weight is None:
                    loss = loss * (b_f / (b_f + b_a)) + anchor * (b_a / (b_f + b_a))
                else:
                    loss = loss + config.anchor_weight * anchor
            if free:
                reg = 0.0
                for name, p in model.named_parameters():
                    if name in free:
                        reg = reg + torch.sum(free[name] * (p - original[name]).pow(2)) / 2
                loss = loss + config.reg_lambda * reg
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss became {value} at step {steps + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            if goal_reached():
                done, stop_reason = True, "goal_reached"
                break
            if config.max_steps is not None and steps >= config.max_steps:
                stop_reason = "max_steps"
                break
        else:
            passes += 1
            continue
        break
    phase["loop"] = time.perf_counter() - tick
    phase["checks"] = check_seconds
    model.eval()
    return PaperLoopResult(
        model=model,
        steps=steps,
        passes=passes,
        converged=done,
        stop_reason=stop_reason,
        seconds=time.perf_counter() - started,
        phase_seconds=phase,
        attack_success_rate=sum(reached) / max(1, len(reached)),
        anchors=int(len(anchors)),
    )


__all__ = ["PaperLoopConfig", "PaperLoopResult", "l2_pgd_single", "paper_unlearn", "per_example_mas"]
