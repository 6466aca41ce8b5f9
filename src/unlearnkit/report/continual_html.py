"""A self-contained HTML page for a continual run: curves over the sequence of requests.

:func:`render_continual_report` turns the JSON of ``unlearnkit continual`` (see
:func:`~unlearnkit.scenarios.continual.run_sequence`) into one page that loads nothing: the
relapse table, one curve per request of its Acc(D_f) after every later request (a curve that
climbs back from 0 is a relapse), and the drift of retain and test accuracy with the cost per
request. It reuses the CSS and SVG helpers of the comparative report.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from unlearnkit.report import svg
from unlearnkit.report.html import CSS, ERROR_CAPTURE_JS, ResultsFormatError
from unlearnkit.scenarios.continual import relapse_table
from unlearnkit.utils.io import write_atomic


def _check(report: Any) -> list[Mapping[str, Any]]:
    if not isinstance(report, Mapping) or not isinstance(report.get("steps"), list) or not isinstance(report.get("requests"), list):
        raise ResultsFormatError("not a continual results file: it needs 'requests' and 'steps' lists")
    if not report["steps"]:
        raise ResultsFormatError("the continual results hold no applied request")
    return report["steps"]


def _cell(value: Any) -> str:
    if value is None:
        return "<td class='num'>–</td>"
    if isinstance(value, float):
        return f"<td class='num'>{value:.1f}</td>"
    return f"<td class='num'>{escape(str(value))}</td>"


def _legend(series: list[tuple[str, str, Any]]) -> str:
    return "<p class='legend'>" + " ".join(
        f"<span style='white-space:nowrap'><span style='display:inline-block;width:10px;height:10px;"
        f"background:{colour};margin:0 4px 0 10px'></span>{escape(name)}</span>"
        for name, colour, _ in series
    ) + "</p>"


def render_continual_report(report: Mapping[str, Any], *, title: str | None = None) -> str:
    """The continual run as one self-contained HTML page.

    Raises:
        ResultsFormatError: If ``report`` is not a continual results mapping with steps.

    Example:
        >>> page = render_continual_report({"method": "m", "requests": [{"ids": [1]}], "original": {},
        ...     "steps": [{"step": 0, "status": "converged", "forget_accuracy": [0.0], "goal_share": [100.0],
        ...                "relapsed": [], "retain_accuracy": 99.0, "test_accuracy": 98.0, "steps": 3, "seconds": 0.1}]})
        >>> "D_f1" in page and "http" not in page
        True
    """
    steps = _check(report)
    total = len(report["requests"])
    method = str(report.get("method", "?"))
    title = title or f"unlearnkit continual: {method}, {total} requests"
    applied = [s for s in steps if s.get("status") != "diverged"]
    x_labels = [f"after {s['step'] + 1}" for s in applied]
    forget_series = []
    for j in range(total):
        values = [s["forget_accuracy"][j] if j < len(s["forget_accuracy"]) else None for s in applied]
        forget_series.append((f"D_f{j + 1}", svg.color_for(j), values))
    original = report.get("original") or {}
    drift_series = [
        ("Acc(D_r)", svg.color_for(0), [s.get("retain_accuracy") for s in applied]),
        ("Acc(D_test)", svg.color_for(1), [s.get("test_accuracy") for s in applied]),
    ]
    drift_values = [v for _, _, vals in drift_series for v in vals if v is not None]
    low = min(drift_values + [100.0]) if drift_values else 0.0
    headers, rows = relapse_table(report)
    table = (
        "<table class='sortable'><thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows) + "</tbody></table>"
    )
    diverged = [s for s in steps if s.get("status") == "diverged"]
    notes = "".join(
        f"<p class='note warn'>request {s['step'] + 1} diverged: {escape(str(s.get('error')))}; the sequence stopped there.</p>"
        for s in diverged
    )
    relapses = sorted({j + 1 for s in applied for j in s.get("relapsed", [])})
    summary = (
        f"<p class='note warn'>relapsed requests: {', '.join(map(str, relapses))} — a later request brought their "
        "instances back.</p>" if relapses else "<p class='note'>no request relapsed.</p>"
    )
    body = (
        f"<header><h1>{escape(title)}</h1><p>method {escape(method)} · mode {escape(str(report.get('mode', '?')))} · "
        f"k = {escape(str(report.get('k', '?')))} · seed {escape(str(report.get('seed', '?')))} · original "
        f"Acc(D_train) {original.get('retain_accuracy', float('nan')):.1f} %, Acc(D_test) "
        f"{original.get('test_accuracy', float('nan')):.1f} %</p></header><main>"
        f"<section><h2>Relapse table</h2>{summary}{notes}{table}"
        "<p class='legend'>Acc(D_f) of every request so far (percent) after each request; relapsed = earlier "
        "requests whose goal held once and no longer does.</p></section>"
        "<section><h2>Forget-set accuracy over the sequence</h2>"
        + svg.line_chart(x_labels, forget_series, y_label="Acc(D_f) (%)", y_domain=(0.0, 100.0), label="forget accuracy")
        + _legend(forget_series) + "<p class='legend'>One line per request, starting when it is applied. A line that stays at 0 stays "
        "forgotten; one that climbs back has relapsed.</p></section>"
        "<section><h2>Drift of retain and test accuracy</h2>"
        + svg.line_chart(x_labels, drift_series, y_label="accuracy (%)", y_domain=(max(0.0, low - 5.0), 100.0), label="drift")
        + _legend(drift_series) + "<p class='legend'>Flat lines near the original accuracy are best: each request should cost little.</p>"
        "</section></main>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><script>{ERROR_CAPTURE_JS}</script><style>{CSS}</style></head>"
        f"<body>{body}<script>document.documentElement.setAttribute('data-report-ready','1');</script></body></html>"
    )


def write_continual_report(report: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Renders and writes the continual report atomically (nothing is written if rendering fails)."""
    page = render_continual_report(report, title=title)
    return write_atomic(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
