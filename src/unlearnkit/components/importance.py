"""Weight importance: which parameters a set of inputs depends on.

MAS (Memory Aware Synapses, Aljundi et al., ECCV 2018) measures, for each parameter, how much
the output function changes when it moves: the absolute gradient of the L2 norm of the logits.
It needs no labels, so it can be computed on the forget instances alone.
"""

from __future__ import annotations

import torch
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
