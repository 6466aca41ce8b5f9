"""The ledger of deletion requests: storage, validation, locking, apply and verify.

Tiny models only (``Flatten -> Linear(64, 10)`` on digits); the SIGKILL crash test lives in
``test_ledger_crash.py``.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from unlearnkit.data import DataSplit
from unlearnkit.errors import (
    CheckpointError,
    InvalidHyperparameterError,
    LedgerBusyError,
    LedgerError,
    LedgerVersionError,
    NonFiniteError,
    UnknownMethodError,
)
from unlearnkit.ledger import (
    CRASH_ENV,
    SCHEMA_VERSION,
    Ledger,
    RequestRecord,
    VersionRecord,
    apply_pending,
    verify,
)
from unlearnkit.ledger import apply as apply_module
from unlearnkit.ledger import store as store_module
from unlearnkit.receipt import receipt_sha256
from unlearnkit.request import instance_sha256
from unlearnkit.utils.hashing import file_sha256
from unlearnkit.utils.modules import predict_logits

FAST = {"lr": 0.05, "max_steps": 300}


def build() -> nn.Module:
    """A fresh model of the workspace's architecture (weights come from the ledger)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def correct_ids(digits: DataSplit, trained_linear: nn.Module) -> list[int]:
    """Training indices the trained linear model classifies correctly, in index order."""
    preds = predict_logits(trained_linear, digits.x_train).argmax(1)
    return [i for i in range(200) if int(preds[i]) == int(digits.y_train[i])]


@pytest.fixture
def rows(digits: DataSplit):
    """``rows(ids) -> (inputs, labels)`` over the digits training set, ids = row indices."""

    def read(ids):
        index = torch.tensor([int(i) for i in ids], dtype=torch.long)
        return digits.x_train[index], digits.y_train[index]

    return read


def hashes(digits: DataSplit, ids: list[int]) -> list[str]:
    return [instance_sha256(digits.x_train[i], int(digits.y_train[i])) for i in ids]


def add(ledger: Ledger, digits: DataSplit, ids: list[int], *, new_labels=None, method="neggrad", params=None, **kw) -> RequestRecord:
    labels = [int(digits.y_train[i]) for i in ids]
    return ledger.add_request(
        ids, labels=labels, content_hashes=hashes(digits, ids), goal="misclassify" if new_labels is None else "relabel",
        new_labels=new_labels, method=method, hyperparams=FAST if params is None else params, **kw,
    )


@pytest.fixture
def workspace(tmp_path: Path, trained_linear: nn.Module) -> Path:
    """A fresh workspace whose version 0 is the trained linear model (ledger closed)."""
    ws = tmp_path / "ws"
    Ledger.create(ws, initial_state=trained_linear.state_dict(), source={"kind": "test"}, metadata={"note": "x"}).close()
    return ws


def files(ws: Path) -> dict[str, str]:
    """sha256 of every file in the workspace's models/ directory (temporary files included)."""
    return {p.name: file_sha256(p) for p in sorted((ws / "models").iterdir())}


