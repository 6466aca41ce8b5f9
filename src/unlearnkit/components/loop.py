"""The optimisation loop shared by gradient-based methods: step, check, stop.

A method supplies its loss and how one pass over its data is batched; this loop runs optimiser
steps, checks the stopping rule after every step (as the instance-wise paper does), refuses
non-finite losses, and reports how the run ended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from unlearnkit.components.batching import shuffled_batches
from unlearnkit.components.stopping import StopDecision, StopMonitor
from unlearnkit.errors import NonFiniteError

Batch = TypeVar("Batch")


@dataclass(frozen=True)
class LoopOutcome:
    """How an optimisation loop ended.

    Attributes:
        steps: Optimiser steps taken.
        passes: Passes over the data completed (a stopped partial pass is not counted).
        converged: Whether the goal held when the loop stopped.
        stop_reason: ``goal_reached``, ``max_steps``, ``max_passes`` or ``max_seconds``.
        goal_share: Share of forget instances meeting their goal at the end.
        losses: Loss of every step, in order.
    """

    steps: int
    passes: int
    converged: bool
    stop_reason: str
    goal_share: float
    losses: tuple[float, ...]


class _Progress:
    """A pass-level progress bar that is a no-op when disabled."""

    def __init__(self, enabled: bool, total: int | None, desc: str) -> None:
        self.bar = tqdm(total=total, desc=desc, unit="pass", leave=False, disable=not enabled)

    def update(self, decision: StopDecision) -> None:
        self.bar.update(1)
        self.bar.set_postfix(goal=f"{decision.goal_share:.0%}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def take_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], Tensor],
    set_train_mode: Callable[[nn.Module], object],
    step_number: int,
) -> float:
    """One optimiser step on ``loss_fn()`` with the model in its training mode; returns the loss.

    Raises:
        NonFiniteError: If the loss is NaN or infinite (before any weight changes).
    """
    set_train_mode(model)
    loss = loss_fn()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteError(
            f"the loss became NaN or infinite ({value}) at step {step_number}; the run was stopped and its model "
            "discarded (try a smaller learning rate)"
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def optimise_until(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable[[Batch], Tensor],
    make_pass: Callable[[int], Sequence[Batch]],
    monitor: StopMonitor,
    set_train_mode: Callable[[nn.Module], object] = nn.Module.train,
    progress: bool = False,
    desc: str = "unlearning",
) -> LoopOutcome:
    """Runs optimiser steps until the stopping rule says stop.

    The goal is checked once before any step (a forget set that already meets its goal needs
    none) and after every step; the caps of ``monitor.rule`` are checked with it.

    Args:
        model: The model being updated (a copy owned by the method).
        optimizer: Optimiser over the parameters to update.
        loss_fn: Loss of one batch; called with the model in training mode.
        make_pass: Returns the batches of pass number ``p`` (0-based), e.g. a seeded shuffle.
        monitor: The stopping rule bound to the forget set.
        set_train_mode: Puts the model in its training mode before each step (default
            ``model.train()``; a method may keep some modules, e.g. BatchNorm, in eval mode).
        progress: Show a progress bar over passes.
        desc: The progress bar's label.

    Raises:
        NonFiniteError: If a loss or the forget logits become NaN or infinite.
    """
    decision = monitor.check(model, steps=0, passes=0)
    steps = passes = 0
    losses: list[float] = []
    bar = _Progress(progress, monitor.rule.max_passes, desc)
    try:
        while not decision.stop:
            batches = make_pass(passes)
            if len(batches) == 0:
                raise ValueError("make_pass returned no batches: nothing to optimise on")
            for index, batch in enumerate(batches):
                value = take_step(model, optimizer, lambda: loss_fn(batch), set_train_mode, steps + 1)
                steps += 1
                losses.append(value)
                finished_pass = index == len(batches) - 1
                decision = monitor.check(model, steps=steps, passes=passes + finished_pass)
                if decision.stop:
                    break
            if index == len(batches) - 1:  # the pass ran to its end
                passes += 1
                bar.update(decision)
    finally:
        bar.close()
    return LoopOutcome(steps, passes, decision.converged, decision.reason, decision.goal_share, tuple(losses))


def train_for_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    labels: Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
    schedule_every: str = "epoch",
    set_train_mode: Callable[[nn.Module], object] = nn.Module.train,
    penalty: Callable[[int], Tensor] | None = None,
    progress: bool = False,
    desc: str = "training",
) -> tuple[int, tuple[float, ...]]:
    """Minimises cross-entropy on ``(inputs, labels)`` for a fixed number of epochs.

    The fixed-schedule counterpart of :func:`optimise_until` (fine-tuning, retraining): each
    epoch is a seeded shuffle of the data cut into batches (the last may be short), so a run
    takes exactly ``ceil(len(inputs) / batch_size) * epochs`` steps; nothing checks the forget set.

    Args:
        schedule: Learning-rate schedule, stepped after every epoch (``schedule_every="epoch"``)
            or after every optimiser step (``"step"``).
        penalty: Added to every step's loss; called with the 0-based epoch (so a penalty may
            follow a schedule over epochs, e.g. a decaying sparsity weight).

    Returns:
        The number of optimiser steps and the loss of every step.

    Raises:
        NonFiniteError: If a loss becomes NaN or infinite.
    """
    steps = 0
    losses: list[float] = []
    for epoch in tqdm(range(epochs), desc=desc, unit="epoch", leave=False, disable=not progress):
        for idx in shuffled_batches(inputs.shape[0], batch_size, generator):

            def loss_fn() -> Tensor:
                loss = F.cross_entropy(model(inputs[idx]), labels[idx])  # noqa: B023 (called at once)
                return loss if penalty is None else loss + penalty(epoch)  # noqa: B023

            value = take_step(model, optimizer, loss_fn, set_train_mode, steps + 1)
            steps += 1
            losses.append(value)
            if schedule is not None and schedule_every == "step":
                schedule.step()
        if schedule is not None and schedule_every == "epoch":
            schedule.step()
    return steps, tuple(losses)
