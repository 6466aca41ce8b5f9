"""Crash safety of the ledger: a real process applying a request is SIGKILLed inside the commit.

The subprocess opens a workspace holding one pending request on a tiny model (``Flatten ->
Linear(64, 10)`` on digits features) and applies it with ``UNLEARNKIT_CRASH_AT=<point>``, which
makes the ledger SIGKILL its own process when the commit reaches that point. The test then
checks what the kill left behind, recovers in-process (``Ledger.open`` + ``apply_pending``) and
checks the result: exactly one applied request, exactly one new version, no orphan or temporary
file, the version's file matching its sha256 and loadable, and the same weights an
uninterrupted run produces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unlearnkit.data import DataSplit
from unlearnkit.ledger import CRASH_ENV, CRASH_POINTS, Ledger, apply_pending
from unlearnkit.receipt import receipt_sha256
from unlearnkit.request import instance_sha256
from unlearnkit.utils.hashing import file_sha256
from unlearnkit.utils.modules import predict_logits

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REQUEST_ID = "crash-1"

# Runs in the subprocess: the same apply as the in-process recovery, single-threaded like the
# test session, so that both compute bit-identical weights.
APPLY_SCRIPT = """
import sys
import numpy as np
import torch
from torch import nn
torch.set_num_threads(1)
from unlearnkit.ledger import Ledger, apply_pending

data = np.load(sys.argv[2])
x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])

def rows(ids):
    index = torch.tensor([int(i) for i in ids])
    return x[index], y[index]

with Ledger.open(sys.argv[1]) as ledger:
    apply_pending(ledger, lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), rows)
print("finished", flush=True)
"""


def build() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


class Setup:
    """The data file the subprocess reads, and the pieces of the workspace."""

    def __init__(self, digits: DataSplit, model: nn.Module, data_file: Path) -> None:
        self.x, self.y = digits.x_train, digits.y_train
        self.state = model.state_dict()
        self.data_file = data_file
        preds = predict_logits(model, self.x[:50]).argmax(1)
        self.ids = [i for i in range(50) if int(preds[i]) == int(self.y[i])][:3]

    def rows(self, ids):
        index = torch.tensor([int(i) for i in ids])
        return self.x[index], self.y[index]

    def workspace(self, path: Path) -> Path:
        """A workspace with version 0 and one pending neggrad request."""
        with Ledger.create(path, initial_state=self.state, source={"kind": "crash-test"}) as ledger:
            ledger.add_request(
                self.ids, labels=[int(self.y[i]) for i in self.ids],
                content_hashes=[instance_sha256(self.x[i], int(self.y[i])) for i in self.ids],
                goal="misclassify", method="neggrad", hyperparams={"lr": 0.05, "max_steps": 300},
                request_id=REQUEST_ID,
            )
        return path


@pytest.fixture(scope="module")
def setup(digits: DataSplit, trained_linear: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    data_file = tmp_path_factory.mktemp("crash-data") / "digits.npz"
    np.savez(data_file, x=digits.x_train.numpy(), y=digits.y_train.numpy())
    return Setup(digits, trained_linear, data_file)


@pytest.fixture(scope="module")
def reference_sha256(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> str:
    """sha256 of the version an uninterrupted in-process apply produces."""
    ws = setup.workspace(tmp_path_factory.mktemp("reference") / "ws")
    with Ledger.open(ws) as ledger:
        (record,) = apply_pending(ledger, build, setup.rows)
        assert record.status == "applied"
        return ledger.current_version().sha256


def leftovers(ws: Path) -> set[str]:
    """Workspace-relative names of model files no version references, and temporary files."""
    with Ledger.open_readonly(ws) as ledger:
        referenced = {v.path for v in ledger.versions()}
    found = {f"models/{p.name}" for p in (ws / "models").iterdir() if f"models/{p.name}" not in referenced}
    found |= {p.name for p in ws.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")}
    return found


# What each kill leaves on disk before recovery: (request status, versions, kind of leftover).
EXPECTED = {
    "before_file_write": ("pending", 1, None),
    "before_file_rename": ("pending", 1, "temporary"),
    "after_file_write": ("pending", 1, "orphan"),
    "before_commit": ("pending", 1, "orphan"),
    "after_commit": ("applied", 2, None),
}


def test_every_crash_point_is_tested() -> None:
    assert set(EXPECTED) == set(CRASH_POINTS)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_inside_commit_then_recovery(point: str, setup: Setup, reference_sha256: str, tmp_path: Path) -> None:
    ws = setup.workspace(tmp_path / "ws")
    proc = subprocess.run(
        [sys.executable, "-c", APPLY_SCRIPT, str(ws), str(setup.data_file)],
        env={**os.environ, CRASH_ENV: point}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "finished" not in proc.stdout

    # What the kill left: the old committed state or the new one, never a mix.
    status, n_versions, leftover = EXPECTED[point]
    with Ledger.open_readonly(ws) as ledger:
        assert ledger.get(REQUEST_ID).status == status
        assert len(ledger.versions()) == n_versions
    left = leftovers(ws)
    if leftover is None:
        assert left == set()
    elif leftover == "orphan":
        (name,) = left
        assert name.startswith("models/1-") and name.endswith(".safetensors")
    else:
        (name,) = left
        assert name.startswith("models/.1-") and name.endswith(".tmp")

    # Recovery in-process: the dead writer's lock is gone (wait=0), its leftovers are removed,
    # and applying again completes the request exactly once.
    with Ledger.open(ws, wait=0) as ledger:
        assert set(ledger.cleaned) == left
        handled = apply_pending(ledger, build, setup.rows)
        assert [r.request_id for r in handled] == ([] if status == "applied" else [REQUEST_ID])
        requests, versions = ledger.requests(), ledger.versions()
        state = ledger.load_state()  # checks the file against its sha256
    assert [(r.request_id, r.status, r.version_id) for r in requests] == [(REQUEST_ID, "applied", 1)]
    assert [(v.version_id, v.parent_id, v.request_id) for v in versions] == [(0, None, None), (1, 0, REQUEST_ID)]
    assert leftovers(ws) == set()
    assert sorted(f"models/{p.name}" for p in (ws / "models").iterdir()) == sorted(v.path for v in versions)
    assert file_sha256(ws / versions[1].path) == versions[1].sha256 == reference_sha256
    receipt = requests[0].receipt
    assert receipt["receipt_sha256"] == receipt_sha256(receipt) and requests[0].metrics["converged"] is True

    model = build()
    model.load_state_dict(state)
    x, y = setup.rows(setup.ids)
    assert (predict_logits(model, x).argmax(1) != y).all()
