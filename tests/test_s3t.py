"""S3T: sharded sliced training, serving, and exact deletion (unlearnkit.s3t, methods/s3t.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from helpers import snapshot, same_state
from unlearnkit.data import DataSplit
from unlearnkit.errors import (
    CheckpointError,
    DeletionCapacityError,
    InvalidHyperparameterError,
    InvalidModelError,
    InvalidRequestError,
)
from unlearnkit.methods.s3t import S3T
from unlearnkit.models import SmallCNN, TrainRecipe
from unlearnkit.request import ForgetRequest
from unlearnkit.s3t import (
    MANIFEST,
    S3TConfig,
    S3TModel,
    ShardNet,
    assign_slices,
    draw_orders,
    load_s3t,
    train_backbone,
    train_prefix,
    train_s3t,
)
from unlearnkit.utils.checkpoint import load_state_dict

CONFIG = S3TConfig(shards=2, slices=3, orders=2, adapter_dim=16, epochs=2)
SEED = 3
#: Rows 0..599 train the backbone (never deletable), 600..799 validate, the rest are deletable.
BACKBONE_ROWS, VAL_ROWS = slice(0, 600), slice(600, 800)


@pytest.fixture(scope="module")
def backbone(digits: DataSplit) -> nn.Module:
    """A frozen SmallCNN feature extractor trained on the non-deletable rows."""
    return train_backbone(
        digits.x_train[BACKBONE_ROWS], digits.y_train[BACKBONE_ROWS], num_classes=10, image_size=8,
        recipe=TrainRecipe(epochs=3, seed=0),
    )


def _validation(digits: DataSplit) -> tuple[Tensor, Tensor]:
    return digits.x_train[VAL_ROWS], digits.y_train[VAL_ROWS]


@pytest.fixture(scope="module")
def trained_dir(digits: DataSplit, backbone: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a trained S3T model (do not write to it)."""
    directory = tmp_path_factory.mktemp("s3t")
    deletable = list(range(800, digits.x_train.shape[0]))
    train_s3t(backbone, (digits.x_train, digits.y_train), deletable, CONFIG, SEED, directory, validation=_validation(digits))
    return directory


def _extractor() -> nn.Module:
    """An untrained module of the backbone's architecture (weights come from the checkpoint)."""
    cnn = SmallCNN(image_size=8)
    return nn.Sequential(cnn.features, *list(cnn.head)[:-1])


@pytest.fixture
def model(trained_dir: Path) -> S3TModel:
    """A fresh S3T model loaded from the trained directory, for one test to change."""
    return load_s3t(trained_dir, _extractor())


def _slice_rows(model: S3TModel, shard: int, slice_: int) -> list[int]:
    return model.manifest["slices"][shard][slice_]


def _fresh(model: S3TModel, digits: DataSplit, shard: int, prefix: tuple[int, ...]) -> ShardNet:
    """A from-scratch training of ``prefix`` given only its slices' rows."""
    data = {s: (digits.x_train[_slice_rows(model, shard, s)], digits.y_train[_slice_rows(model, shard, s)]) for s in prefix}
    return train_prefix(
        model.backbone, data, prefix, shard=shard, num_classes=10, config=CONFIG, seed=SEED, validation=_validation(digits)
    )


# -- serving ---------------------------------------------------------------------------------------


def test_forward_averages_the_shards(model: S3TModel, digits: DataSplit) -> None:
    x = digits.x_test
    with torch.no_grad():
        features = model.backbone(x)
        expected = torch.stack([model.shards[k](features) for k in range(CONFIG.shards)]).mean(dim=0)
        assert torch.equal(model(x), expected)
    # Every shard serves a full prefix of length L at first, and the model has learnt something.
    assert all(p is not None and len(p) == CONFIG.slices for p in model.served_prefixes)
    accuracy = float((model(x).argmax(1) == digits.y_test).float().mean())
    assert accuracy > 0.7


def test_layout_and_orders_are_seeded(model: S3TModel, digits: DataSplit) -> None:
    layout = model.manifest["slices"]
    rows = sorted(i for shard in layout for piece in shard for i in piece)
    assert rows == list(range(800, digits.x_train.shape[0]))  # a partition of the deletable rows
    sizes = [len(piece) for shard in layout for piece in shard]
    assert max(sizes) - min(sizes) <= 1
    assert layout == assign_slices(range(800, digits.x_train.shape[0]), CONFIG.shards, CONFIG.slices, SEED)
    assert layout != assign_slices(range(800, digits.x_train.shape[0]), CONFIG.shards, CONFIG.slices, SEED + 1)
    for k, orders in enumerate(model.manifest["orders"]):
        assert orders[0] == [0, 1, 2]  # the identity first
        assert len({o[0] for o in orders}) == CONFIG.orders  # distinct first slices
        assert [list(o) for o in draw_orders(CONFIG.slices, CONFIG.orders, SEED, k)] == orders


