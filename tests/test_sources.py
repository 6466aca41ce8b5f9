"""Model and data sources: every loader on tiny generated files, and every refusal.

Everything is generated in ``tmp_path``: a TorchScript archive, a user model class in a module
file passed as ``python_path``, safetensors and ``weights_only`` ``.pt`` weights, ``.npz`` arrays,
a folder of PNGs and a CSV index.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from unlearnkit.errors import CheckpointError, InvalidModelError, InvalidRequestError, UnlearnkitError
from unlearnkit.request import instance_sha256
from unlearnkit.sources import (
    DataSourceError,
    ModelSource,
    apply_state,
    build_model,
    check_model,
    describe_data_source,
    describe_model_source,
    load_model,
    load_state_file,
    model_builder,
    open_data_source,
    validate_ids,
)

try:
    from PIL import Image
except ImportError:  # the `images` extra: only the image tests need it
    Image = None
needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow (unlearnkit[images]) is not installed")

# torch >= 2.10 deprecates TorchScript; user models saved with it must still load.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

USER_MODULE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))


def make_tiny(num_classes=3):
    return TinyNet(4, num_classes)


def make_nothing():
    return 42


class NotAModule:
    pass


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        raise ValueError("boom in constructor")


class FlatOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x):
        return self.lin(x).flatten()


CONSTANT = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Writes the user's model module into tmp_path/code under a unique name; returns the name.

    ``sys.path`` is restored afterwards and the module forgotten, so tests do not leak imports.
    """
    name = f"user_model_{uuid.uuid4().hex[:10]}"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def _tiny(user_module: str) -> nn.Module:
    return sys.modules[user_module].TinyNet(4, 3)


def _state_source(user_module: str, path: str, **extra) -> dict:
    return {
        "kind": "state_dict",
        "path": path,
        "class": f"{user_module}:TinyNet",
        "kwargs": {"in_features": 4, "num_classes": 3},
        "python_path": "code",
        **extra,
    }


def _trained_weights(tmp_path: Path, user_module: str) -> dict[str, torch.Tensor]:
    """A model built from the user's class (imported through a throwaway load), with set weights."""
    build_model(_state_source(user_module, "unused.safetensors"), tmp_path)
    torch.manual_seed(0)
    return {k: v.clone() for k, v in _tiny(user_module).state_dict().items()}


# ------------------------------------------------------------------------------------------------
# Model sources: successful loads
# ------------------------------------------------------------------------------------------------


def test_torchscript_round_trip_and_apply_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    torch.jit.save(torch.jit.script(original), str(tmp_path / "model.pt"))
    spec = describe_model_source("model.pt", base_dir=tmp_path)
    assert spec["kind"] == "torchscript" and spec["path"] == "model.pt" and len(spec["sha256"]) == 64
    assert json.loads(json.dumps(spec)) == spec

    model = load_model(spec, tmp_path)
    assert not model.training
    x = torch.rand(5, 4)
    torch.testing.assert_close(model(x), original(x))
    assert check_model(model, x) == 3

    # A ledger version loads into a freshly built TorchScript module.
    fresh = build_model(spec, tmp_path)
    assert fresh is not model
    new_state = {k: torch.zeros_like(v) for k, v in fresh.state_dict().items()}
    apply_state(fresh, new_state)
    assert torch.count_nonzero(fresh(x)) == 0
    assert torch.count_nonzero(load_model(spec, tmp_path)(x)) > 0  # the file itself is untouched


def test_state_dict_from_safetensors_with_python_path(tmp_path: Path, user_module: str) -> None:
    weights = _trained_weights(tmp_path, user_module)
    save_file(weights, str(tmp_path / "weights.safetensors"))
    spec = describe_model_source(
        tmp_path / "weights.safetensors",
        class_path=f"{user_module}:TinyNet",
        kwargs={"in_features": 4, "num_classes": 3},
        python_path="code",
        base_dir=tmp_path,
    )
    assert spec["path"] == "weights.safetensors" and spec["python_path"] == "code"
    assert ModelSource.from_dict(spec).to_dict() == spec

    model = load_model(spec, tmp_path)
    reference = _tiny(user_module)
    reference.load_state_dict(weights)
    x = torch.rand(3, 2, 2)
    torch.testing.assert_close(model(x), reference(x))
    assert check_model(model, x, num_classes=3) == 3

    # build_model does not read the weights: the ledger loads its own version into the result.
    (tmp_path / "weights.safetensors").unlink()
    builder = model_builder(spec, tmp_path)
    first, second = builder(), builder()
    assert first is not second and type(first).__name__ == "TinyNet" and not first.training


