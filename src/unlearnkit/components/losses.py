"""Forget objectives on the forget instances' logits."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from unlearnkit.components.stopping import label_margin


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


def forget_hinge_loss(logits: Tensor, labels: Tensor, new_labels: Tensor | None = None, margin: float = 0.5) -> Tensor:
    """A bounded forget objective: each instance stops pushing once it meets its goal by ``margin``.

    Misclassification: ``mean(relu(margin + logit[label] - max other logit))``. Relabeling:
    ``mean(relu(margin - (logit[new] - max other logit)))``. Unlike ``-CE`` it cannot drive
    logits to infinity, and an instance already forgotten contributes no gradient, so one hard
    instance cannot drag the model while the easy ones are pushed to extremes.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
        >>> forget_hinge_loss(logits, torch.tensor([0, 0]), margin=0.5).item()  # (2.5 + 0) / 2
        1.25
    """
    if new_labels is None:
        return F.relu(margin + label_margin(logits, labels)).mean()
    return F.relu(margin - label_margin(logits, new_labels)).mean()


def unseen_hinge_loss(logits: Tensor, labels: Tensor, loss_targets: Tensor) -> Tensor:
    """The ``unseen`` forget objective: raise each instance's loss to its target, then stop.

    ``mean(relu(log(target) - log(CE)))``: in log space, because a training instance's loss is
    orders of magnitude below a held-out one's, and the gradient of ``log CE`` stays of order one
    where that of ``CE`` vanishes.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[4.0, 0.0]])
        >>> bool(unseen_hinge_loss(logits, torch.tensor([0]), torch.tensor([1.0])) > 0)
        True
        >>> unseen_hinge_loss(logits, torch.tensor([0]), torch.tensor([1e-3])).item()
        0.0
    """
    losses = F.cross_entropy(logits, labels, reduction="none").clamp_min(1e-12)
    return F.relu(loss_targets.log() - losses.log()).mean()


def distillation_loss(logits: Tensor, teacher_probs: Tensor) -> Tensor:
    """``KL(teacher || model)`` per example, averaged: keep the original model's outputs.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.7, 0.3]])
        >>> round(distillation_loss(probs.log(), probs).item(), 6)
        0.0
    """
    return F.kl_div(F.log_softmax(logits, dim=1), teacher_probs, reduction="batchmean")