# -- THE exactness test ----------------------------------------------------------------------------


def test_deletion_equals_training_without_the_slice(model: S3TModel, digits: DataSplit) -> None:
    """After a deletion each affected shard's served weights, and the served logits, equal those of
    fresh deterministic trainings on the surviving prefixes' data alone."""
    shard = 0
    identity = tuple(model.manifest["orders"][shard][0])
    victim_slice = identity[2]  # the last slice of the identity order
    row = _slice_rows(model, shard, victim_slice)[0]
    report = model.delete([row])
    assert report.slices == ((shard, victim_slice),) and report.exact and report.optimizer_steps == 0
    served = model.served_prefixes[shard]
    assert served is not None and victim_slice not in served
    assert report.served_after[shard] == served and shard in report.switched
    fresh = _fresh(model, digits, shard, served)
    assert same_state(model.shards[shard], snapshot(fresh))
    # The unaffected shard: also equal to a fresh training of what it serves.
    other = _fresh(model, digits, 1, model.served_prefixes[1])
    assert same_state(model.shards[1], snapshot(other))
    with torch.no_grad():
        features = model.backbone(digits.x_test)
        assembled = torch.stack([fresh(features), other(features)]).mean(dim=0)
        assert torch.equal(model(digits.x_test), assembled)


def test_deleting_a_first_slice_kills_that_order(model: S3TModel) -> None:
    shard = 1
    orders = [tuple(o) for o in model.manifest["orders"][shard]]
    first = orders[1][0]  # the second order's first slice
    capacity = model.capacity()[shard]
    report = model.delete([_slice_rows(model, shard, first)[3]])
    # Every prefix of every order that holds the slice is dropped, including the 1-slice prefix.
    dropped = {p for k, p in report.dropped_prefixes if k == shard}
    assert (first,) in dropped
    assert {o[:i] for o in orders for i in range(1, 4) if first in o[:i]} == dropped
    served = model.served_prefixes[shard]
    assert served is not None and first not in served and served[0] != first
    assert model.capacity()[shard] == capacity - 1 and report.needs_retraining == ()
    assert report.remaining_capacity == min(model.capacity()) == 1


def test_a_shard_with_every_order_dead_needs_retraining(model: S3TModel, digits: DataSplit) -> None:
    shard = 0
    firsts = [o[0] for o in model.manifest["orders"][shard]]
    rows = [_slice_rows(model, shard, s)[0] for s in firsts]
    state = snapshot(model)
    with pytest.raises(DeletionCapacityError, match=r"leaves shard\(s\) \[0\] with no surviving prefix"):
        model.delete(rows, allow_dead_shards=False)
    assert same_state(model, state)  # refused before anything was committed
    report = model.delete(rows)
    assert report.needs_retraining == (shard,) and report.remaining_capacity == 0
    assert model.served_prefixes[shard] is None
    with torch.no_grad():  # the model serves the living shard alone
        assert torch.equal(model(digits.x_test), model.shards[1](model.backbone(digits.x_test)))
    # Killing the last living shard too leaves nothing to serve: refused.
    last = [_slice_rows(model, 1, o[0])[0] for o in model.manifest["orders"][1]]
    state = snapshot(model)
    with pytest.raises(DeletionCapacityError, match="no shard with a surviving prefix"):
        model.delete(last)
    assert same_state(model, state)


