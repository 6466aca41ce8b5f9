"""Rewrites the generated sections of docs/benchmarks.md from the grid JSONL files beside it.

Each grid (`docs/benchmarks/<name>.jsonl`) fills the block between
``<!-- MARKER table: generated -->`` and ``<!-- end MARKER table -->``: the run count, the
Markdown tables of :func:`unlearnkit.bench.markdown_table` and links to the SVG views of
:mod:`unlearnkit.report.bench_plots` (written next to the JSONL). The continual sequences
(`docs/benchmarks/continual-*.json`, written by `unlearnkit continual`) fill the block of the
marker ``continual``, one row per data set and method over seeds
(:func:`unlearnkit.scenarios.continual.summarise_sequences`). Run it after resuming a grid:

    python benchmarks/assemble_docs.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from unlearnkit.bench import markdown_table, read_grid, summarise_grid
from unlearnkit.report.bench_plots import grid_plots, markdown_figures, write_grid_plots
from unlearnkit.scenarios.continual import summarise_sequences

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: JSONL stem -> the marker of its block in docs/benchmarks.md.
GRIDS = {"mnist": "MNIST", "mnist-relabel": "MNIST relabel", "mnist-k": "MNIST k", "cifar10": "CIFAR"}


def generated_block(name: str, marker: str) -> str:
    """The block of one grid, markers included."""
    path = DOCS / "benchmarks" / f"{name}.jsonl"
    records = read_grid(path)
    if records:
        rows = summarise_grid(records)
        write_grid_plots(rows, DOCS / "benchmarks")
        table = markdown_table(rows).replace("### ", "#### ")
        figures = markdown_figures(grid_plots(rows), relative_to="benchmarks/")
        body = f"{len(records)} run(s) in `benchmarks/{name}.jsonl` so far.\n\n{table}\n{figures}"
    else:
        body = "No run finished yet.\n"
    return f"<!-- {marker} table: generated -->\n{body}<!-- end {marker} table -->"


def _number(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def continual_block(marker: str = "continual") -> str:
    """The block of the continual sequences, markers included."""
    files = sorted((DOCS / "benchmarks").glob("continual-*.json"))
    rows = summarise_sequences([json.loads(f.read_text(encoding="utf-8")) for f in files])
    if not rows:
        body = "No sequence finished yet.\n"
    else:
        lines = [
            "| data set | method | mode | seeds | requests met when applied | Acc(D_f^j) after the last request, j = 1.. |"
            " Acc(D_r) | Acc(D_test) (original) | earlier requests relapsed | seconds per request |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            forget = " / ".join(_number(v) for v in r["final_forget"])
            lines.append(
                f"| {r['dataset']} | `{r['method']}` | {r['mode']} | {','.join(map(str, r['seeds']))} | {r['converged']} |"
                f" {forget} | {_number(r['retain'])} | {_number(r['test'])} ({_number(r['original_test'])}) |"
                f" {_number(r['relapsed'])} | {_number(r['seconds'])} |"
            )
        body = f"{len(files)} sequence(s) in `benchmarks/continual-*.json`; means over seeds.\n\n" + "\n".join(lines) + "\n"
    return f"<!-- {marker} table: generated -->\n{body}<!-- end {marker} table -->"


def _replace(text: str, marker: str, block: str) -> str:
    pattern = re.escape(f"<!-- {marker} table: generated -->") + r".*?" + re.escape(f"<!-- end {marker} table -->")
    return re.sub(pattern, lambda _m: block, text, flags=re.S)


def main() -> None:
    """Replaces every generated block in docs/benchmarks.md."""
    page = DOCS / "benchmarks.md"
    text = page.read_text(encoding="utf-8")
    for name, marker in GRIDS.items():
        text = _replace(text, marker, generated_block(name, marker))
    text = _replace(text, "continual", continual_block())
    page.write_text(text, encoding="utf-8")
    print(f"rewrote {page}")


if __name__ == "__main__":
    main()