def test_state_dict_from_weights_only_pt_and_checkpoint_key(tmp_path: Path, user_module: str) -> None:
    weights = _trained_weights(tmp_path, user_module)
    torch.save(weights, tmp_path / "weights.pt")
    torch.save({"epoch": 7, "model_state_dict": weights, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    x = torch.rand(2, 4)
    expected = load_model(_state_source(user_module, "weights.pt"), tmp_path)(x)
    model = load_model(_state_source(user_module, "ckpt.pth", key="model_state_dict"), tmp_path)
    torch.testing.assert_close(model(x), expected)

    with pytest.raises(CheckpointError, match=r"not a plain state dict.*set 'key'.*model_state_dict"):
        load_model(_state_source(user_module, "ckpt.pth"), tmp_path)
    with pytest.raises(CheckpointError, match=r"has no entry 'state'.*epoch"):
        load_model(_state_source(user_module, "ckpt.pth", key="state"), tmp_path)


def test_factory_function_and_installed_class(tmp_path: Path, user_module: str) -> None:
    spec = {"kind": "state_dict", "path": "w.safetensors", "class": f"{user_module}:make_tiny",
            "kwargs": {"num_classes": 3}, "python_path": "code"}
    model = build_model(spec, tmp_path)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    assert type(load_model(spec, tmp_path)).__name__ == "TinyNet"

    save_file(nn.Linear(4, 2).state_dict(), str(tmp_path / "lin.safetensors"))
    linear = load_model({"kind": "state_dict", "path": "lin.safetensors", "class": "torch.nn:Linear",
                         "kwargs": {"in_features": 4, "out_features": 2}}, tmp_path)
    assert isinstance(linear, nn.Linear)


# ------------------------------------------------------------------------------------------------
# Model sources: refusals
# ------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: stands for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickled_objects_are_refused_without_running_them(tmp_path: Path, user_module: str) -> None:
    marker = tmp_path / "payload_ran"
    torch.save({"head.weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt holds pickled Python objects.*will not be loaded"):
        load_model(_state_source(user_module, "evil.pt"), tmp_path)
    assert not marker.exists()
    # The payload is live: an ordinary unpickling would have run it.
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()

    torch.save(nn.Linear(4, 3), tmp_path / "whole_model.pt")
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(.*torch\.nn\.modules\.linear\.Linear"):
        load_state_file(tmp_path / "whole_model.pt")


def test_missing_and_corrupt_files(tmp_path: Path, user_module: str) -> None:
    with pytest.raises(CheckpointError, match=r"TorchScript model not found: .*nope\.pt"):
        load_model({"kind": "torchscript", "path": "nope.pt"}, tmp_path)
    with pytest.raises(CheckpointError, match=r"model weights file not found: .*nope\.safetensors"):
        load_model(_state_source(user_module, "nope.safetensors"), tmp_path)
    with pytest.raises(CheckpointError, match="model file not found"):
        describe_model_source("nope.pt", base_dir=tmp_path)

    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(CheckpointError, match=r"junk\.safetensors is not a readable safetensors file"):
        load_model(_state_source(user_module, "junk.safetensors"), tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"hello, not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a readable PyTorch weights file"):
        load_model(_state_source(user_module, "junk.pt"), tmp_path)
    with pytest.raises(CheckpointError, match=r"junk\.pt is not a readable TorchScript model"):
        load_model({"kind": "torchscript", "path": "junk.pt"}, tmp_path)

    torch.jit.save(torch.jit.script(nn.Linear(4, 3)), str(tmp_path / "ts.pt"))
    data = (tmp_path / "ts.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is not a readable TorchScript model"):
        load_model({"kind": "torchscript", "path": "truncated.pt"}, tmp_path)
    # The two kinds mixed up: each error says which kind the file is.
    with pytest.raises(CheckpointError, match=r"ts\.pt is a TorchScript archive.*kind 'torchscript'"):
        load_model(_state_source(user_module, "ts.pt"), tmp_path)
    torch.save(nn.Linear(4, 3).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match=r"sd\.pt is not a TorchScript model: it looks like a torch\.save file.*torch\.jit\.save"):
        load_model({"kind": "torchscript", "path": "sd.pt"}, tmp_path)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt holds a list, not a state dict"):
        load_model(_state_source(user_module, "list.pt"), tmp_path)


def test_replaced_file_fails_its_sha256(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(nn.Linear(4, 3)), str(tmp_path / "model.pt"))
    spec = describe_model_source(tmp_path / "model.pt", base_dir=tmp_path)
    torch.jit.save(torch.jit.script(nn.Linear(4, 3)), str(tmp_path / "model.pt"))
    with pytest.raises(CheckpointError, match=r"model\.pt does not match the sha256 recorded"):
        build_model(spec, tmp_path)


def test_unimportable_and_unusable_classes(tmp_path: Path, user_module: str) -> None:
    def spec(class_path: str, kwargs: dict | None = None, python_path: str | None = "code") -> dict:
        out = {"kind": "state_dict", "path": "w.safetensors", "class": class_path, "kwargs": kwargs or {}}
        return out | ({"python_path": python_path} if python_path else {})

    with pytest.raises(InvalidModelError, match=r"cannot import module 'no_such_mod_x'.*pass its folder as python_path"):
        build_model(spec("no_such_mod_x:Net", python_path=None), tmp_path)
    (tmp_path / "code" / "broken_mod_x.py").write_text("raise RuntimeError('import-time failure')\n")
    with pytest.raises(InvalidModelError, match=r"cannot import module 'broken_mod_x'.*import-time failure"):
        build_model(spec("broken_mod_x:Net"), tmp_path)
    with pytest.raises(InvalidModelError, match=rf"module '{user_module}' .* has no attribute 'Missing'"):
        build_model(spec(f"{user_module}:Missing"), tmp_path)
    with pytest.raises(InvalidModelError, match=r"NotAModule' is not a torch\.nn\.Module subclass"):
        build_model(spec(f"{user_module}:NotAModule"), tmp_path)
    with pytest.raises(InvalidModelError, match=r"CONSTANT' is a int, neither an nn\.Module class nor a factory"):
        build_model(spec(f"{user_module}:CONSTANT"), tmp_path)
    with pytest.raises(InvalidModelError, match=r"make_nothing' returned a int, not an nn\.Module"):
        build_model(spec(f"{user_module}:make_nothing"), tmp_path)
    with pytest.raises(InvalidModelError, match=r"python_path .*not_there is not a directory"):
        build_model(spec(f"{user_module}:TinyNet", python_path="not_there"), tmp_path)
    sys.modules.pop("broken_mod_x", None)


def test_python_path_cannot_be_shadowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A user module named like an installed one: the installed one wins (python_path is appended),
    # and the loader says so instead of building the wrong thing.
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "json.py").write_text("from torch import nn\nNet = nn.Linear\n")
    with pytest.raises(InvalidModelError, match=r"module 'json' was imported from .*not from python_path"):
        build_model({"kind": "state_dict", "path": "w.safetensors", "class": "json:Net", "python_path": "code"}, tmp_path)


def test_kwargs_that_do_not_fit_the_constructor(tmp_path: Path, user_module: str) -> None:
    base = _state_source(user_module, "w.safetensors")
    with pytest.raises(InvalidModelError, match=r"kwargs \{'in_features': 4, 'num_classes': 3, 'depth': 2\} do not fit .*TinyNet.*depth"):
        build_model(base | {"kwargs": {"in_features": 4, "num_classes": 3, "depth": 2}}, tmp_path)
    with pytest.raises(InvalidModelError, match=r"do not fit the constructor .*num_classes"):
        build_model(base | {"kwargs": {"in_features": 4}}, tmp_path)
    with pytest.raises(InvalidModelError, match=r"constructing model .*Exploding.*ValueError: boom in constructor"):
        build_model(base | {"class": f"{user_module}:Exploding", "kwargs": {}}, tmp_path)


def test_weights_that_do_not_fit(tmp_path: Path, user_module: str) -> None:
    weights = _trained_weights(tmp_path, user_module)
    wrong = dict(weights)
    del wrong["head.bias"]
    wrong["extra.weight"] = torch.zeros(2)
    wrong["head.weight"] = torch.zeros(5, 8)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_model(_state_source(user_module, "wrong.safetensors"), tmp_path)
    message = str(info.value)
    assert "wrong.safetensors does not fit TinyNet" in message
    assert "1 missing key(s) ['head.bias']" in message
    assert "1 unexpected key(s) ['extra.weight']" in message
    assert "head.weight: file (5, 8) vs model (3, 8)" in message

    save_file({f"module.{k}": v for k, v in weights.items()}, str(tmp_path / "dp.safetensors"))
    with pytest.raises(CheckpointError, match=r"start with 'module\.'.*DataParallel"):
        load_model(_state_source(user_module, "dp.safetensors"), tmp_path)

    # A refused state leaves the model as it was.
    model = nn.Linear(2, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError):
        apply_state(model, {"weight": torch.zeros(2, 2)})
    with pytest.raises(InvalidModelError):
        apply_state(model, {"weight": torch.full((2, 2), float("nan")), "bias": torch.zeros(2)})
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_nan_weights_are_refused(tmp_path: Path, user_module: str) -> None:
    weights = _trained_weights(tmp_path, user_module)
    weights["body.0.weight"][0, 0] = float("nan")
    save_file(weights, str(tmp_path / "nan.safetensors"))
    with pytest.raises(InvalidModelError, match=r"nan\.safetensors has NaN or infinite values .*body\.0\.weight"):
        load_model(_state_source(user_module, "nan.safetensors"), tmp_path)

    scripted = torch.jit.script(nn.Linear(4, 3))
    with torch.no_grad():
        scripted.weight[0, 0] = float("inf")
    torch.jit.save(scripted, str(tmp_path / "inf.pt"))
    with pytest.raises(InvalidModelError, match=r"TorchScript model .*inf\.pt has NaN or infinite values"):
        load_model({"kind": "torchscript", "path": "inf.pt"}, tmp_path)


def test_frozen_torchscript_has_nothing_to_unlearn(tmp_path: Path) -> None:
    frozen = torch.jit.freeze(torch.jit.script(nn.Linear(4, 3).eval()))
    torch.jit.save(frozen, str(tmp_path / "frozen.pt"))
    with pytest.raises(InvalidModelError, match=r"frozen\.pt has no trainable parameters.*torch\.jit\.freeze"):
        load_model({"kind": "torchscript", "path": "frozen.pt"}, tmp_path)


def test_check_model_refuses_non_logit_outputs(tmp_path: Path, user_module: str) -> None:
    x = torch.rand(4, 4)
    build_model(_state_source(user_module, "w.safetensors"), tmp_path)  # imports the user module
    flat = sys.modules[user_module].FlatOutput()
    with pytest.raises(InvalidModelError, match=r"model\.pt: .*logits \(N, C\); got \(1,\)"):
        check_model(flat, x, what="model.pt")
    with pytest.raises(InvalidModelError, match=r"1 output per row"):
        check_model(nn.Linear(4, 1), x)
    with pytest.raises(InvalidModelError, match=r"got \(1, 3, 1\)"):
        check_model(nn.Sequential(nn.Linear(4, 3), nn.Unflatten(1, (3, 1))), x)
    with pytest.raises(InvalidModelError, match=r"failed on inputs of shape \(1, 4\)"):
        check_model(nn.Linear(7, 3), x)
    nan_model = nn.Linear(4, 3)
    with torch.no_grad():
        nan_model.bias[0] = float("nan")
    with pytest.raises(InvalidModelError, match="NaN or infinite logits"):
        check_model(nan_model, x)
    with pytest.raises(InvalidModelError, match=r"has 3 outputs but the data has 5 classes"):
        check_model(nn.Linear(4, 3), x, num_classes=5)
    with pytest.raises(InvalidModelError, match="at least one input row"):
        check_model(nn.Linear(4, 3), torch.zeros(0, 4))
    assert check_model(nn.Linear(4, 3).double(), x) == 3  # inputs follow the model's dtype


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"kind": "pickle", "path": "m.pkl"}, r"unknown kind 'pickle'"),
        ({"kind": "torchscript"}, r"'path' is missing"),
        ({"kind": "torchscript", "path": "m.pt", "class": "a:B"}, r"unknown key\(s\) \['class'\]"),
        ({"kind": "state_dict", "path": "w.safetensors"}, r"'class' is missing"),
        ({"kind": "state_dict", "path": "w.safetensors", "class": "a.b.C"}, r"must look like 'package\.module:ClassName'"),
        ({"kind": "state_dict", "path": "w.safetensors", "class": "a:B", "kwarg": {}}, r"unknown key\(s\) \['kwarg'\]"),
        ({"kind": "state_dict", "path": "w.safetensors", "class": "a:B", "kwargs": [1]}, r"'kwargs' must be a JSON object"),
        ({"kind": "state_dict", "path": "w.safetensors", "class": "a:B", "kwargs": {"x": float("nan")}}, r"JSON values"),
        ({"kind": "state_dict", "path": "w.bin", "class": "a:B"}, r"must end in \.safetensors, \.pt or \.pth"),
        ({"kind": "state_dict", "path": "w.safetensors", "class": "a:B", "key": "k"}, r"'key' only applies"),
        ({"kind": "torchscript", "path": "m.pt", "sha256": "abc"}, r"64 lowercase hex"),
        (["torchscript", "m.pt"], r"must be a JSON object"),
    ],
)
def test_malformed_model_sources(tmp_path: Path, spec: object, pattern: str) -> None:
    with pytest.raises(InvalidModelError, match=pattern):
        load_model(spec, tmp_path)  # type: ignore[arg-type]