def test_a_deletion_takes_no_optimiser_step(model: S3TModel, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a deletion must not construct or step an optimiser")

    monkeypatch.setattr(torch.optim.Optimizer, "step", refuse)
    monkeypatch.setattr(torch.optim.Optimizer, "__init__", refuse)
    untouched, state = model.shards[1], snapshot(model.shards[1])
    backbone = snapshot(model.backbone)
    report = model.delete([_slice_rows(model, 0, 1)[0], _slice_rows(model, 0, 1)[1]])
    assert report.optimizer_steps == 0 and report.switched == (0,)
    assert model.shards[1] is untouched and same_state(model.shards[1], state)
    assert same_state(model.backbone, backbone)
    # The served shard-0 weights are the stored checkpoint of its prefix, bit for bit.
    served = model.served_prefixes[0]
    assert served is not None
    entry = model.manifest["checkpoints"][f"0/{'-'.join(map(str, served))}"]
    stored = load_state_dict(ShardNet(128, CONFIG.adapter_dim, 10, len(served)), model.directory / entry["file"])
    assert same_state(model.shards[0], snapshot(stored))


def test_bad_ids_are_refused(model: S3TModel) -> None:
    state = snapshot(model)
    deletable = _slice_rows(model, 0, 0)[0]
    cases = [
        ([], "no ids to delete"),
        ([deletable, deletable], r"duplicate ids in the deletion: \[\d+\]"),
        ([-1], r"unknown ids \(training rows are 0..1436\): \[-1\]"),
        ([5000], "unknown ids"),
        ([5], r"ids \[5\] are not deletable"),
        ([650], r"ids \[650\] are not deletable"),  # a validation row
        ([True], "training row indices"),
        (["a"], "training row indices"),
        ("12", "must be a sequence of ints"),
    ]
    for ids, match in cases:
        with pytest.raises(InvalidRequestError, match=match):
            model.delete(ids)  # type: ignore[arg-type]
    assert same_state(model, state) and not model.deleted_ids
    model.delete(np.array([deletable]))  # NumPy ids are row indices too
    with pytest.raises(InvalidRequestError, match=rf"ids already deleted: \[{deletable}\]"):
        model.delete([deletable])


def test_config_is_validated() -> None:
    for kwargs, match in [
        ({"shards": 0}, "shards must be an int >= 1"),
        ({"orders": 7, "slices": 3}, r"orders must be <= slices! = 6"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"epochs": True}, "epochs must be an int >= 1"),
    ]:
        with pytest.raises(InvalidHyperparameterError, match=match):
            S3TConfig(**kwargs)  # type: ignore[arg-type]


def test_too_few_or_duplicate_deletable_ids(digits: DataSplit, backbone: nn.Module, tmp_path: Path) -> None:
    data = (digits.x_train, digits.y_train)
    with pytest.raises(InvalidRequestError, match="cannot fill 2 shards x 3 slices"):
        train_s3t(backbone, data, [900, 901], CONFIG, 0, tmp_path)
    with pytest.raises(InvalidRequestError, match="duplicates"):
        train_s3t(backbone, data, [900] * 10, CONFIG, 0, tmp_path)


# -- checkpoints -----------------------------------------------------------------------------------


def test_checkpoints_round_trip(trained_dir: Path, digits: DataSplit, backbone: nn.Module, tmp_path: Path) -> None:
    loaded = load_s3t(trained_dir, _extractor())
    assert same_state(loaded.backbone, snapshot(backbone))
    # A second training with the same seed writes the same checkpoints, byte for byte.
    again = train_s3t(
        backbone, (digits.x_train, digits.y_train), list(range(800, digits.x_train.shape[0])), CONFIG, SEED, tmp_path,
        validation=_validation(digits),
    )
    manifest = json.loads((trained_dir / MANIFEST).read_text())
    assert {k: v["sha256"] for k, v in manifest["checkpoints"].items()} == {
        k: v["sha256"] for k, v in again.manifest["checkpoints"].items()
    }
    assert same_state(again, snapshot(loaded))
    with torch.no_grad():
        assert torch.equal(again(digits.x_test), loaded(digits.x_test))
    # One checkpoint per distinct prefix: L per order, shared prefixes stored once.
    for k, orders in enumerate(manifest["orders"]):
        prefixes = {tuple(o[:i]) for o in orders for i in range(1, CONFIG.slices + 1)}
        assert sum(key.startswith(f"{k}/") for key in manifest["checkpoints"]) == len(prefixes)
    assert manifest["seed"] == SEED and manifest["config"] == CONFIG.to_dict()


