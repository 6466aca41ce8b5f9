"""Targeted projected gradient descent (PGD) attacks, batched over every example at once.

The instance-wise unlearning method uses targeted attacks to make adversarial copies of each
forget instance that the *original* model assigns to another class; training on them keeps the
decision boundaries near the forget instances in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components import distributed
from unlearnkit.components.stopping import label_margin
from unlearnkit.utils.modules import eval_mode, predict_logits
from unlearnkit.utils.precision import autocast_context, resolve_precision

Norm = Literal["l2", "linf"]

#: The paper's L2 radius, chosen for CIFAR-sized inputs (32 x 32 x 3 = 3072 values in [0, 1]).
PAPER_L2_EPS = 4.0
PAPER_INPUT_DIM = 3072


def default_l2_eps(input_shape: tuple[int, ...]) -> float:
    """The paper's L2 radius scaled to an input size: ``4.0 * sqrt(dim / 3072)``.

    An L2 ball of fixed radius is relatively much larger on small inputs; scaling by the square
    root of the dimension keeps the radius per input value (its root mean square) the same as the
    paper's on 32x32x3 images.

    Example:
        >>> round(default_l2_eps((3, 32, 32)), 3), round(default_l2_eps((1, 8, 8)), 3)
        (4.0, 0.577)
    """
    dim = math.prod(input_shape)
    return PAPER_L2_EPS * math.sqrt(dim / PAPER_INPUT_DIM)


def _per_example_norm(t: Tensor) -> Tensor:
    """L2 norm of each example, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: Tensor, eps: Tensor, norm: Norm) -> Tensor:
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, eps), -eps)
    factor = torch.clamp(eps / _per_example_norm(delta), max=1.0)
    return delta * factor


def _random_start(x: Tensor, eps: Tensor, norm: Norm, generator: torch.Generator) -> Tensor:
    # Noise is drawn on the CPU from the caller's generator so that results are the same on every
    # device for the same seed.
    shape = x.shape
    if norm == "linf":
        noise = torch.rand(shape, generator=generator) * 2 - 1
        return noise.to(x) * eps
    direction = torch.randn(shape, generator=generator)
    direction = direction / _per_example_norm(direction)
    radius = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=generator)
    return direction.to(x) * radius.to(x) * eps


def targeted_pgd(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    eps: float | Tensor,
    steps: int = 100,
    step_size: float | Tensor | None = None,
    norm: Norm = "l2",
    random_start: bool = True,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    stop_margin: float | None = None,
    precision: str = "fp32",
    data_parallel: bool = False,
) -> Tensor:
    """Targeted PGD: moves each input toward being classified as its target class.

    Each step takes a gradient step that lowers the cross-entropy toward the target (normalised
    per example for L2, its sign for Linf), projects back into the norm ball of radius ``eps``
    around the clean input and clamps to ``input_range``. The model runs in eval mode (its mode
    is restored afterwards) and its parameters receive no gradient.

    Args:
        model: Classifier mapping ``(N, ...)`` inputs to ``(N, C)`` logits.
        inputs: Clean inputs, ``(N, ...)``.
        targets: Target classes, ``(N,)``.
        eps: Radius of the ball, a float or a per-example tensor ``(N,)``.
        steps: Number of gradient steps; 0 returns the (random) start.
        step_size: Step length; defaults to ``2.5 * eps / steps``, so the steps together can
            cross the ball 2.5 times (the paper's 0.1 for eps 4.0 and 100 steps).
        norm: ``"l2"`` or ``"linf"``.
        random_start: Start from a uniformly random radius in the ball (random direction for
            L2, uniform per coordinate for Linf) instead of the clean input.
        input_range: ``(low, high)`` to clamp to, or ``None`` for unbounded inputs.
        generator: Source of randomness for the start; a fresh seed-0 generator if ``None``.
        batch_size: Attack this many examples at a time (to bound memory); all at once if
            ``None``.
        stop_margin: Early exit: an example stops moving at the first step where the model
            prefers its target over every other class by more than this many logits, and
            leaves the batch (later steps cost only the examples still on their way). ``None``
            (the paper): every example takes every step.
        precision: ``"fp32"``, ``"bf16"`` (autocast the forward and backward passes) or
            ``"auto"`` (bf16 on CUDA devices that support it, fp32 elsewhere; see
            :func:`~unlearnkit.utils.precision.resolve_precision`). The returned inputs are
            fp32 either way; callers that need to know whether a target was reached check
            it again in full precision (as :func:`calibrated_targeted_pgd` does).
        data_parallel: Under a ``torch.distributed`` process group, every rank draws the
            random starts of all inputs (so the generator advances as in one process), attacks
            its contiguous share of them and receives the others' results: every rank returns
            all adversarial inputs, those one process computes (each input's steps depend only
            on itself; the kernels' rounding may differ with the batch size). Without a
            process group it changes nothing.

    Returns:
        Adversarial inputs, same shape and device as ``inputs``, detached.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.rand(5, 4)
        >>> adv = targeted_pgd(model, x, torch.zeros(5, dtype=torch.long), eps=0.5, steps=10)
        >>> bool(((adv - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all())
        True
    """
    if stop_margin is not None and stop_margin < 0:
        raise ValueError(f"stop_margin must be >= 0 or None, got {stop_margin}")
    return _pgd(
        model, inputs, targets, -1.0, eps=eps, steps=steps, step_size=step_size, norm=norm,
        random_start=random_start, input_range=input_range, generator=generator, batch_size=batch_size,
        stop_margin=stop_margin, precision=resolve_precision(inputs.device, precision), data_parallel=data_parallel,
    )


