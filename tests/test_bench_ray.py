"""The Ray executor of benchmark grids: same lines as the local executor, failed cells, the CLI.

Ray is the optional extra ``unlearnkit[ray]`` (installed by the ``test`` extra, so CI runs these
tests); without it the module is skipped. Most tests share one local Ray instance of 2 CPUs
started quietly once for the module (about 4 s); the CLI tests run first, without it: the CLI
starts and stops its own instance.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from helpers import fast_params
from unlearnkit.bench import Cell, grid, read_grid, run_grid, succeeded, summarise_grid
from unlearnkit.cli import main
from unlearnkit.executors import LocalExecutor, RayExecutor

ray = pytest.importorskip("ray", reason='the ray executor needs Ray: pip install "unlearnkit[ray]"')

#: Where the lines of one cell may differ between executors or hosts, besides wall times
#: (see :func:`is_timing`): whether the retrained reference was trained or loaded (depends on
#: which cell or task met it first), the machine, and the file paths in a failure's traceback.
#: Each is a path of keys in the line.
HOST_FIELDS: tuple[tuple[str, ...], ...] = (
    ("run", "result", "device"),
    ("run", "result", "versions", "platform"),
    ("retrained", "from_cache"),
    ("device",),
    ("versions", "platform"),
    ("error", "traceback"),
)


def is_timing(key: str) -> bool:
    """Whether a key of a line holds a wall time: ``seconds`` (the run's, the reference's
    training) or a method's timing detail such as ``attack/seconds`` or ``gu/basis_seconds``."""
    return key == "seconds" or key.endswith(("/seconds", "_seconds"))


def _drop_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            # Hyperparameters are settings, not measurements: max_seconds stays.
            k: (v if k == "hyperparams" else _drop_timings(v)) for k, v in value.items() if not is_timing(k)
        }
    if isinstance(value, list):
        return [_drop_timings(v) for v in value]
    return value


#: A quiet local instance that starts fast offline: no dashboard, no worker output relayed,
#: only errors logged (this also hides the token-authentication notice of a new instance).
QUIET_RAY = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}

METHODS = ["neggrad", "random_label"]  # goal-driven, seeded: a real test of determinism


