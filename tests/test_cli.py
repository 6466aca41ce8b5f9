"""The command line, end to end: demo, methods, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import unlearnkit
from unlearnkit.cli import main, parse_seeds

FAST = ["--set", "n_adv=2", "--set", "pgd_steps=5", "--set", "max_passes=30", "--no-progress", "--no-evidence"]
#: The fast settings with the evidence gathered (one retraining per forget set, cached).
FAST_WITH_EVIDENCE = FAST[:-1]


def run(*args: str) -> tuple[int, str]:
    """Invokes the CLI in-process; returns the exit code and everything it printed."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_methods_lists_every_registered_method() -> None:
    code, out = run("methods")
    assert code == 0
    for name in unlearnkit.list_methods():
        assert name in out
    assert "forget only" in out


def test_version() -> None:
    code, out = run("--version")
    assert code == 0 and unlearnkit.__version__ in out


def test_demo_writes_table_and_json(tmp_path: Path) -> None:
    output = tmp_path / "out" / "demo.json"
    code, out = run(
        "demo", "-k", "4", "--seeds", "0-1", "--mode", "both", "--methods", "neggrad,l2ul", *FAST_WITH_EVIDENCE,
        "-o", str(output),
    )
    assert code == 0, out
    assert "Acc(D_test)" in out and "means over seeds" in out and str(output) in out
    assert "evidence (percent" in out and "evidence, means over seeds" in out
    report = json.loads(output.read_text())
    assert report["schema_version"] == 2 and report["config"]["evidence"] is True
    assert report["config"]["seeds"] == [0, 1] and report["config"]["goals"] == ["misclassify", "relabel"]
    assert len(report["requests"]) == 4 and len(report["runs"]) == 8
    assert report["config"]["hyperparams"]["l2ul"] == {"n_adv": 2, "pgd_steps": 5, "max_passes": 30}
    assert "n_adv" not in report["config"]["hyperparams"]["neggrad"]
    for run_ in report["runs"]:
        assert run_["status"] in {"converged", "not_converged", "diverged"}
        if run_["status"] != "diverged":
            assert set(run_["metrics"]) >= {"acc/forget", "acc/retain", "acc/test"}
            assert len(run_["result"]["outcomes"]) == 4
            if run_["goal"] == "relabel":
                assert "acc/relabel" in run_["metrics"]
    for run_ in report["runs"]:
        if run_["status"] == "diverged":
            assert run_["evidence"] is None
            continue
        evidence = run_["evidence"]
        assert set(evidence) >= {"ua", "mia_efficacy", "entropy_mia", "loss_auc", "gap", "cka", "cka_layers",
                                 "knn_forget", "weight_change", "collateral", "relearn", "instances", "verdict"}
        assert evidence["ua"] == 100.0 - run_["metrics"]["acc/forget"]
        assert [i["id"] for i in evidence["instances"]] == [o["id"] for o in run_["result"]["outcomes"]]
        assert evidence["gap"]["average"] >= 0 and evidence["cka"]["retrained"] is not None
    for request in report["requests"]:
        assert request["original"]["acc/forget"] >= 75.0
        assert request["image_shape"] == [1, 8, 8] and len(request["images"]) == 4
        assert request["retrained"]["acc/retain"] > 90 and len(request["retrained"]["sha256"]) == 64
        assert len(request["per_class_test_original"]) == request["num_classes"] == 10
        if request["goal"] == "relabel":
            assert all(a != b for a, b in zip(request["labels"], request["new_labels"]))
    assert len(report["model"]["sha256"]) == 64
    assert not list(output.parent.glob(".*.tmp")), "temporary file left behind"
    page = output.with_suffix(".html").read_text()  # the demo writes its HTML report too
    assert "neggrad" in page and "l2ul" in page and "https://" not in page