def test_describe_model_source_refusals(tmp_path: Path) -> None:
    save_file(nn.Linear(2, 2).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(InvalidModelError, match=r"holds weights only: name the model class"):
        describe_model_source("w.safetensors", base_dir=tmp_path)
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(tmp_path / "m.pt"))
    with pytest.raises(InvalidModelError, match="carries its own architecture"):
        describe_model_source("m.pt", kind="torchscript", kwargs={"a": 1}, base_dir=tmp_path)
    outside = describe_model_source(tmp_path / "m.pt", base_dir=tmp_path / "elsewhere")
    assert Path(outside["path"]).is_absolute()


# ------------------------------------------------------------------------------------------------
# Data sources: npz
# ------------------------------------------------------------------------------------------------


def _npz(tmp_path: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_rows_hashes_and_fingerprint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 2, 2)).astype(np.float64)
    y = np.array([0, 1, 2, 1, 0, 2], dtype=np.int32)
    _npz(tmp_path, features=x, target=y)
    spec = describe_data_source("data.npz", base_dir=tmp_path, inputs="features", labels="target")
    assert spec["kind"] == "npz" and spec["num_rows"] == 6 and spec["num_classes"] == 3
    assert json.loads(json.dumps(spec)) == spec

    data = open_data_source(json.loads(json.dumps(spec)), tmp_path)
    assert len(data) == 6 and list(data.ids) == list(range(6)) and data.input_shape == (1, 2, 2)
    inputs, labels = data.rows([4, 1])
    assert inputs.dtype == torch.float32 and labels.dtype == torch.int64
    torch.testing.assert_close(inputs, torch.from_numpy(x[[4, 1]]).float())
    assert labels.tolist() == [0, 1]
    all_x, all_y = data.all_rows()
    assert all_x.shape == (6, 1, 2, 2) and all_y.tolist() == y.tolist()
    assert data.content_hashes([2, 3]) == [instance_sha256(all_x[i], int(all_y[i])) for i in (2, 3)]
    empty_x, empty_y = data.rows([])
    assert empty_x.shape == (0, 1, 2, 2) and empty_y.shape == (0,)
    # Rows returned are copies: changing them does not change the source.
    inputs.fill_(7)
    assert data.rows([4])[0].max() < 1

    # Reordered rows: the ids would name other rows, so the recorded fingerprint refuses it.
    _npz(tmp_path, features=x[::-1], target=y[::-1])
    with pytest.raises(DataSourceError, match=r"changed since it was described \(fingerprint"):
        open_data_source(spec, tmp_path)
    assert len(open_data_source(spec, tmp_path, verify=False)) == 6
    _npz(tmp_path, features=x[:5], target=y[:5])
    with pytest.raises(DataSourceError, match=r"changed since it was described \(rows: 6 then, 5 now\)"):
        open_data_source(spec, tmp_path)


