"""NegGrad plus a regulariser toward the original weights: plain L2, MAS and EWC.

These are the regularisation baselines that "Learning to Unlearn: Instance-wise Unlearning for
Pre-trained Classifiers" (Cha et al., AAAI 2024, https://arxiv.org/abs/2301.11578) compares its
own importance term with. Each adds

    ``reg_lambda * sum_j 0.5 * w_j * (theta_j - theta0_j)^2``

to the NegGrad loss, ``theta0`` being the original weights:

- ``neggrad_l2``: ``w = 1``;
- ``neggrad_mas``: ``w`` = MAS importance (Memory Aware Synapses, Aljundi et al., ECCV 2018) on
  the forget set, min-max normalised per parameter tensor;
- ``neggrad_ewc``: ``w`` = diagonal Fisher information (Elastic Weight Consolidation,
  Kirkpatrick et al., PNAS 2017) on the forget set with its true labels, min-max normalised per
  parameter tensor.

Unlike the instance-wise paper's own term (``w = 1 - importance``, see
:class:`~unlearnkit.methods.l2ul.L2UL`), these protect the weights that matter (``w =
importance``), as EWC and MAS do in continual learning. The importance is computed on the forget
set, the only data a forget-only method has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from unlearnkit.components.importance import fisher_importance, mas_importance, min_max_normalise
from unlearnkit.components.regularizers import anchored_penalty, mean_weight
from unlearnkit.methods.base import UnlearnContext, check_count, check_non_negative, check_positive
from unlearnkit.methods.neggrad import NegGrad
from unlearnkit.methods.registry import register_method


class RegularizedNegGrad(NegGrad):
    """NegGrad plus ``reg_lambda * sum_j 0.5 * w_j * (theta_j - theta0_j)^2`` (not registered).

    Subclasses choose the weights ``w`` in :meth:`_weights`.

    Args:
        reg_lambda: Weight of the regulariser, 1 (both presets); 0 gives plain NegGrad.
        **kwargs: Every argument of :class:`~unlearnkit.methods.neggrad.NegGrad`.
    """

    def __init__(self, *, reg_lambda: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_non_negative(reg_lambda=reg_lambda)
        self.reg_lambda = reg_lambda

    def _weights(self, context: UnlearnContext) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Per-parameter weights by name (a name left out is weighted 1) and details to record."""
        raise NotImplementedError

    def _penalty(self, context: UnlearnContext) -> tuple[Callable[[], Tensor] | None, dict[str, Any]]:
        weights, details = self._weights(context)  # on the original model, before any step
        return anchored_penalty(context.model, weights, self.reg_lambda), details


