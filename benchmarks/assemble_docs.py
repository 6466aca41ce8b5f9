"""Rewrites the generated sections of docs/benchmarks.md from the grid JSONL files beside it.

Each grid (`docs/benchmarks/<name>.jsonl`) fills the block between
``<!-- MARKER table: generated -->`` and ``<!-- end MARKER table -->``: the run count, the
Markdown tables of :func:`unlearnkit.bench.markdown_table` and links to the SVG views of
:mod:`unlearnkit.report.bench_plots` (written next to the JSONL). Run it after resuming a grid:

    python benchmarks/assemble_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

from unlearnkit.bench import markdown_table, read_grid, summarise_grid
from unlearnkit.report.bench_plots import grid_plots, markdown_figures, write_grid_plots

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: JSONL stem -> the marker of its block in docs/benchmarks.md.
GRIDS = {"mnist": "MNIST", "cifar10": "CIFAR"}


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


def main() -> None:
    """Replaces every grid's block in docs/benchmarks.md."""
    page = DOCS / "benchmarks.md"
    text = page.read_text(encoding="utf-8")
    for name, marker in GRIDS.items():
        pattern = re.escape(f"<!-- {marker} table: generated -->") + r".*?" + re.escape(f"<!-- end {marker} table -->")
        block = generated_block(name, marker)
        text = re.sub(pattern, lambda _m, b=block: b, text, flags=re.S)
    page.write_text(text, encoding="utf-8")
    print(f"rewrote {page}")


if __name__ == "__main__":
    main()
