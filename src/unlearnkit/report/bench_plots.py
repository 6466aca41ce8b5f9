"""Plots of a benchmark grid's summary: what each method keeps against what it costs.

One figure per (data set, mode, k) pair of views, as self-contained SVG (no plotting library,
no fonts to fetch, so the files render offline and diff cleanly in a repository):

- *utility vs. time*: Acc(D_test) against log10 of the unlearning call's seconds: the fast
  methods that keep the model are in the upper left;
- *utility vs. gap to retraining*: Acc(D_test) against SalUn's average gap to a model retrained
  without the forget set (0 = indistinguishable from retraining on the four accuracies and MIA).

Each point is a method's mean over seeds; methods missing the figure (e.g. runs without
evidence have no gap) are left out of that view and named in the caption.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.report.svg import Point, color_for, scatter
from unlearnkit.utils.io import write_atomic


@dataclass(frozen=True)
class GridPlot:
    """One rendered view of a grid summary.

    Attributes:
        name: File stem, e.g. ``mnist-misclassify-k16-time``.
        title: What the plot shows, for a caption.
        svg: The ``<svg>`` element.
        left_out: Methods without the figure this view needs.
    """

    name: str
    title: str
    svg: str
    left_out: tuple[str, ...]


def _mean(row: Mapping[str, Any], figure: str) -> float | None:
    value = row.get(figure)
    return None if value is None else float(value[0])


def _view(
    group: Sequence[Mapping[str, Any]], x_figure: str, x_label: str, transform: Any, name: str, title: str
) -> GridPlot | None:
    points, left_out = [], []
    for index, row in enumerate(group):
        x, y = _mean(row, x_figure), _mean(row, "Acc(D_test)")
        if x is None or y is None or (transform is math.log10 and x <= 0):
            left_out.append(row["method"])
            continue
        tooltip = f"{row['method']}: {x_figure} {x:.3g}, Acc(D_test) {y:.1f} (mean of {row['runs']} run(s))"
        points.append(Point(row["method"], transform(x), y, color_for(index), tooltip=tooltip))
    if not points:
        return None
    svg = scatter(points, x_label=x_label, y_label="Acc(D_test) %", y_bounds=(0.0, 100.0), label=title)
    return GridPlot(name, title, svg, tuple(left_out))


def grid_plots(rows: Sequence[Mapping[str, Any]]) -> list[GridPlot]:
    """The views of :func:`~unlearnkit.bench.summarise_grid`'s rows, two per (data set, mode, k,
    forget set); the file stem names the forget set when it is not random.

    Example:
        >>> rows = [{"dataset": "digits", "mode": "misclassify", "k": 4, "method": "neggrad", "runs": 1,
        ...          "Acc(D_test)": (30.0, 0.0), "seconds": (0.1, 0.0), "gap": None}]
        >>> [(p.name, p.left_out) for p in grid_plots(rows)]
        [('digits-misclassify-k4-time', ())]
    """
    plots: list[GridPlot] = []
    def table_of(row: Mapping[str, Any]) -> tuple[str, str, int, str]:
        return row["dataset"], row["mode"], row["k"], row.get("forget_set", "random")

    for (dataset, mode, k, forget_set), group in itertools.groupby(rows, key=table_of):
        group = list(group)
        stem = f"{dataset}-{mode}-k{k}" + ("" if forget_set == "random" else f"-{forget_set}")
        where = f"{dataset}, {mode}, k = {k}" + ("" if forget_set == "random" else f", {forget_set} forget set")
        for view in (
            _view(group, "seconds", "log10 seconds of the unlearning call", math.log10, f"{stem}-time",
                  f"Acc(D_test) against time, {where}"),
            _view(group, "gap", "average gap to retraining (percentage points)", float, f"{stem}-gap",
                  f"Acc(D_test) against the gap to retraining, {where}"),
        ):
            if view is not None:
                plots.append(view)
    return plots


#: What a standalone file needs that a chart inlined in the HTML report gets from its page: the
#: SVG namespace (browsers render an .svg without it as XML text) and the chart styles.
STANDALONE_STYLE = (
    "<style>text{font-family:system-ui,-apple-system,'Segoe UI',sans-serif}"
    ".tick{fill:#666;font-size:10px}.axis-title{fill:#333;font-size:11.5px}"
    ".point-label{fill:#222;font-size:11px;paint-order:stroke;stroke:#fff;stroke-width:3px}</style>"
)


def standalone_svg(svg: str) -> str:
    """An inline chart as a standalone ``.svg`` file: namespace and styles added.

    Example:
        >>> standalone_svg('<svg class="chart"><rect/></svg>')[:60]
        '<svg xmlns="http://www.w3.org/2000/svg" class="chart"><style'
    """
    head, rest = svg.split(">", 1)
    return head.replace("<svg", '<svg xmlns="http://www.w3.org/2000/svg"', 1) + ">" + STANDALONE_STYLE + rest


def write_grid_plots(rows: Sequence[Mapping[str, Any]], directory: str | Path) -> list[Path]:
    """Writes every view of :func:`grid_plots` as ``<directory>/<name>.svg``; returns the paths.

    Files are written whole (to a temporary name, then renamed), so a reader never sees half a
    plot.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for plot in grid_plots(rows):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", plot.name):
            raise ValueError(f"unsafe plot name {plot.name!r}")
        path = directory / f"{plot.name}.svg"
        text = standalone_svg(plot.svg)
        write_atomic(path, lambda tmp, svg=text: Path(tmp).write_text(svg, encoding="utf-8"))
        paths.append(path)
    return paths


def markdown_figures(plots: Sequence[GridPlot], relative_to: str = "") -> str:
    """Markdown image links for ``plots`` (paths relative to the Markdown file), with captions
    naming the methods a view leaves out."""
    lines = []
    for plot in plots:
        caption = plot.title + (f" (without {', '.join(plot.left_out)}: no figure)" if plot.left_out else "")
        lines.append(f"![{caption}]({relative_to}{plot.name}.svg)")
    return "\n\n".join(lines) + ("\n" if lines else "")