def test_corrupt_or_missing_checkpoints_are_clear_errors(trained_dir: Path, tmp_path: Path) -> None:
    directory = tmp_path / "copy"
    shutil.copytree(trained_dir, directory)
    model = load_s3t(directory, _extractor())
    # Corrupt the checkpoint shard 0 switches to when its identity order loses its last slice.
    identity = model.manifest["orders"][0][0]
    entry = model.manifest["checkpoints"][f"0/{identity[0]}-{identity[1]}"]
    path = directory / entry["file"]
    original = path.read_bytes()
    path.write_bytes(original[:-8] + bytes(8))
    state = snapshot(model)
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        model.delete([_slice_rows(model, 0, identity[2])[0]])
    assert same_state(model, state) and not model.deleted_ids  # nothing committed
    with pytest.raises(CheckpointError, match="does not match its recorded sha256"):
        load_s3t(directory, _extractor())
    path.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_s3t(directory, _extractor())
    (directory / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="cannot read the S3T manifest"):
        load_s3t(directory, _extractor())


# -- the method ------------------------------------------------------------------------------------


def test_method_deletes_exactly(model: S3TModel, digits: DataSplit, monkeypatch: pytest.MonkeyPatch) -> None:
    # In each shard, a slice that starts no order: every shard keeps a prefix of both orders.
    middle = [next(s for s in range(CONFIG.slices) if s not in {o[0] for o in orders}) for orders in model.manifest["orders"]]
    rows = [_slice_rows(model, k, s)[0] for k, s in enumerate(middle)]
    x, y = digits.x_train[rows], digits.y_train[rows]
    state = snapshot(model)
    monkeypatch.setattr(torch.optim.Optimizer, "step", lambda *a, **k: pytest.fail("optimiser step"))
    result = S3T().unlearn(model, ForgetRequest(x, y, ids=rows), memory_format="contiguous")
    assert same_state(model, state)  # the caller's model is untouched (a copy was changed)
    assert result.steps == 0 and result.passes == 0 and result.stop_reason == "exact_deletion"
    assert result.details["exact"] is True and result.details["optimizer_steps"] == 0
    assert result.details["needs_retraining"] == [] and result.details["remaining_capacity"] == 2
    assert [0, [0, 1, 2]] in result.details["dropped_prefixes"]
    # The returned model equals the caller's model after the same deletion.
    model.delete(rows)
    assert same_state(result.model, snapshot(model))
    # converged is the truth about the forget rows, not a promise.
    with torch.no_grad():
        wrong = bool((result.model(x).argmax(1) != y).all())
    assert result.converged == wrong


def test_method_refuses_other_models_and_rows_it_was_not_trained_on(
    model: S3TModel, trained_cnn: SmallCNN, digits: DataSplit
) -> None:
    row = _slice_rows(model, 0, 0)[0]
    request = ForgetRequest(digits.x_train[[row]], digits.y_train[[row]], ids=["user-7"])
    with pytest.raises(InvalidModelError, match="s3t deletes from an S3TModel"):
        S3T().unlearn(trained_cnn, request)
    # A row of the backbone's split, a test image and a changed label are not deletable rows.
    fixed = next(i for i in range(len(digits.y_train)) if i not in model._slice_of)
    for x, y in (
        (digits.x_train[[fixed]], digits.y_train[[fixed]]),
        (digits.x_test[[0]], digits.y_test[[0]]),
        (digits.x_train[[row]], (digits.y_train[[row]] + 1) % 10),
    ):
        with pytest.raises(InvalidRequestError, match=r"instance\(s\) \['user-7'\] are not deletable rows"):
            S3T().unlearn(model, ForgetRequest(x, y, ids=["user-7"]))
    with pytest.raises(InvalidHyperparameterError, match="allow_dead_shards must be a bool"):
        S3T(allow_dead_shards="yes")  # type: ignore[arg-type]
    assert S3T().get_params() == {"allow_dead_shards": True}


def test_method_finds_rows_by_content_whatever_the_ids(model: S3TModel, digits: DataSplit) -> None:
    rows = [_slice_rows(model, 0, 1)[0], _slice_rows(model, 1, 2)[1]]
    named = S3T().unlearn(model, ForgetRequest(digits.x_train[rows], digits.y_train[rows], ids=["a", "b"]))
    by_index = S3T().unlearn(model, ForgetRequest(digits.x_train[rows], digits.y_train[rows], ids=rows))
    assert named.details["rows"] == by_index.details["rows"] == sorted(rows)
    assert same_state(named.model, snapshot(by_index.model))
    # Once deleted, a row is no longer deletable: asking again names it.
    with pytest.raises(InvalidRequestError, match=r"\['a'\] are not deletable"):
        S3T().unlearn(named.model, ForgetRequest(digits.x_train[rows[:1]], digits.y_train[rows[:1]], ids=["a"]))


