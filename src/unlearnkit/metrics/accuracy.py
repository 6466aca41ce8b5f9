"""Top-1 accuracy on named splits."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from unlearnkit.errors import InvalidRequestError
from unlearnkit.utils.modules import model_dtype, predict_logits, resolve_device


def accuracy(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, batch_size: int = 1024, device: torch.device | str | None = None
) -> float:
    """Top-1 accuracy in percent of ``model`` (in eval mode) on ``(inputs, labels)``.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)); _ = model.bias.zero_()
        >>> accuracy(model, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        50.0
    """
    inputs, labels = torch.as_tensor(inputs), torch.as_tensor(labels)
    if inputs.shape[0] != labels.shape[0]:
        raise InvalidRequestError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels")
    if inputs.shape[0] == 0:
        raise InvalidRequestError("cannot measure accuracy on an empty set")
    device = resolve_device(device, model)
    logits = predict_logits(model, inputs.to(model_dtype(model)), batch_size=batch_size, device=device)
    return 100.0 * float((logits.argmax(dim=1).cpu() == labels.cpu().long()).float().mean())


def evaluate(
    model: nn.Module,
    splits: Mapping[str, tuple[Tensor, Tensor]],
    *,
    batch_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Accuracy in percent on each named split, keyed ``acc/<name>``.

    For relabeling, pass the forget inputs with their *new* labels under a name of your choice
    (e.g. ``"relabel"``): the accuracy is then the share predicted as the new label.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x, y = torch.rand(5, 4), torch.zeros(5, dtype=torch.long)
        >>> sorted(evaluate(model, {"forget": (x, y), "test": (x, y)}))
        ['acc/forget', 'acc/test']
    """
    return {
        f"acc/{name}": accuracy(model, x, y, batch_size=batch_size, device=device)
        for name, (x, y) in splits.items()
    }
