"""Penalties that keep a model close to its original weights."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from unlearnkit.utils.modules import clone_parameters


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
        >>> round(float(importance_weighted_l2(model, ref, {"weight": torch.tensor([[0.5]])}).detach()), 5)
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


def anchored_penalty(model: nn.Module, weights: dict[str, Tensor], scale: float) -> Callable[[], Tensor]:
    """A penalty ``scale * importance_weighted_l2(model, theta0, weights)`` toward the weights the
    model has *now* (call it before the first step), as a zero-argument callable for the loss.

    Example:
        >>> model = nn.Linear(1, 1, bias=False)
        >>> penalty = anchored_penalty(model, {}, scale=2.0)
        >>> float(penalty().detach())
        0.0
    """
    reference = clone_parameters(model)

    def penalty() -> Tensor:
        return scale * importance_weighted_l2(model, reference, weights)

    return penalty


def mean_weight(weights: dict[str, Tensor]) -> float:
    """The mean of every entry of every tensor (e.g. the average normalised importance).

    Example:
        >>> mean_weight({"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([1.0, 1.0])})
        0.75
    """
    total = sum(w.numel() for w in weights.values())
    return float(sum(w.sum() for w in weights.values()) / max(1, total))
