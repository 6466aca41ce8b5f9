"""Model sources: how to rebuild a user's own classifier from files, without unpickling code.

A *model source* is a small JSON object, stored in a workspace's ``source.json``, that says how to
build the model object again in any later process:

* ``{"kind": "torchscript", "path": "model.pt"}``: a TorchScript archive written by
  ``torch.jit.save(torch.jit.script(model), "model.pt")``; it carries its own architecture and is
  read with :func:`torch.jit.load`, which never unpickles arbitrary Python objects.
* ``{"kind": "state_dict", "path": "weights.safetensors", "class": "package.module:ClassName",
  "kwargs": {...}}``: an importable ``nn.Module`` class (or a factory function returning one),
  constructed with ``kwargs``, whose weights come from a safetensors file or from a ``.pt``/``.pth``
  file read by ``torch.load(weights_only=True)``. Optional fields: ``"python_path"`` (a folder,
  relative to the base directory, appended to ``sys.path`` so that a module file the user keeps next
  to the model can be imported: never added implicitly) and ``"key"`` (the entry of a ``.pt``
  training checkpoint dict that holds the state dict, e.g. ``"model_state_dict"``).

Both kinds accept ``"sha256"``: the file's hash when the source was described; a file replaced
since then is refused (:class:`~unlearnkit.errors.CheckpointError`). Relative paths are resolved
against the ``base_dir`` the caller passes (the workspace, or the folder ``source.json`` names).

Errors are :class:`~unlearnkit.errors.CheckpointError` for files (missing, corrupt, pickled
objects, weights that do not fit) and :class:`~unlearnkit.errors.InvalidModelError` for code and
behaviour (malformed source, unimportable class, not an ``nn.Module``, constructor arguments that
do not fit, NaN weights, outputs that are not ``(N, C)`` logits); each names the file or class.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from unlearnkit.errors import CheckpointError, InvalidModelError
from unlearnkit.utils.hashing import file_sha256
from unlearnkit.utils.modules import check_finite_parameters, model_dtype, predict_logits

MODEL_KINDS: tuple[str, ...] = ("torchscript", "state_dict")
#: Suffixes a state-dict file may have; anything else is refused rather than guessed at.
SAFETENSORS_SUFFIXES: tuple[str, ...] = (".safetensors",)
TORCH_SUFFIXES: tuple[str, ...] = (".pt", ".pth")

_ALLOWED_KEYS: dict[str, frozenset[str]] = {
    "torchscript": frozenset({"kind", "path", "sha256"}),
    "state_dict": frozenset({"kind", "path", "class", "kwargs", "python_path", "key", "sha256"}),
}
# "package.module:Name" or "package.module:Outer.Inner": dotted identifiers on both sides.
_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_MAX_LISTED = 10


@dataclass(frozen=True)
class ModelSource:
    """A validated model source; ``to_dict()`` gives its JSON form.

    Attributes:
        kind: ``"torchscript"`` or ``"state_dict"``.
        path: The TorchScript archive or the weights file, relative to the base directory or
            absolute.
        class_path: ``"package.module:ClassName"`` (``state_dict`` only; JSON key ``"class"``).
        kwargs: Keyword arguments of the constructor (``state_dict`` only), JSON values.
        python_path: A folder to append to ``sys.path`` before importing ``class_path``.
        key: The entry of a ``.pt`` checkpoint dict holding the state dict.
        sha256: The file's sha256 when described; checked on load if set.

    Example:
        >>> source = ModelSource.from_dict({"kind": "state_dict", "path": "w.safetensors",
        ...                                 "class": "torch.nn:Linear", "kwargs": {"in_features": 4, "out_features": 3}})
        >>> source.class_path, source.to_dict()["kwargs"]
        ('torch.nn:Linear', {'in_features': 4, 'out_features': 3})
        >>> ModelSource.from_dict({"kind": "onnx", "path": "m.onnx"})
        Traceback (most recent call last):
        ...
        unlearnkit.errors.InvalidModelError: model source: unknown kind 'onnx'; expected one of ('torchscript', 'state_dict')
    """

    kind: str
    path: str
    class_path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    python_path: str | None = None
    key: str | None = None
    sha256: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | ModelSource) -> ModelSource:
        """Validates a JSON model source (or returns a :class:`ModelSource` unchanged).

        Raises:
            InvalidModelError: On an unknown kind, unknown or missing keys, or values of the
                wrong type, naming the key.
        """
        if isinstance(spec, ModelSource):
            return spec
        if not isinstance(spec, Mapping):
            raise InvalidModelError(f"model source must be a JSON object, got {type(spec).__name__}")
        kind = spec.get("kind")
        if kind not in MODEL_KINDS:
            raise InvalidModelError(f"model source: unknown kind {kind!r}; expected one of {MODEL_KINDS}")
        # Unknown keys are refused, not ignored: a typo ("kwarg", "python-path") would otherwise
        # silently build a different model than the user asked for.
        unknown = sorted(set(spec) - _ALLOWED_KEYS[kind])
        if unknown:
            raise InvalidModelError(
                f"model source of kind {kind!r}: unknown key(s) {unknown}; allowed: {sorted(_ALLOWED_KEYS[kind])}"
            )
        path = _string(spec, "path", required=True)
        sha256 = _string(spec, "sha256")
        if sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidModelError(f"model source: 'sha256' must be 64 lowercase hex digits, got {sha256!r}")
        if kind == "torchscript":
            return cls(kind, path, sha256=sha256)
        class_path = _string(spec, "class", required=True)
        if not _CLASS_PATH.match(class_path):
            raise InvalidModelError(
                f"model source: 'class' must look like 'package.module:ClassName', got {class_path!r}"
            )
        kwargs = spec.get("kwargs", {})
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise InvalidModelError(f"model source: 'kwargs' must be a JSON object, got {kwargs!r}")
        try:  # the source is stored as JSON: refuse what would not survive the round trip
            kwargs = json.loads(json.dumps(dict(kwargs), allow_nan=False))
        except (TypeError, ValueError) as err:
            raise InvalidModelError(f"model source: 'kwargs' must hold JSON values only: {err}") from None
        suffix = Path(path).suffix.lower()
        if suffix not in SAFETENSORS_SUFFIXES + TORCH_SUFFIXES:
            raise InvalidModelError(
                f"model source: weights file {path!r} must end in .safetensors, .pt or .pth (got {suffix or 'no suffix'!r})"
            )
        key = _string(spec, "key")
        if key is not None and suffix in SAFETENSORS_SUFFIXES:
            raise InvalidModelError("model source: 'key' only applies to .pt/.pth checkpoints, not safetensors files")
        return cls(kind, path, class_path, kwargs, _string(spec, "python_path"), key, sha256)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (only the keys that are set)."""
        out: dict[str, Any] = {"kind": self.kind, "path": self.path}
        if self.kind == "state_dict":
            out["class"] = self.class_path
            out["kwargs"] = dict(self.kwargs)
            if self.python_path is not None:
                out["python_path"] = self.python_path
            if self.key is not None:
                out["key"] = self.key
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out


