"""SalUn: random labels restricted to the weights most salient for the forget set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.constraints import constrained_updates, masked
from unlearnkit.errors import InvalidHyperparameterError
from unlearnkit.methods.base import MethodRun, UnlearnContext, check_count, check_positive
from unlearnkit.methods.random_label import RandomLabel
from unlearnkit.methods.registry import register_method
from unlearnkit.utils.modules import eval_mode


@dataclass(frozen=True)
class SaliencyMask:
    """Which weight entries an update may change.

    Attributes:
        masks: One boolean tensor per trainable parameter (in ``model.parameters()`` order),
            true where the entry is among the most salient.
        names: The parameters' names, in the same order.
        kept: Number of entries in the mask.
        total: Number of trainable entries.
        threshold: The smallest ``|gradient|`` inside the mask (every entry outside it has a
            gradient no larger).
    """

    masks: list[Tensor]
    names: list[str]
    kept: int
    total: int
    threshold: float

    def share_by_parameter(self) -> dict[str, float]:
        """Share of each parameter's entries that lie in the mask."""
        return {name: float(m.float().mean()) for name, m in zip(self.names, self.masks)}


def forget_gradient(model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 256) -> list[Tensor]:
    """Gradient of the mean cross-entropy on ``(inputs, labels)`` w.r.t. every trainable
    parameter, with the model in eval mode (modes restored afterwards; ``.grad`` untouched).

    Computed in chunks of ``batch_size`` (summed losses divided by the set's size), so the result
    does not depend on the chunking beyond rounding. Parameters the loss does not reach get a
    zero gradient.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> grads = forget_gradient(layer, torch.rand(4, 3), torch.tensor([0, 1, 0, 1]))
        >>> [tuple(g.shape) for g in grads], layer.weight.grad is None
        ([(2, 3), (2,)], True)
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    n = inputs.shape[0]
    with eval_mode(model), torch.enable_grad():
        for start in range(0, n, batch_size):
            chunk = slice(start, start + batch_size)
            loss = F.cross_entropy(model(inputs[chunk]), labels[chunk], reduction="sum") / n
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for acc, g in zip(total, grads):
                if g is not None:
                    acc.add_(g)
    return total


def saliency_mask(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, ratio: float, batch_size: int = 256
) -> SaliencyMask:
    """SalUn's weight saliency mask: the top ``ratio`` share of ``|gradient of the forget loss|``
    over the whole model (one global threshold, not one per layer).

    Exactly ``max(1, int(ratio * total))`` entries are kept (the released code's
    ``int(len * ratio)``; at least one so that something can move); ties at the threshold are
    broken by position (a stable sort), so the mask is deterministic.

    Args:
        model: The model (in its original state).
        inputs: Forget inputs.
        labels: Their labels.
        ratio: Share of entries to keep, in ``(0, 1]``.
        batch_size: Forget instances per gradient chunk.

    Example:
        >>> torch.manual_seed(0) and None
        >>> layer = nn.Linear(3, 2)
        >>> mask = saliency_mask(layer, torch.rand(4, 3), torch.tensor([0, 1, 0, 1]), ratio=0.5)
        >>> mask.kept, mask.total, sum(int(m.sum()) for m in mask.masks)
        (4, 8, 4)
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    grads = forget_gradient(model, inputs, labels, batch_size=batch_size)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([g.detach().abs().reshape(-1) for g in grads])
    total = flat.numel()
    kept = max(1, int(total * ratio))
    order = torch.sort(flat, descending=True, stable=True).indices
    chosen = torch.zeros(total, dtype=torch.bool, device=flat.device)
    chosen[order[:kept]] = True
    masks, start = [], 0
    for g in grads:
        masks.append(chosen[start : start + g.numel()].view_as(g))
        start += g.numel()
    return SaliencyMask(masks, names, kept, total, float(flat[order[kept - 1]]))


