"""Configuration of S3T (sequence-aware sharded sliced training)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from unlearnkit.errors import InvalidHyperparameterError


@dataclass(frozen=True)
class S3TConfig:
    """How an S3T model is laid out and trained.

    Args:
        shards: Number of shards ``m`` (>= 1); the served logits average one model per shard.
        slices: Slices ``L`` per shard (>= 1); a shard's model is trained in ``L`` stages.
        orders: Slice orders ``B`` per shard (>= 1, at most ``L!``); the first is the identity.
        adapter_dim: Hidden width of each residual MLP adapter (>= 1).
        epochs: Epochs of each stage (>= 1).
        batch_size: Examples per optimiser step (>= 1).
        lr: Adam learning rate of each stage (> 0).
        weight_decay: Adam weight decay (>= 0).

    Example:
        >>> S3TConfig(shards=2, slices=3, orders=2).to_dict()["orders"]
        2
    """

    shards: int = 4
    slices: int = 4
    orders: int = 4
    adapter_dim: int = 32
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("shards", "slices", "orders", "adapter_dim", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidHyperparameterError(f"{name} must be an int >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InvalidHyperparameterError(f"lr must be > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise InvalidHyperparameterError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        # Orders are distinct permutations of the slices: there are only L! of them.
        if self.orders > math.factorial(self.slices):
            raise InvalidHyperparameterError(
                f"orders must be <= slices! = {math.factorial(self.slices)} (distinct slice orders), got {self.orders}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-ready dict."""
        return asdict(self)