class _ImportanceNegGrad(RegularizedNegGrad):
    """A regularised NegGrad whose weights are a min-max normalised importance on the forget set."""

    def __init__(self, *, importance_batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive(importance_batch_size=importance_batch_size)
        check_count(importance_batch_size=importance_batch_size)
        self.importance_batch_size = importance_batch_size

    def _importance(self, context: UnlearnContext) -> dict[str, Tensor]:
        """Raw (unnormalised) importance of every trainable parameter."""
        raise NotImplementedError

    def _weights(self, context: UnlearnContext) -> tuple[dict[str, Tensor], dict[str, Any]]:
        importance = min_max_normalise(self._importance(context))
        return importance, {"importance/mean": mean_weight(importance)}


@register_method("neggrad_l2")
class NegGradL2(RegularizedNegGrad):
    """NegGrad plus plain L2 toward the original weights (``w = 1``).

    Minimises the NegGrad forget loss plus ``reg_lambda * sum_j 0.5 * (theta_j - theta0_j)^2``:
    every weight is pulled back toward its original value equally. One of the regularisation
    baselines of Cha et al., "Learning to Unlearn: Instance-wise Unlearning for Pre-trained
    Classifiers", AAAI 2024, https://arxiv.org/abs/2301.11578.

    Data: the model and the forget set only.

    Args:
        reg_lambda: Weight of the regulariser, 1 (both presets).
        **kwargs: Every argument of :class:`~unlearnkit.methods.neggrad.NegGrad` (batch_size,
            preset, optimizer, lr, ..., caps).

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), model(torch.rand(2, 4)).argmax(1)
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="neggrad_l2", lr=0.05)
        >>> result.converged, result.hyperparams["reg_lambda"]
        (True, 1.0)
    """

    summary = "NegGrad plus plain L2 toward the original weights (a baseline of Cha et al., AAAI 2024)."

    def _weights(self, context: UnlearnContext) -> tuple[dict[str, Tensor], dict[str, Any]]:
        return {}, {}


@register_method("neggrad_mas")
class NegGradMAS(_ImportanceNegGrad):
    """NegGrad plus a MAS-weighted L2 toward the original weights (``w = importance``).

    Minimises the NegGrad forget loss plus ``reg_lambda * sum_j 0.5 * Omega_j * (theta_j -
    theta0_j)^2``, ``Omega`` being MAS importance (Aljundi et al., "Memory Aware Synapses",
    ECCV 2018) computed on the forget set and min-max normalised per parameter tensor to
    ``[0, 1]``. As in continual learning, the weights that matter are protected -- the opposite of
    the instance-wise paper's ``1 - Omega`` (:class:`~unlearnkit.methods.l2ul.L2UL`), which frees
    them; the paper (Cha et al., AAAI 2024, https://arxiv.org/abs/2301.11578) compares its term
    with this baseline. Records ``importance/mean``.

    Data: the model and the forget set only.

    Args:
        reg_lambda: Weight of the regulariser, 1 (both presets).
        importance_batch_size: Forget instances per MAS gradient, 32.
        **kwargs: Every argument of :class:`~unlearnkit.methods.neggrad.NegGrad`.
    """

    summary = "NegGrad plus MAS-importance-weighted L2 toward the original (a baseline of Cha et al., AAAI 2024)."

    def _importance(self, context: UnlearnContext) -> dict[str, Tensor]:
        return mas_importance(context.model, context.request.inputs, batch_size=self.importance_batch_size)


@register_method("neggrad_ewc")
class NegGradEWC(_ImportanceNegGrad):
    """NegGrad plus a Fisher-weighted L2 toward the original weights (EWC, ``w = importance``).

    Minimises the NegGrad forget loss plus ``reg_lambda * sum_j 0.5 * F_j * (theta_j -
    theta0_j)^2``, ``F`` being the diagonal Fisher information of Elastic Weight Consolidation
    (Kirkpatrick et al., PNAS 2017): the mean over the forget instances of the squared gradient
    of each instance's cross-entropy on its true label (eval mode, see
    :func:`~unlearnkit.components.importance.fisher_importance`), min-max normalised per
    parameter tensor to ``[0, 1]``. As in continual learning, the weights that matter are
    protected -- the opposite of the instance-wise paper's ``1 - Omega``
    (:class:`~unlearnkit.methods.l2ul.L2UL`); the paper (Cha et al., AAAI 2024,
    https://arxiv.org/abs/2301.11578) compares its term with this baseline. Records
    ``importance/mean``.

    Data: the model and the forget set only.

    Args:
        reg_lambda: Weight of the regulariser, 1 (both presets).
        importance_batch_size: Forget instances per forward pass of the Fisher computation, 32
            (the gradients are still per instance).
        **kwargs: Every argument of :class:`~unlearnkit.methods.neggrad.NegGrad`.
    """

    summary = "NegGrad plus Fisher-weighted (EWC) L2 toward the original (a baseline of Cha et al., AAAI 2024)."

    def _importance(self, context: UnlearnContext) -> dict[str, Tensor]:
        request = context.request
        return fisher_importance(context.model, request.inputs, request.known_labels, batch_size=self.importance_batch_size)
