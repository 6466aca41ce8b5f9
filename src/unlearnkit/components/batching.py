"""Seeded batching of in-memory tensors by index (cheaper than a DataLoader for small sets)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A seeded random permutation of ``range(n)`` cut into index batches (the last may be short).

    Example:
        >>> batches = shuffled_batches(5, 2, torch.Generator().manual_seed(0))
        >>> [len(b) for b in batches], sorted(torch.cat(batches).tolist())
        ([2, 2, 1], [0, 1, 2, 3, 4])
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"need n > 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def cycled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches: a fresh seeded shuffle each time the data is used up.

    Used to pair a small set (the forget instances) with every batch of a larger one.
    """
    while True:
        yield from shuffled_batches(n, batch_size, generator)


def random_other_classes(labels: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """For each label, a class drawn uniformly from the *other* ``num_classes - 1`` classes.

    (The released code instead replaces a colliding draw by ``num_classes // 2``, which can
    equal the label itself; this never does.)

    Example:
        >>> labels = torch.tensor([0, 1, 2] * 100)
        >>> others = random_other_classes(labels, 3, torch.Generator().manual_seed(0))
        >>> bool((others != labels).all()), sorted(set(others.tolist()))
        (True, [0, 1, 2])
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes to pick another one, got {num_classes}")
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels.cpu() + shift).remainder(num_classes).to(labels.device)


def balanced_other_classes(labels: Tensor, per_instance: int, num_classes: int, generator: torch.Generator) -> Tensor:
    """``per_instance`` target classes for each label, spread evenly over the other classes.

    Each instance cycles through the other ``num_classes - 1`` classes in its own random order,
    so every class receives about the same number of targets (random draws leave some classes
    with few or none, and those classes then have nothing holding their region in place).

    Returns:
        ``(len(labels) * per_instance,)`` targets, instance-major (like ``repeat_interleave``).

    Example:
        >>> t = balanced_other_classes(torch.tensor([0, 1]), 4, 3, torch.Generator().manual_seed(0))
        >>> t.view(2, 4).tolist()[0].count(0), sorted(set(t.view(2, 4).tolist()[0]))
        (0, [1, 2])
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes to pick another one, got {num_classes}")
    rows = []
    for label in labels.cpu().tolist():
        others = torch.tensor([c for c in range(num_classes) if c != label])
        order = others[torch.randperm(num_classes - 1, generator=generator)]
        rows.append(order.repeat(-(-per_instance // (num_classes - 1)))[:per_instance])
    return torch.stack(rows).flatten().to(labels.device)
