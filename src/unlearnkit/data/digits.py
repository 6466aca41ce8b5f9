"""scikit-learn's digits: the embedded default data set (1797 8x8 images, 10 classes)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from unlearnkit.data.splits import DataSplit


def load_digits_split(test_size: float = 0.2, seed: int = 0) -> DataSplit:
    """Digits as ``(N, 1, 8, 8)`` float32 images in ``[0, 1]``, split stratified by class.

    Args:
        test_size: Share of the images held out as the test set.
        seed: Seed of the split.

    Example:
        >>> split = load_digits_split()
        >>> tuple(split.x_train.shape), tuple(split.x_test.shape), split.num_classes
        ((1437, 1, 8, 8), (360, 1, 8, 8), 10)
    """
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, random_state=seed, stratify=labels
    )
    return DataSplit(
        name="digits",
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        num_classes=10,
    )