def test_npz_float_integral_labels_and_num_classes(tmp_path: Path) -> None:
    _npz(tmp_path, x=np.zeros((3, 2), dtype=np.uint8), y=np.array([0.0, 1.0, 1.0]))
    data = open_data_source({"kind": "npz", "path": "data.npz", "num_classes": 10}, tmp_path)
    assert data.num_classes == 10 and data.labels.tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    ("arrays", "options", "pattern"),
    [
        ({"x": np.array([[0.0, np.nan], [0, 0], [np.inf, 0]]), "y": np.array([0, 1, 0])}, {}, r"2 row\(s\) hold NaN or infinite values.*rows 0, 2"),
        ({"x": np.array([[1e300, 0.0]]), "y": np.array([0])}, {}, r"beyond float32"),
        ({"x": np.zeros((2, 2)), "y": np.array([0.5, 1.0])}, {}, r"integer class indices; rows 0 do not"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, -3])}, {}, r"labels must be >= 0; rows 1 are negative"),
        ({"x": np.zeros((2, 2)), "y": np.array([[0], [1]])}, {}, r"must be one-dimensional"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, {}, r"has 2 labels for 3 input rows"),
        ({"x": np.zeros(3), "y": np.array([0, 1, 0])}, {}, r"at least one feature per row"),
        ({"x": np.zeros((0, 2)), "y": np.zeros(0, dtype=int)}, {}, r"has no rows"),
        ({"x": np.array([["a", "b"]]), "y": np.array([0])}, {}, r"real numbers.*dtype <U1"),
        ({"x": np.ones((1, 2), dtype=bool), "y": np.array([0])}, {}, r"real numbers.*dtype bool"),
        ({"x": np.zeros((1, 2)), "y": np.array([True])}, {}, r"integer class indices, got dtype bool"),
        ({"x": np.zeros((2, 2)), "y": np.array([0, 4])}, {"num_classes": 3}, r"out of range for 3 classes.*rows 1 have labels 4"),
        ({"features": np.zeros((2, 2)), "y": np.array([0, 1])}, {}, r"has no array\(s\) \['x'\]; its arrays: \['features', 'y'\]"),
    ],
)
def test_npz_refusals(tmp_path: Path, arrays: dict, options: dict, pattern: str) -> None:
    _npz(tmp_path, **arrays)
    with pytest.raises(DataSourceError, match=pattern):
        open_data_source({"kind": "npz", "path": "data.npz", **options}, tmp_path)


