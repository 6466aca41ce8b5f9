"""Weight importance: which parameters a set of inputs depends on.

MAS (Memory Aware Synapses, Aljundi et al., ECCV 2018) measures, for each parameter, how much
the output function changes when it moves: the absolute gradient of the L2 norm of the logits.
It needs no labels, so it can be computed on the forget instances alone.

The diagonal Fisher information (as in EWC, Kirkpatrick et al., PNAS 2017) measures instead how
sharply each parameter shapes the loss on the given labels: the mean over instances of the
squared gradient of each instance's cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.utils.modules import eval_mode


def mas_importance(model: nn.Module, inputs: Tensor, *, batch_size: int = 32) -> dict[str, Tensor]:
    """MAS importance of every trainable parameter on ``inputs``.

    For each batch, the gradient of the batch mean of ``||logits||_2`` (not squared) is taken,
    its absolute value accumulated weighted by the batch's share of the inputs. The model runs in
    eval mode (so BatchNorm statistics do not move); its ``.grad`` fields are left untouched
    (the released code accumulates into them without zeroing, a defect not reproduced here).

    Args:
        model: The classifier.
        inputs: ``(N, ...)`` inputs on the model's device.
        batch_size: Inputs per gradient computation.

    Returns:
        Non-negative importance tensors, by parameter name, shaped like the parameters.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> imp = mas_importance(model, torch.rand(4, 3))
        >>> sorted(imp), bool(all((v >= 0).all() for v in imp.values()))
        (['bias', 'weight'], True)
    """
    if inputs.shape[0] == 0:
        raise ValueError("MAS importance needs at least one input")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    totals = [torch.zeros_like(p) for p in params]
    n = inputs.shape[0]
    with eval_mode(model), torch.enable_grad():
        for start in range(0, n, batch_size):
            batch = inputs[start : start + batch_size]
            out = model(batch).norm(p=2, dim=1).mean()
            grads = torch.autograd.grad(out, params, allow_unused=True)
            share = batch.shape[0] / n
            for total, grad in zip(totals, grads):
                if grad is not None:
                    total.add_(grad.abs(), alpha=share)
    return {name: total for (name, _), total in zip(named, totals)}


def fisher_importance(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 32
) -> dict[str, Tensor]:
    """Diagonal (empirical) Fisher information of every trainable parameter on ``(inputs, labels)``.

    ``F_j = (1/N) sum_i (d CE(f(x_i), y_i) / d theta_j)^2``: the gradient of each instance's own
    cross-entropy on its given label, squared, averaged over the instances (per-example
    gradients, not the square of a batch gradient). The model runs in eval mode (so BatchNorm
    statistics do not move and each instance is treated on its own); its ``.grad`` fields are
    left untouched.

    Args:
        model: The classifier.
        inputs: ``(N, ...)`` inputs on the model's device.
        labels: ``(N,)`` integer labels.
        batch_size: Instances per forward pass; the gradients within a batch are still taken
            one instance at a time.

    Returns:
        Non-negative importance tensors, by parameter name, shaped like the parameters.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> imp = fisher_importance(model, torch.rand(4, 3), torch.tensor([0, 1, 1, 0]))
        >>> sorted(imp), bool(all((v >= 0).all() for v in imp.values()))
        (['bias', 'weight'], True)
    """
    n = inputs.shape[0]
    if n == 0:
        raise ValueError("Fisher importance needs at least one input")
    if labels.shape[0] != n:
        raise ValueError(f"Fisher importance got {n} inputs but {labels.shape[0]} labels")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    totals = [torch.zeros_like(p) for p in params]
    with eval_mode(model), torch.enable_grad():
        for start in range(0, n, batch_size):
            batch, targets = inputs[start : start + batch_size], labels[start : start + batch_size]
            # Per-instance losses from one forward pass (eval mode: instances do not interact).
            losses = F.cross_entropy(model(batch), targets.long(), reduction="none")
            for i in range(losses.shape[0]):
                grads = torch.autograd.grad(
                    losses[i], params, retain_graph=i + 1 < losses.shape[0], allow_unused=True
                )
                for total, grad in zip(totals, grads):
                    if grad is not None:
                        total.add_(grad.square(), alpha=1.0 / n)
    return {name: total for (name, _), total in zip(named, totals)}


def batch_fisher_importance(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 64
) -> dict[str, Tensor]:
    """The mini-batch approximation of the diagonal Fisher that SSD's released code uses:
    the gradient of each batch's mean cross-entropy, squared, averaged over the batches.

    ``F_j = (1/B) sum_b (d mean_{i in b} CE(f(x_i), y_i) / d theta_j)^2`` over consecutive batches
    of ``batch_size`` (the last may be short). Unlike :func:`fisher_importance` it shrinks as the
    batches grow (gradients of different instances cancel before squaring) and depends on how the
    data is batched. Model in eval mode; ``.grad`` fields untouched.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> x, y = torch.rand(4, 3), torch.tensor([0, 1, 1, 0])
        >>> one = batch_fisher_importance(model, x, y, batch_size=1)
        >>> all(torch.allclose(one[k], v) for k, v in fisher_importance(model, x, y).items())  # batches of 1: per-example
        True
    """
    n = inputs.shape[0]
    if n == 0:
        raise ValueError("Fisher importance needs at least one input")
    if labels.shape[0] != n:
        raise ValueError(f"Fisher importance got {n} inputs but {labels.shape[0]} labels")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    totals = [torch.zeros_like(p) for p in params]
    batches = range(0, n, batch_size)
    with eval_mode(model), torch.enable_grad():
        for start in batches:
            loss = F.cross_entropy(model(inputs[start : start + batch_size]), labels[start : start + batch_size].long())
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for total, grad in zip(totals, grads):
                if grad is not None:
                    total.add_(grad.square(), alpha=1.0 / len(batches))
    return {name: total for (name, _), total in zip(named, totals)}


def min_max_normalise(importance: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rescales each tensor to ``[0, 1]`` by its own minimum and maximum.

    A constant tensor (e.g. a parameter the inputs never reach) maps to all zeros: nothing in it
    matters more than anything else, so it counts as unimportant.

    Example:
        >>> out = min_max_normalise({"w": torch.tensor([2.0, 4.0, 3.0]), "b": torch.tensor([5.0, 5.0])})
        >>> out["w"].tolist(), out["b"].tolist()
        ([0.0, 1.0, 0.5], [0.0, 0.0])
    """
    result = {}
    for name, tensor in importance.items():
        low, high = tensor.min(), tensor.max()
        span = high - low
        result[name] = (tensor - low) / span if span > 0 else torch.zeros_like(tensor)
    return result