@register_method("salun")
class SalUn(RandomLabel):
    """SalUn: random labels (RL) that update only the weights salient for the forget set.

    From "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Both Image
    Classification and Generation" (Fan, Liu, Zhang, Wei, Wong, Liu; ICLR 2024,
    https://arxiv.org/abs/2310.12508). First the weight saliency mask: the gradient of the
    cross-entropy on the forget set with its labels (averaged over the forget set, model in eval
    mode) w.r.t. every trainable parameter; the ``mask_ratio`` share of entries with the largest
    ``|gradient|`` over the whole model (one global threshold) form the mask. Then the
    :class:`~unlearnkit.methods.random_label.RandomLabel` algorithm (random wrong labels on the
    forget set plus cross-entropy on retain data, or the new labels of a relabeling request),
    with its presets, caps and goal-driven stopping rule, where every optimiser step may change
    only masked entries: the executed change of each step is masked
    (:func:`~unlearnkit.components.constraints.constrained_updates`), so every entry outside the
    mask ends bit-identical to the original.

    Differences from the released code (OPTML-Group/SalUn, ``generate_mask.py`` and
    ``unlearn/RL.py``): the released code masks the *gradient* before ``optimizer.step()``, so
    SGD's weight decay and momentum still move unmasked weights; here the executed change is
    masked, which holds for any optimiser. The mask's gradient is the mean cross-entropy over
    the whole forget set (the released code sums per-batch means: the same ranking when the
    batches are of equal size). The RL part is unlearnkit's ``random_label`` (labels drawn
    afresh each step from the *other* classes, stopped by the goal) rather than the released
    fixed number of epochs over a set relabeled once. BatchNorm running statistics are buffers,
    not weights: with ``bn_mode="train"`` they still move (the default freezes them).

    Data: the model, the forget set and retain data of any size
    (``data_access = "forget+retain"``); ``result.retain_used`` is its size. ``result.details``
    records the mask: ``salun/mask_kept``, ``salun/mask_total``, ``salun/mask_share``,
    ``salun/mask_threshold`` and ``salun/mask_share_by_parameter``.

    Args:
        mask_ratio: Share of all trainable weight entries in the mask, in ``(0, 1]``, 0.5 (the
            paper's; 1.0 is plain ``random_label``, bit for bit).
        mask_batch_size: Forget instances per gradient chunk when computing the mask, 256.
        **kwargs: Every hyperparameter of :class:`~unlearnkit.methods.random_label.RandomLabel`
            (preset, optimizer, lr, momentum, weight_decay, stop_margin, bn_mode, retain_weight,
            batch_size, retain_batch_size, caps).

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), model(torch.rand(2, 4)).argmax(1)
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="salun", retain=retain, lr=0.05)
        >>> result.converged, result.metrics["acc/forget/after"], result.details["salun/mask_kept"]
        (True, 0.0, 7)
    """

    summary = "Random labels updating only the weights most salient for the forget set (Fan et al., ICLR 2024)."

    def __init__(self, *, mask_ratio: float = 0.5, mask_batch_size: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio <= 1:
            raise InvalidHyperparameterError(f"mask_ratio must be a number in (0, 1], got {mask_ratio!r}")
        check_positive(mask_batch_size=mask_batch_size)
        check_count(mask_batch_size=mask_batch_size)
        self.mask_ratio = mask_ratio
        self.mask_batch_size = mask_batch_size

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        model, request = context.model, context.request
        mask = saliency_mask(
            model, request.inputs, request.known_labels, ratio=self.mask_ratio, batch_size=self.mask_batch_size
        )
        details: dict[str, Any] = {
            "salun/mask_kept": mask.kept,
            "salun/mask_total": mask.total,
            "salun/mask_share": mask.kept / mask.total,
            "salun/mask_threshold": mask.threshold,
            "salun/mask_share_by_parameter": mask.share_by_parameter(),
        }
        if mask.kept == mask.total:
            # Nothing to constrain; skipping the hook keeps the run bit-identical to
            # random_label (old + (new - old) is not always new in floating point).
            run = super()._unlearn(context)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            with constrained_updates(params, masked(mask.masks)):
                run = super()._unlearn(context)
        return MethodRun(run.steps, run.passes, run.converged, run.stop_reason, {**run.details, **details})
