"""The embedded default model: a small CNN trained on digits, cached as safetensors.

The model is trained deterministically from a fixed recipe the first time it is asked for and
stored in the user's cache directory with its sha256 in a sidecar JSON file; later runs verify
the hash and reuse it. A cache file that fails the check is retrained, never trusted.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs
import torch

from unlearnkit.data.digits import load_digits_split
from unlearnkit.data.splits import DataSplit
from unlearnkit.errors import CheckpointError
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.models.small_cnn import SmallCNN
from unlearnkit.models.training import TrainRecipe, train_classifier
from unlearnkit.utils.checkpoint import load_state_dict, save_state_dict
from unlearnkit.utils.versions import environment_versions

#: Environment variable that overrides the cache directory.
CACHE_ENV = "UNLEARNKIT_CACHE_DIR"

DIGITS_RECIPE = TrainRecipe(epochs=30, batch_size=64, lr=2e-3, weight_decay=1e-4, seed=0)


def cache_dir() -> Path:
    """Where unlearnkit caches models: ``$UNLEARNKIT_CACHE_DIR`` or the user cache directory."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("unlearnkit"))


@dataclass
class DefaultModel:
    """The default model with its data and provenance.

    Attributes:
        model: The trained ``SmallCNN`` in eval mode.
        data: The digits split it was trained on.
        path: Its safetensors file.
        sha256: The file's sha256, as recorded when it was written.
        test_accuracy: Accuracy in percent on ``data``'s test set.
        recipe: The training recipe.
        from_cache: Whether it was loaded rather than trained by this call.
        train_seconds: Training time when it was trained.
    """

    model: SmallCNN
    data: DataSplit
    path: Path
    sha256: str
    test_accuracy: float
    recipe: TrainRecipe
    from_cache: bool
    train_seconds: float


def _build() -> SmallCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DIGITS_RECIPE.seed)
        return SmallCNN(in_channels=1, num_classes=10, image_size=8)


def load_default_model(*, directory: str | Path | None = None, progress: bool = False) -> DefaultModel:
    """Loads the default digits CNN from the cache, training and caching it on first use.

    Args:
        directory: Cache directory; defaults to :func:`cache_dir`.
        progress: Show a progress bar while training.

    Example:
        >>> import tempfile
        >>> default = load_default_model(directory=tempfile.mkdtemp())  # trains once, ~10 s
        >>> default.test_accuracy > 95, default.from_cache
        (True, False)
    """
    directory = Path(directory) if directory is not None else cache_dir()
    stem = f"digits-smallcnn-{DIGITS_RECIPE.fingerprint()}"
    path, sidecar = directory / f"{stem}.safetensors", directory / f"{stem}.json"
    data = load_digits_split()
    model = _build()
    if path.is_file() and sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text())
            load_state_dict(model, path, expected_sha256=record["sha256"])
            return DefaultModel(
                model.eval(), data, path, record["sha256"], accuracy(model, data.x_test, data.y_test),
                DIGITS_RECIPE, True, 0.0,
            )
        except (CheckpointError, KeyError, json.JSONDecodeError) as err:
            warnings.warn(f"cached default model is unusable ({err}); retraining it", stacklevel=2)
            model = _build()
    started = time.perf_counter()
    train_classifier(model, data.x_train, data.y_train, DIGITS_RECIPE, progress=progress)
    seconds = time.perf_counter() - started
    test_acc = accuracy(model, data.x_test, data.y_test)
    sha = save_state_dict(model, path, metadata={"recipe": json.dumps(asdict(DIGITS_RECIPE))})
    record = {
        "sha256": sha,
        "recipe": asdict(DIGITS_RECIPE),
        "test_accuracy": test_acc,
        "train_seconds": seconds,
        "versions": environment_versions(),
    }
    tmp = sidecar.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, sidecar)
    return DefaultModel(model, data, path, sha, test_acc, DIGITS_RECIPE, False, seconds)
