"""The prediction matrix of a classifier on one set: true class x predicted class.

The Unlearning Comparator's (Lee et al., IEEE TVCG 2026) prediction matrix, as numbers: per
true class, the share of its examples predicted as each class and the mean confidence (max
softmax probability) of those predictions. A class without examples in the set has no row of
shares: it is recorded as empty, never as a row of zeros that would read as data.

Everything here works on logits and labels; no model and no method is involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class PredictionMatrix:
    """True class x predicted class on one set.

    Attributes:
        counts: Examples per true class.
        share: ``share[t][p]``: share of the examples of true class ``t`` predicted as ``p``
            (each row sums to 1); ``None`` for a class without examples.
        confidence: ``confidence[t][p]``: mean max-softmax probability of the predictions in
            that cell, in [0, 1]; ``None`` for an empty cell.
    """

    counts: list[int]
    share: list[list[float] | None]
    confidence: list[list[float | None]]

    def to_dict(self, digits: int = 3) -> dict[str, Any]:
        """The matrix as JSON-ready lists, floats rounded to ``digits`` decimals.

        Example:
            >>> m = prediction_matrix(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), 2)
            >>> m.to_dict(2)
            {'counts': [1, 0], 'share': [[1.0, 0.0], None], 'confidence': [[0.88, None], [None, None]]}
        """
        return {
            "counts": list(self.counts),
            "share": [None if row is None else [round(v, digits) for v in row] for row in self.share],
            "confidence": [[None if v is None else round(v, digits) for v in row] for row in self.confidence],
        }


def prediction_matrix(logits: Tensor, labels: Tensor, num_classes: int) -> PredictionMatrix:
    """The prediction matrix of ``logits`` against their true ``labels``.

    Args:
        logits: ``(N, C)`` finite logits, ``C == num_classes``.
        labels: ``(N,)`` integer labels in ``0..num_classes - 1``.
        num_classes: Number of classes (rows and columns of the matrix).

    Returns:
        The :class:`PredictionMatrix`.

    Raises:
        ValueError: On mismatched shapes, an empty set, non-finite logits, labels out of range
            or fewer than 2 classes.

    Example:
        >>> logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [3.0, 0.0, 0.0]])
        >>> m = prediction_matrix(logits, torch.tensor([0, 0, 1]), 3)
        >>> m.counts, m.share
        ([2, 1, 0], [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], None])
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits must have shape (N, {num_classes}), got {tuple(logits.shape)}")
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if logits.shape[0] == 0:
        raise ValueError("the prediction matrix of an empty set is undefined: no examples")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    logits = logits.detach().cpu().double()
    if not torch.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values")
    probabilities = torch.softmax(logits, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    labels = labels.cpu().long()
    cell = labels * num_classes + predicted
    counts = torch.bincount(cell, minlength=num_classes**2).view(num_classes, num_classes).double()
    sums = torch.bincount(cell, weights=confidence, minlength=num_classes**2).view(num_classes, num_classes)
    rows = counts.sum(dim=1)
    share: list[list[float] | None] = [
        (counts[t] / rows[t]).tolist() if rows[t] > 0 else None for t in range(num_classes)
    ]
    mean_confidence: list[list[float | None]] = [
        [float(sums[t, p] / counts[t, p]) if counts[t, p] > 0 else None for p in range(num_classes)]
        for t in range(num_classes)
    ]
    return PredictionMatrix([int(v) for v in rows.tolist()], share, mean_confidence)


__all__ = ["PredictionMatrix", "prediction_matrix"]
