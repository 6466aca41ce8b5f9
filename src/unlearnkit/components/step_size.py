"""Choosing the learning rate automatically, against a retain proxy.

A user with their own model cannot tune the step size for every deletion request. The search
tries learning rates from large to small for a few probe steps each, from the same starting
weights, and takes the largest one that makes progress on the forget objective while keeping the
model's behaviour on a retain proxy (the method's anchors, or a validation sample): the first
steps are where a too-large step does its damage.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

#: Learning rates tried by default, largest first (for Adam-like optimisers).
DEFAULT_CANDIDATES: tuple[float, ...] = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)


@dataclass(frozen=True)
class StepSizeTrial:
    """One probed learning rate.

    Attributes:
        lr: The learning rate.
        forget_loss_before: Forget objective at the starting weights.
        forget_loss_after: Forget objective after the probe steps.
        proxy_agreement: Share of the retain proxy on which the probed model still predicts what
            the original predicted.
        accepted: Whether this rate met both conditions.
    """

    lr: float
    forget_loss_before: float
    forget_loss_after: float
    proxy_agreement: float
    accepted: bool


def search_learning_rate(
    model: nn.Module,
    *,
    make_optimizer: Callable[[float], torch.optim.Optimizer],
    take_step: Callable[[torch.optim.Optimizer], float],
    forget_objective: Callable[[], float],
    proxy_agreement: Callable[[], float],
    candidates: Sequence[float] = DEFAULT_CANDIDATES,
    probe_steps: int = 10,
    min_agreement: float = 0.99,
) -> tuple[float, list[StepSizeTrial]]:
    """The largest candidate learning rate whose probe keeps the proxy and lowers the objective.

    Each candidate runs ``probe_steps`` steps from the same weights (restored afterwards,
    buffers included). A candidate is accepted when the forget objective went down, nothing became
    NaN, and the share of the proxy whose prediction is unchanged is at least ``min_agreement``.
    When none is accepted, the smallest candidate is returned (the trials say so).

    Args:
        model: The model (restored to its starting state on return).
        make_optimizer: A fresh optimiser for a learning rate.
        take_step: Runs one optimiser step with the given optimiser; returns its loss.
        forget_objective: The forget objective at the current weights (eval mode).
        proxy_agreement: Share of the proxy predicted as the original predicted it.
        candidates: Learning rates to try.
        probe_steps: Steps per candidate.
        min_agreement: Smallest acceptable proxy agreement.

    Returns:
        The chosen learning rate and every trial, in the order tried.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Linear(2, 1)
        >>> x = torch.tensor([[1.0, 2.0]])
        >>> objective = lambda: float(model(x).detach().square().sum())
        >>> def step(opt):
        ...     opt.zero_grad(); loss = model(x).square().sum(); loss.backward(); opt.step()
        ...     return float(loss.detach())
        >>> lr, trials = search_learning_rate(
        ...     model, make_optimizer=lambda lr: torch.optim.SGD(model.parameters(), lr=lr),
        ...     take_step=step, forget_objective=objective, proxy_agreement=lambda: 1.0,
        ...     candidates=(10.0, 0.01), probe_steps=3)
        >>> lr, [t.accepted for t in trials]
        (0.01, [False, True])
    """
    if not candidates:
        raise ValueError("need at least one candidate learning rate")
    if probe_steps < 1:
        raise ValueError(f"probe_steps must be >= 1, got {probe_steps}")
    start = copy.deepcopy(model.state_dict())
    trials: list[StepSizeTrial] = []
    try:
        for lr in sorted(candidates, reverse=True):
            before = forget_objective()
            optimizer = make_optimizer(lr)
            finite = True
            for _ in range(probe_steps):
                if not math.isfinite(take_step(optimizer)):
                    finite = False
                    break
            after = forget_objective() if finite else math.nan
            agreement = proxy_agreement() if finite and math.isfinite(after) else 0.0
            accepted = finite and math.isfinite(after) and after < before and agreement >= min_agreement
            trials.append(StepSizeTrial(lr, before, after, agreement, accepted))
            model.load_state_dict(start)
            if accepted:
                return lr, trials
    finally:
        model.load_state_dict(start)
    return min(candidates), trials
