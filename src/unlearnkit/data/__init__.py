"""Data sets: the embedded default (scikit-learn's digits), CIFAR-10 (JPEG re-encode) and splits."""

from unlearnkit.data.cifar10 import load_cifar10
from unlearnkit.data.digits import load_digits_split
from unlearnkit.data.splits import DataSplit, draw_forget_indices, random_new_labels

__all__ = ["DataSplit", "draw_forget_indices", "load_cifar10", "load_digits_split", "random_new_labels"]
