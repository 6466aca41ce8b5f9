"""Benchmark grids: JSONL lines, resuming, torn lines, summaries and the CLI."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner

from unlearnkit.bench import Cell, grid, markdown_table, read_grid, run_grid, summarise_grid
from unlearnkit.cli import main

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
    assert counts == {"run": 2, "skipped": 0}
    counts = run_grid(cells, path, hyperparams=FAST, evidence=False)
    assert counts == {"run": 2, "skipped": 2}  # the first two are not run again
    records = read_grid(path)
    assert [Cell(**r["cell"]) for r in records] == cells
    statuses = {(r["cell"]["method"], r["cell"]["mode"]): r["run"]["status"] for r in records}
    assert statuses[("finetune", "relabel")] == "unsupported"
    assert statuses[("neggrad", "misclassify")] == "converged"
    for r in records:
        assert len(r["request_ids"]) == 3 and len(r["model"]["sha256"]) == 64 and "torch" in r["versions"]
    assert run_grid(cells, path, hyperparams=FAST, evidence=False) == {"run": 0, "skipped": 4}


def test_a_torn_last_line_is_ignored_and_its_cell_runs_again(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    cells = grid(["digits"], ["neggrad"], [3], ["misclassify"], [0, 1])
    run_grid(cells, path, hyperparams=FAST, evidence=False)
    text = path.read_text()
    lines = text.splitlines()
    path.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # killed mid-write
    assert len(read_grid(path)) == 1
    assert run_grid(cells, path, hyperparams=FAST, evidence=False) == {"run": 1, "skipped": 1}
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


def test_grid_lines_are_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    run_grid(grid(["digits"], ["neggrad"], [2], ["misclassify"], [0]), path, hyperparams=FAST, evidence=False)
    json.loads(path.read_text().splitlines()[0], parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
