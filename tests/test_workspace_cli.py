"""The workspace commands end to end: init -> request -> status -> apply -> verify -> export.

The "user" here has their own model class in a module file (passed with ``--python-path``), its
weights as safetensors, the digits training rows as an ``.npz``, and the same model saved as
TorchScript. Everything runs in-process through click's test runner; the bad inputs are in
``test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file

from unlearnkit.cli import main
from unlearnkit.cli_workspace import EXIT_APPLY_INCOMPLETE, EXIT_VERIFY_FAILED
from unlearnkit.data import DataSplit
from unlearnkit.ledger import Ledger
from user_model import UserFiles, write_user_files
from unlearnkit.receipt import receipt_sha256
from unlearnkit.request import instance_sha256
from unlearnkit.utils.hashing import file_sha256
from unlearnkit.utils.modules import predict_logits

# torch >= 2.10 deprecates TorchScript; user models saved with it must still load.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


#: l2ul settings under which a request of a few digits converges quickly (a relabel request takes
#: a few hundred of the capped steps).
FAST_SET = ["--set", "lr=0.05", "--set", "n_adv=2", "--set", "pgd_steps=5", "--set", "max_steps=1000"]


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory, digits: DataSplit) -> Iterator[UserFiles]:
    """The user's files, written once per module; sys.path and sys.modules are restored after."""
    files = write_user_files(tmp_path_factory.mktemp("user"), digits, prefix="digits_net", rows=60)
    module = files.module
    assert len(files.correct) >= 12
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "path", list(sys.path))
        yield files
    sys.modules.pop(module, None)