def comparable(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` (a copy) without its wall times and the fields of :data:`HOST_FIELDS`: what
    must be equal wherever and whenever the cell ran."""
    line = copy.deepcopy(_drop_timings(line))
    for path in HOST_FIELDS:
        holder: Any = line
        for key in path[:-1]:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            holder.pop(path[-1], None)
    return line


def by_cell(path: Path) -> list[dict[str, Any]]:
    """The comparable lines of a grid file in cell order (executors append in different orders)."""
    return sorted((comparable(r) for r in read_grid(path)), key=lambda r: json.dumps(r["cell"], sort_keys=True))


def hyperparams(methods: list[str], **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The fast test settings of ``methods`` (tests/helpers.py), plus ``extra`` per method."""
    return {**{m: fast_params(m) for m in methods}, **extra}


@pytest.fixture()
def quiet_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of a Ray instance the code under test starts itself."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # offline: do not try to report usage


def test_comparable_drops_timings_and_host_fields_only() -> None:
    line = {
        "cell": {"seed": 0}, "device": "cpu", "versions": {"platform": "x", "torch": "2"},
        "retrained": {"seconds": 1.5, "from_cache": False, "sha256": "ab"},
        "run": {"result": {"seconds": 0.2, "steps": 7, "details": {"attack/seconds": 0.1, "gu/basis_seconds": 2.0},
                           "hyperparams": {"max_seconds": 60}}},
    }
    assert comparable(line) == {
        "cell": {"seed": 0}, "versions": {"torch": "2"}, "retrained": {"sha256": "ab"},
        "run": {"result": {"steps": 7, "details": {}, "hyperparams": {"max_seconds": 60}}},
    }
    assert line["run"]["result"]["seconds"] == 0.2  # the original is untouched


def test_bench_cli_on_ray_starts_and_stops_its_own_instance(tmp_path: Path, quiet_env: None) -> None:
    if ray.is_initialized():  # left by another module: this test is about the CLI's own instance
        ray.shutdown()
    out = tmp_path / "b.jsonl"
    args = ["bench", "--executor", "ray", "--ray-num-cpus", "2", "--ray-cpus-per-cell", "1", "--methods", "neggrad",
            "-k", "2", "--seeds", "0-1", "--set", "lr=0.02", "--set", "max_steps=50", "--no-evidence",
            "--no-progress", "-o", str(out)]
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "2 run(s), 0 already in" in first.output and "| `neggrad` | 2/2 |" in first.output
    assert not ray.is_initialized()  # shut down at the end
    assert sorted(r["cell"]["seed"] for r in read_grid(out)) == [0, 1]
    second = CliRunner().invoke(main, args, catch_exceptions=False)  # resumes: nothing to submit
    assert second.exit_code == 0 and "0 run(s), 2 already in" in second.output


def test_a_cluster_that_cannot_be_reached_is_a_one_line_cli_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ray.is_initialized():
        ray.shutdown()

    def unreachable(**options: Any) -> None:  # what ray.init raises after its retries (minutes)
        raise ConnectionError(f"Failed to connect to Ray cluster at {options['address']}")

    monkeypatch.setattr(ray, "init", unreachable)
    out = tmp_path / "b.jsonl"
    result = CliRunner().invoke(
        main, ["bench", "--executor", "ray", "--address", "10.0.0.1:6379", "--no-evidence", "-k", "2", "-o", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "Error: cannot connect to the Ray cluster at 10.0.0.1:6379: ConnectionError: Failed" in result.output
    assert "cannot write" not in result.output and not out.exists()


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray instance of 2 CPUs for the module; the executors use it and leave it running."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        if ray.is_initialized():
            ray.shutdown()
        ray.init(num_cpus=2, **QUIET_RAY)
        try:
            yield
        finally:
            ray.shutdown()


def test_ray_writes_the_lines_the_local_executor_writes(ray_instance: None, tmp_path: Path) -> None:
    cells = grid(["digits"], METHODS, [4], ["misclassify"], [0, 1])
    settings = hyperparams(METHODS)
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    # One torch thread in both: CPU kernels may sum in another order with another thread count.
    assert run_grid(cells, local, hyperparams=settings, evidence=False, executor=LocalExecutor(threads=1)) == {
        "run": 4, "skipped": 0, "failed": 0,
    }
    assert run_grid(cells, remote, hyperparams=settings, evidence=False, executor=RayExecutor(cpus_per_cell=1)) == {
        "run": 4, "skipped": 0, "failed": 0,
    }
    lines = by_cell(remote)
    assert lines == by_cell(local)
    assert [Cell(**r["cell"]) for r in lines] == sorted(cells, key=lambda c: c.key)
    assert all(r["run"]["status"] == "converged" and r["run"]["result"]["steps"] > 0 for r in lines)
    # Not a vacuous equality: the seeds drew different requests and the methods' runs differ.
    assert len({tuple(r["request_ids"]) for r in lines}) == 2
    assert len({json.dumps(r["run"]["metrics"], sort_keys=True) for r in lines}) == 4
    # The Ray file resumes like a local one.
    assert run_grid(cells, remote, hyperparams=settings, evidence=False, executor=RayExecutor()) == {
        "run": 0, "skipped": 4, "failed": 0,
    }


def test_with_evidence_ray_trains_each_reference_once_before_its_cells(ray_instance: None, tmp_path: Path) -> None:
    cells = grid(["digits"], ["neggrad", "random_label"], [5], ["misclassify"], [3])
    settings = hyperparams(["neggrad", "random_label"])
    local, remote, cache = tmp_path / "local.jsonl", tmp_path / "ray.jsonl", tmp_path / "cache"
    run_grid(cells, remote, hyperparams=settings, evidence=True, cache_directory=cache, executor=RayExecutor())
    lines = read_grid(remote)
    assert len(lines) == 2 and all(succeeded(r) and r["run"]["evidence"] is not None for r in lines)
    # A warm-up task trained the request's reference; both cells started after it and loaded it.
    assert [r["retrained"]["from_cache"] for r in lines] == [True, True]
    assert len(list(cache.glob("*-without-*.safetensors"))) == 1
    run_grid(
        cells, local, hyperparams=settings, evidence=True, cache_directory=cache, executor=LocalExecutor(threads=1)
    )
    assert by_cell(remote) == by_cell(local)


def test_a_failing_cell_on_ray_is_a_failed_line_and_a_rerun_retries_it(ray_instance: None, tmp_path: Path) -> None:
    # acu takes any head name when made and fails on the model: a cell failing at run time.
    # A data set that does not exist fails in the driver, before any task: the same kind of line.
    cells = grid(["digits"], ["neggrad", "acu"], [3], ["misclassify"], [0, 1])
    cells.append(Cell("nope", "neggrad", 3, "misclassify", 0))
    bad = hyperparams(["neggrad"], acu={"head": "nope"})
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    counts = run_grid(cells, remote, hyperparams=bad, evidence=False, executor=RayExecutor())
    assert counts == {"run": 5, "skipped": 0, "failed": 3}
    records = read_grid(remote)
    failed = {(r["cell"]["dataset"], r["cell"]["method"]): r["error"] for r in records if not succeeded(r)}
    assert sorted(failed) == [("digits", "acu"), ("nope", "neggrad")]
    assert failed[("digits", "acu")]["type"] == "unlearnkit.errors.InvalidHyperparameterError"
    assert failed[("nope", "neggrad")]["type"] == "KeyError"
    assert "unknown pretrained model" in failed[("nope", "neggrad")]["message"]
    assert sum(r["cell"]["method"] == "neggrad" and succeeded(r) for r in records) == 2  # the others completed
    # The local executor records the very same lines.
    run_grid(cells, local, hyperparams=bad, evidence=False, executor=LocalExecutor(threads=1))
    assert by_cell(remote) == by_cell(local)
    rows = {(row["dataset"], row["method"]): row for row in summarise_grid(records)}
    assert (rows[("digits", "acu")]["runs"], rows[("digits", "acu")]["failed"]) == (0, 2)

    # A rerun with the setting fixed retries exactly the failed cells that can now succeed.
    fixed = hyperparams(["neggrad"])
    counts = run_grid(cells, remote, hyperparams=fixed, evidence=False, executor=RayExecutor())
    assert counts == {"run": 3, "skipped": 2, "failed": 1}  # the missing data set still fails
    rows = {(row["dataset"], row["method"]): row for row in summarise_grid(read_grid(remote))}
    assert (rows[("digits", "acu")]["runs"], rows[("digits", "acu")]["failed"]) == (2, 0)
    assert rows[("nope", "neggrad")]["failed"] == 1

