"""Forget objectives on the forget instances' logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def forget_loss(logits: Tensor, labels: Tensor, new_labels: Tensor | None = None) -> Tensor:
    """The instance-wise paper's forget term, to be minimised.

    Misclassification: ``-CE(logits, labels)`` (gradient ascent on the training labels; unbounded
    below). Relabeling: ``CE(logits, new_labels)``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0]])
        >>> bool(forget_loss(logits, torch.tensor([0])) < 0)
        True
    """
    if new_labels is None:
        return -F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, new_labels)
