"""Accuracy metrics, the digits and MNIST data and forget-set draws, the models and their
training and cache, and the utilities (checkpoints, hashes, module helpers)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.metrics import accuracy_score
from torch import nn

import unlearnkit
from helpers import modes, same_state, same_weights, snapshot
from unlearnkit import CheckpointError, InvalidModelError, InvalidRequestError
from unlearnkit.data import DataSplit, draw_forget_indices, load_digits_split, random_new_labels
from unlearnkit.data import mnist as mnist_module
from unlearnkit.data.mnist import DATA_ENV, default_data_dir, load_mnist
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.models import (
    DefaultModel,
    SmallCNN,
    TrainRecipe,
    load_default_model,
    train_classifier,
)
from unlearnkit.models.pretrained import DIGITS_RECIPE, PRETRAINED, cache_dir, load_pretrained
from unlearnkit.utils import checkpoint as checkpoint_module
from unlearnkit.utils.checkpoint import load_state_dict, save_state_dict
from unlearnkit.utils.hashing import array_sha256, file_sha256, state_dict_sha256, tensor_sha256
from unlearnkit.utils.modules import (
    check_finite_parameters,
    eval_mode,
    model_device,
    model_dtype,
    predict_logits,
    resolve_device,
    train_with_frozen_batchnorm,
)
from unlearnkit.utils.versions import environment_versions

# -- accuracy and evaluate -------------------------------------------------------------------------


def _identity_classifier() -> nn.Linear:
    """``Linear(2, 2)`` with identity weight and zero bias: predicts the larger coordinate."""
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    return model


def test_accuracy_hand_computation() -> None:
    model = _identity_classifier()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0], [0.1, 0.2]])
    # predictions: 0, 1, 0, 1
    assert accuracy(model, x, torch.tensor([0, 1, 0, 1])) == 100.0
    assert accuracy(model, x, torch.tensor([0, 0, 0, 0])) == 50.0
    assert accuracy(model, x, torch.tensor([1, 0, 1, 1])) == 25.0
    assert accuracy(model, x, torch.tensor([1, 0, 1, 0])) == 0.0


def test_accuracy_matches_sklearn(trained_linear: nn.Module, digits: DataSplit) -> None:
    with torch.no_grad():
        preds = trained_linear(digits.x_test).argmax(1).numpy()
    expected = 100.0 * accuracy_score(digits.y_test.numpy(), preds)
    assert 90.0 < expected < 100.0
    assert accuracy(trained_linear, digits.x_test, digits.y_test) == pytest.approx(
        expected, abs=1e-4
    )
    assert accuracy(trained_linear, digits.x_test, digits.y_test, batch_size=7) == pytest.approx(
        expected, abs=1e-4
    )
    assert accuracy(trained_linear, digits.x_test.numpy(), digits.y_test.numpy()) == pytest.approx(
        expected, abs=1e-4
    )


def test_evaluate_keys_and_values(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    flipped = (digits.y_test + 1) % 10
    metrics = unlearnkit.evaluate(
        trained_cnn,
        {
            "test": (digits.x_test, digits.y_test),
            "train": (digits.x_train, digits.y_train),
            "wrong": (digits.x_test, flipped),
        },
    )
    assert list(metrics) == ["acc/test", "acc/train", "acc/wrong"]
    assert metrics["acc/test"] > 95.0 and metrics["acc/train"] > 95.0
    assert metrics["acc/wrong"] < 5.0
    assert metrics["acc/test"] == accuracy(trained_cnn, digits.x_test, digits.y_test)
    assert unlearnkit.evaluate(trained_cnn, {}) == {}


def test_accuracy_errors() -> None:
    model = _identity_classifier()
    with pytest.raises(InvalidRequestError, match="cannot measure accuracy on an empty set"):
        accuracy(model, torch.empty(0, 2), torch.empty(0, dtype=torch.long))
    with pytest.raises(InvalidRequestError, match="5 inputs but 4 labels"):
        accuracy(model, torch.rand(5, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidRequestError, match="3 inputs but 2 labels"):
        unlearnkit.evaluate(model, {"bad": (torch.rand(3, 2), torch.zeros(2, dtype=torch.long))})


def test_accuracy_runs_in_eval_mode_and_restores_the_mode(
    trained_cnn: SmallCNN, digits: DataSplit
) -> None:
    model = copy.deepcopy(trained_cnn).train()
    state = snapshot(model)
    in_eval = accuracy(model, digits.x_test, digits.y_test)
    assert in_eval == accuracy(trained_cnn, digits.x_test, digits.y_test)
    assert model.training and same_state(model, state)


# -- digits and forget draws -----------------------------------------------------------------------


def test_digits_split_shapes_and_range(digits: DataSplit) -> None:
    assert digits.name == "digits" and digits.num_classes == 10
    assert tuple(digits.x_train.shape) == (1437, 1, 8, 8)
    assert tuple(digits.x_test.shape) == (360, 1, 8, 8)
    assert digits.y_train.shape == (1437,) and digits.y_test.shape == (360,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8)
    for x in (digits.x_train, digits.x_test):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(digits.y_train.tolist()) == set(range(10)) == set(digits.y_test.tolist())


def test_digits_split_is_stratified(digits: DataSplit) -> None:
    train_counts = torch.bincount(digits.y_train, minlength=10).double()
    test_counts = torch.bincount(digits.y_test, minlength=10).double()
    total = train_counts + test_counts
    assert torch.all((test_counts - 0.2 * total).abs() <= 1.0)


def test_digits_split_is_deterministic_and_seeded(digits: DataSplit) -> None:
    again = load_digits_split()
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    other = load_digits_split(seed=1)
    assert not torch.equal(other.y_train, digits.y_train)
    half = load_digits_split(test_size=0.5)
    assert half.x_train.shape[0] + half.x_test.shape[0] == 1797
    assert abs(half.x_test.shape[0] - 899) <= 1


def test_draw_forget_indices() -> None:
    idx = draw_forget_indices(1437, 16, seed=3)
    assert idx.dtype == torch.long and idx.shape == (16,)
    assert len(set(idx.tolist())) == 16
    assert idx.tolist() == sorted(idx.tolist())
    assert idx.min() >= 0 and idx.max() < 1437
    assert torch.equal(idx, draw_forget_indices(1437, 16, seed=3))
    assert not torch.equal(idx, draw_forget_indices(1437, 16, seed=4))
    assert draw_forget_indices(5, 5, seed=0).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k", [0, -1, 11])
def test_draw_forget_indices_k_out_of_range(k: int) -> None:
    with pytest.raises(ValueError, match=r"k must be in 1..10"):
        draw_forget_indices(10, k, seed=0)


def test_random_new_labels() -> None:
    labels = torch.arange(10).repeat(500)
    new = random_new_labels(labels, 10, seed=0)
    assert new.shape == labels.shape and new.dtype == torch.long
    assert (new != labels).all()
    assert new.min() >= 0 and new.max() <= 9
    assert torch.equal(new, random_new_labels(labels, 10, seed=0))
    assert not torch.equal(new, random_new_labels(labels, 10, seed=1))
    shifts = torch.bincount((new - labels) % 10, minlength=10)
    assert shifts[0] == 0 and ((shifts[1:] > 450) & (shifts[1:] < 660)).all()  # ~555 each
    assert torch.equal(
        random_new_labels(torch.tensor([0, 1, 1]), 2, seed=5), torch.tensor([1, 0, 0])
    )


# -- MNIST -----------------------------------------------------------------------------------------

#: The array shapes of the real ``mnist.npz``.
MNIST_SHAPES = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}


def _write_npz(path: Path, **overrides: np.ndarray | None) -> Path:
    """Writes an ``mnist.npz``-like file of zero arrays of the real shapes.

    ``overrides`` replaces an array (or, with ``None``, leaves it out).
    """
    arrays = {key: np.zeros(shape, dtype=np.uint8) for key, shape in MNIST_SHAPES.items()}
    for key, value in overrides.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_load_mnist_missing_file_names_the_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere" / "mnist.npz"
    with pytest.raises(FileNotFoundError, match=f"MNIST not found at {missing}.*{DATA_ENV}"):
        load_mnist(missing)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"MNIST not found at {tmp_path / 'mnist.npz'}"):
        load_mnist()


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("x_test", None, r"has no array 'x_test'"),
        ("y_train", None, r"has no array 'y_train'"),
        (
            "x_train",
            np.zeros((100, 28, 28), np.uint8),
            r"x_train has shape \(100, 28, 28\), expected \(60000, 28, 28\)",
        ),
        (
            "x_test",
            np.zeros((10000, 784), np.uint8),
            r"x_test has shape \(10000, 784\), expected \(10000, 28, 28\)",
        ),
        (
            "y_test",
            np.zeros((10000, 1), np.uint8),
            r"y_test has shape \(10000, 1\), expected \(10000,\)",
        ),
    ],
)
def test_load_mnist_rejects_wrong_arrays(
    tmp_path: Path, key: str, value: np.ndarray | None, match: str
) -> None:
    path = _write_npz(tmp_path / "mnist.npz", **{key: value})
    with pytest.raises(ValueError, match=match):
        load_mnist(path)


def test_load_mnist_rejects_a_file_that_is_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"not an archive")
    with pytest.raises((ValueError, OSError)):
        load_mnist(path)


def test_load_mnist_refuses_pickled_arrays(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "mnist.npz", y_test=np.array([None] * 10000, dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_mnist(path)


def test_load_mnist_converts_a_well_formed_file(tmp_path: Path) -> None:
    x_train = np.zeros(MNIST_SHAPES["x_train"], np.uint8)
    x_train[0, 0, 0], x_train[1, 5, 7] = 255, 51
    y_train = (np.arange(60000) % 10).astype(np.uint8)
    path = _write_npz(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train)
    data = load_mnist(str(path))  # a str path works too
    assert data.name == "mnist" and data.num_classes == 10
    assert tuple(data.x_train.shape) == (60000, 1, 28, 28)
    assert tuple(data.x_test.shape) == (10000, 1, 28, 28)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.input_shape == (1, 28, 28)
    assert float(data.x_train[0, 0, 0, 0]) == 1.0
    assert float(data.x_train[1, 0, 5, 7]) == pytest.approx(0.2)
    assert float(data.x_train.sum()) == pytest.approx(1.2)
    assert torch.equal(data.y_train[:12], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))


def test_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "elsewhere"))
    assert default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(DATA_ENV)
    # ../shared/data beside the current directory wins when it exists ...
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert default_data_dir() == tmp_path / "shared" / "data"
    # ... else the one beside the source checkout, else the current directory's candidate.
    (tmp_path / "other" / "lonely").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "other" / "lonely")
    beside_source = Path(mnist_module.__file__).resolve().parents[4] / "shared" / "data"
    expected = beside_source if beside_source.is_dir() else tmp_path / "other" / "shared" / "data"
    assert default_data_dir() == expected


@pytest.mark.slow
def test_load_mnist_real_file() -> None:
    path = default_data_dir() / "mnist.npz"
    if not path.is_file():
        pytest.skip(f"no MNIST at {path}")
    data = load_mnist()
    assert tuple(data.x_train.shape) == (60000, 1, 28, 28)
    assert tuple(data.x_test.shape) == (10000, 1, 28, 28)
    assert data.y_train.shape == (60000,) and data.y_test.shape == (10000,)
    assert data.x_train.dtype == torch.float32 and data.y_test.dtype == torch.int64
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    counts = torch.bincount(data.y_train, minlength=10)
    assert counts.shape == (10,) and int(counts.min()) > 5000  # every digit, roughly balanced
    assert set(data.y_test.tolist()) == set(range(10))


# -- models ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels, image_size, classes", [(1, 8, 10), (1, 28, 10), (3, 32, 7)])
def test_small_cnn_output_shape(in_channels: int, image_size: int, classes: int) -> None:
    model = SmallCNN(in_channels=in_channels, num_classes=classes, image_size=image_size)
    out = model(torch.rand(3, in_channels, image_size, image_size))
    assert out.shape == (3, classes)


def test_small_cnn_rejects_sizes_not_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="image_size must be divisible by 4, got 10"):
        SmallCNN(image_size=10)


def _small_trained(recipe: TrainRecipe, digits: DataSplit) -> SmallCNN:
    """A seeded SmallCNN trained with ``recipe`` on 300 digits."""
    torch.manual_seed(0)
    model = SmallCNN(image_size=8, width=8, hidden=16)
    return train_classifier(model, digits.x_train[:300], digits.y_train[:300], recipe)


def test_train_classifier_is_deterministic(digits: DataSplit) -> None:
    recipe = TrainRecipe(epochs=2, batch_size=32, lr=5e-3, seed=0)
    first = _small_trained(recipe, digits)
    second = _small_trained(recipe, digits)
    assert not first.training
    assert same_weights(first, second)
    other_seed = _small_trained(TrainRecipe(epochs=2, batch_size=32, lr=5e-3, seed=1), digits)
    assert not same_weights(first, other_seed)
    torch.manual_seed(0)
    untrained = SmallCNN(image_size=8, width=8, hidden=16)
    assert not same_weights(first, untrained)


def test_train_classifier_seeds_dropout(digits: DataSplit) -> None:
    def trained(global_seed: int, recipe_seed: int) -> nn.Module:
        """A dropout MLP (same initial weights) trained after seeding the global RNG."""
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10)
        )
        torch.manual_seed(global_seed)
        return train_classifier(
            model,
            digits.x_train[:128],
            digits.y_train[:128],
            TrainRecipe(epochs=1, batch_size=32, seed=recipe_seed),
        )

    assert same_weights(trained(1, 0), trained(2, 0))
    assert not same_weights(trained(1, 0), trained(1, 1))


def test_train_classifier_learns(
    trained_cnn: SmallCNN, trained_linear: nn.Module, digits: DataSplit
) -> None:
    assert accuracy(trained_cnn, digits.x_test, digits.y_test) > 95.0
    assert accuracy(trained_linear, digits.x_test, digits.y_test) > 90.0


def test_train_classifier_does_not_touch_the_global_rng(digits: DataSplit) -> None:
    model = SmallCNN(image_size=8, width=4, hidden=8)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    train_classifier(
        model, digits.x_train[:64], digits.y_train[:64], TrainRecipe(epochs=1, batch_size=32)
    )
    assert torch.equal(torch.random.get_rng_state(), state)


def test_recipe_fingerprint() -> None:
    recipe = TrainRecipe()
    assert recipe.fingerprint() == TrainRecipe().fingerprint()
    assert len(recipe.fingerprint()) == 12 and int(recipe.fingerprint(), 16) >= 0
    assert recipe.fingerprint() != TrainRecipe(epochs=31).fingerprint()
    assert recipe.fingerprint() != TrainRecipe(seed=1).fingerprint()


# -- the default model and its cache ---------------------------------------------------------------


def test_cache_dir_follows_the_environment(
    session_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert cache_dir() == session_cache_dir
    monkeypatch.setenv("UNLEARNKIT_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache directory of this module's own (other tests may fill the session cache)."""
    return tmp_path_factory.mktemp("default-model-cache")


