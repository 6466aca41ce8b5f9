"""A classifier split into a feature extractor and a linear head, with gradients.

The head is an ``nn.Linear`` (by default the model's last one in registration order, the same
rule as :func:`unlearnkit.metrics.features.feature_layer`); the *embedding* of an input is what
the head reads, captured by a forward pre-hook, and the *extractor* is everything that computes
it. Capturing the head's input works for any architecture, where cutting the module tree in two
would need the forward graph, which a module tree does not record.

Unlike :func:`unlearnkit.metrics.features.extract_features` (eval mode, no gradients), the
embedding here stays in the autograd graph, so a loss on it trains the extractor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from unlearnkit.errors import InvalidHyperparameterError, InvalidModelError


def resolve_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Linear]:
    """The head: the ``nn.Linear`` named ``head``, or the model's last ``nn.Linear`` (in module
    registration order) when ``head`` is ``None``.

    Raises:
        InvalidHyperparameterError: If no module has that name, or it is not an ``nn.Linear``.
        InvalidModelError: If ``head`` is ``None`` and the model has no ``nn.Linear``.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> resolve_head(model)[0]
        '3'
    """
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if head is None:
        if not linears:
            raise InvalidModelError(
                "the model has no nn.Linear, so it has no linear head whose input is the embedding; "
                "name the head (an nn.Linear) explicitly"
            )
        return linears[-1]
    modules = dict(model.named_modules())
    if head not in modules:
        raise InvalidHyperparameterError(
            f"the model has no module named {head!r}; its nn.Linear modules: {[n for n, _ in linears]}"
        )
    module = modules[head]
    if not isinstance(module, nn.Linear):
        raise InvalidHyperparameterError(f"head {head!r} is a {type(module).__name__}, not an nn.Linear")
    return head, module


def extractor_parameters(model: nn.Module, head: nn.Module) -> list[nn.Parameter]:
    """The model's trainable parameters that are not the head's: those of the extractor (and of
    any module off the embedding's path, which a loss on the embedding leaves without gradient).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> [tuple(p.shape) for p in extractor_parameters(model, model[2])]
        [(8, 4), (8,)]
    """
    owned = {id(p) for p in head.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in owned]


@contextmanager
def _recording_input(head: nn.Module) -> Iterator[list[Any]]:
    """Records the head's first positional argument on every call while the block runs."""
    store: list[Any] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        store.append(args[0] if args else None)

    handle = head.register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def logits_and_embeddings(model: nn.Module, inputs: Tensor, head: nn.Module) -> tuple[Tensor, Tensor]:
    """The model's output on ``inputs`` and the head's input, flattened to ``(N, D)``, both in
    the autograd graph (the model runs in whatever train/eval mode it is in).

    Raises:
        InvalidModelError: If the head does not run exactly once in the forward pass, or reads
            no per-example tensor.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> logits, emb = logits_and_embeddings(model, torch.rand(5, 4), model[2])
        >>> tuple(logits.shape), tuple(emb.shape), emb.requires_grad
        ((5, 3), (5, 8), True)
    """
    with _recording_input(head) as store:
        logits = model(inputs)
    n = inputs.shape[0]
    if len(store) != 1:
        # Zero: the head is not on the forward path; more: it is reused, so "its" input is
        # ambiguous. Either way the embedding would be the wrong thing.
        raise InvalidModelError(f"the head ran {len(store)} times in one forward pass; it must run exactly once")
    value = store[0]
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != n:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise InvalidModelError(f"the head read {shape} for a batch of {n}; need a tensor (N, ...)")
    return logits, value.reshape(n, -1)


def embedding_fn(model: nn.Module, head: nn.Module) -> Callable[[Tensor], Tensor]:
    """``inputs -> embeddings (N, D)`` of ``model`` at ``head`` (with gradients)."""
    return lambda inputs: logits_and_embeddings(model, inputs, head)[1]
