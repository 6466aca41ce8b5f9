"""Penalties that keep a model close to its original weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def importance_weighted_l2(
    model: nn.Module, reference: dict[str, Tensor], weights: dict[str, Tensor]
) -> Tensor:
    """``sum_j 0.5 * w_j * (theta_j - theta0_j)^2`` over the parameters named in ``reference``.

    With ``w = 1 - importance`` (importance min-max normalised to ``[0, 1]``) this is the
    instance-wise paper's regulariser: weights that matter for the forget set are free to move,
    the rest are anchored to the original. With ``w = 1`` it is plain L2 toward the original.

    Args:
        model: The model being updated.
        reference: Original parameter values by name (detached).
        weights: Per-parameter weights by name, shaped like the parameters; a name missing from
            ``weights`` is weighted 1.

    Returns:
        A scalar tensor connected to the model's parameters.

    Example:
        >>> model = nn.Linear(1, 1, bias=False)
        >>> ref = {"weight": model.weight.detach().clone() - 2.0}
        >>> float(importance_weighted_l2(model, ref, {"weight": torch.tensor([[0.5]])}).detach())
        1.0
    """
    params = dict(model.named_parameters())
    total: Tensor = torch.zeros((), device=next(iter(reference.values())).device) if reference else torch.zeros(())
    for name, original in reference.items():
        diff = params[name] - original
        weight = weights.get(name)
        term = diff.square() if weight is None else weight * diff.square()
        total = total + 0.5 * term.sum()
    return total