def _string(spec: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = spec.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        what = "is missing" if value is None else f"must be a non-empty string, got {value!r}"
        raise InvalidModelError(f"model source: {key!r} {what}")
    return value


def _resolve(path: str, base_dir: str | Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(base_dir or ".") / p


def _stored_path(path: str | Path, base_dir: str | Path | None) -> str:
    """``path`` as it should be written into a source: relative to ``base_dir`` when inside it
    (so a workspace can be moved with its files), absolute otherwise."""
    resolved = Path(path).resolve()
    if base_dir is not None:
        with contextlib.suppress(ValueError):
            return resolved.relative_to(Path(base_dir).resolve()).as_posix()
    return str(resolved)


def describe_model_source(
    path: str | Path,
    *,
    class_path: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    python_path: str | Path | None = None,
    key: str | None = None,
    kind: str | None = None,
    base_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The JSON model source for a file, with its sha256 recorded.

    The kind is ``state_dict`` when a class is given, else ``torchscript``; a safetensors file
    without a class is refused (it holds weights only, not an architecture). Paths are stored
    relative to ``base_dir`` when they lie inside it.

    Raises:
        CheckpointError: If the file does not exist.
        InvalidModelError: If the resulting source is malformed.
    """
    file = _resolve(str(path), base_dir)
    if kind is None:
        if class_path is None and Path(path).suffix.lower() in SAFETENSORS_SUFFIXES:
            raise InvalidModelError(
                f"{path} holds weights only: name the model class that builds the architecture "
                "(class 'package.module:ClassName')"
            )
        kind = "state_dict" if class_path is not None else "torchscript"
    if not file.is_file():
        raise CheckpointError(f"model file not found: {file}")
    spec: dict[str, Any] = {"kind": kind, "path": _stored_path(file, base_dir), "sha256": file_sha256(file)}
    if kind == "state_dict":
        spec["class"] = class_path
        spec["kwargs"] = dict(kwargs or {})
        if python_path is not None:
            spec["python_path"] = _stored_path(_resolve(str(python_path), base_dir), base_dir)
        if key is not None:
            spec["key"] = key
    elif class_path is not None or kwargs or python_path is not None or key is not None:
        raise InvalidModelError("a TorchScript model carries its own architecture: class, kwargs, python_path and key do not apply")
    return ModelSource.from_dict(spec).to_dict()


# --------------------------------------------------------------------------------------------
# Importing the user's class
# --------------------------------------------------------------------------------------------


def _add_python_path(python_path: str, base_dir: str | Path | None) -> Path:
    folder = _resolve(python_path, base_dir).resolve()
    if not folder.is_dir():
        raise InvalidModelError(
            f"model source: python_path {folder} is not a directory (name the folder that holds the module file)"
        )
    # Appended, not prepended: the user's folder can add modules but never shadow the standard
    # library or an installed package for the rest of the process.
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    importlib.invalidate_caches()  # a module file written after the last import scan must be seen
    return folder


def import_model_class(
    class_path: str, *, python_path: str | None = None, base_dir: str | Path | None = None
) -> Callable[..., nn.Module]:
    """Imports ``"package.module:Name"``: an ``nn.Module`` subclass or a factory function.

    Importing runs the module's code, as any ``import`` does: only modules already importable, or
    in the ``python_path`` folder the user named, are ever imported.

    Raises:
        InvalidModelError: If the module cannot be imported (with its error), has no such
            attribute, the attribute is a class that is not an ``nn.Module`` or is not callable,
            or a module of the same name elsewhere shadows the one in ``python_path``.

    Example:
        >>> import_model_class("torch.nn:Linear")
        <class 'torch.nn.modules.linear.Linear'>
        >>> import_model_class("collections:OrderedDict")
        Traceback (most recent call last):
        ...
        unlearnkit.errors.InvalidModelError: model class 'collections:OrderedDict' is not a torch.nn.Module subclass (it is a class deriving from dict)
    """
    if not _CLASS_PATH.match(class_path):
        raise InvalidModelError(f"model class must look like 'package.module:ClassName', got {class_path!r}")
    module_name, _, qualname = class_path.partition(":")
    folder = _add_python_path(python_path, base_dir) if python_path is not None else None
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything while it is executed
        hint = "" if folder else "; if it is a file next to your model, pass its folder as python_path"
        raise InvalidModelError(
            f"cannot import module {module_name!r} for model class {class_path!r}: "
            f"{type(err).__name__}: {err}{hint}"
        ) from err
    if folder is not None:
        _check_not_shadowed(module, module_name, folder, class_path)
    obj: Any = module
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise InvalidModelError(
                f"model class {class_path!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                f"has no attribute {qualname!r}"
            ) from None
    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            bases = ", ".join(b.__name__ for b in obj.__mro__[1:-1]) or "object"
            raise InvalidModelError(
                f"model class {class_path!r} is not a torch.nn.Module subclass (it is a class deriving from {bases})"
            )
    elif not callable(obj):
        raise InvalidModelError(
            f"model class {class_path!r} is a {type(obj).__name__}, neither an nn.Module class nor a factory function"
        )
    return obj


def _check_not_shadowed(module: Any, module_name: str, folder: Path, class_path: str) -> None:
    top = module_name.split(".")[0]
    in_folder = (folder / f"{top}.py").exists() or (folder / top).is_dir()
    origin = getattr(sys.modules.get(top), "__file__", None)
    if in_folder and origin is not None and folder not in Path(origin).resolve().parents:
        raise InvalidModelError(
            f"model class {class_path!r}: module {top!r} was imported from {origin}, not from python_path "
            f"{folder} (a module of the same name is installed or already imported); rename your module"
        )


def _construct(factory: Callable[..., nn.Module], kwargs: Mapping[str, Any], class_path: str) -> nn.Module:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            raise InvalidModelError(
                f"kwargs {dict(kwargs)} do not fit the constructor of {class_path!r}{signature}: {err}"
            ) from None
    try:
        model = factory(**kwargs)
    except Exception as err:  # user code: report whatever it raised, with the class named
        raise InvalidModelError(
            f"constructing model {class_path!r} with kwargs {dict(kwargs)} failed: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(model, nn.Module):
        raise InvalidModelError(f"model factory {class_path!r} returned a {type(model).__name__}, not an nn.Module")
    return model


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _check_file(path: Path, sha256: str | None, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a regular file")
    if sha256 is not None and file_sha256(path) != sha256:
        raise CheckpointError(
            f"{what} {path} does not match the sha256 recorded in the model source "
            "(the file was replaced or corrupted since the source was described)"
        )


def load_torchscript(path: str | Path, *, sha256: str | None = None) -> nn.Module:
    """Loads a TorchScript archive on the CPU, in eval mode.

    :func:`torch.jit.load` reads TorchScript code and tensors; unlike ``torch.load`` it never
    reconstructs arbitrary pickled Python objects.

    Raises:
        CheckpointError: If the file is missing, does not match ``sha256``, or is not a
            TorchScript archive (with a hint when it is a ``torch.save`` file instead).
    """
    path = Path(path)
    _check_file(path, sha256, "TorchScript model")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError, ValueError, ... for bad archives
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "constants.pkl" in message:  # a valid zip without TorchScript code: torch.save's format
            raise CheckpointError(
                f"{path} is not a TorchScript model: it looks like a torch.save file. Save the model with "
                "torch.jit.save(torch.jit.script(model), path), or use kind 'state_dict' with its class"
            ) from None
        raise CheckpointError(f"{path} is not a readable TorchScript model: {message}") from None
    return model.eval()


def load_state_file(path: str | Path, *, key: str | None = None, sha256: str | None = None) -> dict[str, Tensor]:
    """Reads a state dict from safetensors, or from a ``.pt``/``.pth`` file without unpickling.

    ``.pt``/``.pth`` files go through ``torch.load(weights_only=True)``, whose restricted
    unpickler builds only tensors and plain containers: a file holding pickled Python objects
    (a whole ``torch.save(model)``, a custom class) is refused before any of its code runs.

    Args:
        path: The weights file.
        key: For a ``.pt`` training checkpoint (a dict of state dict, optimizer, epoch, ...): the
            entry that holds the model's state dict.
        sha256: Expected sha256 of the file, if known.

    Raises:
        CheckpointError: If the file is missing, corrupt, holds pickled objects, is TorchScript,
            or is not a mapping of names to tensors.
    """
    path = Path(path)
    _check_file(path, sha256, "model weights file")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            state: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    elif suffix in TORCH_SUFFIXES:
        state = _torch_load_weights_only(path)
        if key is not None:
            if not isinstance(state, Mapping) or key not in state:
                keys = sorted(map(str, state)) if isinstance(state, Mapping) else []
                raise CheckpointError(f"{path} has no entry {key!r} (its entries: {keys[:_MAX_LISTED]})")
            state = state[key]
    else:
        raise CheckpointError(f"model weights file {path} must end in .safetensors, .pt or .pth")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict (a mapping of names to tensors)")
    bad = [name for name, value in state.items() if not isinstance(name, str) or not isinstance(value, Tensor)]
    if bad:
        nested = [name for name in bad if isinstance(state[name], Mapping)]
        hint = f"; if it is a training checkpoint, set 'key' to the entry holding the state dict (one of {nested})" if nested else ""
        raise CheckpointError(
            f"{path} is not a plain state dict: {len(bad)} entr(ies) are not tensors, e.g. "
            f"{[str(b) for b in bad[:_MAX_LISTED]]}{hint}"
        )
    return dict(state)


def _torch_load_weights_only(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # legacy-format files warn; the outcome is reported below
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # junk raises KeyError, EOFError, UnpicklingError, RuntimeError, ...
        message = str(err)
        if "TorchScript" in message:
            raise CheckpointError(
                f"{path} is a TorchScript archive, not a state dict: use kind 'torchscript' for it"
            ) from None
        unsafe = _unsafe_globals(path)
        # torch's weights-only unpickler names a refused class "Unsupported global" (its error
        # type is pickle's UnpicklingError; the message is what identifies the case).
        if unsafe or "Unsupported global" in message:
            named = f" ({', '.join(unsafe[:_MAX_LISTED])})" if unsafe else ""
            raise CheckpointError(
                f"{path} holds pickled Python objects{named} and will not be loaded: unpickling them "
                "could run arbitrary code. Save the weights only, e.g. "
                "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors') or "
                "torch.save(model.state_dict(), 'weights.pt')"
            ) from None
        first = message.splitlines()[0] if message else type(err).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch weights file (corrupt or truncated?): {first}") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The Python globals a ``.pt`` file's pickle would need, read without executing it
    (empty when this torch cannot tell, or the file is not a zip checkpoint)."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        return list(finder(str(path)))
    except Exception:  # corrupt files: the caller reports them as such
        return []


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def apply_state(model: nn.Module, state: Mapping[str, Tensor], *, what: str = "state dict") -> nn.Module:
    """Loads ``state`` into ``model`` strictly, in place, and returns the model.

    Works for ``nn.Module`` and TorchScript modules alike. Nothing is copied unless every key
    matches in name and shape and every tensor is finite, so a refused state leaves the model as
    it was.

    Raises:
        CheckpointError: Listing missing keys, unexpected keys and shape mismatches.
        InvalidModelError: If a tensor holds NaN or infinite values.

    Example:
        >>> model = apply_state(nn.Linear(2, 1), {"weight": torch.ones(1, 2), "bias": torch.zeros(1)})
        >>> model.weight.tolist()
        [[1.0, 1.0]]
        >>> apply_state(nn.Linear(2, 1), {"weight": torch.ones(3, 2)}, what="weights.pt")
        Traceback (most recent call last):
        ...
        unlearnkit.errors.CheckpointError: weights.pt does not fit Linear: 1 missing key(s) ['bias']; 1 shape mismatch(es) weight: file (3, 2) vs model (1, 2)
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{what} is a {type(state).__name__}, not a state dict")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and isinstance(state[k], Tensor) and state[k].shape != expected[k].shape
    ]
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], Tensor)]
    if missing or unexpected or mismatched or not_tensors:
        parts = []
        for label, items in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", mismatched),
            ("non-tensor value(s)", not_tensors),
        ):
            if items:
                listed = ", ".join(items[:_MAX_LISTED]) if label == "shape mismatch(es)" else str(items[:_MAX_LISTED])
                parts.append(f"{len(items)} {label} {listed}")
        hint = ""
        for prefix, origin in (("module.", "nn.DataParallel"), ("_orig_mod.", "torch.compile")):
            if unexpected and all(k.startswith(prefix) for k in unexpected):
                hint = f" (the keys start with {prefix!r}: the weights were saved from a {origin} wrapper; strip that prefix)"
        raise CheckpointError(f"{what} does not fit {_model_name(model)}: {'; '.join(parts)}{hint}")
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if non_finite:
        raise InvalidModelError(
            f"{what} has NaN or infinite values in {len(non_finite)} tensor(s): {non_finite[:_MAX_LISTED]}"
        )
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as err:  # e.g. dtype casts torch refuses; names and shapes matched above
        raise CheckpointError(f"{what} does not fit {_model_name(model)}: {err}") from None
    return model