@pytest.fixture(scope="module")
def default_model(default_dir: Path) -> DefaultModel:
    """The default model, trained once into ``default_dir`` (~2 s)."""
    assert list(default_dir.iterdir()) == []
    return load_default_model(directory=default_dir)


def test_default_model_first_call_trains_and_writes_the_cache(
    default_model: DefaultModel, default_dir: Path
) -> None:
    assert not default_model.from_cache and default_model.train_seconds > 0
    assert default_model.path.parent == default_dir
    assert default_model.path.name == f"digits-smallcnn-{DIGITS_RECIPE.fingerprint()}.safetensors"
    sidecar = default_model.path.with_suffix(".json")
    record = json.loads(sidecar.read_text())
    assert record["sha256"] == default_model.sha256 == file_sha256(default_model.path)
    assert record["recipe"]["epochs"] == DIGITS_RECIPE.epochs
    assert record["test_accuracy"] == pytest.approx(default_model.test_accuracy)
    assert default_model.test_accuracy > 95.0
    assert not default_model.model.training
    assert sorted(p.name for p in default_dir.iterdir()) == sorted(
        [default_model.path.name, sidecar.name]
    )


def test_default_model_second_call_loads_the_cache(
    default_model: DefaultModel, default_dir: Path
) -> None:
    again = load_default_model(directory=default_dir)
    assert again.from_cache and again.train_seconds == 0.0
    assert again.sha256 == default_model.sha256
    assert same_weights(again.model, default_model.model)
    assert again.test_accuracy == default_model.test_accuracy
    assert not again.model.training


