"""Grid plots: one time view and one gap view per (data set, mode, k), honest about gaps."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

from unlearnkit.report.bench_plots import grid_plots, markdown_figures, write_grid_plots


def _row(method: str, test: float, seconds: float, gap: float | None, dataset: str = "digits") -> dict:
    return {
        "dataset": dataset, "mode": "misclassify", "k": 16, "method": method, "runs": 3,
        "Acc(D_test)": (test, 0.5), "seconds": (seconds, 0.1), "gap": None if gap is None else (gap, 1.0),
    }


ROWS = [
    _row("l2ul", 98.0, 5.0, 50.0), _row("neggrad", 30.0, 0.1, 60.0), _row("finetune", 99.0, 20.0, None),
    _row("l2ul", 97.0, 30.0, 50.0, dataset="mnist"),
]


def test_two_views_per_group_and_methods_without_a_figure_are_named() -> None:
    plots = {p.name: p for p in grid_plots(ROWS)}
    assert set(plots) == {"digits-misclassify-k16-time", "digits-misclassify-k16-gap", "mnist-misclassify-k16-time",
                          "mnist-misclassify-k16-gap"}
    assert plots["digits-misclassify-k16-gap"].left_out == ("finetune",)
    assert plots["digits-misclassify-k16-time"].left_out == ()
    svg = plots["digits-misclassify-k16-time"].svg
    ET.fromstring(svg)  # well-formed
    for method in ("l2ul", "neggrad", "finetune"):
        assert f">{method}</text>" in svg
    assert f"seconds {5.0:.3g}" in svg and math.isclose(math.log10(5.0), 0.69897, rel_tol=1e-4)


def test_written_files_and_markdown_links_match(tmp_path: Path) -> None:
    paths = write_grid_plots(ROWS, tmp_path / "plots")
    assert sorted(p.name for p in paths) == sorted(f"{p.name}.svg" for p in grid_plots(ROWS))
    for path in paths:
        root = ET.fromstring(path.read_text(encoding="utf-8"))
        assert root.tag == "{http://www.w3.org/2000/svg}svg"  # renders as an image, not as XML text
    text = markdown_figures(grid_plots(ROWS), relative_to="plots/")
    assert "(plots/digits-misclassify-k16-gap.svg)" in text and "without finetune: no figure" in text
    assert not list((tmp_path / "plots").glob("*.tmp"))
