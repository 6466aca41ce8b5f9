"""MNIST from the project's shared data folder (``mnist.npz``), read without unpickling."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from unlearnkit.data.splits import DataSplit

#: Environment variable naming the folder that holds ``mnist.npz`` (and other data files).
DATA_ENV = "UNLEARNKIT_DATA_DIR"
_EXPECTED = {"x_train": (60000, 28, 28), "y_train": (60000,), "x_test": (10000, 28, 28), "y_test": (10000,)}


def default_data_dir() -> Path:
    """Where the data files are looked for.

    ``$UNLEARNKIT_DATA_DIR`` if set; else the first existing of ``../shared/data`` from the
    current directory and ``../shared/data`` from the source checkout this package runs from
    (the project's layout: the repository with ``shared/`` beside it).
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    candidates = [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[4] / "shared" / "data"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def load_mnist(path: str | Path | None = None) -> DataSplit:
    """MNIST as ``(N, 1, 28, 28)`` float32 images in ``[0, 1]`` with the official train/test split.

    Args:
        path: The ``mnist.npz`` file (arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``,
            uint8); defaults to ``mnist.npz`` in :func:`default_data_dir`.

    Raises:
        FileNotFoundError: If the file is absent, naming where it was looked for.
        ValueError: If the file lacks an array or an array has an unexpected shape.
    """
    path = Path(path) if path is not None else default_data_dir() / "mnist.npz"
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST not found at {path}; pass its path or set {DATA_ENV} to the folder holding mnist.npz"
        )
    with np.load(path, allow_pickle=False) as archive:
        arrays = {}
        for key, shape in _EXPECTED.items():
            if key not in archive.files:
                raise ValueError(f"{path} has no array {key!r} (has {archive.files})")
            array = archive[key]  # each access decompresses again: read once
            if array.shape != shape:
                raise ValueError(f"{path}: {key} has shape {array.shape}, expected {shape}")
            arrays[key] = array

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a.astype(np.float32) / 255.0)[:, None])

    return DataSplit(
        name="mnist",
        x_train=images(arrays["x_train"]),
        y_train=torch.from_numpy(arrays["y_train"].astype(np.int64)),
        x_test=images(arrays["x_test"]),
        y_test=torch.from_numpy(arrays["y_test"].astype(np.int64)),
        num_classes=10,
    )
