"""Benchmark grids: data set x method x k x mode x seed, one JSONL line per run, resumable.

:func:`run_grid` appends one JSON line per finished cell to a file and skips the cells whose
successful line is already there, so a grid interrupted at any point (a closed laptop, a killed
job) resumes where it stopped and never runs a finished cell twice. Each line is written and
fsynced whole; a torn last line (a kill in the middle of a write) is ignored on reading and that
cell runs again.

Where the cells run is up to an executor (:mod:`unlearnkit.executors`): one after another in
this process (:class:`~unlearnkit.executors.LocalExecutor`, the default) or as Ray tasks, in
parallel on this machine or a cluster (:class:`~unlearnkit.executors.RayExecutor`, needs
``pip install "unlearnkit[ray]"``). Either way the calling process alone writes the file, so it
stays consistent, and a cell computes the same line wherever it runs (given the same torch
thread count and model cache; only timings and host details differ).

Two kinds of line:

- A *run* line: ``schema_version``, ``cell``, ``model``, ``request_ids``, ``retrained``,
  ``run`` (:meth:`~unlearnkit.scenarios.single.RunRecord.to_dict`, whose ``status`` is
  converged, not_converged, diverged or unsupported), ``device`` and ``versions``.
- A *failed* line, for a cell that raised (a bad hyperparameter met at run time, a missing data
  file, a worker that died): ``schema_version``, ``cell``, ``"status": "failed"``, ``error``
  (``type``, ``message``, ``traceback``) and ``versions``. A failing cell does not stop the
  grid.

Only run lines count as done: a rerun retries every cell whose lines are all failed ones and
appends its new line after them (the failed lines stay, as a record). :func:`summarise_grid`
turns the run lines into means and spreads over seeds and counts the cells that still have only
failed lines; :func:`markdown_table` turns the summary into the tables of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from unlearnkit.data.splits import DataSplit
from unlearnkit.demo import draw_request, evidence_for_request, heldout_half, model_for_method
from unlearnkit.methods.registry import create_method, method_class
from unlearnkit.models.pretrained import DefaultModel, cache_dir, load_pretrained
from unlearnkit.scenarios.single import RunRecord, run_request
from unlearnkit.utils.modules import model_device
from unlearnkit.utils.versions import environment_versions

if TYPE_CHECKING:  # executors imports this module's names at run time; avoid the cycle
    from unlearnkit.executors import Executor

#: Schema version of a grid line. Failed lines (``"status": "failed"``) came without a bump:
#: run lines are unchanged and a reader tells the two apart by :func:`succeeded`.
GRID_SCHEMA_VERSION = 1

#: The top-level ``status`` of a failed line (run lines have no top-level ``status``).
FAILED = "failed"

#: Longest traceback kept in a failed line, in characters (its tail: the raising frames).
TRACEBACK_CHARS = 4000


@dataclass(frozen=True)
class Cell:
    """One run of a grid.

    Attributes:
        dataset: A pretrained spec name (``digits``, ``mnist``).
        method: Registered method name.
        k: Forget instances.
        mode: ``misclassify``, ``relabel`` or ``unseen``.
        seed: Seed of the request and the run.
        forget_set: How the forget set is drawn: ``random`` (default), ``worst``, ``easiest``
            or ``one-class`` (see :func:`~unlearnkit.demo.draw_request`).
    """

    dataset: str
    method: str
    k: int
    mode: str
    seed: int
    forget_set: str = "random"

    @property
    def key(self) -> str:
        """The cell's identity in the JSONL file (see :func:`cell_key`); its lines hold these fields."""
        return cell_key(asdict(self))


def cell_key(cell: Mapping[str, Any]) -> str:
    """The identity of a line's cell: its fields as sorted JSON, with the default random forget
    set left out, so that lines written before the forget-set axis existed keep their identity.

    Example:
        >>> cell_key({"dataset": "digits", "seed": 0, "forget_set": "random"})
        '{"dataset": "digits", "seed": 0}'
    """
    fields = dict(cell)
    if fields.get("forget_set", "random") == "random":
        fields.pop("forget_set", None)
    return json.dumps(fields, sort_keys=True)