def _model_name(model: nn.Module) -> str:
    name = getattr(model, "original_name", None)  # TorchScript modules keep the scripted class name
    return str(name) if name else type(model).__name__


def build_model(source: Mapping[str, Any] | ModelSource, base_dir: str | Path | None = None) -> nn.Module:
    """A fresh model with the source's architecture, on the CPU, in eval mode.

    For ``state_dict`` sources the class is constructed and the weights file is *not* read: the
    ledger loads its own current version into the result with :func:`apply_state`, so the
    original weights file is only needed once, by :func:`load_model`. A TorchScript archive is
    the architecture, so it is reloaded (and its sha256 checked) every time.

    Raises:
        CheckpointError: For a missing, replaced or unreadable TorchScript file.
        InvalidModelError: For a class that cannot be imported or constructed.
    """
    spec = ModelSource.from_dict(source)
    if spec.kind == "torchscript":
        return load_torchscript(_resolve(spec.path, base_dir), sha256=spec.sha256)
    factory = import_model_class(spec.class_path or "", python_path=spec.python_path, base_dir=base_dir)
    return _construct(factory, spec.kwargs, spec.class_path or "").eval()


def model_builder(source: Mapping[str, Any] | ModelSource, base_dir: str | Path | None = None) -> Callable[[], nn.Module]:
    """A zero-argument callable building fresh models (for ``apply_pending``/``verify``).

    The source is validated now, so a malformed one fails before any work starts.
    """
    spec = ModelSource.from_dict(source)
    return lambda: build_model(spec, base_dir)


