"""Train/test splits and seeded draws of forget sets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class DataSplit:
    """A labelled train/test split held in memory.

    Attributes:
        name: Name of the data set.
        x_train: Training inputs ``(N, C, H, W)``, floats in ``[0, 1]``.
        y_train: Training labels ``(N,)``.
        x_test: Test inputs.
        y_test: Test labels.
        num_classes: Number of classes.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input."""
        return tuple(self.x_train.shape[1:])


def draw_forget_indices(n_train: int, k: int, seed: int) -> Tensor:
    """``k`` distinct training indices drawn uniformly at random with ``seed``, sorted.

    Example:
        >>> draw_forget_indices(100, 4, seed=0).tolist() == draw_forget_indices(100, 4, seed=0).tolist()
        True
    """
    if not 0 < k <= n_train:
        raise ValueError(f"k must be in 1..{n_train}, got {k}")
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.sort(rng.choice(n_train, size=k, replace=False))).long()


def random_new_labels(labels: Tensor, num_classes: int, seed: int) -> Tensor:
    """For each label a different class, uniformly at random with ``seed`` (relabeling requests).

    Example:
        >>> y = torch.tensor([0, 1, 2, 3])
        >>> bool((random_new_labels(y, 10, seed=0) != y).all())
        True
    """
    rng = np.random.default_rng(seed)
    shift = torch.from_numpy(rng.integers(1, num_classes, size=labels.shape[0])).long()
    return (labels + shift) % num_classes
