"""A self-contained HTML report comparing unlearning methods on the demo's results JSON.

:func:`render_report` turns the results of :func:`unlearnkit.demo.run_demo` (schema 2, with the
evidence described in ``evidence_schema.md``; schema 1 files render too, with fewer views) into
one HTML page: inline CSS, inline SVG drawn here by hand and a little vanilla JavaScript for
sorting and switching views. The page loads nothing from anywhere, so it opens offline, can be
mailed or archived next to the JSON, and shows the same thing in ten years.

For each request (seed, goal) the page shows a sortable table of every method with the
original model and the retrained reference, a forgetting-versus-utility scatter, the per-class
test accuracy change, per-instance cards and layer-wise weight change and CKA (on the forget set
and on other data), then the analyst's views of :mod:`unlearnkit.report.analyst_views`
(per-class accuracy gap between any two models, prediction matrices, embedding maps, the
privacy attack and its score PS, which the table also shows); with several seeds a summary
section gives means over seeds. Anything missing (no evidence, a diverged or
unsupported run, no retrained reference) is shown as a note, never as a crash: a report is most
needed exactly when a run went wrong.
"""

from __future__ import annotations

import json
import statistics
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.report import analyst_views, svg
from unlearnkit.report.common import DASH, fmt
from unlearnkit.report.common import as_list as _list
from unlearnkit.report.common import as_map as _map
from unlearnkit.report.common import attr as _attr
from unlearnkit.report.common import evidence_of as _evidence
from unlearnkit.report.common import figure as _figure
from unlearnkit.report.common import legend_keys as _legend_keys
from unlearnkit.report.common import note as _note
from unlearnkit.report.common import number as _num
from unlearnkit.utils.io import write_atomic



class ResultsFormatError(UnlearnkitError, ValueError):
    """The results given to the report are not a demo results mapping with runs."""


# --------------------------------------------------------------------------------------------
# Small helpers: defensive access and number formatting
# --------------------------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Ids and seeds compared loosely: JSON may hold 3 in one place and "3" or 3.0 in another."""
    return a == b or str(a) == str(b)


# --------------------------------------------------------------------------------------------
# Table cells and columns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """A table cell with ready HTML and the key the sort script uses.

    Attributes:
        html: Escaped HTML content.
        sort: Sort key (number or text); ``None`` sorts last in both directions.
        title: Hover text.
        cls: Extra CSS classes.
    """

    html: str
    sort: float | str | None
    title: str = ""
    cls: str = ""


@dataclass(frozen=True)
class Column:
    """A column of a sortable table.

    Attributes:
        key: Key of the value in a row's mapping.
        header: Header text.
        tip: Hover text of the header: what the column means and which way is good.
        kind: A :func:`fmt` kind; ``text`` columns sort as text, the others numerically.
    """

    key: str
    header: str
    tip: str
    kind: str


def _cell(value: Any, kind: str) -> Cell:
    if isinstance(value, Cell):
        return value
    if kind == "text":
        text = fmt(value, "text")
        return Cell(escape(text), None if value is None else text)
    number = _num(value)
    return Cell(escape(fmt(value, kind)), number, cls="" if number is not None else "na")


def _td(cell: Cell, kind: str) -> str:
    classes = " ".join(c for c in ("num" if kind != "text" else "", cell.cls) if c)
    sort = "" if cell.sort is None else (repr(cell.sort) if isinstance(cell.sort, float) else str(cell.sort))
    title = f' title="{_attr(cell.title)}"' if cell.title else ""
    class_attr = f' class="{classes}"' if classes else ""
    return f'<td{class_attr} data-sort="{_attr(sort)}"{title}>{cell.html}</td>'


def sortable_table(
    columns: Sequence[Column],
    rows: Sequence[tuple[Mapping[str, Any], Mapping[str, str]]],
    *,
    reference_rows: Sequence[tuple[Mapping[str, Any], Mapping[str, str]]] = (),
    caption: str = "",
) -> str:
    """A table whose headers sort the body rows (by the inline script); references stay on top.

    Args:
        columns: The columns.
        rows: ``(values, attributes)`` per sortable row: values by column key, attributes of
            the ``<tr>`` (e.g. ``data-method``).
        reference_rows: Rows in a separate leading ``<tbody>`` that sorting leaves in place
            (the original model and the retrained reference).
        caption: Optional caption.

    Returns:
        The ``<table>`` element.

    Example:
        >>> html = sortable_table([Column("m", "method", "", "text"), Column("a", "acc", "", "pct")],
        ...                       [({"m": "x", "a": 1.0}, {"data-method": "x"})])
        >>> 'data-type="num"' in html and 'data-method="x"' in html and "1.0" in html
        True
    """

    def tr(values: Mapping[str, Any], attributes: Mapping[str, str]) -> str:
        attrs = "".join(f' {k}="{_attr(v)}"' for k, v in attributes.items())
        return f"<tr{attrs}>" + "".join(_td(_cell(values.get(c.key), c.kind), c.kind) for c in columns) + "</tr>"

    head = "".join(
        f'<th scope="col" data-type="{"text" if c.kind == "text" else "num"}" data-key="{_attr(c.key)}"'
        f' title="{_attr(c.tip)}"><button type="button">{escape(c.header)}</button></th>'
        for c in columns
    )
    parts = ['<div class="table-wrap"><table class="sortable">']
    if caption:
        parts.append(f"<caption>{escape(caption)}</caption>")
    parts.append(f"<thead><tr>{head}</tr></thead>")
    if reference_rows:
        parts.append('<tbody class="refs">' + "".join(tr(v, a) for v, a in reference_rows) + "</tbody>")
    parts.append('<tbody class="rows">' + "".join(tr(v, a) for v, a in rows) + "</tbody>")
    parts.append("</table></div>")
    return "".join(parts)


def _badge(text: str, kind: str, title: str = "") -> str:
    title_attr = f' title="{_attr(title)}"' if title else ""
    return f'<span class="badge {kind}"{title_attr}>{escape(text)}</span>'


STATUS_BADGE = {"converged": "ok", "not_converged": "warn", "diverged": "bad", "unsupported": "muted"}
LOGIT_ONLY_TIP = (
    "logit only: the forget set looks forgotten at the logit level, but the representation "
    "still encodes it (a probe on the features recovers it); a fine-tune may bring it back."
)


def _columns(goal: str) -> list[Column]:
    """The per-request table's columns; relabel and unseen goals add their own accuracies."""
    cols = [
        Column("method", "method", "Unlearning method; a 'logit only' badge flags a forgetting that "
               "does not reach the representation.", "text"),
        Column("status", "status", "converged: every forget instance met the goal; not_converged: a "
               "cap or a fixed schedule ended the run first; diverged: NaN/inf, model discarded; "
               "unsupported: the method does not take this goal.", "text"),
        Column("acc_forget", "Acc(D_f)", "Accuracy on the forget set, %. To misclassify: lower is more "
               "forgotten; a model that never saw D_f (retrained) shows the natural level.", "pct"),
        Column("acc_retain", "Acc(D_r)", "Accuracy on the retained training data, %: higher is better.", "pct"),
        Column("acc_test", "Acc(D_test)", "Test accuracy, %: higher is better (utility kept).", "pct"),
    ]
    if goal == "relabel":
        cols.append(Column("acc_relabel", "Acc(relabel)", "Share of forget instances predicted as their "
                           "new label, %: higher is better.", "pct"))
    if goal == "unseen":
        cols.append(Column("loss_forget", "loss(D_f)", "Mean cross-entropy on the forget set.", "loss"))
        cols.append(Column("unseen", "at target %", "Share of forget instances whose loss reached its "
                           "held-out level, %: higher is better.", "pct"))
    cols += [
        Column("ua", "UA", "Unlearning accuracy = 100 − Acc(D_f), %: closer to the retrained model is "
               "better.", "pct"),
        Column("mia", "MIA-efficacy", "% of D_f the confidence attack (SVC) calls non-member: higher looks "
               "more unseen; compare with the retrained model.", "pct"),
        Column("entropy_mia", "entropy MIA", "% of D_f the entropy attack calls member: lower looks more "
               "unseen.", "pct"),
        Column("loss_auc", "loss AUC", "AUC separating D_f from test data by loss: 0.5 = indistinguishable "
               "(ideal), 1 = members stand out.", "auc"),
        Column("ps", "PS", "Privacy score of the Unlearning Comparator: 1 − the best attack score of threshold "
               "attacks (entropy, confidence) telling this model's forget-set outputs from the retrained "
               "model's; 1 = indistinguishable from retraining (higher is better). See the privacy view.", "auc"),
        Column("gap", "avg gap", "Average absolute gap to the retrained model over UA, MIA-efficacy, "
               "Acc(D_r) and Acc(D_test), points: lower is better.", "pct"),
        Column("cka_orig", "CKA orig.", "Linear CKA between the features of this model and the original's "
               "(feature layer): 1 = representation unchanged.", "cka"),
        Column("cka_retr", "CKA retr.", "Linear CKA to the retrained model's features: higher = closer to "
               "retraining.", "cka"),
        Column("relearn", "relearn steps", "Fine-tuning steps needed to re-learn D_f: more = forgotten more "
               "deeply ('> n': not re-learned within n steps).", "int"),
        Column("steps", "steps", "Optimiser steps of the unlearning run.", "int"),
        Column("seconds", "seconds", "Wall time of the unlearning run.", "sec"),
        Column("verdict", "verdict", "Do the evidence checks pass? Hover a cell for every check.", "text"),
    ]
    return cols