def load_model(source: Mapping[str, Any] | ModelSource, base_dir: str | Path | None = None) -> nn.Module:
    """The model a source describes, with its weights, on the CPU, in eval mode.

    Args:
        source: A JSON model source (see the module docstring) or a :class:`ModelSource`.
        base_dir: The folder relative paths in the source are resolved against (default: the
            current directory).

    Raises:
        CheckpointError: Missing, replaced, corrupt or pickled files; weights that do not fit.
        InvalidModelError: Unimportable or unconstructible classes, NaN weights, or a model
            without trainable parameters.

    Example:
        >>> import tempfile, safetensors.torch
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     safetensors.torch.save_file(nn.Linear(4, 3).state_dict(), f"{folder}/w.safetensors")
        ...     model = load_model({"kind": "state_dict", "path": "w.safetensors", "class": "torch.nn:Linear",
        ...                         "kwargs": {"in_features": 4, "out_features": 3}}, folder)
        >>> type(model).__name__, model.training
        ('Linear', False)
    """
    spec = ModelSource.from_dict(source)
    model = build_model(spec, base_dir)
    path = _resolve(spec.path, base_dir)
    if spec.kind == "state_dict":
        apply_state(model, load_state_file(path, key=spec.key, sha256=spec.sha256), what=f"weights file {path}")
    else:
        check_finite_parameters(model, f"TorchScript model {path}")  # its weights come with it
    if not any(p.requires_grad for p in model.parameters()):
        raise InvalidModelError(
            f"model {path} has no trainable parameters, so there is nothing to unlearn "
            "(a torch.jit.freeze'd module inlines its weights as constants: save it without freezing)"
        )
    return model.eval()


