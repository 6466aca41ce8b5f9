"""Data parallelism across processes launched by ``torchrun``: sharded batches, averaged gradients.

When a ``torch.distributed`` process group with more than one process is initialised, every
process (rank) runs the same unlearning code on the same model with the same seeded
generator, so every rank draws the same global batches. Each rank then computes the loss of
its own share of a batch (:func:`sharded_mean`), the gradients are averaged across ranks
between ``backward()`` and ``optimizer.step()`` (:func:`average_gradients`), and every rank
takes the same optimiser step: the weights stay identical on every rank, and equal (up to
float rounding) to the weights of a single process running the whole batch.

Without a process group (or with a group of one process) every helper here is the identity:
the single-process code path is unchanged, bit for bit.

Why the loss of a share is weighted: a mean over a global batch of ``B`` rows is
``(1/B) * sum_i l_i``. Rank ``r`` holding ``n_r`` of those rows computes the mean over its rows
and multiplies it by ``W * n_r / B`` (``W`` ranks); averaging the ranks' gradients then gives
exactly the gradient of the global mean, also when the shares are uneven (a short last batch).
This is the same as weighting by ``n_r / B`` and summing, but with averaging, terms every rank
computes in full (a forget term on the small forget set, a weight penalty) need no weighting:
the average of ``W`` identical gradients is that gradient.

Why gradients are all-reduced by hand rather than by wrapping the model in
``DistributedDataParallel``: the methods call the model they were given (and copies of it:
teachers, probes) through closures, keep some modules in eval mode, run forward passes that
must not synchronise (stop checks, attacks), and take optimiser steps under hooks that
constrain the update (:func:`~unlearnkit.components.constraints.constrained_updates`). DDP
would have to wrap the model object inside every method and would synchronise on every
forward-backward, including the ones that must stay local; one flat all-reduce after
``backward()`` gives the same averaged gradient with no change to any method's model handling.
What DDP adds on top (bucketing to overlap communication with the backward pass) matters for
large models on fast interconnects, not for the models this library unlearns on CPUs.

BatchNorm: a module in training mode normalises with the statistics of the rank's own share,
not of the global batch, so results with train-mode BatchNorm differ slightly from one
process (as with plain DDP). Methods that freeze BatchNorm statistics (the default of the
goal-driven methods) and models without BatchNorm match one process to float rounding. On
GPUs, ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` restores global statistics. While a
module holding buffers is in training mode, the buffers (running statistics) are broadcast
from rank 0 after every step (as DDP's ``broadcast_buffers``), so the ranks never disagree
about the model.

Float rounding: a sum split over ranks rounds differently from the same sum in one process
(~1e-7 relative per step). Over many steps this can grow, as between any two BLAS libraries:
Adam turns rounding noise on entries whose gradient is ~0 into steps of size ~lr, and a
learning rate near the edge of stability amplifies any difference, so a long goal-driven run
may stop at a different step than one process does. Every rank still takes the same steps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: Set while :func:`local_only` is active: the helpers then act as in a single process.
_LOCAL_ONLY: list[bool] = [False]


def is_distributed() -> bool:
    """Whether data-parallel work is on: an initialised process group of more than one process
    (and not inside :func:`local_only`)."""
    if _LOCAL_ONLY[0] or not dist.is_available() or not dist.is_initialized():
        return False
    return dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes sharing the work (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Whether this is rank 0, the process that writes files and prints (true without a group)."""
    if not dist.is_available() or not dist.is_initialized():
        return True
    return dist.get_rank() == 0


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Within the block, every helper acts as in a single process (no communication).

    For work that one rank does alone while a process group exists, e.g. training a model
    to cache it on rank 0 while the others wait at a barrier: a shared loop would otherwise
    wait forever for the other ranks' gradients.

    Example:
        >>> with local_only():
        ...     is_distributed()
        False
    """
    previous = _LOCAL_ONLY[0]
    _LOCAL_ONLY[0] = True
    try:
        yield
    finally:
        _LOCAL_ONLY[0] = previous


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` rows split ``world_size`` ways.

    The first ``n % world_size`` ranks get one row more (the split of ``torch.tensor_split``);
    concatenating the shares in rank order gives the rows back in order.

    Example:
        >>> [shard_bounds(13, r, 2) for r in range(2)], shard_bounds(1, 1, 2)
        ([(0, 7), (7, 13)], (1, 1))
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_rows(rows: Tensor) -> Tensor:
    """This rank's contiguous share of a global batch of row indices (all of it in one process).

    Every rank holds the same ``rows`` (drawn from the same seeded generator); rank ``r`` keeps
    the ``r``-th of ``world_size`` nearly equal contiguous parts.
    """
    if not is_distributed():
        return rows
    start, stop = shard_bounds(rows.shape[0], rank(), world_size())
    return rows[start:stop]


def sharded_mean(rows: Tensor, mean_loss: Callable[[Tensor], Tensor]) -> Tensor:
    """``mean_loss(rows)``, a mean over the rows of a global batch, computed data-parallel.

    In one process this is the call ``mean_loss(rows)`` itself. With a process group, rank
    ``r`` evaluates ``mean_loss`` on its share ``rows_r`` only and returns it multiplied by
    ``world_size * len(rows_r) / len(rows)``, so that the average of the ranks' gradients (see
    :func:`average_gradients`) is the gradient of the mean over the whole batch, even for
    uneven shares. A rank whose share is empty (a batch with fewer rows than ranks) returns a
    zero that carries no gradient.

    Args:
        rows: Index tensor of the global batch (the same on every rank).
        mean_loss: Maps row indices to the mean loss over those rows (a mean per row: a term
            that is not, e.g. a weight penalty, belongs outside, added on every rank in full).

    Example:
        >>> values = torch.tensor([1.0, 2.0, 6.0])
        >>> sharded_mean(torch.arange(3), lambda r: values[r].mean()).item()
        3.0
    """
    if not is_distributed():
        return mean_loss(rows)
    local = shard_rows(rows)
    if local.numel() == 0:
        return torch.zeros((), device=rows.device)
    return mean_loss(local) * (world_size() * local.numel() / rows.shape[0])


def _flat_all_reduce(tensors: Sequence[Tensor]) -> None:
    """Sums ``tensors`` over all ranks in place, one collective per dtype and device."""
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for members in groups.values():
        flat = torch.cat([t.reshape(-1) for t in members])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in members:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def average_gradients(params: Sequence[Tensor], loss: float) -> float:
    """Averages the parameters' ``.grad`` over all ranks in place; returns the averaged loss.

    Call it between ``loss.backward()`` and ``optimizer.step()`` on every rank. A parameter
    whose gradient is ``None`` on some ranks (its share did not reach it) gets zeros there; one
    whose gradient is ``None`` on every rank stays ``None``, so the optimiser skips it exactly
    as it would in one process. In one process this does nothing and returns ``loss``.

    Args:
        params: The parameters the optimiser updates, in the same order on every rank.
        loss: This rank's loss (its share's weighted loss, see :func:`sharded_mean`).

    Returns:
        The average of the ranks' losses: the loss of the global batch.
    """
    if not is_distributed():
        return loss
    ranks = world_size()
    device = params[0].device if params else torch.device("cpu")
    # One small collective carries the losses and which parameters have a gradient anywhere,
    # so that every rank builds the same flat buffer below.
    header = torch.tensor([loss] + [p.grad is not None for p in params], dtype=torch.float64, device=device)
    dist.all_reduce(header, op=dist.ReduceOp.SUM)
    grads: list[Tensor] = []
    for p, anywhere in zip(params, header[1:].tolist()):
        if anywhere:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    if grads:
        _flat_all_reduce(grads)
        for g in grads:
            g.div_(ranks)
    return float(header[0]) / ranks


def sync_buffers(model: nn.Module) -> None:
    """Copies rank 0's buffers (BatchNorm running statistics) to every rank, when some module
    holding buffers is in training mode (the only time they change); a no-op in one process.

    Train-mode BatchNorm updates its statistics from the rank's own share, so the ranks'
    copies drift apart; like DDP's ``broadcast_buffers``, rank 0's copy is kept.
    """
    if not is_distributed():
        return
    changing = any(m.training and any(True for _ in m.buffers(recurse=False)) for m in model.modules())
    if not changing:
        return
    buffers = [b for b in model.buffers() if b.numel()]
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for b in buffers:
        groups.setdefault((b.dtype, b.device), []).append(b)
    with torch.no_grad():
        for members in groups.values():
            flat = torch.cat([b.reshape(-1) for b in members])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in members:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()


def broadcast_values(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Rank 0's ``values`` on every rank (the values themselves in one process).

    Used for decisions that must be the same on every rank, such as whether to stop: a time cap
    reads each rank's own clock, and the ranks must still stop at the same step.
    """
    if not is_distributed():
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tensor.tolist()


