"""Data sets: the embedded default (scikit-learn's digits) and splits."""

from unlearnkit.data.digits import load_digits_split
from unlearnkit.data.splits import DataSplit, draw_forget_indices, random_new_labels

__all__ = ["DataSplit", "draw_forget_indices", "load_digits_split", "random_new_labels"]
