"""Helpers for handling arbitrary ``nn.Module`` classifiers."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from unlearnkit.errors import InvalidModelError


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def default_device() -> torch.device:
    """The device work goes to when the caller names none: the current CUDA device when a GPU
    is present, else the CPU.

    Example:
        >>> default_device().type in ("cpu", "cuda")
        True
    """
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter; float32 if it has none."""
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def resolve_device(device: torch.device | str | None, model: nn.Module) -> torch.device:
    """``device`` if given, else the model's own device (so CUDA models stay on CUDA)."""
    return torch.device(device) if device is not None else model_device(model)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts ``model`` (and every submodule) in eval mode, restoring each one's mode afterwards.

    Restoring per submodule matters: a caller may keep, say, BatchNorm frozen in eval mode
    inside a model that is otherwise training.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)


def train_with_frozen_batchnorm(model: nn.Module) -> nn.Module:
    """Training mode everywhere except BatchNorm layers, which keep their running statistics.

    With a handful of forget instances per batch, batch statistics are far from the data's, and
    updating running statistics from them shifts every later prediction; frozen statistics keep
    the network's normalisation as it was trained (the affine weights still learn).
    """
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def check_finite_parameters(model: nn.Module, what: str = "model") -> None:
    """Raises :class:`InvalidModelError` naming the first tensors that hold NaN or inf."""
    bad = [
        name
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if bad:
        raise InvalidModelError(f"{what} has NaN or infinite values in {len(bad)} tensor(s): {bad[:5]}")


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters are trainable leaves, like the original's.

    ``copy.deepcopy`` of a TorchScript module (torch 2.13) hands back parameters that are not
    leaf tensors, which every optimiser refuses ("can't optimize a non-leaf Tensor"); they are
    detached in place here, keeping their ``requires_grad``.

    Example:
        >>> scripted = torch.jit.script(nn.Linear(2, 2))
        >>> all(p.is_leaf for p in copy_model(scripted).parameters())
        True
    """
    copied = copy.deepcopy(model)
    for p in copied.parameters():
        if not p.is_leaf:
            flag = p.requires_grad
            p.detach_().requires_grad_(flag)
    return copied


def clone_parameters(model: nn.Module) -> dict[str, Tensor]:
    """Detached copies of the model's trainable parameters, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def predict_logits(
    model: nn.Module, inputs: Tensor, *, batch_size: int = 1024, device: torch.device | None = None
) -> Tensor:
    """Logits of ``model`` on ``inputs`` in eval mode, batched; returned on ``inputs``' device.

    Raises:
        InvalidModelError: If the model does not return a 2-D ``(N, C)`` tensor of logits, or
            cannot process inputs of this shape.
    """
    device = device or model_device(model)
    outputs = []
    with eval_mode(model):
        for start in range(0, inputs.shape[0], batch_size):
            batch = inputs[start : start + batch_size].to(device)
            try:
                out = model(batch)
            except torch.cuda.OutOfMemoryError:
                raise  # not the model's fault: let the caller lower batch_size
            except (RuntimeError, ValueError, TypeError) as err:
                raise InvalidModelError(
                    f"the model failed on inputs of shape {tuple(batch.shape)} "
                    f"(is this the input shape it was trained on?): {err}"
                ) from err
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != batch.shape[0]:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise InvalidModelError(
                    f"the model must map a batch (N, ...) to logits (N, C); got {shape} "
                    f"for a batch of {batch.shape[0]}"
                )
            outputs.append(out.float().to(inputs.device))
    return torch.cat(outputs)