def test_npz_file_refusals(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"data file not found: .*missing\.npz"):
        open_data_source({"kind": "npz", "path": "missing.npz"}, tmp_path)
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(DataSourceError, match=r"junk\.npz is not a readable \.npz archive"):
        open_data_source({"kind": "npz", "path": "junk.npz"}, tmp_path)
    np.save(tmp_path / "single.npy", np.zeros((2, 2)))
    (tmp_path / "single.npz").write_bytes((tmp_path / "single.npy").read_bytes())
    with pytest.raises(DataSourceError, match=r"single array, not an \.npz archive"):
        open_data_source({"kind": "npz", "path": "single.npz"}, tmp_path)
    # Object arrays are pickles: refused, and their code never runs.
    marker = tmp_path / "payload_ran"
    np.savez(tmp_path / "objects.npz", x=np.array([_Payload(marker), 1], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataSourceError, match=r"Object arrays cannot be loaded.*pickled"):
        open_data_source({"kind": "npz", "path": "objects.npz"}, tmp_path)
    assert not marker.exists()
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(DataSourceError, match=r"pickle\.npz is not a readable \.npz archive"):
        open_data_source({"kind": "npz", "path": "pickle.npz"}, tmp_path)


def test_ids_are_validated(tmp_path: Path) -> None:
    _npz(tmp_path, x=np.zeros((5, 2)), y=np.array([0, 1, 0, 1, 0]))
    data = open_data_source({"kind": "npz", "path": "data.npz"}, tmp_path)
    cases = [
        ([1, 5], r"1 id\(s\) out of range for a data source of 5 rows \(valid 0\.\.4\): 5"),
        ([-1], r"out of range .*: -1"),
        ([1.0], r"must be integers; got 1\.0 \(float\)"),
        (["2"], r"got '2' \(str\)"),
        ([True], r"got True \(bool\)"),
        ([None], r"got None \(NoneType\)"),
        ([2, 3, 2], r"duplicate row id\(s\): 2"),
        (torch.tensor([0.0, 1.0]), r"must be integers"),
        (np.zeros((1, 2), dtype=int), r"one-dimensional"),
        ("12", r"sequence of integers, got str"),
        (3, r"sequence of integers, got int"),
    ]
    for ids, pattern in cases:
        with pytest.raises(InvalidRequestError, match=pattern):
            data.rows(ids)
        with pytest.raises(InvalidRequestError, match=pattern):
            data.content_hashes(ids)
    assert data.rows(np.array([4, 0]))[1].tolist() == [0, 0]
    assert data.rows(torch.tensor([3]))[1].tolist() == [1]
    assert validate_ids([np.int64(2)], 3) == [2]
    assert issubclass(InvalidRequestError, ValueError) and issubclass(DataSourceError, UnlearnkitError)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"kind": "hdf5", "path": "d.h5"}, r"unknown kind 'hdf5'"),
        ({"kind": "npz"}, r"'path' must be a non-empty string"),
        ({"kind": "npz", "path": "d.npz", "mode": "L"}, r"unknown key\(s\) \['mode'\]"),
        ({"kind": "image_folder", "root": "i", "skip_invalid": "yes"}, r"'skip_invalid' must be true or false"),
        ({"kind": "image_folder", "root": "i", "size": [8]}, r"'size' must be \[height, width\]"),
        ({"kind": "image_folder", "root": "i", "size": [8, 0]}, r"'size' must be \[height, width\]"),
        ({"kind": "csv", "path": "i.csv", "mode": "RGBA"}, r"'mode' must be one of \('L', 'RGB'\)"),
        ({"kind": "csv", "path": "i.csv", "num_classes": 0}, r"'num_classes' must be a positive integer"),
        ({"kind": "image_folder", "root": "i", "classes": "ab"}, r"'classes' must be a list"),
        ("data.npz", r"must be a JSON object"),
    ],
)
def test_malformed_data_sources(tmp_path: Path, spec: object, pattern: str) -> None:
    with pytest.raises(DataSourceError, match=pattern):
        open_data_source(spec, tmp_path)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Data sources: images
