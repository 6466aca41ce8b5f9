"""Benchmark grids: JSONL lines, resuming, torn lines, summaries and the CLI."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import unlearnkit.bench as bench_module
from unlearnkit.bench import Cell, cell_key, grid, markdown_table, read_grid, run_grid, succeeded, summarise_grid
from unlearnkit.cli import main
from unlearnkit.executors import RayExecutor, make_executor

FAST = {"neggrad": {"lr": 0.02, "max_steps": 50}, "finetune": {"epochs": 1}}


def test_grid_keeps_runs_of_one_request_together() -> None:
    cells = grid(["digits"], ["a", "b"], [1, 16], ["misclassify", "relabel"], [0, 1])
    assert len(cells) == 16 and len({c.key for c in cells}) == 16
    assert [c.method for c in cells[:4]] == ["a", "b", "a", "b"]
    assert cells[0].k == cells[1].k and cells[0].seed == cells[1].seed


def test_run_grid_writes_one_line_per_run_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    cells = grid(["digits"], ["neggrad", "finetune"], [3], ["misclassify", "relabel"], [0])
    counts = run_grid(cells[:2], path, hyperparams=FAST, evidence=False)
    assert counts == {"run": 2, "skipped": 0, "failed": 0}
    counts = run_grid(cells, path, hyperparams=FAST, evidence=False)
    assert counts == {"run": 2, "skipped": 2, "failed": 0}  # the first two are not run again
    records = read_grid(path)
    assert [Cell(**r["cell"]) for r in records] == cells
    statuses = {(r["cell"]["method"], r["cell"]["mode"]): r["run"]["status"] for r in records}
    assert statuses[("finetune", "relabel")] == "unsupported"
    assert statuses[("neggrad", "misclassify")] == "converged"
    for r in records:
        assert len(r["request_ids"]) == 3 and len(r["model"]["sha256"]) == 64 and "torch" in r["versions"]
    assert run_grid(cells, path, hyperparams=FAST, evidence=False) == {"run": 0, "skipped": 4, "failed": 0}


def test_a_torn_last_line_is_ignored_and_its_cell_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    cells = grid(["digits"], ["neggrad"], [3], ["misclassify"], [0, 1])
    run_grid(cells, path, hyperparams=FAST, evidence=False)
    text = path.read_text()
    lines = text.splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    assert len(read_grid(path)) == 1
    assert run_grid(cells, path, hyperparams=FAST, evidence=False) == {"run": 1, "skipped": 1, "failed": 0}
    records = read_grid(path)
    assert len(records) == 2 and all(r["run"]["status"] == "converged" for r in records)
    # A broken line in the middle is not a torn write: refuse rather than guess.
    path.write_text("garbage\n" + path.read_text())
    with pytest.raises(ValueError, match="is not a JSON line"):
        read_grid(path)


def test_summary_is_mean_and_sample_sd_over_seeds(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    run_grid(grid(["digits"], ["neggrad"], [3], ["misclassify"], [0, 1, 2]), path, hyperparams=FAST, evidence=True)
    records = read_grid(path)
    (row,) = summarise_grid(records)
    tests = [r["run"]["metrics"]["acc/test"] for r in records]
    assert row["Acc(D_test)"] == pytest.approx((statistics.fmean(tests), statistics.stdev(tests)))
    gaps = [r["run"]["evidence"]["gap"]["average"] for r in records]
    assert row["gap"] == pytest.approx((statistics.fmean(gaps), statistics.stdev(gaps)))
    assert row["runs"] == 3 and row["converged"] == 3
    table = markdown_table([row])
    assert "### digits, misclassify, k = 3" in table and "`neggrad` | 3/3" in table
    # A single run has a mean and no spread: shown alone, not as "± 0".
    (single,) = summarise_grid(records[:1])
    assert single["Acc(D_test)"] == (pytest.approx(tests[0]), None)
    assert f"| {tests[0]:.1f} |" in markdown_table([single]) and "±" not in markdown_table([single])


def test_bench_cli_resumes_and_writes_markdown(tmp_path: Path) -> None:
    out, md = tmp_path / "b.jsonl", tmp_path / "b.md"
    args = ["bench", "--methods", "neggrad", "-k", "2", "--seeds", "0-1", "--set", "lr=0.02", "--set", "max_steps=50",
            "--no-evidence", "--no-progress", "-o", str(out), "--markdown", str(md)]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "2 run(s), 0 already in" in first.output and md.read_text().startswith("### digits")
    second = CliRunner().invoke(main, args, catch_exceptions=False)
    assert "0 run(s), 2 already in" in second.output
    assert len(out.read_text().splitlines()) == 2


def test_the_forget_set_axis_keeps_old_lines_and_runs_the_worst_set(tmp_path: Path) -> None:
    cells = grid(["digits"], ["neggrad"], [4], ["misclassify"], [0], ["random", "worst"])
    assert [c.forget_set for c in cells] == ["random", "worst"]
    old_line_cell = {"dataset": "digits", "method": "neggrad", "k": 4, "mode": "misclassify", "seed": 0}
    assert cell_key(old_line_cell) == cells[0].key  # lines from before the axis still count as done
    assert cells[1].key != cells[0].key
    out, md = tmp_path / "b.jsonl", tmp_path / "b.md"
    args = ["bench", "--methods", "neggrad", "-k", "4", "--seeds", "0", "--forget-sets", "random,worst",
            "--set", "lr=0.02", "--set", "max_steps=50", "--no-evidence", "--no-progress", "-o", str(out),
            "--markdown", str(md), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = read_grid(out)
    assert [line["cell"].get("forget_set") for line in lines] == [None, "worst"]
    assert lines[0]["request_ids"] != lines[1]["request_ids"]
    text = md.read_text(encoding="utf-8")
    assert "### digits, misclassify, k = 4\n" in text and "### digits, misclassify, k = 4, worst forget set" in text
    bad = CliRunner().invoke(main, ["bench", "--forget-sets", "hardest", "-o", str(tmp_path / "x.jsonl")])
    assert bad.exit_code == 2 and "unknown forget set" in bad.output


def test_bench_cli_writes_plots_and_links_them_from_the_markdown(tmp_path: Path) -> None:
    out, md, plots = tmp_path / "b.jsonl", tmp_path / "docs" / "b.md", tmp_path / "docs" / "plots"
    args = ["bench", "--methods", "neggrad", "-k", "2", "--seeds", "0", "--set", "lr=0.02", "--set", "max_steps=50",
            "--no-evidence", "--no-progress", "-o", str(out), "--markdown", str(md), "--plots", str(plots)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1 plot(s) written" in result.output  # no evidence: no gap, so only the time view
    assert (plots / "digits-misclassify-k2-time.svg").read_text(encoding="utf-8").startswith("<svg xmlns=")
    assert "](plots/digits-misclassify-k2-time.svg)" in md.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "nope"], "unknown method"),
        (["--datasets", "cifar100"], "unknown data set"),
        (["--modes", "forget"], "unknown mode"),
        (["-k", "0"], "integers >= 1"),
        (["-k", "a"], "not a comma-separated list"),
    ],
)
def test_bench_cli_errors(extra: list[str], message: str, tmp_path: Path) -> None:
    out = tmp_path / "b.jsonl"
    result = CliRunner().invoke(main, ["bench", *extra, "-o", str(out)])
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()


def test_bench_takes_the_full_width_model_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cifar10-resnet18-full is a data set the grid knows (not refused as unknown) and its cells
    load that pretrained model; loading is stubbed here, since training it takes days on a CPU."""
    import unlearnkit.bench as bench_module

    asked: list[str] = []

    def no_model(name: str, **_: object) -> None:
        asked.append(name)
        raise FileNotFoundError(f"stub: {name} is not trained here")

    monkeypatch.setattr(bench_module, "load_pretrained", no_model)
    out = tmp_path / "b.jsonl"
    args = ["bench", "--datasets", "cifar10-resnet18-full", "--methods", "neggrad", "--no-progress", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "unknown data set" not in result.output
    assert asked == ["cifar10-resnet18-full"]
    (line,) = read_grid(out)
    assert line["cell"]["dataset"] == "cifar10-resnet18-full" and "is not trained here" in json.dumps(line)


def test_grid_lines_are_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    run_grid(grid(["digits"], ["neggrad"], [2], ["misclassify"], [0]), path, hyperparams=FAST, evidence=False)
    json.loads(path.read_text().splitlines()[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


# acu accepts any non-empty head name when made (run_grid's up-front check passes) and raises
# InvalidHyperparameterError only when it meets the model: a cell that fails at run time.
BAD_ACU = {**FAST, "acu": {"head": "nope"}}


def test_a_failing_cell_is_a_failed_line_and_a_rerun_retries_it(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    cells = grid(["digits"], ["neggrad", "acu"], [3], ["misclassify"], [0, 1])
    assert run_grid(cells, path, hyperparams=BAD_ACU, evidence=False) == {"run": 4, "skipped": 0, "failed": 2}
    records = read_grid(path)
    assert [Cell(**r["cell"]) for r in records] == cells  # the grid went on past the failures
    failed = [r for r in records if not succeeded(r)]
    assert [r["cell"]["method"] for r in failed] == ["acu", "acu"]
    for r in failed:
        assert r["status"] == "failed" and "run" not in r and "torch" in r["versions"]
        assert r["error"]["type"] == "unlearnkit.errors.InvalidHyperparameterError"
        assert "no module named 'nope'" in r["error"]["message"]
        assert r["error"]["traceback"].rstrip().endswith(r["error"]["message"])
    assert all(r["run"]["status"] == "converged" for r in records if r["cell"]["method"] == "neggrad")

    rows = {row["method"]: row for row in summarise_grid(records)}
    assert (rows["acu"]["runs"], rows["acu"]["failed"], rows["acu"]["Acc(D_test)"]) == (0, 2, None)
    assert (rows["neggrad"]["runs"], rows["neggrad"]["failed"]) == (2, 0)
    table = markdown_table(list(rows.values()))
    assert "| `acu` | 0/0 (2 failed) | - |" in table and "unsupported" not in table

    # Only run lines count as done: the same bad setting retries (and fails) the two acu cells.
    assert run_grid(cells, path, hyperparams=BAD_ACU, evidence=False) == {"run": 2, "skipped": 2, "failed": 2}
    assert len(read_grid(path)) == 6
    assert {r["method"]: r["failed"] for r in summarise_grid(read_grid(path))}["acu"] == 2  # cells, not lines
    # Fixed, a rerun runs exactly the failed cells; the failed lines stay but no longer count.
    assert run_grid(cells, path, hyperparams=FAST, evidence=False) == {"run": 2, "skipped": 2, "failed": 0}
    records = read_grid(path)
    assert len(records) == 8 and [succeeded(r) for r in records[-2:]] == [True, True]
    rows = {row["method"]: row for row in summarise_grid(records)}
    assert (rows["acu"]["runs"], rows["acu"]["failed"]) == (2, 0)
    assert "| `acu` | 0/2 |" in markdown_table(list(rows.values()))  # acu's fixed schedule: not_converged
    assert run_grid(cells, path, hyperparams=FAST, evidence=False) == {"run": 0, "skipped": 4, "failed": 0}


def test_an_interrupt_stops_the_grid_instead_of_becoming_a_failed_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "g.jsonl"
    cells = grid(["digits"], ["neggrad"], [3], ["misclassify"], [0, 1])
    real = bench_module.run_request

    def interrupted_on_seed_1(*args: Any, **kwargs: Any) -> Any:
        if kwargs["seed"] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_module, "run_request", interrupted_on_seed_1)
    with pytest.raises(KeyboardInterrupt):
        run_grid(cells, path, hyperparams=FAST, evidence=False)
    (record,) = read_grid(path)  # the finished cell was kept, the interrupted one not recorded
    assert record["cell"]["seed"] == 0 and succeeded(record)


def test_bench_cli_reports_failed_cells_exits_1_and_retries_them(tmp_path: Path) -> None:
    out = tmp_path / "b.jsonl"
    args = ["bench", "--methods", "neggrad,acu", "-k", "2", "--seeds", "0", "--set", "neggrad.lr=0.02",
            "--set", "max_steps=50", "--no-evidence", "--no-progress", "-o", str(out)]
    first = CliRunner().invoke(main, [*args, "--set", "acu.head=nope"])
    assert first.exit_code == 1, first.output
    assert "failed: digits acu k=2 misclassify seed 0: unlearnkit.errors.InvalidHyperparameterError: " in first.output
    assert "1 cell(s) failed; rerun the same command to retry them" in first.output
    assert "| `acu` | 0/0 (1 failed) |" in first.output and "2 run(s), 0 already in" in first.output
    second = CliRunner().invoke(main, args, catch_exceptions=False)
    assert second.exit_code == 0, second.output
    assert "1 run(s), 1 already in" in second.output
    assert "failed:" not in second.output and "(1 failed)" not in second.output and "| `acu` | 0/1 |" in second.output


def test_bench_cli_refuses_ray_options_with_the_local_executor(tmp_path: Path) -> None:
    for extra in (["--address", "auto"], ["--ray-cpus-per-cell", "2"], ["--executor", "local", "--ray-num-cpus", "2"]):
        result = CliRunner().invoke(main, ["bench", *extra, "-o", str(tmp_path / "b.jsonl")])
        assert result.exit_code == 2 and "only apply with --executor ray" in result.output, result.output
    result = CliRunner().invoke(
        main,
        ["bench", "--executor", "ray", "--address", "auto", "--ray-num-cpus", "2", "-o", str(tmp_path / "b.jsonl")],
    )
    assert result.exit_code == 2 and "--ray-num-cpus" in result.output
    assert not (tmp_path / "b.jsonl").exists()


def test_without_ray_the_ray_executor_names_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when it is not installed
    with pytest.raises(ImportError, match=r'pip install "unlearnkit\[ray\]"'):
        RayExecutor()
    with pytest.raises(ImportError, match="unlearnkit"):
        make_executor("ray", num_cpus=1)
    out = tmp_path / "b.jsonl"
    result = CliRunner().invoke(main, ["bench", "--executor", "ray", "--no-evidence", "-o", str(out)])
    assert result.exit_code == 1 and 'pip install "unlearnkit[ray]"' in result.output
    assert not out.exists()


def test_ray_executor_checks_its_resources() -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    for bad, message in [
        ({"cpus_per_cell": 0}, "cpus_per_cell"), ({"gpus_per_cell": -1}, "gpus_per_cell"),
        ({"num_cpus": 2, "address": "auto"}, "num_cpus"), ({"threads_per_cell": 0}, "threads_per_cell"),
    ]:
        with pytest.raises(ValueError, match=message):
            RayExecutor(**bad)
    assert RayExecutor(cpus_per_cell=2.5).threads_per_cell == 2  # one torch thread per whole CPU
    assert RayExecutor(cpus_per_cell=0.5).threads_per_cell == 1
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("dask")


def test_importing_unlearnkit_does_not_import_ray() -> None:
    code = "import sys, unlearnkit, unlearnkit.bench, unlearnkit.executors, unlearnkit.cli; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.strip() == "False"


def test_grid_lines_keep_the_evidence_figures_but_not_the_report_views(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    run_grid(grid(["digits"], ["neggrad"], [3], ["misclassify"], [0]), path, hyperparams=FAST, evidence=True)
    (line,) = read_grid(path)
    evidence = line["run"]["evidence"]
    assert "views" not in evidence and "views" not in line["retrained"]
    assert line["device"] == "cpu"  # where the model ran
    assert evidence["gap"]["average"] >= 0 and 0 <= evidence["privacy"]["score"] <= 1
    assert len(path.read_bytes()) < 40_000  # a line with its views took ~25 kB more on MNIST