def _pgd(
    model: nn.Module,
    inputs: Tensor,
    classes: Tensor,
    sign: float,
    *,
    eps: float | Tensor,
    steps: int,
    step_size: float | Tensor | None,
    norm: Norm,
    random_start: bool,
    input_range: tuple[float, float] | None,
    generator: torch.Generator | None,
    batch_size: int | None,
    stop_margin: float | None = None,
    precision: str = "fp32",
    data_parallel: bool = False,
) -> Tensor:
    """PGD on the cross-entropy toward ``classes``: ``sign=-1`` descends it (targeted),
    ``sign=+1`` ascends it (untargeted). Shared set-up: radius and step per example, random
    start drawn up front, model in eval mode without parameter gradients, chunking.
    ``stop_margin`` (targeted only): examples whose ``classes`` logit leads by more than it
    stop moving and leave the batch. ``data_parallel``: each rank attacks its share of the
    inputs (starts drawn for all of them first) and the shares are gathered."""
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n = inputs.shape[0]
    view = (n,) + (1,) * (inputs.dim() - 1)
    eps_t = torch.as_tensor(eps, dtype=inputs.dtype, device=inputs.device).expand(n).reshape(view)
    if step_size is None:
        step_t = eps_t * (2.5 / max(steps, 1))
    else:
        step_t = torch.as_tensor(step_size, dtype=inputs.dtype, device=inputs.device).expand(n).reshape(view)
    clean = inputs.detach()
    # Every random start is drawn up front, so attacking in chunks gives the same result.
    x = clean + _random_start(clean, eps_t, norm, generator) if random_start else clean.clone()
    if input_range is not None:
        x = x.clamp(*input_range)
    chunk = n if batch_size is None else max(1, batch_size)
    # Under a process group each rank attacks only its rows [first, last); the starts above were
    # drawn for every row on every rank, so the generator and the starts are as in one process.
    sharded = data_parallel and distributed.is_distributed()
    first, last = distributed.shard_bounds(n, distributed.rank(), distributed.world_size()) if sharded else (0, n)
    grad_state = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in grad_state:
            p.requires_grad_(False)
        with eval_mode(model), torch.enable_grad(), autocast_context(inputs.device, precision):
            pieces = [
                _iterate(
                    model, clean[sl], x[sl], classes[sl], eps_t[sl], step_t[sl], steps, norm, input_range, sign,
                    stop_margin,
                )
                for sl in (slice(i, min(i + chunk, last)) for i in range(first, last, chunk))
            ]
    finally:
        for p, flag in grad_state:
            p.requires_grad_(flag)
    adversarial = torch.cat(pieces) if pieces else x[first:last].detach()
    if sharded:
        adversarial = distributed.gather_rows(adversarial, n)
    return adversarial.to(inputs.dtype)




def _iterate(
    model: nn.Module,
    clean: Tensor,
    x: Tensor,
    classes: Tensor,
    eps: Tensor,
    step: Tensor,
    steps: int,
    norm: Norm,
    input_range: tuple[float, float] | None,
    sign: float,
    stop_margin: float | None = None,
) -> Tensor:
    """The PGD iterations for one chunk, from start ``x``.

    With ``stop_margin``, the forward pass of each step also decides which examples are done
    (their ``classes`` logit leads by more than the margin at the current point); they keep
    that point and drop out of the batch, so the exit costs no extra forward pass.
    """
    x = x.detach().clone()
    active = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        current = x[active].requires_grad_(True)
        logits = model(current)
        # In eval mode the rows are independent: the gradient of the summed loss is each
        # row's own gradient, so rows that are done can be dropped after the backward pass.
        loss = F.cross_entropy(logits, classes[active], reduction="sum")
        (grad,) = torch.autograd.grad(loss, current)
        if stop_margin is not None:
            moving = label_margin(logits.detach(), classes[active]) <= stop_margin
            active, grad = active[moving], grad[moving]
            if active.numel() == 0:
                break
        with torch.no_grad():
            direction = grad.sign() if norm == "linf" else grad / _per_example_norm(grad)
            start = clean[active]
            moved = x[active] + sign * step[active] * direction
            moved = start + _project(moved - start, eps[active], norm)
            if input_range is not None:
                moved = moved.clamp(*input_range)
            x[active] = moved
    return x.detach()