# ------------------------------------------------------------------------------------------------


def _png(path: Path, value: int, size: tuple[int, int] = (5, 4), mode: str = "L") -> None:
    """A flat PNG of ``size`` (width, height) whose pixels are all ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def _image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _png(root / "cat" / "a.png", 10)
    _png(root / "cat" / "b.png", 20)
    _png(root / "dog" / "c.png", 30, mode="RGB")
    _png(root / "dog" / "nested" / "d.png", 40)
    _png(root / "emu" / "e.png", 255)
    (root / ".DS_Store").write_bytes(b"metadata")  # hidden files are OS metadata, ignored
    return root


@needs_pillow
def test_image_folder_rows_classes_and_modes(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    spec = describe_data_source("images", base_dir=tmp_path, mode="L")
    assert spec["kind"] == "image_folder" and spec["root"] == "images"
    assert spec["classes"] == ["cat", "dog", "emu"] and spec["num_classes"] == 3 and spec["num_rows"] == 5
    data = open_data_source(json.loads(json.dumps(spec)), tmp_path)
    assert data.files == ["cat/a.png", "cat/b.png", "dog/c.png", "dog/nested/d.png", "emu/e.png"]
    assert data.labels.tolist() == [0, 0, 1, 1, 2]
    x, y = data.rows([1, 4])
    assert x.shape == (2, 1, 4, 5) and x.dtype == torch.float32 and y.tolist() == [0, 2]
    torch.testing.assert_close(x[0], torch.full((1, 4, 5), 20 / 255))
    torch.testing.assert_close(x[1], torch.ones(1, 4, 5))
    all_x, _ = data.all_rows()
    assert 0 <= all_x.min() and all_x.max() <= 1
    assert data.content_hashes([0]) == [instance_sha256(all_x[0], 0)]

    rgb = open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)
    assert rgb.description["mode"] == "RGB" and rgb.input_shape == (3, 4, 5)
    pixel = rgb.rows([2])[0][0, :, 0, 0]
    torch.testing.assert_close(pixel, torch.tensor([30, 0, 225]) / 255)
    resized = open_data_source({"kind": "image_folder", "root": "images", "mode": "L", "size": [2, 3]}, tmp_path)
    assert resized.rows([0])[0].shape == (1, 1, 2, 3)

    # A new class folder would shift class indices: refused against the recorded description.
    _png(tmp_path / "images" / "bee" / "f.png", 1)
    with pytest.raises(DataSourceError, match=r"class folders .* are now \['bee', 'cat', 'dog', 'emu'\], not \['cat', 'dog', 'emu'\]"):
        open_data_source(spec, tmp_path)
    (tmp_path / "images" / "bee" / "f.png").unlink()
    (tmp_path / "images" / "bee").rmdir()
    # A new image in a class shifts the ids after it: the fingerprint refuses it.
    _png(tmp_path / "images" / "cat" / "aa.png", 1)
    with pytest.raises(DataSourceError, match="changed since it was described"):
        open_data_source(spec, tmp_path)


@needs_pillow
def test_image_folder_non_image_files(tmp_path: Path) -> None:
    root = _image_folder(tmp_path)
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataSourceError, match=r"2 file\(s\) are not images Pillow can read: .*cat/broken\.png, .*dog/notes\.txt.*skip_invalid"):
        open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)
    data = open_data_source({"kind": "image_folder", "root": "images", "skip_invalid": True}, tmp_path)
    assert len(data) == 5 and len(data.skipped) == 2
    assert any("notes.txt" in s for s in data.skipped) and any("broken.png" in s for s in data.skipped)

    (root / "README.md").write_text("stray")
    with pytest.raises(DataSourceError, match=r"lie directly in .*images, outside any class sub-folder: .*README\.md"):
        open_data_source({"kind": "image_folder", "root": "images", "skip_invalid": False}, tmp_path)
    data = open_data_source({"kind": "image_folder", "root": "images", "skip_invalid": True}, tmp_path)
    assert any("README.md" in s for s in data.skipped)


@needs_pillow
def test_image_folder_truncated_image_named_on_read(tmp_path: Path) -> None:
    root = _image_folder(tmp_path)
    data = open_data_source({"kind": "image_folder", "root": "images", "mode": "L"}, tmp_path)
    payload = (root / "cat" / "b.png").read_bytes()
    (root / "cat" / "b.png").write_bytes(payload[: len(payload) - 20])
    with pytest.raises(DataSourceError, match=r"cannot read image .*cat/b\.png"):
        data.rows([1])
    _png(root / "cat" / "b.png", 5, size=(9, 9))
    with pytest.raises(DataSourceError, match=r"b\.png is now 9x9 .*changed since the data source was opened"):
        data.rows([1])


@needs_pillow
@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_image_folder_refuses_symlinks(tmp_path: Path) -> None:
    root = _image_folder(tmp_path)
    outside = tmp_path / "secret.png"
    _png(outside, 99)
    (root / "cat" / "link_out.png").symlink_to(outside)
    with pytest.raises(DataSourceError, match=r"symbolic links are not allowed .*cat/link_out\.png"):
        open_data_source({"kind": "image_folder", "root": "images", "skip_invalid": True}, tmp_path)
    (root / "cat" / "link_out.png").unlink()
    (root / "cat" / "link_in.png").symlink_to(root / "cat" / "a.png")
    with pytest.raises(DataSourceError, match=r"symbolic links are not allowed .*link_in\.png"):
        open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)
    (root / "cat" / "link_in.png").unlink()
    (tmp_path / "elsewhere").mkdir()
    _png(tmp_path / "elsewhere" / "x.png", 3)
    (root / "dog" / "linked_dir").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataSourceError, match=r"symbolic links are not allowed .*dog/linked_dir"):
        open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)
    (root / "dog" / "linked_dir").unlink()
    (root / "fox").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataSourceError, match=r"symbolic links are not allowed .*images/fox"):
        open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)


@needs_pillow
def test_image_folder_other_refusals(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"image folder not found: .*nowhere"):
        open_data_source({"kind": "image_folder", "root": "nowhere"}, tmp_path)
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "sub" / "a.png", 1)
    (tmp_path / "flat" / "empty").mkdir()
    with pytest.raises(DataSourceError, match=r"class folder .*flat/empty holds no files"):
        open_data_source({"kind": "image_folder", "root": "flat"}, tmp_path)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataSourceError, match=r"has no class sub-folders"):
        open_data_source({"kind": "image_folder", "root": "none"}, tmp_path)

    root = _image_folder(tmp_path)
    _png(root / "emu" / "big.png", 7, size=(6, 6))
    with pytest.raises(DataSourceError, match=r"differ in size \(width x height\): 5x4: 5 file\(s\).*6x6: 1 file\(s\), e\.g\. .*big\.png.*\"size\""):
        open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)
    assert len(open_data_source({"kind": "image_folder", "root": "images", "size": [4, 5]}, tmp_path)) == 6
    with pytest.raises(DataSourceError, match=r"has 3 class folders but num_classes is 4"):
        open_data_source({"kind": "image_folder", "root": "images", "size": [4, 5], "num_classes": 4}, tmp_path)
    (root / "emu" / "big.png").unlink()

    Image.fromarray(np.full((4, 5), 1000, dtype=np.uint16)).save(root / "emu" / "deep.png")
    with pytest.raises(DataSourceError, match=r"more than 8 bits per channel.*deep\.png \(mode I"):
        open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)


def test_missing_pillow_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "images" / "cat" / "a.png").write_bytes(b"any bytes: Pillow is never reached")
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` raise ImportError
    with pytest.raises(DataSourceError, match=r"pip install 'unlearnkit\[images\]'"):
        open_data_source({"kind": "image_folder", "root": "images"}, tmp_path)


# ------------------------------------------------------------------------------------------------
# Data sources: CSV index
# ------------------------------------------------------------------------------------------------


def _csv_tree(tmp_path: Path, lines: list[str]) -> Path:
    folder = tmp_path / "set"
    _png(folder / "img" / "a.png", 10)
    _png(folder / "img" / "b.png", 20)
    _png(folder / "c.png", 30)
    (folder / "index.csv").write_text("\n".join(lines) + "\n")
    return folder


@needs_pillow
def test_csv_with_and_without_header(tmp_path: Path) -> None:
    _csv_tree(tmp_path, ["path,label", "img/a.png,2", "", "img/b.png,0", "c.png,1"])
    spec = describe_data_source("set/index.csv", base_dir=tmp_path, mode="L")
    assert spec["kind"] == "csv" and spec["path"] == "set/index.csv" and spec["num_rows"] == 3
    data = open_data_source(spec, tmp_path)
    x, y = data.rows([0, 2])
    assert y.tolist() == [2, 1] and x.shape == (2, 1, 4, 5)
    torch.testing.assert_close(x[1], torch.full((1, 4, 5), 30 / 255))
    assert data.num_classes == 3

    (tmp_path / "set" / "index.csv").write_text("img/a.png,2\nimg/b.png,0\nc.png,1\n")
    assert open_data_source(spec, tmp_path).fingerprint == data.fingerprint  # the header is not data
    (tmp_path / "set" / "index.csv").write_text("img/b.png,0\nimg/a.png,2\nc.png,1\n")
    with pytest.raises(DataSourceError, match="changed since it was described"):
        open_data_source(spec, tmp_path)


@pytest.mark.parametrize(
    ("lines", "pattern"),
    [
        (["../outside.png,0"], r"line 1: path '\.\./outside\.png' resolves to .*outside the CSV's folder"),
        (["img/../../outside.png,0"], r"outside the CSV's folder"),
        (["/etc/passwd,0"], r"line 1: path '/etc/passwd' is absolute"),
        (["path,label", "img/a.png,0", "img/nope.png,1", "gone.png,1"], r"2 file\(s\) listed in .*index\.csv do not exist: img/nope\.png \(line 3\), gone\.png \(line 4\)"),
        (["img/a.png,0", "img/b.png,one"], r"line 2: label 'one' is not an integer"),
        (["img/a.png,-1"], r"line 1: label -1 is negative"),
        (["img/a.png,0,extra"], r"line 1: expected 2 fields 'path,label', got 3"),
        (["img/a.png,0", "img/./a.png,1"], r"line 2: 'img/\./a\.png' is the same file as line 1"),
        (["img/a.png,0", "index.csv,1"], r"1 file\(s\) are not images Pillow can read: .*index\.csv \(line 2\)"),
    ],
)
@needs_pillow
def test_csv_refusals(tmp_path: Path, lines: list[str], pattern: str) -> None:
    _png(tmp_path / "outside.png", 5)
    _csv_tree(tmp_path, lines)
    with pytest.raises(DataSourceError, match=pattern):
        open_data_source({"kind": "csv", "path": "set/index.csv"}, tmp_path)


@needs_pillow
def test_csv_header_only_and_labels_beyond_num_classes(tmp_path: Path) -> None:
    _csv_tree(tmp_path, ["img/a.png,zero"])  # a non-integer label on line 1 makes it a header
    with pytest.raises(DataSourceError, match=r"index\.csv lists no images"):
        open_data_source({"kind": "csv", "path": "set/index.csv"}, tmp_path)
    _csv_tree(tmp_path, ["img/a.png,3"])
    with pytest.raises(DataSourceError, match=r"1 label\(s\) out of range for 2 classes \(valid 0\.\.1\): rows 0 have labels 3"):
        open_data_source({"kind": "csv", "path": "set/index.csv", "num_classes": 2}, tmp_path)


@needs_pillow
@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_csv_refuses_symlinks_out_of_its_folder(tmp_path: Path) -> None:
    folder = _csv_tree(tmp_path, ["img/a.png,0", "img/out.png,1"])
    _png(tmp_path / "secret.png", 5)
    (folder / "img" / "out.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(DataSourceError, match=r"line 2: path 'img/out\.png' resolves to .*secret\.png, outside"):
        open_data_source({"kind": "csv", "path": "set/index.csv"}, tmp_path)
    (folder / "img" / "out.png").unlink()
    (folder / "img" / "out.png").symlink_to(folder / "c.png")  # a link that stays inside is fine
    assert len(open_data_source({"kind": "csv", "path": "set/index.csv"}, tmp_path)) == 2
    with pytest.raises(DataSourceError, match=r"CSV index not found: .*missing\.csv"):
        open_data_source({"kind": "csv", "path": "missing.csv"}, tmp_path)


def test_describe_data_source_guesses_the_kind(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataSourceError, match=r"cannot tell the kind of data source .*data\.txt"):
        describe_data_source("data.txt", base_dir=tmp_path)
    _npz(tmp_path, x=np.zeros((2, 2)), y=np.array([0, 1]))
    spec = describe_data_source(tmp_path / "data.npz", base_dir=tmp_path / "other")
    assert Path(spec["path"]).is_absolute() and spec["inputs"] == "x" and spec["labels"] == "y"
