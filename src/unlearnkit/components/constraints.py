"""Constraints on what an optimiser step may change: a weight mask, a projection.

Some methods decide *which* part of an update is allowed (SalUn updates only salient weights;
GU executes only the part of an update orthogonal to the retain gradients) while leaving *how*
the update is computed to an ordinary optimiser. :func:`constrained_updates` does this for any
optimiser, including ones created inside another method's loop: before each
``optimizer.step()`` it applies ``transform`` to the gradients and records the watched
parameters, and after it replaces the change ``delta`` by ``transform(delta)``. Constraining the executed change (rather than the gradient) holds for every
optimiser: Adam's per-coordinate scaling, momentum and weight decay cannot leak past it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

#: Maps the per-parameter changes of one optimiser step to the changes actually executed.
UpdateTransform = Callable[[list[Tensor]], list[Tensor]]


@contextmanager
def constrained_updates(
    params: Sequence[nn.Parameter], transform: UpdateTransform, *, constrain_gradients: bool = True
) -> Iterator[list[int]]:
    """Constrains every optimiser step on ``params`` taken inside the ``with`` block.

    Steps of optimisers that hold none of ``params`` are left alone, so the hooks (which are
    process-wide, to reach optimisers created inside another method's code) do not touch other
    models' training in the same process. Not safe against optimiser steps on the same
    parameters from another thread.

    Args:
        params: The parameters whose changes are constrained (all of them, in a fixed order).
        transform: Receives the changes of one step (one tensor per parameter, in order) and
            returns the changes to execute.
        constrain_gradients: Also apply ``transform`` to the gradients before each step, so
            that the optimiser's state (momentum, Adam's moments) is built from constrained
            gradients too; without it Adam keeps normalising by directions it may not move in,
            and can stall (measured: a projected relabeling run at lr 0.05 stuck at margin 0).

    Yields:
        A one-element list counting the constrained steps so far.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> before = layer.weight.detach().clone()
        >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        >>> keep_first = lambda deltas: [d * torch.tensor([[1.0, 0.0]]) if d.dim() == 2 else d for d in deltas]
        >>> with constrained_updates([layer.weight, layer.bias], keep_first) as count:
        ...     layer(torch.ones(1, 2)).sum().backward()
        ...     opt.step()
        >>> count[0], bool(layer.weight[0, 1] == before[0, 1]), bool(layer.weight[0, 0] != before[0, 0])
        (1, True, True)
    """
    watched = list(params)
    ids = {id(p) for p in watched}
    saved: list[Tensor] = []
    count = [0]

    def holds_watched(optimizer: torch.optim.Optimizer) -> bool:
        return any(id(p) in ids for group in optimizer.param_groups for p in group["params"])

    def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if holds_watched(optimizer):
            saved[:] = [p.detach().clone() for p in watched]
            if constrain_gradients:
                with torch.no_grad():
                    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in watched]
                    for p, grad in zip(watched, transform(grads)):
                        if p.grad is not None:
                            p.grad.copy_(grad)

    def after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not holds_watched(optimizer) or not saved:
            return
        with torch.no_grad():
            deltas = [p.detach() - old for p, old in zip(watched, saved)]
            for p, old, executed in zip(watched, saved, transform(deltas)):
                p.copy_(old + executed)
        saved.clear()
        count[0] += 1

    pre = register_optimizer_step_pre_hook(before_step)
    post = register_optimizer_step_post_hook(after_step)
    try:
        yield count
    finally:
        pre.remove()
        post.remove()


def masked(masks: Sequence[Tensor]) -> UpdateTransform:
    """An update transform that keeps the change only where ``masks`` is true (one boolean mask
    per parameter, shaped like it): every other entry stays exactly as it was."""

    def transform(deltas: list[Tensor]) -> list[Tensor]:
        return [torch.where(mask, delta, torch.zeros_like(delta)) for mask, delta in zip(masks, deltas)]

    return transform


def orthonormal_basis(vectors: Tensor, *, tolerance: float = 1e-6) -> Tensor:
    """An orthonormal basis ``(d, r)`` of the span of the columns of ``vectors`` ``(d, k)``.

    Computed by a thin SVD in float64 (QR without pivoting does not reveal the rank);
    directions whose singular value is below ``tolerance`` times the largest (linearly dependent
    or zero gradients) are dropped, so ``r <= k`` is the numerical rank.

    Example:
        >>> v = torch.tensor([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
        >>> orthonormal_basis(v).shape
        torch.Size([3, 1])
    """
    if vectors.dim() != 2:
        raise ValueError(f"vectors must be (d, k), got shape {tuple(vectors.shape)}")
    u, singular, _ = torch.linalg.svd(vectors.double(), full_matrices=False)
    top = float(singular.max()) if singular.numel() else 0.0
    keep = singular > tolerance * top if top > 0 else torch.zeros_like(singular, dtype=torch.bool)
    return u[:, keep].to(vectors.dtype)


def orthogonal_to(basis: Tensor) -> UpdateTransform:
    """An update transform that removes from each step's change (all parameters flattened into
    one vector) its component in the span of ``basis`` (``(d, r)``, orthonormal columns):
    ``delta - B (B^T delta)``."""

    def transform(deltas: list[Tensor]) -> list[Tensor]:
        flat = torch.cat([d.reshape(-1) for d in deltas]).to(basis.dtype)
        kept = flat - basis @ (basis.T @ flat)
        out, start = [], 0
        for d in deltas:
            out.append(kept[start : start + d.numel()].view_as(d).to(d.dtype))
            start += d.numel()
        return out

    return transform


def loss_gradients(model: nn.Module, inputs: Tensor, labels: Tensor, batches: Sequence[Tensor]) -> Tensor:
    """The gradients of the mean cross-entropy of each batch, flattened over every trainable
    parameter: a ``(d, len(batches))`` matrix, one column per batch.

    The model runs in eval mode (BatchNorm statistics do not move) and its ``.grad`` fields are
    left untouched (``torch.autograd.grad``). Memory: ``d * len(batches)`` numbers.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> x, y = torch.rand(4, 3), torch.tensor([0, 1, 1, 0])
        >>> loss_gradients(layer, x, y, [torch.tensor([0, 1]), torch.tensor([2, 3])]).shape
        torch.Size([8, 2])
    """
    params = [p for p in model.parameters() if p.requires_grad]
    columns = []
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            for idx in batches:
                loss = nn.functional.cross_entropy(model(inputs[idx]), labels[idx])
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                columns.append(
                    torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
                )
    finally:
        for module, training in zip(model.modules(), was_training):
            module.train(training)
    return torch.stack(columns, dim=1)


def mean_loss_gradient(model: nn.Module, inputs: Tensor, labels: Tensor, *, chunk_size: int) -> list[Tensor]:
    """The gradient of the mean cross-entropy over *all* of ``(inputs, labels)``, one tensor per
    trainable parameter, accumulated over chunks of ``chunk_size`` rows.

    Each chunk contributes the gradient of its summed loss divided by the total number of rows,
    so the result equals the full-batch gradient (up to float rounding) while memory holds only
    one chunk's activations. The model runs in eval mode (BatchNorm uses its running
    statistics, which is what makes chunking exact, and they do not move; dropout is off) and
    its ``.grad`` fields are left untouched (``torch.autograd.grad``). A parameter the loss does
    not reach gets a zero tensor.

    Raises:
        ValueError: If ``inputs`` is empty or ``chunk_size`` is not positive.

    Example:
        >>> layer = nn.Linear(3, 2)
        >>> x, y = torch.rand(5, 3), torch.tensor([0, 1, 1, 0, 1])
        >>> full = torch.autograd.grad(nn.functional.cross_entropy(layer(x), y), list(layer.parameters()))
        >>> chunked = mean_loss_gradient(layer, x, y, chunk_size=2)
        >>> all(torch.allclose(a, b, atol=1e-7) for a, b in zip(full, chunked))
        True
    """
    n = inputs.shape[0]
    if n == 0 or chunk_size <= 0:
        raise ValueError(f"need rows and chunk_size > 0, got {n} rows, chunk_size={chunk_size}")
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            for start in range(0, n, chunk_size):
                chunk = slice(start, start + chunk_size)
                loss = nn.functional.cross_entropy(model(inputs[chunk]), labels[chunk], reduction="sum") / n
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for acc, grad in zip(total, grads):
                    if grad is not None:
                        acc.add_(grad)
    finally:
        for module, training in zip(model.modules(), was_training):
            module.train(training)
    return total