def test_default_model_uses_the_cache_dir_from_the_environment(
    default_model: DefaultModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_cache(default_model, tmp_path)
    monkeypatch.setenv("UNLEARNKIT_CACHE_DIR", str(tmp_path))
    loaded = load_default_model()
    assert loaded.from_cache and loaded.path.parent == tmp_path
    assert same_weights(loaded.model, default_model.model)


def test_pretrained_specs() -> None:
    assert set(PRETRAINED) == {"digits", "mnist", "cifar10", "cifar10-resnet18-full"}
    for name, spec in PRETRAINED.items():
        assert spec.name == name
    shapes = {"digits": (1, 8), "mnist": (1, 28), "cifar10": (3, 32), "cifar10-resnet18-full": (3, 32)}
    for name in ("digits", "mnist"):
        assert PRETRAINED[name].fingerprint().startswith(f"{name}-smallcnn-")
    for name, spec in PRETRAINED.items():
        channels, size = shapes[name]
        model = spec.build()
        assert model(torch.rand(2, channels, size, size)).shape == (2, 10)
    assert len({spec.fingerprint() for spec in PRETRAINED.values()}) == len(PRETRAINED)


def test_load_pretrained_unknown_name(tmp_path: Path) -> None:
    message = r"unknown pretrained model 'cifar'; known: \['cifar10', 'cifar10-resnet18-full', 'digits', 'mnist'\]"
    with pytest.raises(KeyError, match=message):
        load_pretrained("cifar", directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_load_pretrained_mnist_without_data_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNLEARNKIT_DATA_DIR", str(tmp_path / "no-data"))
    cache = tmp_path / "cache"
    cache.mkdir()
    with pytest.raises(FileNotFoundError, match="MNIST not found"):
        load_pretrained("mnist", directory=cache)
    assert list(cache.iterdir()) == []


def test_load_pretrained_digits_is_the_default_model(
    default_model: DefaultModel, default_dir: Path
) -> None:
    loaded = load_pretrained("digits", directory=default_dir)
    assert loaded.from_cache and loaded.path == default_model.path
    assert same_weights(loaded.model, default_model.model)


def test_pretrained_models_go_to_the_default_device_unless_told(
    default_model: DefaultModel, default_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unlearnkit.utils.modules import default_device, model_device

    assert default_device() == torch.device("cpu")  # no GPU on this machine
    assert json.loads(default_model.path.with_suffix(".json").read_text())["device"] == "cpu"
    assert model_device(load_pretrained("digits", directory=default_dir).model) == torch.device("cpu")
    assert model_device(load_pretrained("digits", directory=default_dir, device="cpu").model) == torch.device("cpu")
    # With a GPU, the current CUDA device is the default (init_from_env sets it per rank).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert default_device() == torch.device("cuda", 1)


def _copy_cache(default_model: DefaultModel, directory: Path) -> tuple[Path, Path]:
    """Copies the default model's cache files into ``directory``; returns their new paths."""
    path = directory / default_model.path.name
    sidecar = directory / default_model.path.with_suffix(".json").name
    shutil.copy(default_model.path, path)
    shutil.copy(default_model.path.with_suffix(".json"), sidecar)
    return path, sidecar


def test_corrupt_cache_warns_and_retrains(default_model: DefaultModel, tmp_path: Path) -> None:
    path, sidecar = _copy_cache(default_model, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\x00" * 16
    path.write_bytes(bytes(data))
    assert file_sha256(path) != default_model.sha256
    with pytest.warns(
        UserWarning, match="cached digits model is unusable .*sha256.*retraining it"
    ):
        retrained = load_default_model(directory=tmp_path)
    assert not retrained.from_cache
    assert file_sha256(path) == retrained.sha256 == json.loads(sidecar.read_text())["sha256"]
    assert same_weights(retrained.model, default_model.model)  # the recipe is deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar.name])


def test_unreadable_sidecar_warns_and_retrains(default_model: DefaultModel, tmp_path: Path) -> None:
    _, sidecar = _copy_cache(default_model, tmp_path)
    sidecar.write_text("{not json")
    with pytest.warns(UserWarning, match="cached digits model is unusable"):
        retrained = load_default_model(directory=tmp_path)
    assert not retrained.from_cache
    assert json.loads(sidecar.read_text())["sha256"] == retrained.sha256


# -- checkpoints -----------------------------------------------------------------------------------


def _cnn(seed: int = 0) -> SmallCNN:
    """A seeded small SmallCNN with non-default BatchNorm statistics."""
    torch.manual_seed(seed)
    model = SmallCNN(image_size=8, width=4, hidden=8)
    model.train()
    with torch.no_grad():
        model(torch.rand(5, 1, 8, 8))  # moves running statistics and num_batches_tracked
    return model.eval()


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = _cnn(0)
    path = tmp_path / "sub" / "model.safetensors"
    sha = save_state_dict(model, path, metadata={"note": "hello"})
    assert sha == file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"note": "hello"}
    other = _cnn(1)
    assert not same_weights(model, other)
    assert load_state_dict(other, path, expected_sha256=sha) is other
    assert same_weights(model, other)
    assert other.features[1].num_batches_tracked.dtype == torch.int64


def test_checkpoint_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_state_dict(_cnn(0), path)
    second = save_state_dict(_cnn(1), path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert file_sha256(path) == second


def test_failed_save_keeps_the_old_file_and_removes_its_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.safetensors"
    old_sha = save_state_dict(_cnn(0), path)

    def broken_save(
        state: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None
    ) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict(_cnn(1), path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert file_sha256(path) == old_sha


def test_checkpoint_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_state_dict(_cnn(), tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    "content", [b"", b"garbage" * 10, b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":1}', bytes(range(256))]
)
def test_checkpoint_garbage_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="is not a readable safetensors checkpoint"):
        load_state_dict(_cnn(), path)


def test_checkpoint_sha_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_state_dict(_cnn(), path)
    model = _cnn(1)
    state = snapshot(model)
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_state_dict(model, path, expected_sha256="0" * 64)
    assert same_state(model, state)


@pytest.mark.parametrize(
    "target",
    [
        lambda: SmallCNN(image_size=8, width=8, hidden=8),
        lambda: nn.Linear(3, 2),
        lambda: SmallCNN(image_size=8, width=4, hidden=9),
    ],
    ids=["wider", "other-kind", "one-unit-more"],
)
def test_checkpoint_that_does_not_fit_the_model(tmp_path: Path, target: object) -> None:
    path = tmp_path / "m.safetensors"
    save_state_dict(_cnn(), path)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_state_dict(target(), path)  # type: ignore[operator]


# -- hashes ----------------------------------------------------------------------------------------


def test_state_dict_sha256_tracks_every_weight() -> None:
    model = _cnn()
    copy_ = copy.deepcopy(model)
    base = state_dict_sha256(model)
    assert state_dict_sha256(copy_) == base and len(base) == 64
    with torch.no_grad():
        w = copy_.head[2].weight
        w[3, 5] = torch.nextafter(w[3, 5], torch.tensor(float("inf")))
    assert state_dict_sha256(copy_) != base
    buffers = copy.deepcopy(model)
    buffers.features[1].num_batches_tracked += 1
    assert state_dict_sha256(buffers) != base


def test_tensor_and_array_hashes() -> None:
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_sha256(t) == tensor_sha256(t.clone())
    assert tensor_sha256(t) != tensor_sha256(t.view(2, 3))  # shape counts
    assert tensor_sha256(t) != tensor_sha256(t.double())  # dtype counts
    assert tensor_sha256(t.view(2, 3).T) == tensor_sha256(t.view(2, 3).T.contiguous())
    assert array_sha256(t.numpy()) == tensor_sha256(t)
    assert tensor_sha256(torch.empty(0)) != tensor_sha256(torch.empty(0, 2))


# -- module helpers --------------------------------------------------------------------------------


def test_eval_mode_restores_each_submodule() -> None:
    model = _cnn().train()
    model.features[1].eval()
    before = modes(model)
    with eval_mode(model) as inside:
        assert inside is model and not any(modes(model))
    assert modes(model) == before
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert modes(model) == before


def test_predict_logits_batches_and_mode(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    model = copy.deepcopy(trained_cnn).train()
    whole = predict_logits(model, digits.x_test)
    pieces = predict_logits(model, digits.x_test, batch_size=17)
    assert whole.shape == (360, 10) and not whole.requires_grad
    assert torch.allclose(whole, pieces, atol=1e-5)
    assert model.training
    with torch.no_grad():
        assert torch.allclose(whole, trained_cnn(digits.x_test), atol=1e-5)


def test_check_finite_parameters_names_the_tensor() -> None:
    model = _cnn()
    check_finite_parameters(model)
    with torch.no_grad():
        model.head[0].bias[0] = float("-inf")
    with pytest.raises(
        InvalidModelError,
        match=r"mine has NaN or infinite values in 1 tensor\(s\): \['head.0.bias'\]",
    ):
        check_finite_parameters(model, "mine")


def test_train_with_frozen_batchnorm() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(48, 8),
        nn.BatchNorm1d(8),
        nn.Dropout(0.5),
        nn.Linear(8, 2),
    ).eval()
    model.train()
    with torch.no_grad():
        model(torch.rand(6, 1, 4, 4))  # non-default running statistics
    model.eval()
    state = snapshot(model)
    assert train_with_frozen_batchnorm(model) is model
    is_bn = [isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()]
    assert modes(model) == [not bn for bn in is_bn]
    x = torch.rand(5, 1, 4, 4)
    out = model(x)
    out.sum().backward()
    assert same_state(model, state)  # running statistics and num_batches_tracked unchanged
    assert model[1].weight.grad is not None  # the affine weights still learn
    # Dropout is active: two forward passes differ.
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    # BatchNorm normalises with its running statistics, as in eval mode.
    with torch.no_grad():
        features = model[:2](x)
        assert torch.allclose(features, copy.deepcopy(model).eval()[:2](x))


def test_model_dtype() -> None:
    assert model_dtype(nn.Linear(2, 2)) == torch.float32
    assert model_dtype(nn.Linear(2, 2).double()) == torch.float64
    assert model_dtype(nn.ReLU()) == torch.float32  # no parameters
    half_first = nn.Sequential(nn.Embedding(3, 2), nn.Linear(2, 2))
    half_first[0].half()
    assert model_dtype(half_first) == torch.float16  # the first floating parameter decides


def test_double_precision_model_is_unlearned_in_double(
    forget: tuple[torch.Tensor, torch.Tensor],
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    x = forget[0].double()
    labels = predict_logits(model, x).argmax(1)
    result = unlearnkit.unlearn(model, (x.float(), labels), method="neggrad", lr=0.01)
    assert result.converged
    assert next(result.model.parameters()).dtype == torch.float64


def test_devices() -> None:
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert resolve_device(None, nn.Linear(2, 2)) == torch.device("cpu")
    assert resolve_device("cpu", nn.Linear(2, 2)) == torch.device("cpu")


def test_environment_versions() -> None:
    versions = environment_versions()
    assert {"python", "platform", "unlearnkit", "torch", "numpy", "scikit-learn"} <= versions.keys()
    assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert versions["unlearnkit"] == unlearnkit.__version__
    assert np.__version__ == versions["numpy"]


# -- distribution distances ------------------------------------------------------------------------


def test_ks_distance_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    from unlearnkit.metrics.distribution import ks_distance

    rng = np.random.default_rng(0)
    for n, m, shift in ((10, 30, 0.0), (50, 7, 0.7), (100, 100, 2.0)):
        a, b = rng.normal(size=n), rng.normal(loc=shift, size=m)
        assert ks_distance(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    with pytest.raises(ValueError):
        ks_distance(np.array([]), np.array([1.0]))


def test_mean_log_ratio() -> None:
    from unlearnkit.metrics.distribution import mean_log_ratio

    a = torch.tensor([1.0, 2.0, 4.0])
    assert mean_log_ratio(a, a) == 0.0
    assert mean_log_ratio(a, a * np.e) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        mean_log_ratio(a, a[:2])
