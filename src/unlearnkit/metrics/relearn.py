"""Relearn time: how many fine-tuning steps on the forget set bring its accuracy back.

A model that truly forgot should need about as many steps as one that never saw the data; a
model that only hid the data (e.g. by moving its last layer) snaps back within a few steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.batching import cycled_batches
from unlearnkit.components.loop import take_step
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.utils.modules import copy_model, model_dtype, predict_logits, resolve_device, train_with_frozen_batchnorm


@dataclass(frozen=True)
class RelearnResult:
    """How a relearning run ended.

    Attributes:
        steps: SGD steps taken: the steps needed if ``reached``, otherwise ``max_steps`` (then
            only a lower bound on the relearn time: the run was cut off, not finished).
        reached: Whether Acc(D_f) reached ``target_accuracy``.
        target_accuracy: The target, in percent.
        accuracy_curve: Acc(D_f) in percent before any step and after each step
            (``steps + 1`` values).
        losses: Cross-entropy of every step's batch, in order.

    Example:
        >>> RelearnResult(0, True, 100.0, (100.0,), ()).to_dict()["accuracy_curve"]
        [100.0]
    """

    steps: int
    reached: bool
    target_accuracy: float
    accuracy_curve: tuple[float, ...]
    losses: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists)."""
        return {
            "steps": self.steps,
            "reached": self.reached,
            "target_accuracy": self.target_accuracy,
            "accuracy_curve": list(self.accuracy_curve),
            "losses": list(self.losses),
        }


def _positive_int(value: object, what: str, minimum: int) -> int:
    """``value`` checked to be an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def relearn_steps(
    model: nn.Module,
    forget_inputs: Tensor,
    forget_labels: Tensor,
    target_accuracy: float,
    lr: float = 0.01,
    batch_size: int = 32,
    max_steps: int = 1000,
    seed: int = 0,
    *,
    device: torch.device | str | None = None,
) -> RelearnResult:
    """Steps of plain SGD on cross-entropy over D_f until Acc(D_f) >= ``target_accuracy``.

    A deep copy of ``model`` is fine-tuned; the caller's model is never changed. Acc(D_f) (eval
    mode, top-1, percent) is checked before any step (0 steps if the target already holds) and
    after every step. Steps run in training mode with BatchNorm layers frozen (running statistics
    kept, see :func:`~unlearnkit.utils.modules.train_with_frozen_batchnorm`): batch statistics of
    a few forget instances would otherwise shift every later prediction. The SGD has no momentum
    and no weight decay; each pass over D_f is a fresh shuffle from ``seed``, and dropout masks
    are drawn from ``seed`` too (the global RNG is restored afterwards).

    Per the protocol, pass Acc(D_f) of the original model as ``target_accuracy``.

    Args:
        model: The (unlearned) model; left untouched.
        forget_inputs: ``(F, ...)`` forget inputs.
        forget_labels: ``(F,)`` their labels.
        target_accuracy: Target Acc(D_f) in percent, in [0, 100].
        lr: SGD learning rate (> 0).
        batch_size: Forget instances per step (a batch larger than D_f takes all of it).
        max_steps: Most steps to take (>= 0); when hit, ``reached`` is False.
        seed: Seed of the shuffling and of dropout.
        device: Where to train; defaults to the model's device.

    Raises:
        ValueError: On empty or misaligned data, labels outside the model's classes, a target
            outside [0, 100], or a non-positive ``lr`` / ``batch_size`` or negative ``max_steps``.
        NonFiniteError: If a loss becomes NaN or infinite (lower ``lr``).

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)); _ = model.bias.zero_()
        >>> x, y = torch.eye(2), torch.tensor([1, 0])  # the model gets both wrong
        >>> result = relearn_steps(model, x, y, target_accuracy=100.0, lr=1.0)
        >>> result.reached, result.steps, result.accuracy_curve[0]
        (True, 2, 0.0)
        >>> relearn_steps(model, x, torch.tensor([0, 1]), 100.0).steps  # already known
        0
    """
    inputs, labels = torch.as_tensor(forget_inputs), torch.as_tensor(forget_labels)
    if labels.dim() != 1 or inputs.dim() == 0 or inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"need forget inputs (F, ...) and labels (F,), got {tuple(inputs.shape)} and {tuple(labels.shape)}"
        )
    if labels.shape[0] == 0:
        raise ValueError("the forget set is empty: there is nothing to relearn")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"forget labels must be integer classes, got dtype {labels.dtype}")
    target = float(target_accuracy)
    if not 0.0 <= target <= 100.0:  # also rejects NaN
        raise ValueError(f"target_accuracy is a percentage in [0, 100], got {target_accuracy!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    batch_size = _positive_int(batch_size, "batch_size", 1)
    max_steps = _positive_int(max_steps, "max_steps", 0)
    seed = _positive_int(seed, "seed", 0)

    working = copy_model(model)
    device = resolve_device(device, working)
    working.to(device)
    inputs, labels = inputs.to(device=device, dtype=model_dtype(working)), labels.to(device).long()
    num_classes = predict_logits(working, inputs[:1], device=device).shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"forget labels must lie in [0, {num_classes}) for a model with {num_classes} outputs, "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    params = [p for p in working.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: nothing can be relearned")
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.0, weight_decay=0.0)
    batches = cycled_batches(labels.shape[0], batch_size, torch.Generator().manual_seed(seed))

    curve = [accuracy(working, inputs, labels, device=device)]
    losses: list[float] = []
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)  # dropout masks, if any
        while curve[-1] < target and len(losses) < max_steps:
            idx = next(batches).to(device)

            def loss_fn(idx: Tensor = idx) -> Tensor:
                return F.cross_entropy(working(inputs[idx]), labels[idx])

            losses.append(take_step(working, optimizer, loss_fn, train_with_frozen_batchnorm, len(losses) + 1))
            curve.append(accuracy(working, inputs, labels, device=device))
    return RelearnResult(
        steps=len(losses),
        reached=curve[-1] >= target,
        target_accuracy=target,
        accuracy_curve=tuple(curve),
        losses=tuple(losses),
    )
