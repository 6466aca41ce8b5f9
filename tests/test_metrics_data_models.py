"""Accuracy metrics, the digits data and forget-set draws, the models and their training and
cache, and the utilities (checkpoints, hashes, module helpers)."""

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
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.models import (
    DefaultModel,
    SmallCNN,
    TrainRecipe,
    load_default_model,
    train_classifier,
)
from unlearnkit.models.pretrained import DIGITS_RECIPE, cache_dir
from unlearnkit.utils import checkpoint as checkpoint_module
from unlearnkit.utils.checkpoint import load_state_dict, save_state_dict
from unlearnkit.utils.hashing import array_sha256, file_sha256, state_dict_sha256, tensor_sha256
from unlearnkit.utils.modules import (
    check_finite_parameters,
    eval_mode,
    model_device,
    predict_logits,
    resolve_device,
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
        UserWarning, match="cached default model is unusable .*sha256.*retraining it"
    ):
        retrained = load_default_model(directory=tmp_path)
    assert not retrained.from_cache
    assert file_sha256(path) == retrained.sha256 == json.loads(sidecar.read_text())["sha256"]
    assert same_weights(retrained.model, default_model.model)  # the recipe is deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, sidecar.name])


def test_unreadable_sidecar_warns_and_retrains(default_model: DefaultModel, tmp_path: Path) -> None:
    _, sidecar = _copy_cache(default_model, tmp_path)
    sidecar.write_text("{not json")
    with pytest.warns(UserWarning, match="cached default model is unusable"):
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
