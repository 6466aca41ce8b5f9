"""Distances between distributions of per-example scores (losses, confidences)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def ks_distance(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs.

    0 when the two samples have the same empirical distribution, 1 when they do not overlap.

    Example:
        >>> ks_distance(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
        0.0
        >>> ks_distance(np.array([1.0, 2.0]), np.array([5.0, 6.0]))
        1.0
    """
    x = np.sort(np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).ravel())
    y = np.sort(np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64).ravel())
    if x.size == 0 or y.size == 0:
        raise ValueError("ks_distance needs two non-empty samples")
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / x.size
    cdf_y = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(cdf_x - cdf_y)))


def mean_log_ratio(a: Tensor, b: Tensor, floor: float = 1e-12) -> float:
    """Mean of ``|log a_i - log b_i|`` over paired positive scores (e.g. two models' losses).

    Example:
        >>> round(mean_log_ratio(torch.tensor([1.0, 0.1]), torch.tensor([1.0, 1.0])), 4)
        1.1513
    """
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"need two non-empty paired samples of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.clamp_min(floor).log() - b.clamp_min(floor).log()).abs().mean())