def lock_is_free(ws: Path) -> bool:
    """Whether nobody holds the workspace's writer lock."""
    import fcntl

    fd = os.open(ws / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def deleted(ids):
    """A data source from which the rows were deleted."""
    raise KeyError(f"id {ids[0]} was deleted")


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- create / open ------------------------------------------------------------------------------


def test_create_lays_out_the_workspace_and_reopens(workspace: Path, trained_linear: nn.Module) -> None:
    assert {"ledger.sqlite", "models", "source.json", "lock"} <= {p.name for p in workspace.iterdir()}
    with Ledger.open(workspace) as ledger:
        assert ledger.writable and ledger.schema_version == SCHEMA_VERSION
        (v0,) = ledger.versions()
        assert isinstance(v0, VersionRecord)
        assert (v0.version_id, v0.parent_id, v0.request_id) == (0, None, None)
        assert v0.path.startswith("models/0-") and v0.path.endswith(f"{v0.sha256[:12]}.safetensors")
        assert file_sha256(workspace / v0.path) == v0.sha256
        assert same_state(ledger.load_state(), trained_linear.state_dict())
        assert ledger.requests() == [] and ledger.pending() == []
        assert ledger.source == {"kind": "test"} and ledger.metadata == {"note": "x"}
        assert ledger.cleaned == ()
    assert not ledger.writable
    with pytest.raises(LedgerError, match="closed"):
        ledger.versions()
    with Ledger.open_readonly(workspace) as reader:  # and again, read-only
        assert reader.current_version() == v0 and not reader.writable
    with Ledger.open(workspace) as again:  # the lock was released by the context manager
        assert again.current_version() == v0


def test_create_refuses_an_existing_ledger_and_bad_input(workspace: Path, trained_linear: nn.Module, tmp_path: Path) -> None:
    before = files(workspace)
    with pytest.raises(LedgerError, match="already holds a ledger"):
        Ledger.create(workspace, initial_state=trained_linear.state_dict(), source={})
    assert files(workspace) == before
    with pytest.raises(LedgerError, match="NaN or infinite"):
        Ledger.create(tmp_path / "nan", initial_state={"w": torch.tensor([float("nan")])}, source={})
    with pytest.raises(LedgerError, match="strict JSON"):
        Ledger.create(tmp_path / "json", initial_state={"w": torch.zeros(1)}, source={"x": float("inf")})
    assert not (tmp_path / "nan").exists() and not (tmp_path / "json").exists()


def test_open_refuses_missing_newer_and_corrupt_ledgers(workspace: Path, tmp_path: Path) -> None:
    for opener in (Ledger.open, Ledger.open_readonly):
        with pytest.raises(LedgerError, match="no ledger"):
            opener(tmp_path / "nowhere")

    db = workspace / "ledger.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    for opener in (Ledger.open, Ledger.open_readonly):
        with pytest.raises(LedgerVersionError, match=rf"schema version 99.*schema version {SCHEMA_VERSION}"):
            opener(workspace)
    assert issubclass(LedgerVersionError, LedgerError)

    db.write_bytes(b"this is not an SQLite database at all" * 100)
    for opener in (Ledger.open, Ledger.open_readonly):
        with pytest.raises(LedgerError, match="not a readable unlearnkit ledger"):
            opener(workspace)

    other = tmp_path / "other"
    other.mkdir()
    sqlite3.connect(other / "ledger.sqlite").execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(LedgerError, match="not an unlearnkit ledger"):
        Ledger.open(other)
    assert lock_is_free(workspace) and lock_is_free(other)  # every refusal released the lock


# -- requests ------------------------------------------------------------------------------------


def test_add_request_validations(workspace: Path, digits: DataSplit, correct_ids: list[int]) -> None:
    a, b, c = correct_ids[:2], correct_ids[2:4], correct_ids[4:6]
    with Ledger.open(workspace) as ledger:
        first = add(ledger, digits, a, request_id="ticket-1")
        assert (first.status, first.seq, first.ids, first.request_id) == ("pending", 1, tuple(a), "ticket-1")
        with pytest.raises(LedgerError, match="empty"):
            ledger.add_request([], labels=[], content_hashes=[], goal="misclassify", method="neggrad", hyperparams={})
        with pytest.raises(LedgerError, match=r"duplicate ids within the request: \['%d'\]" % b[0]):
            add(ledger, digits, [b[0], b[0]])
        with pytest.raises(LedgerError, match="duplicate ids"):  # 7 and "7" name the same instance
            ledger.add_request([b[0], str(b[0])], labels=[1, 1], content_hashes=["0" * 64] * 2,
                               goal="misclassify", method="neggrad", hyperparams={})
        with pytest.raises(LedgerError, match=rf"\['{a[1]}'\] are already in request 'ticket-1' \(pending\)"):
            add(ledger, digits, [a[1], b[0]])
        with pytest.raises(LedgerError, match="request id 'ticket-1' is already in the ledger"):
            add(ledger, digits, b, request_id="ticket-1")
        with pytest.raises(LedgerError, match="not valid"):
            add(ledger, digits, b, request_id="../escape")
        with pytest.raises(UnknownMethodError):
            add(ledger, digits, b, method="no-such-method")
        with pytest.raises(InvalidHyperparameterError):
            add(ledger, digits, b, params={"learning_rate": 1.0})
        with pytest.raises(LedgerError, match="2 ids but 1 labels"):
            ledger.add_request(b, labels=[1], content_hashes=hashes(digits, b), goal="misclassify",
                               method="neggrad", hyperparams={})
        with pytest.raises(LedgerError, match="sha256"):
            ledger.add_request(b, labels=[1, 2], content_hashes=["abc", "def"], goal="misclassify",
                               method="neggrad", hyperparams={})
        with pytest.raises(LedgerError, match="needs new_labels"):
            ledger.add_request(b, labels=[1, 2], content_hashes=hashes(digits, b), goal="relabel",
                               method="neggrad", hyperparams={})
        with pytest.raises(LedgerError, match="goal must be one of"):
            ledger.add_request(b, labels=[1, 2], content_hashes=hashes(digits, b), goal="unseen",
                               method="neggrad", hyperparams={})
        with pytest.raises(LedgerError, match="strict JSON"):
            add(ledger, digits, b, params={"lr": float("nan")})
        assert [r.request_id for r in ledger.requests()] == ["ticket-1"]  # every refusal left no trace

        second = add(ledger, digits, b)  # generated id, next in order
        third = add(ledger, digits, c, new_labels=[(int(digits.y_train[i]) + 1) % 10 for i in c], seed=3)
        assert (second.request_id, second.seq, third.request_id, third.seq) == ("req-0002", 2, "req-0003", 3)
        assert third.goal == "relabel" and third.seed == 3 and len(third.new_labels) == 2
        assert [r.request_id for r in ledger.pending()] == ["ticket-1", "req-0002", "req-0003"]
        assert ledger.get("req-0003") == third
        assert json.loads(json.dumps(third.to_dict()))["ids"] == c


def test_commit_order_parent_chain_and_refusals(workspace: Path, digits: DataSplit, correct_ids: list[int]) -> None:
    with Ledger.open(workspace) as ledger:
        r1, r2 = add(ledger, digits, correct_ids[:2]), add(ledger, digits, correct_ids[2:4])
        state = ledger.load_state()
        s2 = {k: v + 0.01 for k, v in state.items()}
        s1 = {k: v + 0.02 for k, v in state.items()}
        v1 = ledger.commit(r2.request_id, s2, metrics={"converged": True, "loss": float("nan")}, receipt={"r": 2})
        v2 = ledger.commit(r1.request_id, s1, metrics={"converged": True}, receipt={"r": 1})
        assert [(v.version_id, v.parent_id, v.request_id) for v in ledger.versions()] == [
            (0, None, None), (1, 0, r2.request_id), (2, 1, r1.request_id)]
        assert ledger.current_version() == v2 and ledger.version(1) == v1
        assert same_state(ledger.load_state(), s1) and same_state(ledger.load_state(1), s2)
        applied = ledger.get(r2.request_id)
        assert (applied.status, applied.version_id, applied.receipt) == ("applied", 1, {"r": 2})
        assert applied.metrics == {"converged": True, "loss": None} and applied.applied_at
        assert ledger.pending() == []
        for p in ("models/" + Path(v.path).name for v in ledger.versions()):
            assert (workspace / p).is_file()

        before = files(workspace)
        with pytest.raises(LedgerError, match="is applied, not pending"):
            ledger.commit(r1.request_id, s1, metrics={}, receipt={})
        with pytest.raises(LedgerError, match="no request 'nope'"):
            ledger.commit("nope", s1, metrics={}, receipt={})
        r3 = add(ledger, digits, correct_ids[4:6])
        with pytest.raises(LedgerError, match="does not fit"):
            ledger.commit(r3.request_id, {"1.weight": torch.zeros(3, 3)}, metrics={}, receipt={})
        with pytest.raises(LedgerError, match="NaN or infinite"):
            ledger.commit(r3.request_id, {k: v * float("inf") for k, v in s1.items()}, metrics={}, receipt={})
        with pytest.raises(LedgerError, match="strict JSON"):
            ledger.commit(r3.request_id, s1, metrics={}, receipt={"x": float("nan")})
        assert files(workspace) == before and ledger.get(r3.request_id).status == "pending"


def test_load_state_checks_the_sha256(workspace: Path) -> None:
    with Ledger.open(workspace) as ledger:
        path = ledger.model_path()
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF  # one flipped bit in the last weight
        path.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="does not match the sha256"):
            ledger.load_state()
        path.unlink()
        with pytest.raises(CheckpointError, match="missing"):
            ledger.load_state(0)
        with pytest.raises(LedgerError, match="no model version 7"):
            ledger.load_state(7)