def _verdict_cell(evidence: Mapping[str, Any] | None) -> Cell | None:
    verdict = _map(evidence.get("verdict")) if evidence else {}
    if not isinstance(verdict.get("passed"), bool):
        return None
    checks = [_map(c) for c in _list(verdict.get("checks"))]
    passed = sum(c.get("passed") is True for c in checks)
    lines = [
        f"{'✓' if c.get('passed') is True else '✗'} {c.get('name', '?')}: {fmt(c.get('value'), 'loss')} "
        f"(needs {c.get('threshold', '?')})"
        for c in checks
    ]
    count = f" {passed}/{len(checks)}" if checks else ""
    if verdict["passed"]:
        return Cell(_badge("pass", "ok") + escape(count), 1.0 + passed / 1000, "\n".join(lines))
    return Cell(_badge("fail", "bad") + escape(count), passed / 1000, "\n".join(lines))


def _relearn_cell(evidence: Mapping[str, Any] | None) -> Cell | None:
    relearn = _map(evidence.get("relearn")) if evidence else {}
    steps, max_steps = _num(relearn.get("steps")), _num(relearn.get("max_steps"))
    if relearn.get("reached") is False and max_steps is not None:
        # Not re-learned within the budget: more than any reached value, so it sorts above them.
        return Cell(escape(f"> {fmt(max_steps, 'int')}"), max_steps + 0.5, "not re-learned within the budget")
    if steps is None:
        return None
    return Cell(escape(fmt(steps, "int")), steps)


def _method_cell(name: str, color: str, evidence: Mapping[str, Any] | None) -> Cell:
    html = f'<span class="swatch" style="background:{color}"></span>{escape(name)}'
    if evidence and evidence.get("logit_only") is True:
        html += " " + _badge("logit only", "warn", LOGIT_ONLY_TIP)
    return Cell(html, name.lower())


def _run_values(run: Mapping[str, Any], color: str) -> dict[str, Any]:
    """One method's row: metrics, evidence and run figures keyed by column."""
    metrics = _map(run.get("metrics"))
    result = _map(run.get("result"))
    evidence = _evidence(run)
    ev = evidence or {}
    status = str(run.get("status", "unknown"))
    acc_forget = _num(metrics.get("acc/forget"))
    ua = _num(ev.get("ua"))
    if ua is None and acc_forget is not None:
        ua = 100.0 - acc_forget  # UA is defined from Acc(D_f): shown even without evidence
    return {
        "method": _method_cell(str(run.get("method", "?")), color, evidence),
        "status": Cell(_badge(status.replace("_", " "), STATUS_BADGE.get(status, "muted")), status,
                       str(run.get("error") or "")),
        "acc_forget": acc_forget,
        "acc_retain": metrics.get("acc/retain"),
        "acc_test": metrics.get("acc/test"),
        "acc_relabel": metrics.get("acc/relabel"),
        "loss_forget": metrics.get("loss/forget"),
        "unseen": metrics.get("unseen"),
        "ua": ua,
        "mia": ev.get("mia_efficacy"),
        "entropy_mia": ev.get("entropy_mia"),
        "loss_auc": ev.get("loss_auc"),
        "ps": analyst_views.privacy_score(run),
        "gap": _map(ev.get("gap")).get("average"),
        "cka_orig": _map(ev.get("cka")).get("original"),
        "cka_retr": _map(ev.get("cka")).get("retrained"),
        "relearn": _relearn_cell(evidence),
        "steps": result.get("steps"),
        "seconds": result.get("seconds"),
        "verdict": _verdict_cell(evidence),
    }


def _original_values(request: Mapping[str, Any]) -> dict[str, Any] | None:
    original = _map(request.get("original"))
    if not original:
        return None
    acc_forget = _num(original.get("acc/forget"))
    return {
        "method": Cell('<span class="swatch ref-original"></span>original model', "original"),
        "status": Cell(_badge("before", "muted"), "before", "the model before unlearning"),
        "acc_forget": acc_forget,
        "acc_retain": original.get("acc/retain"),
        "acc_test": original.get("acc/test"),
        "acc_relabel": original.get("acc/relabel"),
        "loss_forget": original.get("loss/forget"),
        "ua": None if acc_forget is None else 100.0 - acc_forget,
        "cka_orig": 1.0,
    }


def _retrained_values(retrained: Mapping[str, Any]) -> dict[str, Any]:
    acc_forget = _num(retrained.get("acc/forget"))
    cached = retrained.get("from_cache") is True
    return {
        "method": Cell('<span class="swatch ref-retrained">★</span>retrained (reference)', "retrained"),
        "status": Cell(_badge("reference" + (", cached" if cached else ""), "ref"), "reference",
                       "trained from scratch without D_f: the gold standard of unlearning"),
        "acc_forget": acc_forget,
        "acc_retain": retrained.get("acc/retain"),
        "acc_test": retrained.get("acc/test"),
        "ua": None if acc_forget is None else 100.0 - acc_forget,
        "mia": retrained.get("mia_efficacy"),
        "entropy_mia": retrained.get("entropy_mia"),
        "loss_auc": retrained.get("loss_auc"),
        "cka_retr": 1.0,
        "ps": 1.0,  # the retrained model against itself: no attack tells it apart
        "seconds": retrained.get("seconds"),
    }