def grid(
    datasets: Sequence[str],
    methods: Sequence[str],
    ks: Sequence[int],
    modes: Sequence[str],
    seeds: Sequence[int],
    forget_sets: Sequence[str] = ("random",),
) -> list[Cell]:
    """Every combination, ordered so that runs sharing a request (data set, k, mode, seed) are
    adjacent and its retrained reference is trained once.

    Example:
        >>> [c.method for c in grid(["digits"], ["a", "b"], [16], ["misclassify"], [0])]
        ['a', 'b']
    """
    return [
        Cell(d, m, k, mode, s, f)
        for d, f, k, mode, s, m in itertools.product(datasets, forget_sets, ks, modes, seeds, methods)
    ]


def read_grid(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a grid file (a torn last line is dropped; a missing file is empty).

    Raises:
        ValueError: If a line other than the last is not valid JSON (the file was edited or
            is not a grid file).
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a kill in the middle of the last write
                break
            raise ValueError(f"{path}:{number} is not a JSON line; is this a grid file?") from None
        if not isinstance(record, dict) or "cell" not in record:
            raise ValueError(f"{path}:{number} is not a grid line (no 'cell')")
        records.append(record)
    return records


def _append(path: Path, record: Mapping[str, Any]) -> None:
    """Appends one line and forces it to disk, so a finished run is never lost or half-kept."""
    text = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
    if path.exists() and path.stat().st_size > 0:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            # The tail of a write that was killed midway: drop it (its cell runs again now).
            with path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def succeeded(record: Mapping[str, Any]) -> bool:
    """Whether a grid line records a run (any run status, even diverged), not a cell that raised.

    Example:
        >>> succeeded({"cell": {}, "run": {"status": "diverged"}}), succeeded({"cell": {}, "status": "failed"})
        (True, False)
    """
    return record.get("status") != FAILED


def _cell_key(record: Mapping[str, Any]) -> str:
    return cell_key(record["cell"])


@dataclass(frozen=True)
class CellSettings:
    """Everything a cell needs besides the cell itself: plain values, so that it can be sent to
    another process (a Ray task) as is.

    Attributes:
        hyperparams: Per-method hyperparameters, recorded in each line.
        evidence: Gather the evidence of each run (retrained reference per request, cached).
        cache_directory: The model cache, as a path: :func:`run_grid` resolves the default
            (:func:`~unlearnkit.models.pretrained.cache_dir`) in the calling process so that a
            task elsewhere does not depend on its own environment variables.
    """

    hyperparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    evidence: bool = True
    cache_directory: str | None = None


def failed_line(cell: Cell, error: BaseException, versions: Mapping[str, str]) -> dict[str, Any]:
    """The line of a cell that raised ``error``.

    Args:
        cell: The cell.
        error: What it raised.
        versions: :func:`~unlearnkit.utils.versions.environment_versions` of where it ran.

    Example:
        >>> line = failed_line(Cell("digits", "neggrad", 4, "misclassify", 0), ValueError("boom"), {})
        >>> line["status"], line["error"]["type"], line["error"]["message"]
        ('failed', 'ValueError', 'boom')
    """
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    trace = "".join(traceback.format_exception(kind, error, error.__traceback__))
    return {
        "schema_version": GRID_SCHEMA_VERSION,
        "cell": json.loads(cell.key),
        "status": FAILED,
        "error": {"type": name, "message": str(error), "traceback": trace[-TRACEBACK_CHARS:]},
        "versions": dict(versions),
    }


class CellRunner:
    """Runs cells one after another in this process and turns each into its grid line.

    Consecutive cells share what they can: the pretrained model of each data set, and the
    current request with its retrained reference (cells are ordered by :func:`grid` so that the
    runs of one request are adjacent). Only one request is kept, so memory stays flat over a
    long grid.

    Args:
        settings: Hyperparameters, evidence flag and model cache.
        threads: torch intra-op threads while a cell runs (the previous count is restored
            after it); ``None`` leaves the process's setting alone.
        progress: Show progress bars while a model trains on first use.
    """

    def __init__(self, settings: CellSettings, *, threads: int | None = None, progress: bool = False) -> None:
        self.settings = settings
        self.threads = threads
        self.progress = progress
        self._models: dict[str, DefaultModel] = {}
        self._own_models: dict[str, nn.Module] = {}
        self._request: tuple[tuple[str, int, str, int, str], Any] | None = None
        self._versions: dict[str, str] | None = None

    @property
    def versions(self) -> dict[str, str]:
        """The environment the cells run in (measured once)."""
        if self._versions is None:
            self._versions = environment_versions()
        return self._versions

    def run(self, cell: Cell) -> dict[str, Any]:
        """The line of ``cell``: a run line, or a failed line if anything in it raised.

        Raises only what is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``): a
        failing cell is a result of the grid, an interrupt is the end of it.
        """
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._run(cell)
        except Exception as err:  # noqa: BLE001 - any error is this cell's outcome, recorded
            return failed_line(cell, err, self.versions)
        finally:
            if self.threads is not None:
                torch.set_num_threads(previous)

    def _run(self, cell: Cell) -> dict[str, Any]:
        settings = self.settings
        if cell.dataset not in self._models:
            self._models[cell.dataset] = load_pretrained(
                cell.dataset, directory=settings.cache_directory, progress=self.progress
            )
        default = self._models[cell.dataset]
        data: DataSplit = default.data
        request_key = (cell.dataset, cell.k, cell.mode, cell.seed, cell.forget_set)
        if self._request is None or self._request[0] != request_key:
            self._request = None  # keep one request (and its retrained reference) in memory
            request, keep = draw_request(
                data, cell.k, cell.seed, cell.mode, forget_set=cell.forget_set, model=default.model,  # type: ignore[arg-type]
                cache_dir=settings.cache_directory,
            )
            splits = {"retain": (data.x_train[keep], data.y_train[keep]), "test": (data.x_test, data.y_test)}
            gather, retrained = None, None
            if settings.evidence:
                # Grid lines keep figures only: the analyst views (tens of kB per line) are for
                # the HTML report, and are not drawn here.
                gather, retrained, _ = evidence_for_request(
                    default.model, data, request, splits, cell.dataset, settings.cache_directory, cell.seed, False,
                    views=False,
                )
            # Kept only once complete: a request whose reference failed is prepared afresh by
            # its next cell, which then fails (or succeeds) on its own.
            self._request = (request_key, (request, splits, gather, retrained))
        request, splits, gather, retrained = self._request[1]
        cls = method_class(cell.method)
        base = default.model
        if cls.trains_own_model:
            # Its own model (S3T), prepared once per data set and cached; its evidence takes it
            # as the original.
            key = f"{cell.dataset}/{cell.method}"
            if key not in self._own_models:
                self._own_models[key] = model_for_method(cell.method, default, settings.cache_directory)
            base = self._own_models[key]
            if settings.evidence:
                gather = evidence_for_request(
                    base, data, request, splits, cell.dataset, settings.cache_directory, cell.seed, False, views=False
                )[0]
        if (cell.mode == "relabel" and not cls.supports_relabel) or (cell.mode == "unseen" and not cls.supports_unseen):
            record = RunRecord(cell.method, cell.seed, cell.mode, "unsupported", error=f"{cell.method} does not support {cell.mode!r}")
        else:
            record = run_request(
                base, request, cell.method, splits=splits, seed=cell.seed,
                hyperparams={**cls.params_for_recipe(default.recipe), **settings.hyperparams.get(cell.method, {})},
                retain=None if cls.data_access == "forget" else splits["retain"],
                heldout=heldout_half(data) if cell.mode == "unseen" else None, evidence=gather,
            )
        return {
            "schema_version": GRID_SCHEMA_VERSION,
            "cell": json.loads(cell.key),
            "model": {"sha256": default.sha256, "test_accuracy": default.test_accuracy},
            "request_ids": list(request.ids),
            "retrained": retrained,
            "run": record.to_dict(),
            "device": str(model_device(base)),
            "versions": self.versions,
        }


def run_grid(
    cells: Sequence[Cell],
    path: str | Path,
    *,
    hyperparams: Mapping[str, Mapping[str, Any]] | None = None,
    evidence: bool = True,
    cache_directory: str | Path | None = None,
    progress: bool = False,
    executor: Executor | None = None,
) -> dict[str, int]:
    """Runs every cell that has no run line in ``path`` yet, appending one line per cell.

    A cell whose lines are all failed ones is run again. Lines are appended as cells finish
    (in grid order locally, in order of completion on Ray), by this process only.

    Args:
        cells: The grid (see :func:`grid`).
        path: The JSONL file (created if missing).
        hyperparams: Per-method hyperparameters, recorded in each line.
        evidence: Gather the evidence of each run (retrained reference per request, cached).
        cache_directory: Model cache; defaults to :func:`~unlearnkit.models.pretrained.cache_dir`.
        progress: Show a progress bar over the cells.
        executor: Where the cells run; defaults to
            :class:`~unlearnkit.executors.LocalExecutor` (this process, one cell at a time).

    Returns:
        ``{"run": ..., "skipped": ..., "failed": ...}``: cells run now, cells already done, and
        how many of those run now failed (rerun to retry them).

    Raises:
        InvalidHyperparameterError: If a method refuses its hyperparameters (before any work).
    """
    from unlearnkit.executors import LocalExecutor  # here, not at the top: executors imports us

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hyperparams = {method: dict(params) for method, params in (hyperparams or {}).items()}
    for method in {c.method for c in cells}:  # refuse bad settings before any work
        create_method(method, **hyperparams.get(method, {}))
    done = {_cell_key(r) for r in read_grid(path) if succeeded(r)}
    todo = [c for c in cells if c.key not in done]
    directory = Path(cache_directory) if cache_directory is not None else cache_dir()
    settings = CellSettings(hyperparams, evidence, str(directory.absolute()))
    executor = executor if executor is not None else LocalExecutor()
    failed = 0
    bar = tqdm(total=len(todo), desc="bench", unit="run", disable=not progress)
    lines = iter(executor.run(todo, settings, progress=progress))
    try:
        for line in lines:
            _append(path, line)
            failed += not succeeded(line)
            cell = line["cell"]
            bar.set_postfix(method=cell["method"], k=cell["k"], mode=cell["mode"], seed=cell["seed"], failed=failed)
            bar.update(1)
    finally:
        # An error here (a full disk, Ctrl-C) ends the executor's work too: a generator's close
        # runs its cleanup (Ray: cancel the tasks in flight, stop the instance it started).
        close = getattr(lines, "close", None)
        if close is not None:
            close()
        bar.close()
    return {"run": len(todo), "skipped": len(cells) - len(todo), "failed": failed}


#: Figures summarised per (data set, mode, k, method): name -> where it is in a line.
FIGURES: dict[str, Any] = {
    "Acc(D_f)": lambda r: r["run"]["metrics"].get("acc/forget"),
    "Acc(D_r)": lambda r: r["run"]["metrics"].get("acc/retain"),
    "Acc(D_test)": lambda r: r["run"]["metrics"].get("acc/test"),
    "MIA-efficacy": lambda r: (r["run"].get("evidence") or {}).get("mia_efficacy"),
    "gap": lambda r: ((r["run"].get("evidence") or {}).get("gap") or {}).get("average"),
    "seconds": lambda r: (r["run"].get("result") or {}).get("seconds"),
}


def summarise_grid(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds per (data set, mode, k, method), with the
    counts of converged, diverged and unsupported runs (diverged runs have no figures). Each
    figure is ``(mean, sd)``, with ``sd`` ``None`` when only one run has the figure.

    Failed lines carry no figures and are not runs: ``failed`` counts the cells of the group
    that have only failed lines (a cell retried with success no longer counts), and ``runs``
    counts run lines only.
    """
    records = list(records)
    done = {_cell_key(r) for r in records if succeeded(r)}
    groups: dict[tuple[str, str, int, str, str], list[Mapping[str, Any]]] = {}
    failing: dict[tuple[str, str, int, str, str], set[str]] = {}
    for record in records:
        c = record["cell"]
        key = (c["dataset"], c["mode"], c["k"], c.get("forget_set", "random"), c["method"])
        group = groups.setdefault(key, [])
        if succeeded(record):
            group.append(record)
        elif _cell_key(record) not in done:
            failing.setdefault(key, set()).add(_cell_key(record))  # a set: retried and failed again is one cell
    rows = []
    for (dataset, mode, k, forget_set, method), group in sorted(groups.items()):
        row: dict[str, Any] = {
            "dataset": dataset, "mode": mode, "k": k, "forget_set": forget_set, "method": method, "runs": len(group),
            "converged": sum(r["run"]["status"] == "converged" for r in group),
            "diverged": sum(r["run"]["status"] == "diverged" for r in group),
            "unsupported": sum(r["run"]["status"] == "unsupported" for r in group),
            "failed": len(failing.get((dataset, mode, k, forget_set, method), ())),
        }
        for name, get in FIGURES.items():
            values = [v for v in (get(r) for r in group if r["run"]["status"] not in ("diverged", "unsupported")) if v is not None]
            # One value has no spread: None (shown without ±), not a made-up 0.
            row[name] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None) if values else None
        rows.append(row)
    return rows


def summary_group(row: Mapping[str, Any]) -> tuple[str, str, int, str]:
    """The table a summary row belongs to: (data set, mode, k, forget set)."""
    return row["dataset"], row["mode"], row["k"], row.get("forget_set", "random")


def group_title(dataset: str, mode: str, k: int, forget_set: str = "random") -> str:
    """A table's title, e.g. ``mnist, misclassify, k = 16`` (plus the forget set when it is not
    random: ``..., worst forget set``).

    Example:
        >>> group_title("digits", "misclassify", 16, "worst")
        'digits, misclassify, k = 16, worst forget set'
    """
    title = f"{dataset}, {mode}, k = {k}"
    return title if forget_set == "random" else f"{title}, {forget_set} forget set"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as Markdown tables, one per (data set, mode, k): ``mean ± sd`` over seeds
    (the value alone where there is one run).

    The second column reads ``converged/runs``, followed by the diverged runs and the failed
    cells if any (e.g. ``2/3 (1 diverged, 1 failed)``).
    """
    blocks = []
    for (dataset, mode, k, forget_set), group in itertools.groupby(rows, key=summary_group):
        group = list(group)
        headers = ["method", "converged", *FIGURES]
        lines = [f"### {group_title(dataset, mode, k, forget_set)}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in group:
            notes = [f"{row[what]} {what}" for what in ("diverged", "failed") if row.get(what)]
            cells = [f"`{row['method']}`", f"{row['converged']}/{row['runs']}" + (f" ({', '.join(notes)})" if notes else "")]
            for name in FIGURES:
                value = row[name]
                if row["runs"] and row["unsupported"] == row["runs"]:
                    cells.append("unsupported")
                elif value is None:
                    cells.append("-")
                else:
                    digits = 2 if name == "seconds" else 1
                    spread = "" if value[1] is None else f" ± {value[1]:.{digits}f}"
                    cells.append(f"{value[0]:.{digits}f}{spread}")
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