def test_demo_same_seed_same_results(tmp_path: Path) -> None:
    reports = []
    for name in ("a.json", "b.json"):
        code, out = run("demo", "-k", "3", "--methods", "l2ul", *FAST, "-o", str(tmp_path / name))
        assert code == 0, out
        reports.append(json.loads((tmp_path / name).read_text()))
    first, second = (r["runs"][0]["result"] for r in reports)
    assert first["model_sha256_after"] == second["model_sha256_after"]
    assert first["outcomes"] == second["outcomes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--methods", "nope"], "unknown method"),
        (["demo", "--seeds", "x-2"], "not a seed list"),
        (["demo", "--seeds", "1,1"], "distinct"),
        (["demo", "-k", "0"], "0"),
        (["demo", "--mode", "forget"], "forget"),
        (["demo", "--methods", "neggrad", "--set", "n_adv=3"], "no chosen method has a hyperparameter 'n_adv'"),
        (["demo", "--methods", "neggrad", "--set", "l2ul.lr=1"], "not among"),
        (["demo", "--set", "lr"], "NAME=VALUE"),
    ],
)
def test_demo_usage_errors(args: list[str], message: str) -> None:
    code, out = run(*args)
    assert code == 2
    assert message in out


def test_demo_bad_hyperparameter_value_is_a_clean_error(tmp_path: Path) -> None:
    code, out = run("demo", "--methods", "l2ul", "--set", "lr=-1", "-o", str(tmp_path / "x.json"))
    assert code == 1
    assert "lr must be > 0" in out
    assert not (tmp_path / "x.json").exists()


def test_demo_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, out = run("demo", "-k", "2", "--methods", "neggrad", "--set", "max_steps=1", "-o", str(blocker / "x.json"))
    assert code == 1
    assert "cannot write" in out


def test_parse_seeds() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3") == [3]
    assert parse_seeds("0,2-3") == [0, 2, 3]