def test_an_instance_present_twice_deletes_both_copies(digits: DataSplit, tmp_path: Path) -> None:
    x = torch.cat([digits.x_train[:30], digits.x_train[[5]]])
    y = torch.cat([digits.y_train[:30], digits.y_train[[5]]])
    model = train_s3t(nn.Flatten(), (x, y), range(31), CONFIG, SEED, tmp_path)
    result = S3T().unlearn(model, ForgetRequest(x[[5]], y[[5]]))
    assert result.details["rows"] == [5, 30]
    assert {5, 30} <= result.model.deleted_ids


def test_prepare_model_trains_an_exactly_deletable_model(
    trained_cnn: SmallCNN, digits: DataSplit, tmp_path: Path
) -> None:
    model = S3T.prepare_model(trained_cnn, (digits.x_train, digits.y_train), seed=0, directory=tmp_path)
    assert isinstance(model, S3TModel) and model.config == S3T.DEFAULT_CONFIG
    assert sorted(model._slice_of) == list(range(len(digits.y_train)))  # every row is deletable
    with torch.no_grad():
        accuracy = (model(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert accuracy > 0.9
    assert S3T.exact and S3T.trains_own_model
    # Any other method unlearns from the caller's model as it is.
    from unlearnkit.methods import NegGrad

    assert NegGrad.prepare_model(trained_cnn, (digits.x_train, digits.y_train), seed=0, directory=tmp_path) is trained_cnn


def test_ledger_applies_s3t_deletions_and_receipts_say_exact(
    trained_dir: Path, backbone: nn.Module, digits: DataSplit, tmp_path: Path
) -> None:
    from unlearnkit.ledger import Ledger, apply_pending, verify
    from unlearnkit.request import instance_sha256

    build = lambda: load_s3t(trained_dir, _extractor())  # noqa: E731
    model = build()
    rows = lambda ids: (digits.x_train[list(ids)], digits.y_train[list(ids)])  # noqa: E731
    first, second = _slice_rows(model, 0, 1)[:2], _slice_rows(model, 1, 0)[:1]
    with Ledger.create(tmp_path / "ws", initial_state=model.state_dict(), source={}) as ledger:
        for ids in (first, second):
            y = digits.y_train[ids]
            ledger.add_request(
                ids, labels=y.tolist(), content_hashes=[instance_sha256(digits.x_train[i], int(y[n])) for n, i in enumerate(ids)],
                goal="misclassify", method="s3t", hyperparams={},
            )
        applied = apply_pending(ledger, build, rows)
        assert [r.status for r in applied] == ["applied", "applied"]
        receipts = [ledger.get(r.request_id).receipt for r in applied]
        assert all(r["deletion"]["exact"] is True and r["deletion"]["optimizer_steps"] == 0 for r in receipts)
        assert receipts[0]["deletion"]["rows"] == sorted(first) and receipts[1]["deletion"]["rows"] == second
        assert receipts[0]["run"]["stop_reason"] == "exact_deletion"
        # The second request was applied to the model the ledger restored after the first: its
        # state serves shorter prefixes than a freshly loaded model, and loads all the same.
        expected = build()
        expected.delete(sorted(first))
        expected.delete(second)
        current = build()
        current.load_state_dict(ledger.load_state())
        assert same_state(current, snapshot(expected))
        # Verification restores the latest version into a fresh model and re-checks every request.
        checks = verify(ledger, build, rows)
        assert [(c["request_id"], c["checked"]) for c in checks] == [(r.request_id, len(ids)) for r, ids in zip(applied, (first, second))]
        assert all(c["status"] in ("ok", "not_converged") for c in checks)


def test_prepare_model_reuses_a_matching_directory_and_refuses_another(
    trained_cnn: SmallCNN, digits: DataSplit, tmp_path: Path
) -> None:
    train = (digits.x_train[:200], digits.y_train[:200])
    small = S3TConfig(shards=2, slices=2, orders=1, epochs=1)
    first = S3T.prepare_model(trained_cnn, train, seed=0, directory=tmp_path, config=small)
    stamp = (tmp_path / "s3t_manifest.json").stat().st_mtime_ns
    again = S3T.prepare_model(trained_cnn, train, seed=0, directory=tmp_path, config=small)
    assert (tmp_path / "s3t_manifest.json").stat().st_mtime_ns == stamp  # loaded, not retrained
    assert same_state(again, snapshot(first))
    with pytest.raises(CheckpointError, match="already holds an S3T model trained with other settings"):
        S3T.prepare_model(trained_cnn, train, seed=1, directory=tmp_path, config=small)
    with pytest.raises(CheckpointError, match="already holds an S3T model"):
        S3T.prepare_model(trained_cnn, (train[0], (train[1] + 1) % 10), seed=0, directory=tmp_path, config=small)
    interrupted = tmp_path / "interrupted"
    (interrupted / "shard0").mkdir(parents=True)
    (interrupted / "shard0" / "prefix-0.safetensors").write_bytes(b"half")
    with pytest.raises(CheckpointError, match="no S3T manifest"):
        S3T.prepare_model(trained_cnn, train, seed=0, directory=interrupted, config=small)
    assert (interrupted / "shard0" / "prefix-0.safetensors").read_bytes() == b"half"  # left as it was


def test_demo_and_bench_cache_the_s3t_model_and_replace_a_stale_one(tmp_path: Path) -> None:
    from unlearnkit.demo import model_for_method
    from unlearnkit.models.pretrained import load_pretrained

    default = load_pretrained("digits", directory=tmp_path)
    assert model_for_method("neggrad", default, tmp_path) is default.model
    model = model_for_method("s3t", default, tmp_path)
    directory = tmp_path / f"{default.path.stem}-s3t"
    assert isinstance(model, S3TModel) and (directory / "s3t_manifest.json").is_file()
    manifest = json.loads((directory / "s3t_manifest.json").read_text())
    manifest["seed"] = 99  # as if written with other settings
    (directory / "s3t_manifest.json").write_text(json.dumps(manifest))
    again = model_for_method("s3t", default, tmp_path)
    assert json.loads((directory / "s3t_manifest.json").read_text())["seed"] == 0
    assert same_state(again, snapshot(model))
    # A directory left by an interrupted training (checkpoints, no manifest) is replaced too.
    (directory / "s3t_manifest.json").unlink()
    again = model_for_method("s3t", default, tmp_path)
    assert (directory / "s3t_manifest.json").is_file() and same_state(again, snapshot(model))


def test_a_request_beyond_capacity_is_recorded_as_unsupported(digits: DataSplit, tmp_path: Path) -> None:
    from unlearnkit.scenarios.single import run_request

    x, y = digits.x_train[:40], digits.y_train[:40]
    model = train_s3t(nn.Flatten(), (x, y), range(40), S3TConfig(shards=1, slices=2, orders=1, epochs=1), SEED, tmp_path)
    record = run_request(model, ForgetRequest(x, y), "s3t", splits={"test": (digits.x_test, digits.y_test)})
    assert record.status == "unsupported" and "no shard with a surviving prefix" in (record.error or "")
    with pytest.raises(DeletionCapacityError):
        S3T().unlearn(model, ForgetRequest(x, y))


def test_a_restored_state_remembers_the_deleted_rows(trained_dir: Path, digits: DataSplit) -> None:
    model = load_s3t(trained_dir, _extractor())
    row = _slice_rows(model, 0, 1)[0]
    model.delete([row])
    restored = load_s3t(trained_dir, _extractor())
    restored.load_state_dict(model.state_dict())
    assert restored.deleted_ids == {row} and same_state(restored, snapshot(model))
    with pytest.raises(InvalidRequestError, match=rf"ids already deleted: \[{row}\]"):
        restored.delete([row])
    with pytest.raises(InvalidRequestError, match="are not deletable rows"):
        S3T().unlearn(restored, ForgetRequest(digits.x_train[[row]], digits.y_train[[row]]))


def test_concurrent_preparation_keeps_the_first_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two grid workers preparing the same cached S3T model: the one that renames second loads
    the first one's files and leaves no scratch directory behind."""
    from unlearnkit.demo import model_for_method
    from unlearnkit.models.pretrained import load_pretrained

    default = load_pretrained("digits", directory=tmp_path)
    rename = Path.rename

    def lose_the_race(self: Path, target: Path) -> Path:
        shutil.copytree(self, target)  # the other worker got there first
        raise OSError("Directory not empty")

    monkeypatch.setattr(Path, "rename", lose_the_race)
    model = model_for_method("s3t", default, tmp_path)
    monkeypatch.setattr(Path, "rename", rename)
    directory = tmp_path / f"{default.path.stem}-s3t"
    assert isinstance(model, S3TModel) and model.directory == directory
    assert not list(tmp_path.glob("*.tmp-*"))
