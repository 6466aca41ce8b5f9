"""The optimisation loop shared by gradient-based methods: step, check, stop.

A method supplies its loss and how one pass over its data is batched; this loop runs optimiser
steps, checks the stopping rule after every step (as the instance-wise paper does), refuses
non-finite losses, and reports how the run ended.

Under ``torchrun`` (an initialised process group, see
:mod:`~unlearnkit.components.distributed`) the same loops run data-parallel: every step
averages the gradients over the ranks before the optimiser step, :func:`train_for_epochs`
shards each batch across them, and the stopping decision is rank 0's, so every rank takes the
same steps and stops at the same one. Without a process group nothing changes.
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

from unlearnkit.components import distributed
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

    Under a process group, ``loss_fn()`` is this rank's part of the loss (see
    :func:`~unlearnkit.components.distributed.sharded_mean`): the gradients and the loss are
    averaged over the ranks before the step, the returned loss is the global one, and
    BatchNorm running statistics are then taken from rank 0.

    Raises:
        NonFiniteError: If the loss is NaN or infinite (before any weight changes; under a
            process group, on every rank at once).
    """
    set_train_mode(model)
    loss = loss_fn()
    if distributed.is_distributed():
        return _take_data_parallel_step(model, optimizer, loss, step_number)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise _non_finite_loss(value, step_number)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def _non_finite_loss(value: float, step_number: int) -> NonFiniteError:
    return NonFiniteError(
        f"the loss became NaN or infinite ({value}) at step {step_number}; the run was stopped and its model "
        "discarded (try a smaller learning rate)"
    )


def _take_data_parallel_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, step_number: int) -> float:
    """The step of :func:`take_step` under a process group: backward on this rank's loss, average
    the gradients and losses over the ranks, check the global loss, step, share BatchNorm stats."""
    optimizer.zero_grad(set_to_none=True)
    # The backward pass runs before the finiteness check here: the check needs the global loss,
    # which comes with the gradients' collective. The weights are still untouched if it fails.
    if loss.requires_grad:  # a rank whose share of the batch is empty has nothing to backpropagate
        loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    value = distributed.average_gradients(params, float(loss.detach()))
    if not math.isfinite(value):  # the same global value on every rank: they all stop here
        raise _non_finite_loss(value, step_number)
    optimizer.step()
    distributed.sync_buffers(model)
    return value


#: The reasons a :class:`StopMonitor` gives, in a fixed order, to send them as numbers.
_STOP_REASONS = ("continue", "goal_reached", "max_steps", "max_passes", "max_seconds")


def _agree(decision: StopDecision, device: torch.device) -> StopDecision:
    """Rank 0's stopping decision on every rank (the decision itself in one process).

    Every rank checks the whole forget set with identical weights, so the decisions agree
    except where a rank's own clock decides (``max_seconds``) or floats diverge; taking rank
    0's keeps the ranks in lockstep (a rank that stopped alone would leave the others waiting
    in the next step's collective).
    """
    if not distributed.is_distributed():
        return decision
    code = float(_STOP_REASONS.index(decision.reason))
    stop, converged, reason, share = distributed.broadcast_values(
        [float(decision.stop), float(decision.converged), code, decision.goal_share], device
    )
    return StopDecision(bool(stop), bool(converged), _STOP_REASONS[int(reason)], share)


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
    none) and after every step; the caps of ``monitor.rule`` are checked with it. Under a
    process group every rank checks the whole forget set and rank 0's decision is taken by
    all; ``loss_fn`` may shard its data with
    :func:`~unlearnkit.components.distributed.sharded_mean` (a loss that does not is computed
    in full on every rank, which is correct, only not faster).

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
    device = monitor.inputs.device
    decision = _agree(monitor.check(model, steps=0, passes=0), device)
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
                decision = _agree(monitor.check(model, steps=steps, passes=passes + finished_pass), device)
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
    Under a process group each batch (``batch_size`` rows: the effective, global batch) is split
    across the ranks and the penalty is added on every rank in full (see
    :func:`~unlearnkit.components.distributed.sharded_mean`).

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

            def batch_mean(rows: Tensor) -> Tensor:
                return F.cross_entropy(model(inputs[rows]), labels[rows])

            def loss_fn() -> Tensor:
                loss = distributed.sharded_mean(idx, batch_mean)  # noqa: B023 (called at once)
                return loss if penalty is None else loss + penalty(epoch)  # noqa: B023

            value = take_step(model, optimizer, loss_fn, set_train_mode, steps + 1)
            steps += 1
            losses.append(value)
            if schedule is not None and schedule_every == "step":
                schedule.step()
        if schedule is not None and schedule_every == "epoch":
            schedule.step()
    return steps, tuple(losses)
