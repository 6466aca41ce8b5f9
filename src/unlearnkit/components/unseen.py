"""Targets for the ``unseen`` goal: the loss each forget instance would have if never trained on.

A model retrained without the forget instances still classifies most of them correctly (they are
typical examples of their class), but with the loss of data it never saw, which is higher than a
training instance's. Driving them to be misclassified makes them stand out in the other
direction. The ``unseen`` goal instead raises each instance's loss to a target taken from data
the model never saw, so that the forgotten instances look like held-out data to a loss- or
confidence-based membership test.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.augment import shifted_copies
from unlearnkit.utils.modules import predict_logits


def per_example_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of each example, unreduced."""
    return F.cross_entropy(logits, labels, reduction="none")


def rank_matched_targets(forget_losses: Tensor, reference_losses: Tensor) -> Tensor:
    """Targets that give the forget set the reference set's loss distribution, order kept.

    The forget instance with the ``r``-th smallest loss (of ``k``) gets the reference losses'
    quantile ``(r + 0.5) / k``; an instance whose loss already exceeds its target keeps its own
    loss (the goal never asks to lower a loss).

    Example:
        >>> rank_matched_targets(torch.tensor([0.3, 0.1]), torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
        [3.25, 1.75]
    """
    if reference_losses.numel() == 0:
        raise ValueError("need at least one reference loss")
    k = forget_losses.numel()
    quantiles = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    levels = torch.quantile(reference_losses.double().cpu(), quantiles).to(forget_losses)
    ranks = forget_losses.argsort().argsort()
    return torch.maximum(levels[ranks], forget_losses)


def unseen_loss_targets(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    heldout: tuple[Tensor, Tensor] | None = None,
    max_shift: int = 1,
) -> tuple[Tensor, str]:
    """Per-instance loss targets for the ``unseen`` goal, and where they came from.

    With ``heldout`` (inputs and labels the model was never trained on), the targets are the
    held-out losses rank-matched to the forget instances (:func:`rank_matched_targets`). Without
    it, for ``(N, C, H, W)`` images, each instance's target is the median loss of its shifted
    copies (unseen inputs of the same class next to it), never below its own loss.

    Raises:
        ValueError: If there is no held-out data and the inputs are not images.
    """
    own = per_example_loss(predict_logits(model, inputs), labels)
    if heldout is not None:
        reference = per_example_loss(predict_logits(model, heldout[0].to(inputs)), heldout[1].to(labels.device))
        return rank_matched_targets(own, reference), "heldout"
    if inputs.dim() != 4:
        raise ValueError("goal 'unseen' needs held-out data (heldout=(inputs, labels)) for non-image inputs")
    copies, source = shifted_copies(inputs, max_shift)
    losses = per_example_loss(predict_logits(model, copies), labels[source]).view(-1, inputs.shape[0])
    return torch.maximum(losses.median(dim=0).values, own), "shifted_copies"
