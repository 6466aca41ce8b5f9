"""Metrics of unlearning. Metrics know no method: they take models and data."""

from unlearnkit.metrics.accuracy import accuracy, evaluate

__all__ = ["accuracy", "evaluate"]
