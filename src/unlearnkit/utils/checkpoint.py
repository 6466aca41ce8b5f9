"""Checkpoints as safetensors, written atomically, loaded without unpickling."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from unlearnkit.errors import CheckpointError
from unlearnkit.utils.hashing import file_sha256
from unlearnkit.utils.io import write_atomic


def save_state_dict(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> str:
    """Writes ``model``'s state dict to ``path`` as safetensors, atomically; returns its sha256.

    The file is written to a temporary name in the same directory, flushed to disk and then
    renamed, so a crash leaves either the old file or the new one, never half of one.
    """
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    return file_sha256(path)


def load_state_dict(
    model: nn.Module, path: str | Path, *, expected_sha256: str | None = None
) -> nn.Module:
    """Loads a safetensors state dict from ``path`` into ``model`` (in place) and returns it.

    Raises:
        CheckpointError: If the file is missing, is not a valid safetensors file, does not match
            ``expected_sha256``, or its tensors do not fit the model.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if expected_sha256 is not None and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"checkpoint {path} does not match its recorded sha256 (corrupt or replaced)")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {err}") from None
    return model