def gather_rows(local: Tensor, n: int) -> Tensor:
    """Concatenates every rank's share of ``n`` rows (see :func:`shard_bounds`) in rank order.

    Each rank passes its own share (``local``, possibly empty); every rank receives all ``n``
    rows. In one process ``local`` is returned as it is.
    """
    if not is_distributed():
        return local
    ranks = world_size()
    sizes = [stop - start for start, stop in (shard_bounds(n, r, ranks) for r in range(ranks))]
    widest = max(sizes)
    # all_gather needs equal shapes: pad every share to the widest, then cut the padding off.
    padded = local.new_zeros((widest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    pieces = [torch.empty_like(padded) for _ in range(ranks)]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])


def default_backend() -> str:
    """The process-group backend for this machine: gloo for CPU tensors, plus NCCL for CUDA
    tensors when a GPU is present (``"cpu:gloo,cuda:nccl"``, so both kinds can be reduced)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_from_env(backend: str | None = None) -> bool:
    """Initialises the process group from the environment ``torchrun`` sets, if it set one.

    Reads ``WORLD_SIZE``, ``RANK`` and the rendezvous variables (``MASTER_ADDR``,
    ``MASTER_PORT``); does nothing when ``WORLD_SIZE`` is missing or 1, or when a group is
    already initialised. On a GPU machine each rank also selects the GPU ``LOCAL_RANK``.

    Args:
        backend: A ``torch.distributed`` backend string; defaults to :func:`default_backend`.

    Returns:
        Whether work is now data-parallel (:func:`is_distributed`).
    """
    if not dist.is_available() or dist.is_initialized():
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend=backend or default_backend())
    return is_distributed()


def broadcast_module(model: nn.Module) -> None:
    """Copies rank 0's parameters and buffers to every rank (as DDP does when it wraps a model),
    so that all ranks start from the same weights; a no-op in one process."""
    if not is_distributed():
        return
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if t.numel()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def barrier() -> None:
    """Waits for every rank (nothing to wait for in one process)."""
    if is_distributed():
        dist.barrier()