def test_console_script_runs() -> None:
    """The installed entry point works outside the test process."""
    proc = subprocess.run(
        [sys.executable, "-m", "unlearnkit.cli", "methods"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "l2ul" in proc.stdout


def test_demo_unseen_mode(tmp_path: Path) -> None:
    output = tmp_path / "unseen.json"
    code, out = run("demo", "-k", "3", "--mode", "unseen", "--methods", "neggrad,l2ul", *FAST, "-o", str(output))
    assert code == 0, out
    assert "at target %" in out and "loss(D_f)" in out
    report = json.loads(output.read_text())
    assert report["config"]["goals"] == ["unseen"]
    for run_ in report["runs"]:
        assert run_["goal"] == "unseen"
        assert run_["result"]["details"]["unseen/target_source"] == "heldout"
        assert "unseen" in run_["metrics"] and "loss/forget" in run_["metrics"]
        assert all(o["loss_target"] is not None for o in run_["result"]["outcomes"])
    assert "loss/forget" in report["requests"][0]["original"]


def test_demo_mode_all_runs_three_goals(tmp_path: Path) -> None:
    output = tmp_path / "all.json"
    code, out = run("demo", "-k", "2", "--mode", "all", "--methods", "neggrad", "--set", "max_steps=3", "--no-progress", "-o", str(output))
    assert code == 0, out
    assert json.loads(output.read_text())["config"]["goals"] == ["misclassify", "relabel", "unseen"]


def test_demo_reports_a_diverged_run_without_averaging_it(tmp_path: Path) -> None:
    output = tmp_path / "diverged.json"
    code, out = run(
        "demo", "-k", "4", "--seeds", "0-1", "--methods", "neggrad", "--set", "preset=paper", "--set", "lr=1e6",
        "--set", "max_steps=200", "--no-progress", "-o", str(output),
    )
    assert code == 0, out
    report = json.loads(output.read_text())
    diverged = [r for r in report["runs"] if r["status"] == "diverged"]
    assert diverged, "lr=1e6 with the unbounded paper loss should diverge"
    assert all(r["result"] is None and r["metrics"] == {} and "NaN or infinite" in r["error"] for r in diverged)
    (summary,) = report["summary"]
    assert summary["diverged"] == len(diverged)
    assert "neggrad diverged:" in out
    if len(diverged) == summary["runs"]:
        assert "mean acc/test" not in summary


def test_demo_all_methods_hands_retain_data_and_skips_unsupported_goals(tmp_path: Path) -> None:
    output = tmp_path / "all.json"
    code, out = run(
        "demo", "-k", "3", "--mode", "both", "--methods", "all", *FAST, "--set", "epochs=1", "--set", "max_steps=20",
        "-o", str(output),
    )
    assert code == 0, out
    report = json.loads(output.read_text())
    by_key = {(r["method"], r["goal"]): r for r in report["runs"]}
    assert set(m for m, _ in by_key) == set(unlearnkit.list_methods())
    for (method, goal), run_ in by_key.items():
        cls = unlearnkit.methods.method_class(method)
        if goal == "relabel" and not cls.supports_relabel:
            assert run_["status"] == "unsupported" and run_["result"] is None
        else:
            assert run_["status"] in {"converged", "not_converged", "diverged"}
            if run_["result"] is not None:
                expected = report["dataset"]["n_train"] - 3 if cls.data_access != "forget" else 0
                assert run_["result"]["retain_used"] == expected


def test_continual_prints_the_relapse_table_and_writes_json_and_report(tmp_path: Path) -> None:
    output = tmp_path / "continual.json"
    code, out = run(
        "continual", "--requests", "3", "-k", "4", "--method", "neggrad", "--set", "lr=0.02", "--no-progress",
        "-o", str(output),
    )
    assert code == 0, out
    assert "D_f1" in out and "D_f3" in out and "relapsed" in out and str(output) in out
    report = json.loads(output.read_text())
    assert report["method"] == "neggrad" and len(report["requests"]) == 3 and len(report["steps"]) == 3
    assert report["hyperparams"]["lr"] == 0.02 and report["dataset"] == "digits" and "versions" in report
    assert [len(s["forget_accuracy"]) for s in report["steps"]] == [1, 2, 3]
    page = output.with_suffix(".html").read_text()
    assert "Relapse table" in page and "https://" not in page
    again = tmp_path / "again.html"
    code, out = run("report", str(output), "-o", str(again))  # the report command reads it too
    assert code == 0, out
    assert "Relapse table" in again.read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--requests", "200", "-k", "16"], "need 3200 distinct training rows"),
        (["--method", "nope"], "unknown method"),
        (["--method", "neggrad", "--set", "n_adv=2"], "n_adv"),
    ],
)
def test_continual_errors(args: list[str], message: str, tmp_path: Path) -> None:
    output = tmp_path / "c.json"
    code, out = run("continual", *args, "-o", str(output))
    assert code != 0 and message in out
    assert not output.exists()


def test_demo_repair_scenario_prints_restoration_and_attack_success(tmp_path: Path) -> None:
    out = tmp_path / "repair.json"
    args = ["demo", "--scenario", "repair", "--corruptions", "backdoor", "--methods", "neggrad", "--mode", "both",
            "--seeds", "0", "-o", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "ASR before" in result.output and "M_corrupt" in result.output and "relabel" in result.output
    report = json.loads(out.read_text())
    assert report["scenario"] == "repair" and [r["kind"] for r in report["reports"]] == ["backdoor"]
    run = report["reports"][0]["runs"][0]
    assert report["reports"][0]["corrupt"]["asr"] > 50 and run["asr"] < report["reports"][0]["corrupt"]["asr"]


@pytest.mark.parametrize(
    "extra, message",
    [(["--dataset", "mnist"], "digits only"), (["--corruptions", "flip"], "unknown corruption"),
     (["--mode", "unseen"], "misclassify and/or relabel")],
)
def test_demo_repair_refuses_what_it_cannot_run(extra: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--scenario", "repair", *extra, "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "r.json").exists()