# --------------------------------------------------------------------------------------------
# The report's data model: requests, runs, colours
# --------------------------------------------------------------------------------------------


def validate_results(results: Any) -> list[Mapping[str, Any]]:
    """The runs of ``results``, or a clear error when it is not a results mapping with runs.

    Raises:
        ResultsFormatError: If ``results`` is not a mapping, or has no non-empty ``runs`` list
            of mappings with a ``method``.

    Example:
        >>> validate_results({"runs": [{"method": "l2ul"}]})
        [{'method': 'l2ul'}]
        >>> validate_results({"runs": []})
        Traceback (most recent call last):
        ...
        unlearnkit.report.html.ResultsFormatError: the results hold no runs (an empty 'runs' list): nothing to report
    """
    if not isinstance(results, Mapping):
        raise ResultsFormatError(f"the results must be a JSON object, not {type(results).__name__}")
    runs = results.get("runs")
    if runs is None:
        raise ResultsFormatError("the results have no 'runs' list: is this an unlearnkit demo results file?")
    if not isinstance(runs, list):
        raise ResultsFormatError(f"'runs' must be a list, not {type(runs).__name__}")
    if not runs:
        raise ResultsFormatError("the results hold no runs (an empty 'runs' list): nothing to report")
    bad = [i for i, r in enumerate(runs) if not isinstance(r, Mapping) or "method" not in r]
    if bad:
        raise ResultsFormatError(f"run(s) {bad[:5]} are not objects with a 'method'")
    return runs


