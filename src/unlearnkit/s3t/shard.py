"""One shard's network (residual adapters + linear head) and its deterministic stage training.

A shard's model for a prefix ``(s_1, ..., s_i)`` of one slice order is the frozen backbone's
features passed through residual adapters ``G_1 .. G_i`` and a linear head. Stage ``i`` starts
from the prefix ``(s_1, ..., s_{i-1})``'s weights, adds a fresh ``G_i`` and trains ``G_i`` and
the head on the union of slices ``s_1 .. s_i``. Every random draw of a stage (the new
adapter's initialisation, the head's at stage 1, the shuffling) comes from a generator seeded
by :func:`prefix_seed`, which depends only on the run's seed, the shard and the prefix's slice
indices, so training a prefix again from its slices' data reproduces its weights bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.s3t.config import S3TConfig

#: Inputs per backbone forward pass when features are read.
FEATURE_BATCH = 512


class ResidualAdapter(nn.Module):
    """``x + up(relu(down(x)))``; ``up`` starts at zero, so a fresh adapter is the identity.

    Args:
        dim: Feature width.
        hidden: Hidden width.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """The adapted features, same shape as ``x``."""
        return x + self.up(F.relu(self.down(x)))


class ShardNet(nn.Module):
    """Adapters ``G_1 .. G_depth`` applied in turn to backbone features, then a linear head.

    Args:
        dim: Feature width of the backbone.
        hidden: Hidden width of each adapter.
        num_classes: Output classes.
        depth: Number of adapters (the prefix length).

    Example:
        >>> net = ShardNet(8, 4, 3, depth=2)
        >>> net(torch.zeros(5, 8)).shape
        torch.Size([5, 3])
    """

    def __init__(self, dim: int, hidden: int, num_classes: int, depth: int) -> None:
        super().__init__()
        # Construction draws PyTorch's default initialisation from the global RNG; every weight
        # is overwritten from a seeded generator, so keep the caller's global RNG untouched.
        with torch.random.fork_rng(devices=[]):
            self.adapters = nn.ModuleList(ResidualAdapter(dim, hidden) for _ in range(depth))
            self.head = nn.Linear(dim, num_classes)
        self.dim, self.hidden, self.num_classes = dim, hidden, num_classes

    @property
    def depth(self) -> int:
        """Number of adapters."""
        return len(self.adapters)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for backbone features ``(N, dim)``."""
        for adapter in self.adapters:
            features = adapter(features)
        return self.head(features)


def prefix_seed(seed: int, shard: int, prefix: Sequence[int]) -> int:
    """The seed of the stage that trains ``prefix`` of ``shard``: a hash of the three, so equal
    prefixes of different orders share one checkpoint and a retrain reproduces it.

    Example:
        >>> prefix_seed(0, 1, [2, 0]) == prefix_seed(0, 1, (2, 0)) != prefix_seed(0, 1, (0, 2))
        True
    """
    key = json.dumps([int(seed), int(shard), [int(s) for s in prefix]])
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def extract_features(backbone: nn.Module, inputs: Tensor) -> Tensor:
    """The frozen backbone's features of ``inputs`` (eval mode, no gradient), ``(N, d)``.

    Batches are cut at fixed offsets, so the same rows always give the same bits.

    Raises:
        ValueError: If the backbone's output is not one vector per input.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            chunks = [backbone(inputs[i : i + FEATURE_BATCH]) for i in range(0, inputs.shape[0], FEATURE_BATCH)]
    finally:
        backbone.train(was_training)
    features = torch.cat(chunks) if chunks else torch.zeros(0)
    if features.dim() != 2:
        raise ValueError(f"the backbone must map a batch to (N, d) features, got shape {tuple(features.shape)}")
    return features


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator) * (2 * bound) - bound


def _init_linear(layer: nn.Linear, generator: torch.Generator, *, zero: bool = False) -> None:
    """PyTorch's default Linear initialisation (uniform, bound 1/sqrt(fan_in)) from ``generator``."""
    with torch.no_grad():
        if zero:
            layer.weight.zero_()
            layer.bias.zero_()
            return
        bound = 1.0 / math.sqrt(layer.in_features)
        layer.weight.copy_(_uniform(tuple(layer.weight.shape), bound, generator))
        layer.bias.copy_(_uniform(tuple(layer.bias.shape), bound, generator))


def _accuracy(net: nn.Module, features: Tensor, labels: Tensor) -> float:
    with torch.no_grad():
        return float((net(features).argmax(dim=1) == labels).float().mean())


def train_stage(
    parent: ShardNet | None,
    features: Tensor,
    labels: Tensor,
    *,
    num_classes: int,
    config: S3TConfig,
    seed: int,
    validation: tuple[Tensor, Tensor] | None = None,
) -> tuple[ShardNet, float | None]:
    """Trains one stage: a copy of ``parent`` plus a fresh adapter, adapter and head trained.

    Args:
        parent: The previous prefix's network (``None`` at stage 1: a fresh head).
        features: Backbone features of the prefix's slices, in prefix order.
        labels: Their labels.
        num_classes: Output classes.
        config: Widths, epochs, batch size and optimiser settings.
        seed: The stage's seed (:func:`prefix_seed`).
        validation: Backbone features and labels of a validation split (never deletable data);
            when given, the epoch with the best validation accuracy is kept (the earliest on a
            tie), else the last.

    Returns:
        The trained network (eval mode) and its validation accuracy (``None`` without one).
    """
    generator = torch.Generator().manual_seed(seed)
    depth = 1 if parent is None else parent.depth + 1
    net = ShardNet(features.shape[1], config.adapter_dim, num_classes, depth)
    if parent is None:
        _init_linear(net.head, generator)
    else:
        # strict=False: the new adapter is the only thing the parent does not hold.
        missing, unexpected = net.load_state_dict(parent.state_dict(), strict=False)
        assert not unexpected and all(k.startswith(f"adapters.{depth - 1}.") for k in missing)
    new = net.adapters[depth - 1]
    _init_linear(new.down, generator)
    _init_linear(new.up, generator, zero=True)
    for adapter in net.adapters[: depth - 1]:
        adapter.requires_grad_(False)  # earlier stages are frozen: they belong to the parent prefix
    trainable = [*new.parameters(), *net.head.parameters()]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)
    best_state, best_acc = None, -1.0
    n = features.shape[0]
    for _ in range(config.epochs):
        net.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = F.cross_entropy(net(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        if validation is not None:
            acc = _accuracy(net, *validation)
            if acc > best_acc:
                best_acc, best_state = acc, copy.deepcopy(net.state_dict())
    if best_state is not None:
        net.load_state_dict(best_state)
    net.requires_grad_(True)  # served weights look like any model's; nothing trains them
    return net.eval(), (best_acc if validation is not None else None)
