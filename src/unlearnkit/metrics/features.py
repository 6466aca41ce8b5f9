"""Intermediate representations of a classifier: which layer, and its features on a set of inputs.

A layer is named by a *layer spec*, a string:

- ``"<module name>"`` (a name from ``model.named_modules()``, e.g. ``"head.1"``): the module's
  **output**, flattened per example;
- ``"<module name>:input"``: the module's **input** (its first positional argument), flattened
  per example, captured with a forward pre-hook.

The automatic choice (``layer=None``) is the input of the last ``nn.Linear`` in registration
order, ``"<last Linear>:input"``: the penultimate representation that the classification head
reads. Capturing the input of that layer works for any architecture, whereas naming "the module
whose output feeds it" needs the forward graph, which a module tree does not record.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from unlearnkit.errors import InvalidModelError
from unlearnkit.utils.modules import eval_mode, model_dtype, resolve_device

#: Suffix of a layer spec that captures a module's input instead of its output.
INPUT_SUFFIX = ":input"


def _module_names(model: nn.Module) -> list[str]:
    """Names of every submodule (the root, named ``""``, left out), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def _unknown_layer_error(model: nn.Module, name: str) -> ValueError:
    """A ValueError naming ``name`` and a few valid module names (close matches first)."""
    names = _module_names(model)
    close = difflib.get_close_matches(name, names, n=3)
    shown = close + [n for n in names if n not in close][: max(0, 8 - len(close))]
    more = f" ... ({len(names)} in all)" if len(names) > len(shown) else ""
    return ValueError(
        f"unknown layer {name!r}; valid module names include {shown}{more} "
        f"(append {INPUT_SUFFIX!r} to capture a module's input instead of its output)"
    )


def _resolve(model: nn.Module, spec: str) -> tuple[nn.Module, bool]:
    """The module a layer spec points at, and whether its input (True) or output is captured."""
    capture_input = spec.endswith(INPUT_SUFFIX)
    name = spec[: -len(INPUT_SUFFIX)] if capture_input else spec
    modules = dict(model.named_modules())
    if name not in modules:
        raise _unknown_layer_error(model, name)
    return modules[name], capture_input


def feature_layer(model: nn.Module, layer: str | None = None) -> str:
    """The layer spec of the representation to extract: ``layer`` checked, or the automatic one.

    Automatic rule (``layer=None``): the **input** of the last ``nn.Linear`` in registration order
    (``model.named_modules()``), returned as ``"<name>:input"``. For a model whose classifier is
    its last registered Linear (``nn.Sequential`` stacks, :class:`~unlearnkit.models.SmallCNN`)
    this is the penultimate representation. A model that registers its head before its body
    must name the layer itself.

    Args:
        model: The classifier.
        layer: ``None`` for the automatic choice, or a spec: a module name (its output is
            captured, flattened per example) or a module name followed by ``":input"``.

    Returns:
        The spec, ready for :func:`extract_features`.

    Raises:
        ValueError: If ``layer`` names no submodule (the message lists valid names), or if
            ``layer`` is None and the model has no ``nn.Linear``.

    Example:
        >>> mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> feature_layer(mlp), feature_layer(mlp, "2")
        ('3:input', '2')
    """
    if layer is None:
        linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ValueError(
                "the model has no nn.Linear, so there is no automatic feature layer; name one, "
                f"e.g. one of {_module_names(model)[-5:]}"
            )
        return linears[-1] + INPUT_SUFFIX
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a module name (str) or None, got {type(layer).__name__}")
    _resolve(model, layer)  # raises on an unknown name
    return layer