def _requests(results: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The requests of the file, plus a stub for any (seed, goal) of a run that has none."""
    requests = [r for r in _list(results.get("requests")) if isinstance(r, Mapping)]
    for run in runs:
        if not any(_same(r.get("seed"), run.get("seed")) and _same(r.get("goal"), run.get("goal")) for r in requests):
            requests.append({"seed": run.get("seed"), "goal": run.get("goal")})
    return requests


def _runs_of(runs: Sequence[Mapping[str, Any]], request: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in runs if _same(r.get("seed"), request.get("seed")) and _same(r.get("goal"), request.get("goal"))]


def _method_order(results: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Methods in the configured order, then any others in the order the runs name them."""
    order: list[str] = []
    for name in [*_list(_map(results.get("config")).get("methods")), *(r.get("method") for r in runs)]:
        if str(name) not in order and any(str(r.get("method")) == str(name) for r in runs):
            order.append(str(name))
    return order


def _request_label(request: Mapping[str, Any]) -> str:
    return f"seed {request.get('seed', '?')} · {request.get('goal', '?')}"


# --------------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------------


def _guard(name: str, view: Callable[..., str], *args: Any) -> str:
    """Renders one view; if it fails on data it did not expect, a note takes its place.

    The rest of the report stays useful that way: one odd field must not cost the whole page.
    """
    try:
        return view(*args)
    except Exception as err:  # noqa: BLE001 - any failure of one view becomes a visible note
        detail = "".join(traceback.format_exception_only(type(err), err)).strip()
        return f'<div class="view-error">{escape(f"The {name} view could not be drawn from this file: {detail}")}</div>'


def _request_notes(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    notes = []
    if not runs:
        notes.append(_note("No runs were recorded for this request.", "warn"))
    if request.get("goal") == "relabel":
        notes.append(_note("Relabel goal: each forget instance should be predicted as its new label; "
                           "'goal met' means the prediction after unlearning equals the new label."))
    if request.get("goal") == "unseen":
        notes.append(_note("Unseen goal: each forget instance's loss should rise to the level of "
                           "held-out data (its loss target)."))
    if not isinstance(request.get("retrained"), Mapping):
        notes.append(_note("No retrained reference for this request: the gap to retraining and the CKA "
                           "to the retrained model cannot be shown.", "warn"))
    for run in runs:
        status, name = run.get("status"), str(run.get("method", "?"))
        error = str(run.get("error") or "").strip()
        if status == "diverged":
            notes.append(_note(f"{name} diverged (its model was discarded){': ' + error if error else ''}.", "bad"))
        elif status == "unsupported":
            notes.append(_note(f"{name} was not run: {error or 'it does not support this goal'}.", "muted"))
        elif _evidence(run) is None:
            notes.append(_note(f"{name}: no evidence recorded (evidence was off for this run); "
                               "only accuracies and run figures are shown.", "muted"))
        if _evidence(run) and _evidence(run).get("logit_only") is True:  # type: ignore[union-attr]
            notes.append(_note(f"{name} is flagged 'logit only': {LOGIT_ONLY_TIP.split(': ', 1)[1]}", "warn"))
    return '<div class="notes">' + "".join(notes) + "</div>" if notes else ""


def _table_view(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    goal = str(request.get("goal", ""))
    columns = _columns(goal)
    refs = []
    original = _original_values(request)
    if original:
        refs.append((original, {"class": "ref-row", "data-ref": "original"}))
    retrained = request.get("retrained")
    if isinstance(retrained, Mapping):
        refs.append((_retrained_values(retrained), {"class": "ref-row", "data-ref": "retrained"}))
    rows = []
    for run in runs:
        name = str(run.get("method", "?"))
        evidence = _evidence(run)
        cls = "logit-only" if evidence and evidence.get("logit_only") is True else ""
        rows.append((_run_values(run, colors.get(name, "#999")), {"data-method": name, "class": cls}))
    table = sortable_table(columns, rows, reference_rows=refs)
    legend = (
        '<p class="legend">Click a header to sort (numbers numerically; missing values last). '
        "Accuracies and attack rates in %. The best method is the one closest to the retrained "
        "reference: UA and MIA-efficacy near its values, Acc(D_r) and Acc(D_test) high, loss AUC near "
        "0.5, small average gap, and relearning that takes many steps. Hover a header for its "
        "meaning and a verdict cell for its checks.</p>"
    )
    return table + legend + _verdict_details(runs)


def _verdict_details(runs: Sequence[Mapping[str, Any]]) -> str:
    items = []
    for run in runs:
        verdict = _map(_map(_evidence(run)).get("verdict"))
        checks = [_map(c) for c in _list(verdict.get("checks"))]
        if not checks:
            continue
        lis = "".join(
            f'<li class="{"pass" if c.get("passed") is True else "fail"}">{"✓" if c.get("passed") is True else "✗"} '
            f"{escape(str(c.get('name', '?')))}: {escape(fmt(c.get('value'), 'loss'))} "
            f"<span class=\"muted\">(needs {escape(str(c.get('threshold', '?')))}"
            f"{', advisory' if c.get('required') is False else ''})</span></li>"
            for c in checks
        )
        items.append(f"<div><b>{escape(str(run.get('method', '?')))}</b><ul>{lis}</ul></div>")
    if not items:
        return ""
    return ('<details class="checks"><summary>Verdict checks per method</summary>'
            f'<div class="check-grid">{"".join(items)}</div></details>')


def _scatter_view(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    points = []
    original = _map(request.get("original"))
    ua0, test0 = _num(original.get("acc/forget")), _num(original.get("acc/test"))
    if ua0 is not None and test0 is not None:
        points.append(svg.Point("original", 100 - ua0, test0, svg.ORIGINAL_COLOR, "square",
                                f"original model: UA {100 - ua0:.1f}, Acc(D_test) {test0:.1f}"))
    for run in runs:
        metrics = _map(run.get("metrics"))
        forget, test = _num(metrics.get("acc/forget")), _num(metrics.get("acc/test"))
        if forget is None or test is None:
            continue
        name = str(run.get("method", "?"))
        points.append(svg.Point(name, 100 - forget, test, colors.get(name, "#999"), "circle",
                                f"{name}: UA {100 - forget:.1f}, Acc(D_test) {test:.1f}"))
    method_points = [p for p in points if p.marker == "circle"]
    if not method_points:
        return _note("No method finished with accuracies: nothing to place on the forgetting-versus-utility plot.", "muted")
    reference = None
    retrained = _map(request.get("retrained"))
    forget_r, test_r = _num(retrained.get("acc/forget")), _num(retrained.get("acc/test"))
    if forget_r is not None and test_r is not None:
        reference = svg.Point("retrained", 100 - forget_r, test_r, svg.REFERENCE_COLOR, "star",
                              f"retrained reference: UA {100 - forget_r:.1f}, Acc(D_test) {test_r:.1f}")
        points.append(reference)
    chart = svg.scatter(points, x_label="UA = 100 − Acc(D_f) (%)", y_label="Acc(D_test) (%)",
                        reference=reference, x_bounds=(0, 100), y_bounds=(0, 100), label="forgetting versus utility")
    if reference is not None:
        legend = ("Each dot is a method (colours as in the table), ■ the original model, ★ the retrained "
                  "reference with dashed guides. Closer to the retrained point is better: to its left "
                  "is under-forgetting, far to its right over-forgetting, below it lost utility.")
    else:
        legend = ("Each dot is a method, ■ the original model. No retrained reference in this file: higher "
                  "is better for utility; further right is more forgotten, though the target is the level "
                  "of a model that never saw D_f, not 100 %.")
    return f'<figure>{chart}<figcaption class="legend">{escape(legend)}</figcaption></figure>'


def _per_class_view(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    before = [_num(v) for v in _list(request.get("per_class_test_original"))]
    if not before:
        return _note("Per-class test accuracy of the original model is not in this file (evidence off or "
                     "schema 1): no per-class view.", "muted")
    n_classes = int(_num(request.get("num_classes")) or len(before))
    forget_classes = {str(v) for v in _list(request.get("labels"))}
    columns = [f"{c}*" if str(c) in forget_classes else str(c) for c in range(n_classes)]

    def change(after: Sequence[Any]) -> list[float | None]:
        values = [_num(v) for v in after]
        return [
            (values[c] - before[c]) if c < len(values) and c < len(before) and values[c] is not None
            and before[c] is not None else None
            for c in range(n_classes)
        ]

    labels, rows, row_colors = [], [], []
    retrained = _map(request.get("retrained"))
    if _list(retrained.get("per_class_test")):
        labels.append("retrained ★")
        rows.append(change(_list(retrained.get("per_class_test"))))
        row_colors.append(svg.REFERENCE_COLOR)
    missing = []
    for run in runs:
        name = str(run.get("method", "?"))
        after = _list(_map(_evidence(run)).get("per_class_test"))
        if after:
            labels.append(name)
            rows.append(change(after))
            row_colors.append(colors.get(name, "#999"))
        else:
            missing.append(name)
    if not rows:
        return _note("No run recorded per-class test accuracy: no per-class view.", "muted")
    chart = svg.heatmap(labels, columns, rows, row_colors=row_colors, label="per-class test accuracy change")
    legend = ("Per-class test accuracy after unlearning minus the original model's, in points. White = "
              "unchanged, red = accuracy lost on that class, blue = gained; * marks classes of the forget "
              "instances. Good: changes like the retrained row's, and white elsewhere (red on other "
              "classes is collateral damage).")
    if missing:
        legend += f" Not shown (no per-class data): {', '.join(missing)}."
    return f'<figure>{chart}<figcaption class="legend">{escape(legend)}</figcaption></figure>'


def _find(items: Sequence[Any], index: int, instance_id: Any) -> Mapping[str, Any]:
    """The item of one forget instance: by id when items carry one, else by position (outcomes
    and evidence instances are in request order)."""
    for item in items:
        if isinstance(item, Mapping) and "id" in item and _same(item["id"], instance_id):
            return item
    if index < len(items) and isinstance(items[index], Mapping) and "id" not in items[index]:
        return items[index]
    return {}


def _card_row(run: Mapping[str, Any], index: int, instance_id: Any, color: str, unseen: bool) -> tuple[str, Mapping[str, Any]]:
    """One method's line on an instance card, and the outcome it shows (empty if none)."""
    name = str(run.get("method", "?"))
    outcome = _find(_list(_map(run.get("result")).get("outcomes")), index, instance_id)
    member = _find(_list(_map(_evidence(run)).get("instances")), index, instance_id)
    start = f'<tr data-card-method="{_attr(name)}"><td><span class="swatch" style="background:{color}"></span>{escape(name)}</td>'
    if not outcome:
        status = str(run.get("status", "no outcome")).replace("_", " ")
        return f'{start}<td colspan="{5 if unseen else 4}" class="muted">{escape(status)}</td></tr>', {}
    met = outcome.get("goal_met")
    met_html = {True: _badge("✓", "ok", "goal met"), False: _badge("✗", "bad", "goal not met")}.get(met, DASH)
    predicted = member.get("predicted_member")
    says = {True: "attack says: member", False: "attack says: non-member"}.get(predicted, "")
    score = (f'<td class="num{" member" if predicted is True else ""}" title="{says}">'
             f"{escape(fmt(member.get('member_score'), 'score'))}</td>")
    loss = (f'<td class="num">{escape(fmt(outcome.get("loss_after"), "loss"))} / '
            f'{escape(fmt(outcome.get("loss_target"), "loss"))}</td>') if unseen else ""
    cells = (f'<td class="num">{escape(fmt(outcome.get("pred_after"), "text"))}</td>'
             f'<td class="num">{escape(fmt(outcome.get("margin_after"), "margin"))}</td>{loss}<td>{met_html}</td>{score}')
    return f"{start}{cells}</tr>", outcome


def _cards_view(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    ids = _list(request.get("ids"))
    labels, new_labels = _list(request.get("labels")), _list(request.get("new_labels"))
    images = _list(request.get("images"))
    goal = str(request.get("goal", ""))
    unseen = goal == "unseen"
    if not ids:  # a file without request ids: fall back on the ids of the first run's outcomes
        outcomes = next((_list(_map(r.get("result")).get("outcomes")) for r in runs
                         if _list(_map(r.get("result")).get("outcomes"))), [])
        ids = [_map(o).get("id") for o in outcomes]
    if not ids:
        return _note("No forget instances are listed for this request: no per-instance cards.", "muted")
    notes = "" if images else _note("No images in this file (schema 1 or evidence off): the cards show "
                                    "the outcomes only.", "muted")
    cards = []
    for i, instance_id in enumerate(ids):
        first: Mapping[str, Any] = {}
        rows = []
        for run in runs:
            row, outcome = _card_row(run, i, instance_id, colors.get(str(run.get("method")), "#999"), unseen)
            rows.append(row)
            first = first or outcome
        image = images[i] if i < len(images) else None
        picture = svg.image_svg(image, size=72, label=f"instance {instance_id}") if image is not None else None
        label = labels[i] if i < len(labels) else first.get("label")
        new = new_labels[i] if i < len(new_labels) else first.get("new_label")
        head = [f"<b>#{escape(str(instance_id))}</b>",
                f"label {escape(fmt(label, 'text'))}" + (f" → new {escape(str(new))}" if new is not None else "")]
        if first:
            head.append(f"before: pred {escape(fmt(first.get('pred_before'), 'text'))}, margin "
                        f"{escape(fmt(first.get('margin_before'), 'margin'))}")
        table = (
            '<table class="mini"><thead><tr><th>method</th><th>pred</th><th>margin</th>'
            + ("<th>loss / target</th>" if unseen else "")
            + '<th>goal</th><th title="membership attack score, 0..1: lower looks unseen">member</th></tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
        )
        cards.append(f'<div class="card"><div class="card-head">{picture or NO_IMAGE}'
                     f'<div>{"<br>".join(head)}</div></div>{table}</div>')
    names = list(dict.fromkeys(str(r.get("method", "?")) for r in runs))
    options = '<option value="">all methods</option>' + "".join(
        f'<option value="{_attr(n)}">{escape(n)}</option>' for n in names
    )
    target = "its new label" if goal == "relabel" else "held-out loss" if unseen else "a wrong class"
    legend = (f"One card per forget instance: the image, its label, the original model's prediction, and "
              f"per method the prediction after unlearning, the margin (target logit minus the best other; "
              f"negative = not predicted as the target), whether the goal ({target}) is met, and the "
              f"membership attack's score (0..1, bold when it says member; lower looks unseen).")
    picker = f'<label class="picker">Show: <select class="card-filter">{options}</select></label>'
    return (f'{notes}{picker}<div class="cards">{"".join(cards)}</div>'
            f'<p class="legend">{escape(legend)}</p>')


NO_IMAGE = '<div class="no-image">no image</div>'


def _ordered_names(items: Iterable[Any], key: str) -> list[str]:
    """The distinct ``key`` values of the mappings among ``items``, in first-seen order."""
    return list(dict.fromkeys(str(i[key]) for i in items if isinstance(i, Mapping) and key in i))


def _layers_view(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    with_evidence = [(str(r.get("method", "?")), _map(_evidence(r))) for r in runs if _evidence(r)]
    parts = []
    parameters = _ordered_names((i for _, ev in with_evidence for i in _list(ev.get("weight_change"))), "parameter")
    if parameters:
        series = []
        for name, ev in with_evidence:
            change = {str(_map(i).get("parameter")): _map(i).get("relative_change") for i in _list(ev.get("weight_change"))}
            series.append((name, colors.get(name, "#999"), [change.get(p) for p in parameters]))
        chart = svg.grouped_hbars(parameters, series, x_label="relative change ‖θ_after − θ_before‖ / ‖θ_before‖",
                                  value_format=lambda v: fmt(v, "rel"), width=440, label="layer-wise weight change")
        parts.append(_figure("Weight change per layer", chart + _legend_keys(series), (
            "Relative weight change per parameter tensor, input side at the top. It shows where a method "
            "acts: small, targeted changes that still pass the checks are better; change only in the last "
            "layer with high CKA everywhere hints at a logit-level edit.")))
    else:
        parts.append(_note("No weight-change evidence in this request: no layer-wise weight view.", "muted"))
    layers = _ordered_names((i for _, ev in with_evidence for i in _list(ev.get("cka_layers"))), "layer")
    if not layers:
        parts.append(_note("No layer-wise CKA evidence in this request.", "muted"))
    for key, title, good in (
        ("original", "CKA to the original model", "1 = the layer's representation is unchanged"),
        ("retrained", "CKA to the retrained model", "higher = closer to a model that never saw D_f"),
    ):
        if not layers:
            break
        split = analyst_views.split_cka_chart(key, title, layers, with_evidence, colors)
        if split is not None:  # CKA on forget and other data recorded: show both, not the mix
            parts.append(split)
            continue
        series = []
        for name, ev in with_evidence:
            by_layer = {str(_map(i).get("layer")): _map(i).get(key) for i in _list(ev.get("cka_layers"))}
            series.append((name, colors.get(name, "#999"), [by_layer.get(layer) for layer in layers]))
        if not any(svg.is_number(v) for _, _, values in series for v in values):
            why = "no retrained reference for this request." if key == "retrained" else "none recorded."
            parts.append(f"<figure><h4>{escape(title)}</h4>{_note('No values: ' + why, 'muted')}</figure>")
            continue
        values = [float(v) for _, _, vals in series for v in vals if svg.is_number(v)]
        # Zoom in when every value is high: CKA of 0.96 against 0.99 is the story, and on a 0-1
        # axis it is invisible. The tick labels show where the axis starts.
        low = min(0.0, *values) if min(values) < 0.5 else min(values) - 0.15 * (1 - min(values)) - 0.002
        chart = svg.line_chart(layers, series, y_label="linear CKA", y_domain=(low, max(1.0, *values)),
                               width=440, label=title)
        parts.append(_figure(title, chart + _legend_keys(series), (
            f"Per layer, input to output: {good} (mind where the axis starts). Forgetting that shows "
            "only in the last layers, the rest staying like the original, is shallow.")))
    return '<div class="views three">' + "".join(parts) + "</div>"


def _request_section(
    index: int, request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], colors: Mapping[str, str]
) -> str:
    goal = str(request.get("goal", "?"))
    ids = _list(request.get("ids"))
    head = f"Request {index + 1}: seed {escape(str(request.get('seed', '?')))}, goal {escape(goal)}"
    if ids:
        head += f", k = {len(ids)}"
    info = []
    if ids:
        info.append(f"forget ids {escape(', '.join(str(i) for i in ids))}")
    if _list(request.get("labels")):
        info.append(f"labels {escape(', '.join(str(v) for v in _list(request.get('labels'))))}")
    if _list(request.get("new_labels")):
        info.append(f"new labels {escape(', '.join(str(v) for v in _list(request.get('new_labels'))))}")
    return (
        f'<section class="view-section request" id="request-{index}" data-label="{_attr(_request_label(request))}">'
        f"<h2>{head}</h2>" + (f'<p class="meta">{" · ".join(info)}</p>' if info else "")
        + _guard("notes", _request_notes, request, runs)
        + "<h3>Methods compared</h3>" + _guard("table", _table_view, request, runs, colors)
        + '<div class="views two"><div><h3>Forgetting versus utility</h3>'
        + _guard("scatter", _scatter_view, request, runs, colors)
        + "</div><div><h3>Per-class test accuracy change</h3>"
        + _guard("per-class", _per_class_view, request, runs, colors) + "</div></div>"
        + "<h3>Forget instances</h3>" + _guard("instance cards", _cards_view, request, runs, colors)
        + f'<div class="analyst-view" id="request-{index}-layers"><h3>Layer-wise change</h3>'
        + _guard("layer-wise", _layers_view, request, runs, colors) + "</div>"
        + _analyst_sections(f"request-{index}", request, runs)
        + "</section>"
    )


def _analyst_sections(key: str, request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    """The analyst's views (see :mod:`unlearnkit.report.analyst_views`), each with an anchor."""
    views = (
        ("gap", "Per-class accuracy gap between two models", analyst_views.class_gap_view),
        ("matrix", "Prediction matrix", analyst_views.prediction_matrix_view),
        ("embedding", "Embedding map of penultimate features", analyst_views.embedding_view),
        ("privacy", "Privacy attack", analyst_views.privacy_view),
    )
    return "".join(
        f'<div class="analyst-view" id="{_attr(f"{key}-{slug}")}"><h3>{escape(title)}</h3>'
        + _guard(title.lower(), view, key, request, runs) + "</div>"
        for slug, title, view in views
    )


# --------------------------------------------------------------------------------------------
# Summary over seeds
# --------------------------------------------------------------------------------------------


def _mean_sd(values: Sequence[float], kind: str) -> Cell | None:
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Cell(escape(fmt(mean, kind)), mean, f"one run: {fmt(mean, kind)}")
    sd = statistics.stdev(values)
    return Cell(f'{escape(fmt(mean, kind))}<span class="sd"> ± {escape(fmt(sd, kind))}</span>', mean,
                f"mean ± sd over {len(values)} runs")


SUMMARY_KEYS = ("acc_forget", "acc_retain", "acc_test", "acc_relabel", "loss_forget", "unseen", "ua", "mia",
                "entropy_mia", "loss_auc", "ps", "gap", "cka_orig", "cka_retr", "relearn", "steps", "seconds")


def _plain(value: Any) -> float | None:
    """The number behind a value or a :class:`Cell` (its sort key)."""
    return _num(value.sort) if isinstance(value, Cell) else _num(value)


def _summary_section(
    results: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], requests: Sequence[Mapping[str, Any]],
    colors: Mapping[str, str], methods: Sequence[str],
) -> str:
    goals: list[str] = []
    for run in runs:
        if str(run.get("goal")) not in goals:
            goals.append(str(run.get("goal")))
    seeds = sorted({str(r.get("seed")) for r in runs})
    blocks = [
        '<section class="view-section summary" id="summary" data-label="summary over seeds">',
        f"<h2>Summary over seeds {escape(', '.join(seeds))}</h2>",
        _note("Means ± standard deviation over the runs that finished (diverged and unsupported runs are "
              "counted, not averaged). Relearn steps of runs that were not re-learned count at their budget."),
    ]
    for goal in goals:
        columns = [c for c in _columns(goal) if c.key not in ("status", "verdict")]
        columns.insert(1, Column("finished", "converged", "Runs that converged / all runs; diverged and "
                                 "unsupported runs are listed in the hover text.", "text"))
        columns.append(Column("verdict", "verdict passed", "Runs whose evidence checks all passed / runs "
                              "with a verdict.", "text"))
        columns.append(Column("logit_only", "logit only", "Runs flagged 'logit only'.", "int"))
        rows, points = [], []
        for method in methods:
            group = [r for r in runs if str(r.get("method")) == method and str(r.get("goal")) == goal]
            if not group:
                continue
            finished = [r for r in group if r.get("status") not in ("diverged", "unsupported")]
            values = [_run_values(r, colors.get(method, "#999")) for r in finished]
            row: dict[str, Any] = {k: _mean_sd([v for v in (_plain(x.get(k)) for x in values) if v is not None],
                                                 next((c.kind for c in columns if c.key == k), "pct"))
                                   for k in SUMMARY_KEYS}
            evidence = [_evidence(r) for r in group]
            logit_only = sum(1 for e in evidence if e and e.get("logit_only") is True)
            row["method"] = _method_cell(method, colors.get(method, "#999"),
                                         {"logit_only": True} if logit_only else None)
            converged = sum(r.get("status") == "converged" for r in group)
            counts = {s: sum(r.get("status") == s for r in group) for s in ("not_converged", "diverged", "unsupported")}
            others = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n and s != "not_converged")
            row["finished"] = Cell(
                escape(f"{converged}/{len(group)}") + (f'<span class="sd">{escape(others)}</span>' if others else ""),
                converged / len(group), ", ".join(f"{s.replace('_', ' ')}: {n}" for s, n in counts.items()),
            )
            verdicts = [_map(e.get("verdict")).get("passed") for e in evidence if e]
            verdicts = [v for v in verdicts if isinstance(v, bool)]
            if verdicts:
                passed = sum(verdicts)
                kind = "ok" if passed == len(verdicts) else "bad" if passed == 0 else "warn"
                row["verdict"] = Cell(_badge(f"{passed}/{len(verdicts)}", kind), passed / len(verdicts))
            row["logit_only"] = logit_only
            rows.append((row, {"data-method": method}))
            ua, test = _plain(row.get("ua")), _plain(row.get("acc_test"))
            if ua is not None and test is not None:
                points.append(svg.Point(method, ua, test, colors.get(method, "#999"), "circle",
                                        f"{method}: mean UA {ua:.1f}, mean Acc(D_test) {test:.1f}"))
        goal_requests = [q for q in requests if str(q.get("goal")) == goal]
        refs = []
        originals = [v for v in (_original_values(q) for q in goal_requests) if v]
        if originals:
            row = {k: _mean_sd([x for x in (_plain(o.get(k)) for o in originals) if x is not None], "pct")
                   for k in ("acc_forget", "acc_retain", "acc_test", "acc_relabel", "ua")}
            row["method"] = Cell('<span class="swatch ref-original"></span>original model', "original")
            refs.append((row, {"class": "ref-row", "data-ref": "original"}))
            ua0, test0 = _plain(row.get("ua")), _plain(row.get("acc_test"))
            if ua0 is not None and test0 is not None:
                points.insert(0, svg.Point("original", ua0, test0, svg.ORIGINAL_COLOR, "square"))
        reference = None
        retraineds = [_retrained_values(_map(q["retrained"])) for q in goal_requests if isinstance(q.get("retrained"), Mapping)]
        if retraineds:
            row = {k: _mean_sd([x for x in (_plain(r.get(k)) for r in retraineds) if x is not None],
                               next((c.kind for c in columns if c.key == k), "pct"))
                   for k in ("acc_forget", "acc_retain", "acc_test", "ua", "mia", "entropy_mia", "loss_auc", "seconds")}
            row["method"] = Cell('<span class="swatch ref-retrained">★</span>retrained (reference)', "retrained")
            row["finished"] = Cell(escape(f"{len(retraineds)} of {len(goal_requests)} requests"), None)
            refs.append((row, {"class": "ref-row", "data-ref": "retrained"}))
            ua_r, test_r = _plain(row.get("ua")), _plain(row.get("acc_test"))
            if ua_r is not None and test_r is not None:
                reference = svg.Point("retrained", ua_r, test_r, svg.REFERENCE_COLOR, "star")
        blocks.append(f"<h3>Goal {escape(goal)}: means over seeds</h3>")
        blocks.append(sortable_table(columns, rows, reference_rows=refs))
        if points and any(p.marker == "circle" for p in points):
            chart = svg.scatter([*points, *([reference] if reference else [])], x_label="mean UA (%)",
                                y_label="mean Acc(D_test) (%)", reference=reference, x_bounds=(0, 100), y_bounds=(0, 100),
                                label=f"mean forgetting versus utility, goal {goal}")
            blocks.append(f'<figure class="narrow">{chart}<figcaption class="legend">'
                          f'{escape("Means over seeds; closer to the retrained ★ is better (see the per-request plots).")}'
                          "</figcaption></figure>")
    blocks.append("</section>")
    return "".join(blocks)


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

# Runs first, in <head>, so that it also catches errors of the main script: a headless browser
# (the tests) reads the recorded errors from the DOM after the scripts ran.
ERROR_CAPTURE_JS = """
(function () {
  var errors = [];
  function record(message) {
    errors.push(String(message));
    document.documentElement.setAttribute("data-js-errors", JSON.stringify(errors));
  }
  window.addEventListener("error", function (e) { record((e.message || "error") + " (line " + (e.lineno || "?") + ")"); });
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
  var consoleError = console.error;
  console.error = function () { record(Array.prototype.join.call(arguments, " ")); return consoleError.apply(console, arguments); };
})();
"""

# Vanilla JavaScript, no library: sorting, the request selector and the card filter. Without
# JavaScript every section and row stays visible, so the page still reads as a plain document.
MAIN_JS = """
(function () {
  "use strict";
  function key(row, index, type) {
    var cell = row.cells[index];
    if (!cell) return null;
    var raw = cell.getAttribute("data-sort");
    if (raw === null) raw = cell.textContent.trim();
    if (raw === "") return null;
    if (type === "num") { var v = parseFloat(raw); return isNaN(v) ? null : v; }
    return raw.toLowerCase();
  }
  function sortBy(th) {
    var table = th.closest("table");
    var body = table.querySelector("tbody.rows");
    if (!body) return;
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var type = th.getAttribute("data-type") || "text";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.map.call(body.rows, function (row, i) { return { row: row, key: key(row, index, type), i: i }; });
    rows.sort(function (a, b) {
      if (a.key === null || b.key === null) {  // missing values last in either direction
        return (a.key === null) - (b.key === null) || a.i - b.i;
      }
      var c = a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
      return (ascending ? c : -c) || a.i - b.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable thead th"), function (th) {
    var button = th.querySelector("button");
    if (button) button.addEventListener("click", function () { sortBy(th); });
  });
  var select = document.getElementById("section-select");
  function show(id) {
    Array.prototype.forEach.call(document.querySelectorAll("section.view-section"), function (s) {
      s.hidden = id !== "all" && s.id !== id;
    });
  }
  if (select) {
    select.addEventListener("change", function () { show(select.value); });
    show(select.value);
  }
  Array.prototype.forEach.call(document.querySelectorAll("select.card-filter"), function (filter) {
    var scope = filter.closest("section") || document;
    function apply() {
      Array.prototype.forEach.call(scope.querySelectorAll("tr[data-card-method]"), function (tr) {
        tr.hidden = filter.value !== "" && tr.getAttribute("data-card-method") !== filter.value;
      });
    }
    filter.addEventListener("change", apply);
    apply();
  });
  document.documentElement.setAttribute("data-report-ready", "1");
})();
"""

CSS = """
*{box-sizing:border-box}
[hidden]{display:none!important}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;margin:0;background:#f4f5f7}
main{max-width:1480px;margin:0 auto;padding:12px 24px 40px}
header.top{background:#1f2a44;color:#fff;padding:16px 24px}
header.top h1{margin:0 0 4px;font-size:22px}
header.top .meta{color:#cfd6e6;margin:0}
nav.sections{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ddd;padding:8px 24px}
nav.sections select,.picker select{font:inherit;padding:2px 6px}
section.view-section{background:#fff;border:1px solid #e1e3e8;border-radius:8px;padding:8px 20px 20px;margin:16px 0}
h2{font-size:19px;margin:12px 0 4px}
h3{font-size:16px;margin:20px 0 8px;border-bottom:1px solid #eee;padding-bottom:3px}
h4{font-size:13px;margin:4px 0 6px;color:#444}
p.meta{color:#555;margin:2px 0 8px;font-size:12.5px;word-break:break-word}
.table-wrap{overflow-x:auto}
table.sortable{border-collapse:collapse;font-size:12.5px;width:100%}
table.sortable th{background:#eef1f6;text-align:right;padding:0;vertical-align:bottom;border-bottom:2px solid #c9cfdb}
table.sortable th:first-child,table.sortable th:nth-child(2){text-align:left}
table.sortable th:first-child button,table.sortable th:nth-child(2) button{margin-left:0}
table.sortable th button{all:unset;cursor:pointer;display:block;padding:4px 6px;max-width:7.5em;margin-left:auto}
table.sortable th button:focus-visible{outline:2px solid #4e79a7}
table.sortable th[aria-sort=ascending] button::after{content:" ▲";font-size:9px}
table.sortable th[aria-sort=descending] button::after{content:" ▼";font-size:9px}
table.sortable td{padding:4px 6px;border-bottom:1px solid #eceef2;white-space:nowrap}
table.sortable td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable tbody.rows tr:nth-child(even){background:#fafbfc}
table.sortable tbody.refs tr{background:#f6f3ea;font-style:italic}
table.sortable tbody.refs tr:last-child td{border-bottom:2px solid #d8cfb4}
tr.logit-only td:first-child{box-shadow:inset 3px 0 0 #e8a317}
td.na{color:#aaa}
.sd{display:block;color:#888;font-size:10.5px;line-height:1.1}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}
.swatch.ref-original{border:2px solid #777;background:#fff}
.swatch.ref-retrained{width:auto;height:auto;color:#111;font-style:normal}
.badge{display:inline-block;border-radius:9px;padding:0 7px;font-size:11px;font-style:normal;line-height:17px;white-space:nowrap}
.badge.ok{background:#dcf1de;color:#1f6b2a}.badge.warn{background:#fdf0cf;color:#8a5a00;border:1px solid #e8a317}
.badge.bad{background:#fbdcdc;color:#9b1c1c}.badge.muted{background:#eceef2;color:#555}.badge.ref{background:#e8e4d6;color:#4b4330}
.notes{margin:6px 0}
.note{margin:3px 0;padding:4px 10px;border-left:4px solid #4e79a7;background:#f1f5fa;font-size:12.5px}
.note.warn{border-color:#e8a317;background:#fdf7e7}.note.bad{border-color:#d6604d;background:#fcefed}
.note.muted{border-color:#bbb;background:#f6f6f6;color:#555}
.view-error{padding:6px 10px;border:1px dashed #d6604d;color:#9b1c1c;background:#fff6f5;font-size:12.5px}
.legend{color:#555;font-size:12px;margin:4px 0 0;max-width:78ch}
.views{display:grid;gap:18px;align-items:start}
.views.two{grid-template-columns:repeat(auto-fit,minmax(460px,1fr))}
.views.three{grid-template-columns:repeat(auto-fit,minmax(400px,1fr))}
figure{margin:0}
figure.narrow{max-width:620px}
svg.chart{max-width:100%;height:auto;font-family:inherit}
svg .tick{fill:#666;font-size:10px}svg .axis-title{fill:#333;font-size:11.5px}
svg .point-label{fill:#222;font-size:11px;paint-order:stroke;stroke:#fff;stroke-width:3px}
svg .row-label{fill:#333}svg .cell{font-size:10.5px}svg .bar-value{fill:#444;font-size:10px}svg .muted{fill:#aaa}
.keys{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;margin:4px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.card{border:1px solid #e1e3e8;border-radius:6px;padding:8px;background:#fcfcfd}
.card-head{display:flex;gap:10px;align-items:center;font-size:12.5px;margin-bottom:6px}
svg.pixels{border:1px solid #bbb;flex:none;image-rendering:pixelated}
.no-image{width:72px;height:72px;border:1px dashed #bbb;color:#999;font-size:11px;display:flex;align-items:center;justify-content:center;flex:none}
table.mini{border-collapse:collapse;font-size:11.5px;width:100%}
table.mini th{font-weight:600;text-align:left;color:#555;border-bottom:1px solid #ddd;padding:1px 4px}
table.mini td{padding:1px 4px;border-bottom:1px solid #f0f0f0;white-space:nowrap}
table.mini td.num{text-align:right;font-variant-numeric:tabular-nums}
table.mini td.member{font-weight:700}
.picker{display:inline-block;margin:0 0 8px;font-size:13px}
details.checks{margin:8px 0;font-size:12.5px}
.check-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:6px 16px}
.check-grid ul{margin:2px 0;padding-left:16px}
li.pass{color:#1f6b2a}li.fail{color:#9b1c1c}
.muted{color:#888}
footer{color:#777;font-size:11.5px;margin-top:24px}
"""


def _header(results: Mapping[str, Any], title: str, runs: Sequence[Mapping[str, Any]]) -> str:
    dataset, model, config = _map(results.get("dataset")), _map(results.get("model")), _map(results.get("config"))
    meta = []
    if dataset.get("name"):
        meta.append(f"data {dataset.get('name')} ({dataset.get('n_train', '?')} train / {dataset.get('n_test', '?')} test)")
    if model.get("name"):
        text = f"model {model.get('name')}"
        if _num(model.get("test_accuracy")) is not None:
            text += f", test accuracy {fmt(model.get('test_accuracy'))} %"
        if isinstance(model.get("sha256"), str):
            text += f", sha256 {model['sha256'][:12]}…"
        meta.append(text)
    if config.get("k") is not None:
        meta.append(f"k = {config.get('k')}")
    seeds = sorted({str(r.get("seed")) for r in runs})
    meta.append(f"seeds {', '.join(seeds)}")
    meta.append(f"{len(runs)} runs")
    if results.get("created"):
        meta.append(f"created {results.get('created')}")
    return (f'<header class="top"><h1>{escape(title)}</h1>'
            f'<p class="meta">{escape(" · ".join(meta))}</p></header>')


def render_report(results: Mapping[str, Any], *, title: str | None = None) -> str:
    """One self-contained HTML page comparing the methods of a demo results mapping.

    Args:
        results: The demo's results (``run_demo``'s return value or the JSON it wrote): schema 2
            with evidence gives every view; schema 1, evidence ``null``, diverged or unsupported
            runs and a missing retrained reference give notes in place of what is missing.
        title: Page title (default: "unlearnkit report" with the data set and model names).

    Returns:
        The HTML document as a string: inline CSS, SVG and JavaScript, no external reference.

    Raises:
        ResultsFormatError: If ``results`` is not a mapping with a non-empty ``runs`` list.

    Example:
        >>> page = render_report({"runs": [{"method": "l2ul", "seed": 0, "goal": "misclassify",
        ...     "status": "converged", "metrics": {"acc/forget": 0.0, "acc/test": 97.0}}]})
        >>> page.startswith("<!DOCTYPE html>") and 'data-method="l2ul"' in page
        True
    """
    runs = validate_results(results)
    dataset_name = _map(results.get("dataset")).get("name")
    model_name = _map(results.get("model")).get("name")
    if title is None:
        title = "unlearnkit report" + (f": {dataset_name}" if dataset_name else "") + (f" · {model_name}" if model_name else "")
    requests = _requests(results, runs)
    methods = _method_order(results, runs)
    colors = {m: svg.color_for(i) for i, m in enumerate(methods)}
    sections = [_request_section(i, q, _runs_of(runs, q), colors) for i, q in enumerate(requests)]
    ids = [f"request-{i}" for i in range(len(requests))]
    labels = [_request_label(q) for q in requests]
    if len({str(r.get("seed")) for r in runs}) > 1:
        sections.append(_guard("summary", _summary_section, results, runs, requests, colors, methods))
        ids.append("summary")
        labels.append("summary over seeds")
    nav = ""
    if len(sections) > 1:
        options = "".join(f'<option value="{_attr(i)}">{escape(l)}</option>' for i, l in zip(ids, labels))
        options += '<option value="all">everything on one page</option>'
        nav = (f'<nav class="sections"><label>Show: <select id="section-select">{options}</select></label> '
               f'<span class="muted">{len(requests)} request(s), methods: {escape(", ".join(methods))}</span></nav>')
    versions = _map(results.get("versions"))
    footer = "generated by unlearnkit; one self-contained file, no network access needed"
    if versions:
        footer += " · " + ", ".join(f"{k} {v}" for k, v in versions.items())
    if results.get("schema_version") is not None:
        footer += f" · results schema {results.get('schema_version')}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><script>{ERROR_CAPTURE_JS}</script><style>{CSS}{analyst_views.ANALYST_CSS}</style></head>"
        f"<body>{_header(results, title, runs)}{nav}<main>{''.join(sections)}"
        f"<footer>{escape(footer)}</footer></main><script>{analyst_views.ANALYST_JS}{MAIN_JS}</script></body></html>\n"
    )


def write_report(results: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """Renders the report and writes it to ``path`` atomically (never half a file).

    Args:
        results: As for :func:`render_report`.
        path: The HTML file to write; parent directories are created.
        title: As for :func:`render_report`.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ResultsFormatError: If ``results`` has no runs (nothing is written).
        OSError: If the file cannot be written (no partial file is left).
    """
    page = render_report(results, title=title)  # render first: a bad file fails before any write
    return write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def load_results(path: str | Path) -> Mapping[str, Any]:
    """Reads a results JSON file and checks that it holds runs (a continual run's file, with
    ``steps`` instead, is returned as it is).

    Raises:
        FileNotFoundError: If the file does not exist.
        ResultsFormatError: If it is not valid JSON or holds no runs.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsFormatError(f"{path} is not valid JSON: {err}") from err
    except UnicodeDecodeError as err:
        raise ResultsFormatError(f"{path} is not a text (UTF-8) JSON file: {err}") from err
    if isinstance(data, Mapping) and "steps" in data and "method" in data and "runs" not in data:
        return data  # a continual run (``unlearnkit continual``); its own report checks it
    try:
        validate_results(data)
    except ResultsFormatError as err:
        raise ResultsFormatError(f"{path}: {err}") from err
    return data


__all__ = ["ResultsFormatError", "load_results", "render_report", "validate_results", "write_report"]
