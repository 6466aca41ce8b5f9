"""Optimiser construction by name, so that methods can expose the choice as a hyperparameter."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

OptimizerName = Literal["sgd", "adam"]


def make_optimizer(
    name: OptimizerName, params: Iterable[torch.nn.Parameter], *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """``"sgd"`` (with momentum) or ``"adam"`` (``momentum`` unused; decoupled from nothing: plain
    Adam with L2 ``weight_decay``).

    Example:
        >>> opt = make_optimizer("adam", torch.nn.Linear(2, 2).parameters(), lr=1e-3)
        >>> type(opt).__name__
        'Adam'
    """
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")
