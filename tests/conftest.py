"""Shared fixtures: the digits split, tiny trained models and a forget set.

Every model fixture is trained here from a seed (never read from a cache), and the whole test
session runs with ``UNLEARNKIT_CACHE_DIR`` pointing at a temporary directory so that no test
writes to the user's real cache.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from unlearnkit.data import DataSplit, draw_forget_indices, load_digits_split
from unlearnkit.models import SmallCNN, TrainRecipe, train_classifier
from unlearnkit.models.pretrained import CACHE_ENV
from unlearnkit.utils.modules import predict_logits


@dataclass
class _SessionState:
    """What ``pytest_configure`` changed, so that ``pytest_unconfigure`` can undo it."""

    cache_dir: str
    old_cache_env: str | None
    old_threads: int


_STATE: list[_SessionState] = []


def pytest_configure(config: pytest.Config) -> None:
    """Points the unlearnkit cache at a fresh temporary directory for the whole session, and
    runs torch single-threaded.

    Done at configure time (not in a fixture) so that it also covers doctests collected from
    ``src/`` in the same run. The models here are tiny: one intra-op thread is as fast as two on
    an idle machine, and 20-50x faster when other processes keep the cores busy (OpenMP threads
    then wait on each other).
    """
    state = _SessionState(
        cache_dir=tempfile.mkdtemp(prefix="unlearnkit-test-cache-"),
        old_cache_env=os.environ.get(CACHE_ENV),
        old_threads=torch.get_num_threads(),
    )
    _STATE.append(state)
    os.environ[CACHE_ENV] = state.cache_dir
    torch.set_num_threads(1)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Restores the environment and thread count, and removes the temporary cache directory."""
    if not _STATE:
        return
    state = _STATE.pop()
    torch.set_num_threads(state.old_threads)
    if state.old_cache_env is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = state.old_cache_env
    shutil.rmtree(state.cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def session_cache_dir() -> Path:
    """The temporary cache directory the session runs with."""
    path = Path(os.environ[CACHE_ENV])
    assert path.is_dir() and "unlearnkit-test-cache-" in path.name
    return path


@pytest.fixture(scope="session")
def digits() -> DataSplit:
    """The default digits split (1437 train / 360 test, 1x8x8 images in [0, 1])."""
    return load_digits_split()


def _train(model: nn.Module, data: DataSplit, recipe: TrainRecipe) -> nn.Module:
    """Trains ``model`` on the digits training set and returns it in eval mode."""
    return train_classifier(model, data.x_train, data.y_train, recipe)


@pytest.fixture(scope="session")
def trained_cnn(digits: DataSplit) -> SmallCNN:
    """A SmallCNN trained for 5 epochs on digits (~99 % test accuracy, ~1 s). Do not mutate."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SmallCNN(in_channels=1, num_classes=10, image_size=8)
    _train(model, digits, TrainRecipe(epochs=5, batch_size=64, lr=2e-3, seed=0))
    return model


@pytest.fixture(scope="session")
def trained_linear(digits: DataSplit) -> nn.Sequential:
    """``Flatten -> Linear(64, 10)`` trained on digits (~95 % test accuracy). Do not mutate."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    _train(model, digits, TrainRecipe(epochs=20, batch_size=64, lr=2e-2, seed=0))
    return model


@pytest.fixture
def cnn(trained_cnn: SmallCNN) -> SmallCNN:
    """A private copy of the trained CNN that a test may change freely."""
    return copy.deepcopy(trained_cnn)


@pytest.fixture(scope="session")
def forget_indices(digits: DataSplit, trained_cnn: SmallCNN) -> Tensor:
    """Four training indices of mixed classes, all classified correctly by ``trained_cnn``.

    Seed 1 is a set on which every built-in method converges with the fast settings of
    ``helpers.FAST_SETTINGS`` (on seed 0's set NegGrad's unbounded loss overflows before the last
    instance flips, at any learning rate down to 1e-4: the paper's known failure, not a bug).
    """
    indices = draw_forget_indices(digits.x_train.shape[0], 4, seed=1)
    preds = predict_logits(trained_cnn, digits.x_train[indices]).argmax(dim=1)
    assert torch.equal(preds, digits.y_train[indices]), (
        "fixture expects a correctly classified forget set"
    )
    assert len(set(digits.y_train[indices].tolist())) > 1, "fixture expects mixed classes"
    return indices


@pytest.fixture(scope="session")
def forget(digits: DataSplit, forget_indices: Tensor) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` of the four forget instances."""
    return digits.x_train[forget_indices].clone(), digits.y_train[forget_indices].clone()


@pytest.fixture(scope="session")
def new_labels(forget: tuple[Tensor, Tensor]) -> Tensor:
    """Relabeling targets for ``forget``: ``(label + 3) mod 10``, never the label itself."""
    return (forget[1] + 3) % 10