@dataclass(frozen=True)
class CalibratedAttack:
    """Adversarial examples whose radius was grown until they reach their target.

    Attributes:
        adversarial: Adversarial inputs, one per input (the last attempt where none reached).
        reached: Whether the model assigns each one to its target class.
        eps: The radius each one was made with.
        first_round_success: Share that reached the target at the initial radius.
    """

    adversarial: Tensor
    reached: Tensor
    eps: Tensor
    first_round_success: float


def calibrated_targeted_pgd(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    eps: float,
    rounds: int = 4,
    growth: float = 2.0,
    **pgd_kwargs: Any,
) -> CalibratedAttack:
    """Targeted PGD with a per-example radius search: ``eps``, ``eps * growth``, ... until reached.

    Each round attacks only the examples that have not yet reached their target, with their
    radius multiplied by ``growth``; after ``rounds`` rounds the rest are reported as not
    reached. With ``rounds=1`` this is a plain :func:`targeted_pgd` that also reports success.
    The step size, when not given in ``pgd_kwargs``, scales with each example's radius.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x, t = torch.rand(6, 4), torch.full((6,), 2)
        >>> attack = calibrated_targeted_pgd(model, x, t, eps=0.01, rounds=8, steps=20)
        >>> bool(attack.reached.float().mean() >= attack.first_round_success)
        True
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    adversarial = inputs.detach().clone()
    radii = torch.full((inputs.shape[0],), float(eps), device=inputs.device)
    reached = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    first = 0.0
    for round_index in range(rounds):
        todo = (~reached).nonzero().flatten()
        if todo.numel() == 0:
            break
        attempt = targeted_pgd(model, inputs[todo], targets[todo], eps=radii[todo], **pgd_kwargs)
        ok = predict_logits(model, attempt).argmax(dim=1) == targets[todo]
        adversarial[todo] = attempt
        reached[todo[ok]] = True
        if round_index == 0:
            first = float(ok.float().mean())
        if round_index < rounds - 1:
            radii[todo[~ok]] *= growth
    return CalibratedAttack(adversarial, reached, radii, first)


def untargeted_pgd(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    eps: float | Tensor,
    steps: int = 5,
    step_size: float | Tensor | None = None,
    norm: Norm = "linf",
    random_start: bool = False,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """Untargeted PGD: moves each input away from being classified as its label.

    The counterpart of :func:`targeted_pgd`: each step *raises* the cross-entropy on the
    label (a step along the sign of the gradient for Linf, along the normalised gradient for
    L2), projects back into the ball of radius ``eps`` around the clean input and clamps to
    ``input_range``. Every step is taken, whether or not an input has already left its class
    (as in the usual Linf PGD / FGSM with several iterations), so the result says which class
    lies beyond the nearest boundary in the direction of steepest ascent. The model runs in eval
    mode (its mode is restored afterwards) and its parameters receive no gradient.

    Args:
        model: Classifier mapping ``(N, ...)`` inputs to ``(N, C)`` logits.
        inputs: Clean inputs, ``(N, ...)``.
        labels: The classes to move away from, ``(N,)``.
        eps: Radius of the ball, a float or a per-example tensor ``(N,)``.
        steps: Number of gradient steps; 0 returns the (random) start.
        step_size: Step length; defaults to ``2.5 * eps / steps`` (as :func:`targeted_pgd`).
        norm: ``"linf"`` or ``"l2"``.
        random_start: Start from a uniformly random point in the ball instead of the clean
            input (off by default: a deterministic attack from the input itself).
        input_range: ``(low, high)`` to clamp to, or ``None`` for unbounded inputs.
        generator: Source of randomness for the start; a fresh seed-0 generator if ``None``.
        batch_size: Attack this many examples at a time (to bound memory); all at once if
            ``None``.

    Returns:
        Adversarial inputs, same shape and device as ``inputs``, detached.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x = torch.rand(5, 4)
        >>> y = model(x).argmax(1)
        >>> adv = untargeted_pgd(model, x, y, eps=0.1, steps=5)
        >>> bool(((adv - x).abs() <= 0.1 + 1e-6).all()), bool(((adv >= 0) & (adv <= 1)).all())
        (True, True)
        >>> ce = torch.nn.functional.cross_entropy
        >>> bool(ce(model(adv), y) > ce(model(x), y))
        True
    """
    return _pgd(
        model, inputs, labels, 1.0, eps=eps, steps=steps, step_size=step_size, norm=norm,
        random_start=random_start, input_range=input_range, generator=generator, batch_size=batch_size,
    )
