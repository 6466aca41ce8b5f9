"""The optimisation loop shared by gradient-based methods: step, check, stop.

A method supplies its loss and how one pass over its data is batched; this loop runs optimiser
steps, checks the stopping rule after every step (as the instance-wise paper does), refuses
non-finite losses, and reports how the run ended.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

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
                set_train_mode(model)
                loss = loss_fn(batch)
                value = float(loss.detach())
                if not torch.isfinite(loss.detach()):
                    raise NonFiniteError(
                        f"the loss became {value} at step {steps + 1}; the run was stopped and its "
                        "model discarded (try a smaller learning rate)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
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