def test_fail_and_retry(workspace: Path, digits: DataSplit, correct_ids: list[int]) -> None:
    ids = correct_ids[:2]
    with Ledger.open(workspace) as ledger:
        r1 = add(ledger, digits, ids)
        failed = ledger.fail(r1.request_id, "NonFiniteError: the loss became NaN")
        assert (failed.status, failed.error) == ("failed", "NonFiniteError: the loss became NaN")
        assert ledger.pending() == [] and ledger.requests("failed") == [failed]
        with pytest.raises(LedgerError, match="retry it first"):
            ledger.commit(r1.request_id, ledger.load_state(), metrics={}, receipt={})
        with pytest.raises(LedgerError, match="is failed, not pending"):
            ledger.fail(r1.request_id, "again")
        again = ledger.retry(r1.request_id)
        assert (again.status, again.error, again.seq) == ("pending", None, 1)
        with pytest.raises(LedgerError, match="is pending, not failed"):
            ledger.retry(r1.request_id)

        # A failed request does not block its ids; retrying it then must not double-book them.
        ledger.fail(r1.request_id, "boom")
        r2 = add(ledger, digits, [ids[0], correct_ids[5]])
        with pytest.raises(LedgerError, match=rf"cannot retry '{r1.request_id}'.*already in request '{r2.request_id}'"):
            ledger.retry(r1.request_id)
        assert ledger.get(r1.request_id).status == "failed"
        ledger.commit(r2.request_id, ledger.load_state(), metrics={}, receipt={})
        with pytest.raises(LedgerError, match="is applied, not pending"):
            ledger.fail(r2.request_id, "too late")


