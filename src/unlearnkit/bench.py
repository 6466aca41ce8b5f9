"""Benchmark grids: data set x method x k x mode x seed, one JSONL line per run, resumable.

:func:`run_grid` appends one JSON line per finished run to a file and skips the cells whose line
is already there, so a grid interrupted at any point (a closed laptop, a killed job) resumes
where it stopped and never runs a cell twice. Each line is written and fsynced whole; a torn
last line (a kill in the middle of a write) is ignored on reading and that cell runs again.
:func:`summarise_grid` turns the file into means and spreads over seeds, and
:func:`markdown_table` into the tables of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unlearnkit.data.splits import DataSplit
from unlearnkit.demo import draw_request, evidence_for_request, heldout_half
from unlearnkit.methods.registry import create_method, method_class
from unlearnkit.models.pretrained import load_pretrained
from unlearnkit.scenarios.single import RunRecord, run_request
from unlearnkit.utils.versions import environment_versions

#: Schema version of a grid line.
GRID_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Cell:
    """One run of a grid.

    Attributes:
        dataset: A pretrained spec name (``digits``, ``mnist``).
        method: Registered method name.
        k: Forget instances.
        mode: ``misclassify``, ``relabel`` or ``unseen``.
        seed: Seed of the request and the run.
    """

    dataset: str
    method: str
    k: int
    mode: str
    seed: int

    @property
    def key(self) -> str:
        """The cell's identity in the JSONL file."""
        return json.dumps(asdict(self), sort_keys=True)


def grid(
    datasets: Sequence[str], methods: Sequence[str], ks: Sequence[int], modes: Sequence[str], seeds: Sequence[int]
) -> list[Cell]:
    """Every combination, ordered so that runs sharing a request (data set, k, mode, seed) are
    adjacent and its retrained reference is trained once.

    Example:
        >>> [c.method for c in grid(["digits"], ["a", "b"], [16], ["misclassify"], [0])]
        ['a', 'b']
    """
    return [
        Cell(d, m, k, mode, s)
        for d, k, mode, s, m in itertools.product(datasets, ks, modes, seeds, methods)
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


def run_grid(
    cells: Sequence[Cell],
    path: str | Path,
    *,
    hyperparams: Mapping[str, Mapping[str, Any]] | None = None,
    evidence: bool = True,
    cache_directory: str | Path | None = None,
    progress: bool = False,
) -> dict[str, int]:
    """Runs every cell whose line is not yet in ``path``, appending one line per run.

    Args:
        cells: The grid (see :func:`grid`).
        path: The JSONL file (created if missing).
        hyperparams: Per-method hyperparameters, recorded in each line.
        evidence: Gather the evidence of each run (retrained reference per request, cached).
        cache_directory: Model cache.
        progress: Show a progress bar over the cells.

    Returns:
        ``{"run": ..., "skipped": ...}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hyperparams = dict(hyperparams or {})
    for method in {c.method for c in cells}:  # refuse bad settings before any work
        create_method(method, **dict(hyperparams.get(method, {})))
    done = {json.dumps(r["cell"], sort_keys=True) for r in read_grid(path)}
    todo = [c for c in cells if c.key not in done]
    versions = environment_versions()
    loaded: dict[str, Any] = {}
    requests: dict[tuple[str, int, str, int], Any] = {}
    bar = tqdm(total=len(todo), desc="bench", unit="run", disable=not progress)
    for cell in todo:
        bar.set_postfix(dataset=cell.dataset, method=cell.method, k=cell.k, mode=cell.mode, seed=cell.seed)
        if cell.dataset not in loaded:
            loaded[cell.dataset] = load_pretrained(cell.dataset, directory=cache_directory, progress=progress)
        default = loaded[cell.dataset]
        data: DataSplit = default.data
        request_key = (cell.dataset, cell.k, cell.mode, cell.seed)
        if request_key not in requests:
            requests.clear()  # keep one request (and its retrained reference) in memory
            request, keep = draw_request(data, cell.k, cell.seed, cell.mode)  # type: ignore[arg-type]
            splits = {"retain": (data.x_train[keep], data.y_train[keep]), "test": (data.x_test, data.y_test)}
            gather, retrained = None, None
            if evidence:
                gather, retrained, _ = evidence_for_request(
                    default.model, data, request, splits, cell.dataset, cache_directory, cell.seed, False
                )
            requests[request_key] = (request, splits, gather, retrained)
        request, splits, gather, retrained = requests[request_key]
        cls = method_class(cell.method)
        if (cell.mode == "relabel" and not cls.supports_relabel) or (cell.mode == "unseen" and not cls.supports_unseen):
            record = RunRecord(cell.method, cell.seed, cell.mode, "unsupported", error=f"{cell.method} does not support {cell.mode!r}")
        else:
            record = run_request(
                default.model, request, cell.method, splits=splits, seed=cell.seed,
                hyperparams=hyperparams.get(cell.method), retain=None if cls.data_access == "forget" else splits["retain"],
                heldout=heldout_half(data) if cell.mode == "unseen" else None, evidence=gather,
            )
        line = {
            "schema_version": GRID_SCHEMA_VERSION,
            "cell": asdict(cell),
            "model": {"sha256": default.sha256, "test_accuracy": default.test_accuracy},
            "request_ids": list(request.ids),
            "retrained": retrained,
            "run": record.to_dict(),
            "device": str(torch.device("cpu")) if not torch.cuda.is_available() else "cuda",
            "versions": versions,
        }
        _append(path, line)
        bar.update(1)
    bar.close()
    return {"run": len(todo), "skipped": len(cells) - len(todo)}


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
    counts of converged, diverged and unsupported runs (diverged runs have no figures)."""
    groups: dict[tuple[str, str, int, str], list[Mapping[str, Any]]] = {}
    for record in records:
        c = record["cell"]
        groups.setdefault((c["dataset"], c["mode"], c["k"], c["method"]), []).append(record)
    rows = []
    for (dataset, mode, k, method), group in sorted(groups.items()):
        row: dict[str, Any] = {
            "dataset": dataset, "mode": mode, "k": k, "method": method, "runs": len(group),
            "converged": sum(r["run"]["status"] == "converged" for r in group),
            "diverged": sum(r["run"]["status"] == "diverged" for r in group),
            "unsupported": sum(r["run"]["status"] == "unsupported" for r in group),
        }
        for name, get in FIGURES.items():
            values = [v for v in (get(r) for r in group if r["run"]["status"] not in ("diverged", "unsupported")) if v is not None]
            row[name] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary as Markdown tables, one per (data set, mode, k): ``mean ± sd`` over seeds."""
    blocks = []
    for (dataset, mode, k), group in itertools.groupby(rows, key=lambda r: (r["dataset"], r["mode"], r["k"])):
        group = list(group)
        headers = ["method", "converged", *FIGURES]
        lines = [f"### {dataset}, {mode}, k = {k}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        for row in group:
            cells = [f"`{row['method']}`", f"{row['converged']}/{row['runs']}" + (f" ({row['diverged']} diverged)" if row["diverged"] else "")]
            for name in FIGURES:
                value = row[name]
                if row["unsupported"] == row["runs"]:
                    cells.append("unsupported")
                elif value is None:
                    cells.append("-")
                else:
                    digits = 2 if name == "seconds" else 1
                    cells.append(f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}")
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