def run(*args: object) -> Result:
    """Invokes the CLI in-process (stdout and stderr in ``.output``, stdout alone in ``.stdout``)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def init_state_dict(user: UserFiles, ws: Path, *extra: object) -> Result:
    return run(
        "init", ws, "--model", user.weights, "--class", f"{user.module}:DigitsNet", "--kwargs", '{"hidden": 32}',
        "--python-path", user.code, "--data", user.data, *FAST_SET, *extra,
    )


def ids_arg(ids: list[int]) -> str:
    return ",".join(map(str, ids))


def test_full_workflow_with_a_state_dict_and_a_relapse(user: UserFiles, tmp_path: Path, digits: DataSplit) -> None:
    ws = tmp_path / "ws"
    forget, relabel, later = user.correct[:3], user.correct[3:5], user.correct[5]
    new = [(user.labels[i] + 3) % 10 for i in relabel]

    # init records the model, the data and the defaults.
    result = init_state_dict(user, ws)
    assert result.exit_code == 0, result.output
    assert file_sha256(user.weights) in result.output
    assert "1437 rows" in result.output and "10 classes" in result.output and "10 outputs" in result.output
    source = json.loads((ws / "source.json").read_text())
    assert source["model"]["kind"] == "state_dict" and source["model"]["class"] == f"{user.module}:DigitsNet"
    assert source["model"]["kwargs"] == {"hidden": 32} and source["model"]["sha256"] == file_sha256(user.weights)
    assert source["data"]["kind"] == "npz" and source["data"]["num_rows"] == 1437
    assert source["input_range"] == [0.0, 1.0]
    assert source["defaults"] == {"method": "l2ul", "hyperparams": {"lr": 0.05, "n_adv": 2, "pgd_steps": 5, "max_steps": 1000}}

    # Two requests: the id alone on standard output, so that scripts can capture it.
    result = run("request", ws, "--ids", ids_arg(forget))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "req-0001"
    result = run("request", ws, "--ids", ids_arg(relabel), "--new-labels", ids_arg(new), "--id", "ticket-7", "--seed", 3)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ticket-7"

    result = run("status", ws)
    assert result.exit_code == 0, result.output
    assert "current version 0" in result.output and "2 pending, 0 applied, 0 failed" in result.output
    assert "req-0001" in result.output and "ticket-7" in result.output and "relabel" in result.output

    result = run("apply", ws, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "applying 2 pending request(s) to version 0" in result.output
    assert result.output.count("passed") == 2 and "2 applied (0 not converged), 0 failed" in result.output
    assert "current version 2" in result.output

    # What the ledger holds: labels and content hashes from the data source, never content.
    with Ledger.open_readonly(ws) as ledger:
        first, ticket = ledger.requests()
        assert [v.version_id for v in ledger.versions()] == [0, 1, 2]
        assert ledger.metadata["model_classes"] == 10
    assert (first.status, first.goal, first.version_id, list(first.ids)) == ("applied", "misclassify", 1, forget)
    assert list(first.labels) == [user.labels[i] for i in forget]
    assert list(first.content_hashes) == [instance_sha256(digits.x_train[i], user.labels[i]) for i in forget]
    assert (ticket.goal, list(ticket.new_labels or ()), ticket.seed, ticket.version_id) == ("relabel", new, 3, 2)
    assert first.metrics is not None and first.metrics["converged"] is True

    result = run("status", ws)
    assert "current version 2 (produced by ticket-7)" in result.output and "0 pending, 2 applied" in result.output

    result = run("verify", ws)
    assert result.exit_code == 0, result.output
    assert "ok: 2 applied request(s) verified" in result.output

    # export: the current model with its sha256, every receipt, the ledger summary.
    out = tmp_path / "export"
    result = run("export", ws, "-o", out)
    assert result.exit_code == 0, result.output
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["sha256"] == file_sha256(out / "model.safetensors") and sidecar["version_id"] == 2
    assert sidecar["request_id"] == "ticket-7"
    assert sorted(p.name for p in (out / "receipts").iterdir()) == ["req-0001.json", "ticket-7.json"]
    for name in ("req-0001", "ticket-7"):
        receipt = json.loads((out / "receipts" / f"{name}.json").read_text())
        assert receipt["request"]["id"] == name and receipt["receipt_sha256"] == receipt_sha256(receipt)
    summary = json.loads((out / "ledger.json").read_text())
    assert summary["counts"] == {"pending": 0, "applied": 2, "failed": 0}
    assert summary["current_version"]["sha256"] == sidecar["sha256"] and len(summary["versions"]) == 3
    assert [r["receipt_file"] for r in summary["requests"]] == ["receipts/req-0001.json", "receipts/ticket-7.json"]
    exported = type(user.model)()
    exported.load_state_dict(load_file(str(out / "model.safetensors")))
    preds = predict_logits(exported, digits.x_train[forget + relabel]).argmax(1).tolist()
    assert all(p != user.labels[i] for p, i in zip(preds[:3], forget)) and preds[3:] == new
    assert run("export", ws, "-o", out, "--force").exit_code == 0  # --force writes over an export

    # A relapse made by hand: a later version restores the original weights.
    with Ledger.open(ws) as ledger:
        record = ledger.add_request(
            [later], labels=[user.labels[later]], content_hashes=[instance_sha256(digits.x_train[later], user.labels[later])],
            goal="misclassify", method="neggrad", hyperparams={"lr": 0.05},
        )
        ledger.commit(
            record.request_id, load_file(str(user.weights)), metrics={"converged": True},
            receipt={"outcomes": [{"id": later, "goal_met": False}]},  # it never met its goal: not a relapse
        )
    result = run("verify", ws)
    assert result.exit_code == EXIT_VERIFY_FAILED, result.output
    assert "req-0001 relapsed" in result.output and "ticket-7 relapsed" in result.output
    assert "2 request(s) no longer verified: req-0001, ticket-7" in result.output
    assert f"{record.request_id} relapsed" not in result.output

    # reapply: a pending request per relapsed request, for its relapsed instances only, with its
    # goal, method and settings; once applied, verify passes again.
    result = run("reapply", ws, "req-0001")
    assert result.exit_code == 0, result.output
    again = result.stdout.strip()
    result = run("reapply", ws, "ticket-7", "--id", "ticket-7-again")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ticket-7-again"
    result = run("reapply", ws, "ticket-7-again")
    assert result.exit_code == 1 and "is pending, not applied" in result.output
    result = run("reapply", ws, record.request_id)
    assert result.exit_code == 0 and result.stdout.strip() == "" and "nothing to re-apply" in result.output
    with Ledger.open_readonly(ws) as ledger:
        first_again, ticket_again = ledger.get(again), ledger.get("ticket-7-again")
    assert (first_again.reapplies, list(first_again.ids), first_again.goal) == ("req-0001", forget, "misclassify")
    assert (ticket_again.reapplies, list(ticket_again.ids), list(ticket_again.new_labels or ())) == ("ticket-7", relabel, new)
    assert ticket_again.seed == 3
    assert "pending (re-applies req-0001)" in run("status", ws).output
    result = run("apply", ws, "--no-progress")
    assert result.exit_code == 0, result.output
    result = run("verify", ws)
    assert result.exit_code == 0, result.output
    assert "ok: 5 applied request(s) verified" in result.output


def init_torchscript(user: UserFiles, ws: Path) -> Result:
    return run(
        "init", ws, "--model", user.torchscript, "--data", user.data, "--method", "neggrad",
        "--set", "lr=0.05", "--set", "max_steps=300",
    )


def test_torchscript_init_request_status(user: UserFiles, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    result = init_torchscript(user, ws)
    assert result.exit_code == 0, result.output
    assert "TorchScript" in result.output and "10 outputs" in result.output
    source = json.loads((ws / "source.json").read_text())
    assert source["model"] == {"kind": "torchscript", "path": str(user.torchscript.resolve()), "sha256": file_sha256(user.torchscript)}
    assert source["defaults"] == {"method": "neggrad", "hyperparams": {"lr": 0.05, "max_steps": 300}}
    with Ledger.open_readonly(ws) as ledger:  # version 0 holds the archive's weights
        state = ledger.load_state()
    assert all(torch.equal(state[k], v) for k, v in user.model.state_dict().items())
    assert run("request", ws, "--ids", ids_arg(user.correct[:4])).exit_code == 0
    assert "1 pending, 0 applied" in run("status", ws).output


def test_torchscript_apply_and_verify(user: UserFiles, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert init_torchscript(user, ws).exit_code == 0
    assert run("request", ws, "--ids", ids_arg(user.correct[:4])).exit_code == 0
    result = run("apply", ws, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "neggrad" in result.output and "passed" in result.output
    result = run("verify", ws)
    assert result.exit_code == 0 and "ok: 1 applied request(s) verified" in result.output
    assert "0 pending, 1 applied, 0 failed" in run("status", ws).output


def test_apply_reports_a_run_that_did_not_converge_with_exit_code_3(user: UserFiles, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert init_state_dict(user, ws).exit_code == 0
    assert "nothing to apply" in run("apply", ws).output  # nothing pending: exit code 0
    # A method other than the default starts from its own defaults, not the workspace's l2ul settings.
    result = run("request", ws, "--ids", ids_arg(user.correct[:3]), "--method", "neggrad", "--set", "lr=1e-6", "--set", "max_steps=2")
    assert result.exit_code == 0, result.output
    with Ledger.open_readonly(ws) as ledger:
        assert ledger.get("req-0001").hyperparams == {"lr": 1e-6, "max_steps": 2}
    result = run("apply", ws, "--no-progress")
    assert result.exit_code == EXIT_APPLY_INCOMPLETE, result.output
    assert "NOT converged" in result.output and "FAILED" in result.output  # status, and the receipt's verdict
    assert "1 applied (1 not converged), 0 failed" in result.output
    assert "applied without converging" in run("status", ws).output
    result = run("verify", ws)  # known at apply time: reported, not a verification failure
    assert result.exit_code == 0 and "req-0001 not_converged" in result.output


def test_ids_file_with_comments_and_input_range_options(user: UserFiles, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert init_state_dict(user, ws, "--input-range", "-1,2").exit_code == 0
    assert json.loads((ws / "source.json").read_text())["input_range"] == [-1.0, 2.0]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"# ticket 42\n{user.correct[0]}, {user.correct[1]}\n{user.correct[2]}  # the last one\n")
    result = run("request", ws, "--ids-file", ids_file, "--id", "ticket-42")
    assert result.exit_code == 0, result.output
    with Ledger.open_readonly(ws) as ledger:
        assert list(ledger.get("ticket-42").ids) == user.correct[:3]
    other = tmp_path / "unbounded"
    assert init_state_dict(user, other, "--no-input-range").exit_code == 0
    assert json.loads((other / "source.json").read_text())["input_range"] is None


def test_commands_are_registered_under_python_dash_m() -> None:
    """`python -m unlearnkit.cli` runs cli.py as __main__: the commands must be on that group too."""
    proc = subprocess.run([sys.executable, "-m", "unlearnkit.cli", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    for name in ("init", "request", "apply", "status", "verify", "export"):
        assert f"  {name} " in proc.stdout