def test_read_only_ledger_refuses_writes_and_reads_beside_a_writer(workspace: Path, digits: DataSplit, correct_ids: list[int]) -> None:
    with Ledger.open(workspace) as writer:
        with Ledger.open_readonly(workspace) as reader:
            with pytest.raises(LedgerError, match="read-only"):
                add(reader, digits, correct_ids[:2])
            with pytest.raises(LedgerError, match="opened for writing"):
                apply_pending(reader, build, lambda ids: None)
            add(writer, digits, correct_ids[:2])
            assert [r.seq for r in reader.pending()] == [1]  # sees the writer's commit
        with pytest.raises(LedgerBusyError, match="--wait"):  # one writer at a time, even in-process
            Ledger.open(workspace, wait=0)


# -- failed commits leave nothing behind ---------------------------------------------------------


def _assert_unchanged(ws: Path, before: dict[str, str], request_id: str) -> None:
    assert files(ws) == before  # no new model file, no temporary file
    with Ledger.open_readonly(ws) as ledger:
        assert len(ledger.versions()) == 1 and ledger.get(request_id).status == "pending"


def test_failed_model_write_leaves_everything_unchanged(workspace: Path, digits: DataSplit, correct_ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with Ledger.open(workspace) as ledger:
        r1 = add(ledger, digits, correct_ids[:2])
        before = files(workspace)
        state = ledger.load_state()
        monkeypatch.setattr(store_module, "save_file", full_disk)
        with pytest.raises(LedgerError, match="cannot write model version 1.*No space left on device"):
            ledger.commit(r1.request_id, state, metrics={}, receipt={})
        monkeypatch.undo()
        _assert_unchanged(workspace, before, r1.request_id)
        assert ledger.commit(r1.request_id, state, metrics={}, receipt={}).version_id == 1  # works once the disk does


def test_failed_transaction_removes_the_new_model_file(workspace: Path, digits: DataSplit, correct_ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_error_before_commit(name: str) -> None:
        if name == "before_commit":
            raise sqlite3.OperationalError("disk I/O error")

    with Ledger.open(workspace) as ledger:
        r1 = add(ledger, digits, correct_ids[:2])
        before = files(workspace)
        monkeypatch.setattr(store_module, "_crash_point", disk_error_before_commit)
        with pytest.raises(LedgerError, match="cannot record model version 1.*disk I/O error.*unchanged"):
            ledger.commit(r1.request_id, ledger.load_state(), metrics={}, receipt={})
        monkeypatch.undo()
        _assert_unchanged(workspace, before, r1.request_id)


def test_read_only_models_dir_is_a_clear_error(workspace: Path, digits: DataSplit, correct_ids: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    with Ledger.open(workspace) as ledger:
        r1 = add(ledger, digits, correct_ids[:2])
        before = files(workspace)
        state = ledger.load_state()
        (workspace / "models").chmod(0o555)
        if as_root:  # root ignores directory permissions: make the file system say no instead

            def refuse(*args, **kwargs):
                raise PermissionError(errno.EACCES, "Permission denied", str(workspace / "models"))

            monkeypatch.setattr(store_module.tempfile, "mkstemp", refuse)
        try:
            with pytest.raises(LedgerError, match="cannot write model version 1 to .*models.*Permission denied"):
                ledger.commit(r1.request_id, state, metrics={}, receipt={})
        finally:
            monkeypatch.undo()
            (workspace / "models").chmod(0o755)
        _assert_unchanged(workspace, before, r1.request_id)


def test_open_removes_orphans_and_temporary_files(workspace: Path) -> None:
    models = workspace / "models"
    (models / "5-0123456789ab.safetensors").write_bytes(b"orphan of a killed commit")
    (models / ".5-abc.tmp").write_bytes(b"half a file")
    (workspace / ".source.json.xyz.tmp").write_text("{")
    (models / "notes.txt").write_text("not ours: kept")
    with Ledger.open_readonly(workspace) as reader:  # readers never delete anything
        assert reader.cleaned == ()
    assert (models / "5-0123456789ab.safetensors").exists()
    with Ledger.open(workspace) as ledger:
        assert set(ledger.cleaned) == {"models/5-0123456789ab.safetensors", "models/.5-abc.tmp", ".source.json.xyz.tmp"}
        assert sorted(p.name for p in models.iterdir()) == sorted([Path(ledger.current_version().path).name, "notes.txt"])


def test_crash_hook_is_a_no_op_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CRASH_ENV, raising=False)
    for point in store_module.CRASH_POINTS:
        store_module._crash_point(point)
    monkeypatch.setenv(CRASH_ENV, "some_other_point")
    store_module._crash_point("after_commit")  # still alive


# -- the writer lock -----------------------------------------------------------------------------

HOLDER = """
import sys
from unlearnkit.ledger import Ledger
ledger = Ledger.open(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
ledger.close()
"""


def test_busy_lock_from_another_process(workspace: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workspace)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    timer = None
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert (workspace / "lock").read_text().strip() == str(proc.pid)
        started = time.monotonic()
        with pytest.raises(LedgerBusyError) as refused:
            Ledger.open(workspace, wait=0)
        assert time.monotonic() - started < 2.0
        assert str(refused.value) == (
            f"another process is applying requests in {workspace} (pid {proc.pid}); retry or pass --wait"
        )
        with pytest.raises(LedgerBusyError, match="after waiting 0.2 s"):
            Ledger.open(workspace, wait=0.2)
        with Ledger.open_readonly(workspace) as reader:  # readers need no lock
            assert reader.current_version().version_id == 0

        def release() -> None:
            proc.stdin.write("\n")
            proc.stdin.flush()

        timer = threading.Timer(0.5, release)
        timer.start()
        started = time.monotonic()
        with Ledger.open(workspace, wait=120) as ledger:  # waits for the holder, then gets it
            assert ledger.writable
            assert (workspace / "lock").read_text().strip() == str(os.getpid())
        assert time.monotonic() - started >= 0.4
        assert proc.wait(timeout=120) == 0
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- apply and verify ----------------------------------------------------------------------------


def test_apply_pending_end_to_end(workspace: Path, digits: DataSplit, correct_ids: list[int], rows) -> None:
    a, b, c, d = correct_ids[:3], correct_ids[3:5], correct_ids[5:7], correct_ids[7:9]
    calls: list[list] = []

    def spy(ids):
        calls.append(list(ids))
        return rows(ids)

    all_ids = list(range(len(digits.y_train)))
    with Ledger.open(workspace) as ledger:
        # The retain method goes first: training on retain data can bring earlier requests back
        # (a relapse; see the verify test), which is not what this test is about.
        add(ledger, digits, c, method="neggrad_plus", params={**FAST, "retain_batch_size": 64}, request_id="retain-c")
        add(ledger, digits, a, request_id="forget-a")
        add(ledger, digits, b, new_labels=[(int(digits.y_train[i]) + 3) % 10 for i in b], request_id="relabel-b")
        r4 = add(ledger, digits, d, request_id="failed-d")
        ledger.fail(r4.request_id, "kept out on purpose")
        seen: list[str] = []
        done = apply_pending(ledger, build, spy, all_ids=all_ids, on_request=lambda r: seen.append(r.request_id))

        assert [r.request_id for r in done] == seen == ["retain-c", "forget-a", "relabel-b"]
        assert [r.status for r in done] == ["applied"] * 3, [r.error for r in done]
        assert [(v.version_id, v.parent_id, v.request_id) for v in ledger.versions()] == [
            (0, None, None), (1, 0, "retain-c"), (2, 1, "forget-a"), (3, 2, "relabel-b")]
        for record in done:
            receipt = record.receipt
            assert receipt["request"]["id"] == record.request_id and receipt["receipt_sha256"] == receipt_sha256(receipt)
            assert [i["content_sha256"] for i in receipt["request"]["instances"]] == list(record.content_hashes)
            assert record.metrics["converged"] is True and receipt["verdict"]["passed"] is True
        assert done[2].receipt["request"]["goal"] == "relabel"

        # The retain rows (the one big read) exclude every requested id, failed ones included.
        retain_calls = [ids for ids in calls if len(ids) > 10]
        assert len(retain_calls) == 1  # read once, for the one method that uses it
        requested = set(a + b + c + d)
        assert not requested & set(retain_calls[0])
        assert sorted(retain_calls[0]) == [i for i in all_ids if i not in requested]
        assert done[0].metrics["retain_used"] == len(all_ids) - len(requested)

        # Each version meets its own request's goal (later ones may undo it: verify's job).
        for record in done:
            model = build()
            model.load_state_dict(ledger.load_state(record.version_id))
            preds = predict_logits(model, digits.x_train[list(record.ids)]).argmax(1)
            target = torch.tensor(record.labels if record.new_labels is None else record.new_labels)
            assert (preds != target).all() if record.goal == "misclassify" else (preds == target).all()
        assert apply_pending(ledger, build, spy) == []  # nothing left to do

    with Ledger.open_readonly(workspace) as reader:
        report = verify(reader, build, rows)
        current = build()
        current.load_state_dict(reader.load_state())
    assert [e["request_id"] for e in report] == ["retain-c", "forget-a", "relabel-b"]
    for entry, record in zip(report, done):
        preds = predict_logits(current, digits.x_train[list(record.ids)]).argmax(1)
        met = preds != torch.tensor(record.labels) if record.new_labels is None else preds == torch.tensor(record.new_labels)
        assert entry["goal_share"] == pytest.approx(100.0 * met.float().mean().item())
        assert entry["relapsed_ids"] == [i for i, m in zip(record.ids, met.tolist()) if not m]
        assert entry["status"] == ("relapsed" if entry["relapsed_ids"] else "ok") and entry["goal_share_at_apply"] == 100.0
    assert report[-1]["status"] == "ok"  # the last request holds on the model it produced


def test_apply_pending_records_failures_and_keeps_the_model(workspace: Path, digits: DataSplit, correct_ids: list[int], rows, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = correct_ids[:2], correct_ids[2:4]
    with Ledger.open(workspace) as ledger:
        add(ledger, digits, a, request_id="changed")
        add(ledger, digits, b, request_id="diverges")
        add(ledger, digits, correct_ids[4:6], method="neggrad_plus", request_id="needs-retain")
        with pytest.raises(LedgerError, match="'needs-retain' uses method 'neggrad_plus', which needs retain data: pass all_ids"):
            apply_pending(ledger, build, rows)
        assert len(ledger.pending()) == 3 and len(ledger.versions()) == 1  # refused before any run
        ledger.fail("needs-retain", "not in this test")

        def altered(ids):
            x, y = rows(ids)
            return x + 0.001 * (torch.tensor(ids) == a[1]).float().view(-1, 1, 1, 1), y

        def diverge(*args, **kwargs):
            raise NonFiniteError("neggrad: the loss became NaN; the result was discarded")

        real = apply_module.unlearn
        monkeypatch.setattr(apply_module, "unlearn", lambda model, request, **kw: (
            diverge() if request.ids == tuple(b) else real(model, request, **kw)))
        done = apply_pending(ledger, build, altered)
        assert [r.status for r in done] == ["failed", "failed"]
        assert f"content changed for 1 instance(s) (ids [{a[1]}])" in done[0].error
        assert done[1].error.startswith("NonFiniteError: neggrad: the loss became NaN")
        assert len(ledger.versions()) == 1  # the model is unchanged

        ledger.retry("changed")
        (ok,) = apply_pending(ledger, build, deleted)
        assert ok.status == "failed" and "could not provide the instances: KeyError" in ok.error


def test_non_converged_run_is_committed_and_reported(workspace: Path, digits: DataSplit, correct_ids: list[int], rows) -> None:
    with Ledger.open(workspace) as ledger:
        add(ledger, digits, correct_ids[:3], params={"lr": 1e-6, "max_steps": 1}, request_id="slow")
        (record,) = apply_pending(ledger, build, rows)
        assert record.status == "applied" and record.version_id == 1
        assert record.metrics["converged"] is False and record.receipt["run"]["converged"] is False
        assert record.receipt["verdict"]["passed"] is False
        (entry,) = verify(ledger, build, rows)
    assert entry["status"] == "not_converged" and not entry["relapsed"] and entry["goal_share"] < 100.0


def test_verify_detects_a_relapse_and_changed_content(workspace: Path, digits: DataSplit, correct_ids: list[int], rows) -> None:
    a, b = correct_ids[:3], correct_ids[3:5]
    with Ledger.open(workspace) as ledger:
        original = ledger.load_state()
        add(ledger, digits, a, request_id="first")
        (applied,) = apply_pending(ledger, build, rows)
        assert applied.status == "applied"
        assert [e["status"] for e in verify(ledger, build, rows)] == ["ok"]
        # A later version that restores the original weights undoes the first request.
        add(ledger, digits, b, request_id="second")
        ledger.commit("second", original, metrics={"converged": True}, receipt={})

        report = verify(ledger, build, rows)
        first = report[0]
        assert (first["request_id"], first["status"], first["relapsed"]) == ("first", "relapsed", True)
        assert first["relapsed_ids"] == a and first["goal_share"] == 0.0 and first["goal_share_at_apply"] == 100.0
        assert "no longer meet the goal" in first["message"]
        assert verify(ledger, build, rows, version=1)[0]["status"] == "ok"  # the version it produced still holds

        def altered(ids):
            x, y = rows(ids)
            return x.flip(0) if list(ids) == a else x, y

        changed = verify(ledger, build, altered, version=1)[0]
        assert changed["status"] == "content_changed" and sorted(changed["content_changed"]) == sorted([a[0], a[2]])
        assert changed["checked"] == 1 and "content changed" in changed["message"]
        gone = verify(ledger, build, deleted, version=1)[0]
        assert gone["status"] == "unavailable" and gone["goal_share"] is None


# -- re-applying relapsed requests --------------------------------------------------------------


def test_reapplies_names_an_applied_request_and_only_its_instances(
    workspace: Path, digits: DataSplit, correct_ids: list[int], rows
) -> None:
    a, b, c = correct_ids[:2], correct_ids[2:4], correct_ids[4:5]
    with Ledger.open(workspace) as ledger:
        first = add(ledger, digits, a, request_id="t-1")
        with pytest.raises(LedgerError, match="cannot re-apply 't-1': it is pending, not applied"):
            add(ledger, digits, a[:1], reapplies="t-1")
        add(ledger, digits, b, request_id="t-2")
        apply_pending(ledger, build, rows)
        with pytest.raises(LedgerError, match=r"already in request 't-1'"):
            add(ledger, digits, a[:1])  # without reapplies, an applied request's instance is taken
        with pytest.raises(LedgerError, match=r"with instance\(s\) \['%d'\]: they are not in that request" % b[0]):
            add(ledger, digits, [a[0], b[0]], reapplies="t-1")
        with pytest.raises(LedgerError, match="no such request"):
            add(ledger, digits, a, reapplies="t-9")
        again = add(ledger, digits, a[:1], reapplies="t-1", request_id="t-1-r1")
        assert again.reapplies == "t-1" and ledger.get("t-1-r1").reapplies == "t-1"
        with pytest.raises(LedgerError, match=r"already in request 't-1-r1' \(pending\)"):
            add(ledger, digits, a[:1], reapplies="t-1")  # one pending re-application at a time
        apply_pending(ledger, build, rows)
        # Re-applying the re-application re-applies t-1, and may name what t-1-r1 holds.
        second = add(ledger, digits, a, reapplies="t-1-r1")
        assert second.reapplies == "t-1"
        with pytest.raises(LedgerError, match=r"already in request 't-2'"):
            add(ledger, digits, b[:1] + c)
        assert first.reapplies is None and ledger.get("t-2").reapplies is None


def _downgrade_to_schema_1(ws: Path) -> None:
    """Rewrites a fresh ledger as schema 1 wrote it (no requests.reapplies)."""
    conn = sqlite3.connect(ws / "ledger.sqlite", isolation_level=None)
    conn.execute("PRAGMA foreign_keys=OFF")
    ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'requests'").fetchone()[0]
    old = ddl.replace("        reapplies TEXT REFERENCES requests(request_id),\n", "")
    assert old != ddl
    columns = store_module._REQUEST_COLUMNS.replace(", reapplies", "")
    conn.executescript(
        f"BEGIN; {old.replace('CREATE TABLE requests', 'CREATE TABLE requests_v1')};"
        f" INSERT INTO requests_v1 SELECT {columns} FROM requests; DROP TABLE requests;"
        " ALTER TABLE requests_v1 RENAME TO requests; UPDATE meta SET value = '1' WHERE key = 'schema_version'; COMMIT;"
    )
    conn.close()


def test_a_schema_1_ledger_reads_and_is_migrated_when_opened_for_writing(
    workspace: Path, digits: DataSplit, correct_ids: list[int], rows
) -> None:
    with Ledger.open(workspace) as ledger:
        add(ledger, digits, correct_ids[:2], request_id="old")
        apply_pending(ledger, build, rows)
    _downgrade_to_schema_1(workspace)
    with Ledger.open_readonly(workspace) as ledger:
        assert ledger.schema_version == 1
        (record,) = ledger.requests()
        assert (record.request_id, record.status, record.reapplies) == ("old", "applied", None)
    with Ledger.open(workspace) as ledger:
        assert ledger.schema_version == SCHEMA_VERSION == 2
        assert add(ledger, digits, correct_ids[:1], reapplies="old").reapplies == "old"
    with Ledger.open_readonly(workspace) as ledger:
        assert ledger.schema_version == 2 and [r.reapplies for r in ledger.requests()] == [None, "old"]


def test_a_failed_reapplication_can_be_retried(workspace: Path, digits: DataSplit, correct_ids: list[int], rows) -> None:
    with Ledger.open(workspace) as ledger:
        add(ledger, digits, correct_ids[:2], request_id="t-1")
        apply_pending(ledger, build, rows)
        add(ledger, digits, correct_ids[:1], reapplies="t-1", request_id="t-1-r1")
        ledger.fail("t-1-r1", "RuntimeError: the machine went away")
        assert ledger.retry("t-1-r1").status == "pending"  # t-1 holds its instance by design