@torch.no_grad()
def check_model(
    model: nn.Module, sample_inputs: Tensor, *, num_classes: int | None = None, what: str = "the model"
) -> int:
    """Runs ``model`` on one row of ``sample_inputs`` and returns its number of classes.

    Args:
        model: The classifier.
        sample_inputs: Inputs shaped ``(N, ...)`` as the data source gives them; only the first
            row is used.
        num_classes: The data's number of classes, if known: the model must have at least as
            many outputs.
        what: How to name the model in errors (e.g. its file).

    Raises:
        InvalidModelError: If the model fails on the row, does not return ``(1, C)`` logits with
            ``C >= 2``, returns non-finite logits, or has fewer outputs than ``num_classes``.

    Example:
        >>> check_model(nn.Linear(4, 3), torch.zeros(5, 4))
        3
        >>> check_model(nn.Linear(4, 1), torch.zeros(5, 4))
        Traceback (most recent call last):
        ...
        unlearnkit.errors.InvalidModelError: the model returns 1 output per row; a classifier must return C >= 2 logits (a binary classifier with one logit: return two)
    """
    if not isinstance(sample_inputs, Tensor) or sample_inputs.dim() < 2 or sample_inputs.shape[0] == 0:
        shape = tuple(sample_inputs.shape) if isinstance(sample_inputs, Tensor) else type(sample_inputs).__name__
        raise InvalidModelError(f"checking {what} needs at least one input row shaped (N, ...), got {shape}")
    row = sample_inputs[:1].to(model_dtype(model))
    try:
        logits = predict_logits(model, row)
    except InvalidModelError as err:
        raise InvalidModelError(f"{what}: {err}") from None
    classes = int(logits.shape[1])
    if classes < 2:
        raise InvalidModelError(
            f"{what} returns {classes} output per row; a classifier must return C >= 2 logits "
            "(a binary classifier with one logit: return two)"
        )
    if not torch.isfinite(logits).all():
        raise InvalidModelError(f"{what} returns NaN or infinite logits on the first data row")
    if num_classes is not None and classes < num_classes:
        raise InvalidModelError(
            f"{what} has {classes} outputs but the data has {num_classes} classes (labels up to {num_classes - 1})"
        )
    return classes