def extract_layer_features(
    model: nn.Module,
    inputs: Tensor,
    layers: Sequence[str | None],
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, Tensor]:
    """Features ``(N, D)`` of several layers in one batched pass, in eval mode, without gradients.

    Every module's train/eval mode is restored afterwards (see
    :func:`~unlearnkit.utils.modules.eval_mode`), so BatchNorm statistics never change.

    Args:
        model: The classifier.
        inputs: ``(N, ...)`` inputs the model accepts.
        layers: Layer specs (see :func:`feature_layer`); ``None`` stands for the automatic one.
        batch_size: Inputs per forward pass.
        device: Where to run; defaults to the model's device.

    Returns:
        Resolved spec -> features ``(N, D)`` on ``inputs``' device, in the order of ``layers``
        (half precision promoted to float32).

    Raises:
        ValueError: On an unknown or repeated layer, empty inputs, a bad batch size, or a layer
            that does not run exactly once per forward pass or yields no per-example tensor.
        InvalidModelError: If the model fails on the inputs.

    Example:
        >>> mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> feats = extract_layer_features(mlp, torch.rand(5, 4), ["1", None])
        >>> {name: tuple(f.shape) for name, f in feats.items()}
        {'1': (5, 3), '3:input': (5, 3)}
    """
    if isinstance(layers, str) or not isinstance(layers, Sequence):
        raise ValueError(f"layers must be a sequence of layer specs, got {type(layers).__name__}")
    if len(layers) == 0:
        raise ValueError("layers is empty: name at least one layer (None for the automatic one)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    inputs = torch.as_tensor(inputs)
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise ValueError("cannot extract features of an empty set of inputs")
    specs = [feature_layer(model, layer) for layer in layers]
    repeated = sorted({s for s in specs if specs.count(s) > 1})
    if repeated:
        raise ValueError(f"layers repeat {repeated}; name each layer once")

    device = resolve_device(device, model)
    captured: dict[str, list[object]] = {spec: [] for spec in specs}
    handles = []
    for spec in specs:
        module, capture_input = _resolve(model, spec)
        if capture_input:
            handles.append(module.register_forward_pre_hook(_input_recorder(captured[spec])))
        else:
            handles.append(module.register_forward_hook(_output_recorder(captured[spec])))

    chunks: dict[str, list[Tensor]] = {spec: [] for spec in specs}
    try:
        with torch.no_grad(), eval_mode(model):
            for start in range(0, inputs.shape[0], batch_size):
                batch = inputs[start : start + batch_size].to(device=device, dtype=model_dtype(model))
                for store in captured.values():
                    store.clear()
                try:
                    model(batch)
                except torch.cuda.OutOfMemoryError:
                    raise  # not the model's fault: let the caller lower batch_size
                except (RuntimeError, ValueError, TypeError) as err:
                    raise InvalidModelError(
                        f"the model failed on inputs of shape {tuple(batch.shape)}: {err}"
                    ) from err
                for spec, store in captured.items():
                    chunks[spec].append(_check_capture(spec, store, batch.shape[0]).to(inputs.device))
    finally:
        for handle in handles:
            handle.remove()
    return {spec: torch.cat(parts) for spec, parts in chunks.items()}


def _input_recorder(store: list[object]) -> Callable[..., None]:
    """A forward pre-hook appending the module's first positional argument (its input) to ``store``."""

    def hook(_module: nn.Module, args: tuple[object, ...]) -> None:
        store.append(args[0] if args else None)  # None (called by keyword) fails the check later

    return hook


def _output_recorder(store: list[object]) -> Callable[..., None]:
    """A forward hook appending the module's output to ``store``."""

    def hook(_module: nn.Module, _args: tuple[object, ...], output: object) -> None:
        store.append(output)

    return hook


def _check_capture(spec: str, store: list[object], n: int) -> Tensor:
    """The one tensor a hook captured for a batch of ``n``, flattened to ``(n, D)``."""
    if len(store) != 1:
        # Zero: the module is not on the forward path; more: it is reused, so "its" features
        # are ambiguous. Either way, guessing would silently measure the wrong thing.
        raise ValueError(
            f"layer {spec!r} ran {len(store)} times in one forward pass; name a layer that runs once"
        )
    value = store[0]
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != n:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"layer {spec!r} gave {shape} for a batch of {n}; need a tensor (N, ...)")
    value = value.detach().reshape(n, -1)
    return value.to(torch.promote_types(value.dtype, torch.float32))


def extract_features(
    model: nn.Module,
    inputs: Tensor,
    layer: str | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> Tensor:
    """Features ``(N, D)`` of one layer (default: the penultimate one, see :func:`feature_layer`).

    Runs in eval mode without gradients and restores every module's mode afterwards.

    Args:
        model: The classifier.
        inputs: ``(N, ...)`` inputs the model accepts.
        layer: A layer spec, or ``None`` for the input of the last ``nn.Linear``.
        batch_size: Inputs per forward pass.
        device: Where to run; defaults to the model's device.

    Raises:
        ValueError: As :func:`extract_layer_features`.

    Example:
        >>> mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> x = torch.rand(5, 4)
        >>> extract_features(mlp, x).shape
        torch.Size([5, 3])
        >>> torch.allclose(extract_features(mlp, x), mlp[:3](x))
        True
    """
    spec = feature_layer(model, layer)
    return extract_layer_features(model, inputs, [spec], batch_size=batch_size, device=device)[spec]
