"""The analyst's views of the HTML report, after the Unlearning Comparator (Lee et al., IEEE
TVCG 2026): prediction matrices, the per-class accuracy gap between any two models, layer-wise
CKA on forget and other data, embedding maps of penultimate features, and the privacy attack.

Each view takes one request of a demo results file and its runs, reads what
:func:`~unlearnkit.scenarios.evidence.gather_evidence` and the demo recorded (``views``,
``privacy``, ``cka_layers`` and the per-class accuracies), and returns HTML; anything missing
(an older file, evidence off, no retrained reference) gives a muted note. The model pickers
are plain ``<select>`` elements: :data:`ANALYST_JS` shows the chosen model's figure and hides
the others; without JavaScript every figure stays visible, and the two-model gap view shows
its default pair (the original model against the first method).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

from unlearnkit.report import svg
from unlearnkit.report.common import as_list, as_map, attr, evidence_of, figure, fmt, legend_keys, note, number

#: How each mark of the embedding map is drawn: shape, colour, legend text.
MARK_STYLE: dict[str, tuple[str, str, str]] = {
    "not forgotten": ("triangle", "#d6604d", "▲ not forgotten"),
    "forgotten": ("cross", "#111111", "✕ forgotten"),
    "over-forgotten": ("diamond", "#e8a317", "◆ over-forgotten"),
}
FPR_COLOR, FNR_COLOR, SCORE_COLOR = "#d6604d", "#4393c3", "#111111"


def _models(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], key: str) -> list[tuple[str, Mapping[str, Any]]]:
    """``(name, views[key])`` of the original, the retrained reference and every run with
    evidence whose ``views`` mapping has ``key``."""
    models = [("original", as_map(request.get("original_views"))),
              ("retrained", as_map(as_map(request.get("retrained")).get("views")))]
    models += [(str(r.get("method", "?")), as_map(as_map(evidence_of(r)).get("views"))) for r in runs]
    return [(name, views[key]) for name, views in models if isinstance(views.get(key), Mapping)]


def _missing(what: str) -> str:
    return note(f"No {what} in this file (recorded by unlearnkit versions with the analyst views, with "
                "evidence on).", "muted")


def _picked(
    group: str, models: Sequence[tuple[str, Mapping[str, Any]]], runs: Sequence[Mapping[str, Any]],
    render: Callable[[str, Mapping[str, Any]], str], what: str = "Model",
) -> tuple[str, str]:
    """A picker over ``models`` (default: the first method) and one figure per model, rendered
    by ``render(name, figures)``; the script shows the picked one."""
    names = [n for n, _ in models]
    return (_picker(group, names, _default(names, runs), what),
            "".join(_pickable(group, n, render(n, m)) for n, m in models))


def _picker(group: str, names: Sequence[str], default: str, what: str) -> str:
    options = "".join(
        f'<option value="{attr(n)}"{" selected" if n == default else ""}>{escape(n)}</option>' for n in names
    )
    return (f'<label class="picker">{escape(what)}: <select class="view-picker" data-group="{attr(group)}">'
            f"{options}</select></label>")


def _default(names: Sequence[str], runs: Sequence[Mapping[str, Any]]) -> str:
    """The first method that has the figure, else the first model."""
    methods = [str(r.get("method", "?")) for r in runs]
    return next((n for n in names if n in methods), names[0])


def _pickable(group: str, name: str, body: str) -> str:
    return f'<div class="pickable" data-pick-group="{attr(group)}" data-pick="{attr(name)}">{body}</div>'


def _class_labels(request: Mapping[str, Any], n: int) -> list[str]:
    forget_classes = {str(v) for v in as_list(request.get("labels"))}
    return [f"{c}*" if str(c) in forget_classes else str(c) for c in range(n)]


# --------------------------------------------------------------------------------------------
# Prediction matrix
# --------------------------------------------------------------------------------------------


def _share_text(v: float) -> str:
    return "" if v == 0 else f"{100 * v:.0f}"


def _confidence_text(v: float) -> str:
    return f"{v:.2f}".removeprefix("0")


def _matrix_heatmaps(name: str, matrices: Mapping[str, Any]) -> str:
    parts = []
    for part, title in (("forget", "forget set"), ("test", f"test ({fmt(matrices.get('test_size'), 'int')} rows)")):
        matrix = as_map(matrices.get(part))
        counts = [number(c) for c in as_list(matrix.get("counts"))]
        if not counts:
            parts.append(f"<div>{note(f'No {title} matrix recorded.', 'muted')}</div>")
            continue
        n = len(counts)
        rows = [f"true {t} (n={fmt(c, 'int')})" if c else f"true {t}: no examples" for t, c in enumerate(counts)]
        cols = [str(p) for p in range(n)]
        shares = [[number(v) for v in as_list(row)] if isinstance(row, list) else [None] * n
                  for row in as_list(matrix.get("share"))]
        confidence = [[number(v) for v in as_list(row)] for row in as_list(matrix.get("confidence"))]
        share_svg = svg.heatmap(rows, cols, shares, limit=1.0, value_format=_share_text, col_title="predicted",
                                sparse=True, label=f"{name}: prediction shares on the {title}")
        conf_svg = svg.heatmap(rows, cols, confidence, limit=1.0, value_format=_confidence_text,
                               col_title="predicted", sparse=True, label=f"{name}: mean confidence on the {title}")
        parts.append(f"<div><h4>{escape(title)}: share of the row, %</h4>{share_svg}</div>"
                     f"<div><h4>{escape(title)}: mean confidence</h4>{conf_svg}</div>")
    return '<div class="views matrix-grid">' + "".join(parts) + "</div>"


def prediction_matrix_view(key: str, request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    """Per model, true class x predicted class on the forget set and the test sample: the share
    of each true class predicted as each class (rows sum to 100 %), and the mean max-softmax
    confidence of the predictions in each cell."""
    models = _models(request, runs, "prediction_matrix")
    if not models:
        return _missing("prediction matrices")
    picker, body = _picked(f"{key}-matrix", models, runs, lambda n, m: f"<h4>{escape(n)}</h4>" + _matrix_heatmaps(n, m))
    legend = ("Rows are true classes, columns predicted classes. Left: the share of each true class predicted "
              "as each class, in % (blank = 0; each row sums to 100; a class without examples in the set is "
              "marked so in its row label). Right: the mean confidence (largest softmax probability) of the predictions "
              "in that cell. A model that forgot the forget set moves its rows off the diagonal; compare with "
              "the retrained model, and check that the test matrix stays diagonal.")
    return picker + body + f'<p class="legend">{escape(legend)}</p>'


# --------------------------------------------------------------------------------------------
# Per-class accuracy gap between two models
# --------------------------------------------------------------------------------------------


def _per_class(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[float | None]]]:
    models = [("original", as_list(request.get("per_class_test_original"))),
              ("retrained", as_list(as_map(request.get("retrained")).get("per_class_test")))]
    models += [(str(r.get("method", "?")), as_list(as_map(evidence_of(r)).get("per_class_test"))) for r in runs]
    return [(name, [number(v) for v in values]) for name, values in models if values]


def _gap(a: Sequence[float | None], b: Sequence[float | None], n: int) -> list[float | None]:
    return [b[c] - a[c] if c < len(a) and c < len(b) and a[c] is not None and b[c] is not None else None
            for c in range(n)]


#: Ends of the gap view's scale, in points; the script of the page uses the same list.
GAP_LIMITS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _limit(largest: float) -> float:
    """The smallest of :data:`GAP_LIMITS` that holds ``largest``.

    Example:
        >>> _limit(0.3), _limit(2.9), _limit(60.0)
        (1.0, 5.0, 100.0)
    """
    return next((v for v in GAP_LIMITS if largest <= v), GAP_LIMITS[-1])


def class_gap_view(key: str, request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    """Per-class test accuracy of model B minus model A, for any two models the reader picks.

    The per-class accuracies of every model are in the page as JSON (``data-acc`` of each
    option); the default pair (the original against the first method) is drawn here, so the
    view reads without JavaScript, and :data:`ANALYST_JS` redraws the bars on the same scale
    when a select changes.
    """
    models = _per_class(request, runs)
    if len(models) < 2:
        return note("Per-class test accuracy of fewer than two models is in this file: no gap view.", "muted")
    n = int(number(request.get("num_classes")) or max(len(v) for _, v in models))
    labels = _class_labels(request, n)
    names = [m for m, _ in models]
    by_name = dict(models)
    a_name = "original" if "original" in by_name else names[0]
    b_name = _default([m for m in names if m != a_name], runs) if len(names) > 1 else names[0]
    default_gap = _gap(by_name[a_name], by_name[b_name], n)

    def select(cls: str, chosen: str) -> str:
        options = "".join(
            f'<option value="{attr(m)}" data-acc="{attr(json.dumps(values))}"{" selected" if m == chosen else ""}>'
            f"{escape(m)}</option>"
            for m, values in models
        )
        return f'<select class="{cls}">{options}</select>'

    limit = _limit(max((abs(v) for v in default_gap if v is not None), default=1.0))
    chart = svg.diverging_hbars(labels, default_gap, limit=limit, label="per-class test accuracy gap between two models")
    legend = ("Per-class test accuracy of model B minus model A, in points (the scale follows the pair: mind its "
              "ends). "
              "Blue: B is more accurate on that class, red: less; * marks classes of the forget instances. "
              "Original vs a method shows what the method cost; retrained vs a method shows how far it is "
              "from retraining, class by class.")
    return (
        '<div class="class-gap">'
        f'<label class="picker">A: {select("gap-a", a_name)}</label> '
        f'<label class="picker">B: {select("gap-b", b_name)}</label>'
        f'<p class="gap-title meta">{escape(f"{b_name} minus {a_name}")}</p>{chart}'
        f'<p class="legend">{escape(legend)}</p></div>'
    )


# --------------------------------------------------------------------------------------------
# Layer-wise CKA on forget and other data
# --------------------------------------------------------------------------------------------


def split_cka_chart(
    reference: str, title: str, layers: Sequence[str], with_evidence: Sequence[tuple[str, Mapping[str, Any]]],
    colors: Mapping[str, str],
) -> str | None:
    """Layer-wise CKA to ``reference`` (``original`` or ``retrained``) on the forget set (solid)
    and the other data (dashed) per method, or ``None`` when no run recorded the split."""
    series, dashed = [], set()
    for name, ev in with_evidence:
        rows = {str(as_map(i).get("layer")): as_map(i) for i in as_list(ev.get("cka_layers"))}
        for part, suffix in (("forget", " · forget"), ("other", " · other")):
            values = [rows.get(layer, {}).get(f"{reference}_{part}") for layer in layers]
            series.append((name + suffix, colors.get(name, "#999"), values))
            if part == "other":
                dashed.add(name + suffix)
    values = [float(v) for _, _, vals in series for v in vals if svg.is_number(v)]
    if not any(f"{reference}_forget" in as_map(i) for _, ev in with_evidence for i in as_list(ev.get("cka_layers"))):
        return None
    if not values:
        why = "no retrained reference for this request." if reference == "retrained" else "none recorded."
        return f"<figure><h4>{escape(title)}</h4>{note('No values: ' + why, 'muted')}</figure>"
    # Zoom in when every value is high (as the combined chart does); the ticks show the start.
    low = min(0.0, *values) if min(values) < 0.5 else min(values) - 0.15 * (1 - min(values)) - 0.002
    chart = svg.line_chart(layers, series, y_label="linear CKA", y_domain=(low, max(1.0, *values)), width=440,
                           label=title, dashed=dashed)
    keys = legend_keys([(n, c, v) for n, c, v in series if n not in dashed])
    return figure(title, chart + keys, (
        "Per layer, input to output; solid lines and filled points: on the forget set, dashed lines and hollow "
        "points: on other data (a seeded test sample). Forgetting shows as CKA on the forget set falling "
        "below CKA on other data, to the original; to the retrained model, the forget-set line should rise "
        "towards it (mind where the axis starts)."))


# --------------------------------------------------------------------------------------------
# Embedding map
# --------------------------------------------------------------------------------------------


def _embedding_figure(name: str, embedding: Mapping[str, Any], ids: Sequence[Any]) -> str:
    test, forget = as_map(embedding.get("test")), as_map(embedding.get("forget"))
    background = [
        (number(x), number(y), svg.color_for(int(c)) if svg.is_number(c) else "#999")
        for x, y, c in zip(as_list(test.get("x")), as_list(test.get("y")), as_list(test.get("label")))
    ]
    marks = []
    labels, preds = as_list(forget.get("label")), as_list(forget.get("pred"))
    for i, (x, y, mark) in enumerate(zip(as_list(forget.get("x")), as_list(forget.get("y")), as_list(forget.get("mark")))):
        shape, color, _ = MARK_STYLE.get(str(mark), ("diamond", "#999", str(mark)))
        tip = (f"forget id {ids[i] if i < len(ids) else i}: label {labels[i] if i < len(labels) else '?'}, "
               f"predicted {preds[i] if i < len(preds) else '?'}: {mark}")
        marks.append(svg.MapMark(number(x), number(y), shape, color, tip))  # type: ignore[arg-type]
    axis = "UMAP" if embedding.get("projection") == "umap" else "PC"
    chart = svg.map_2d(background, marks, x_label=f"{axis} 1", y_label=f"{axis} 2", label=f"embedding map of {name}")
    counts = {m: sum(1 for v in as_list(forget.get("mark")) if v == m) for m in MARK_STYLE}
    summary = ", ".join(f"{n} {m}" for m, n in counts.items() if n)
    return f"<h4>{escape(name)}</h4>{chart}<p class=\"meta\">{escape(summary)}</p>"


def embedding_view(key: str, request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    """Per model, a 2-D map of its penultimate features: a seeded test sample coloured by class,
    and the forget instances marked forgotten / not forgotten / over-forgotten."""
    models = _models(request, runs, "embedding")
    if not models:
        return _missing("embedding maps")
    ids = as_list(request.get("ids"))
    picker, body = _picked(f"{key}-embedding", models, runs, lambda n, e: _embedding_figure(n, e, ids))
    first = models[0][1]
    projection = "UMAP" if first.get("projection") == "umap" else "PCA"
    classes = int(number(request.get("num_classes")) or 10)
    class_keys = legend_keys([(str(c), svg.color_for(c), None) for c in range(classes)])
    marks = " ".join(f'<span style="color:{c}">{escape(t)}</span>' for _, c, t in MARK_STYLE.values())
    legend = (f"{projection} of each model's penultimate features ({first.get('layer', 'feature layer')}), fitted "
              f"per model on that model's features of {first.get('fit_on', 'a test sample')}; the forget "
              "instances are placed with the same projection. Axes of different models are not comparable. "
              "Dots: test points by class. Marks, for the misclassify goal: not forgotten = the model still "
              "predicts the label; forgotten = it does not, and neither does the retrained model; "
              "over-forgotten = it does not, but the retrained model does (erased more than retraining "
              "would). Relabel goal: forgotten = predicted as the new label. Without a retrained reference "
              "(and for the original and retrained models themselves) only forgotten / not forgotten.")
    return (picker + f'<div class="keys">{marks}</div>' + class_keys + f'<div class="views two">{body}</div><p class="legend">{escape(legend)}</p>')


# --------------------------------------------------------------------------------------------
# Privacy attack
# --------------------------------------------------------------------------------------------


def privacy_score(run: Mapping[str, Any]) -> float | None:
    """The run's privacy score PS, or None when it was not recorded.

    Example:
        >>> privacy_score({"evidence": {"privacy": {"score": 0.25}}}), privacy_score({"evidence": None})
        (0.25, None)
    """
    return number(as_map(as_map(evidence_of(run)).get("privacy")).get("score"))


def _privacy_figures(name: str, privacy: Mapping[str, Any]) -> str:
    charts = []
    for curve in (as_map(c) for c in as_list(privacy.get("curves"))):
        thresholds = as_list(curve.get("thresholds"))
        series = [("FPR", FPR_COLOR, thresholds, as_list(curve.get("fpr"))),
                  ("FNR", FNR_COLOR, thresholds, as_list(curve.get("fnr"))),
                  ("attack score 1 − 2^−ε", SCORE_COLOR, thresholds, as_list(curve.get("score")))]
        signal = str(curve.get("signal", "?"))
        rule = f"unlearned if {signal} {curve.get('direction', '?')} t"
        best = curve.get("best_threshold")
        chart = svg.xy_chart(series, x_label=f"threshold t on {signal}", y_label="rate / score",
                             dashed={series[2][0]}, marks=[(best, f"strongest threshold {fmt(best, 'loss')}")],
                             label=f"{name}: attack on {signal}")
        charts.append(f"<div><h4>{escape(signal)}: {escape(rule)}</h4>{chart}<p class=\"meta\">"
                      f"best score {escape(fmt(curve.get('best_score'), 'auc'))} at t = {escape(fmt(best, 'loss'))}</p></div>")
    strongest = as_map(privacy.get("strongest"))
    head = (f"<h4>{escape(name)}: PS = {escape(fmt(privacy.get('score'), 'auc'))}</h4>"
            f'<p class="meta">strongest attack: {escape(str(strongest.get("signal", "?")))} '
            f'{escape(str(strongest.get("direction", "?")))} {escape(fmt(strongest.get("threshold"), "loss"))}, '
            f'score {escape(fmt(strongest.get("score"), "auc"))}; {escape(fmt(privacy.get("n"), "int"))} forget instances per model</p>')
    keys = legend_keys([(n, c, None) for n, c, _, _ in series]) if charts else ""
    return head + keys + '<div class="views two">' + "".join(charts) + "</div>"


def privacy_view(key: str, request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    """For a chosen method: FPR, FNR and attack score over the thresholds of the entropy and
    confidence attacks that tell its forget-set outputs from the retrained model's, and PS."""
    with_privacy = [(str(r.get("method", "?")), as_map(as_map(evidence_of(r)).get("privacy"))) for r in runs]
    scored = [(n, p) for n, p in with_privacy if number(p.get("score")) is not None and as_list(p.get("curves"))]
    reasons = sorted({str(p.get("reason")) for _, p in with_privacy if p.get("reason")})
    if not scored:
        why = f" ({'; '.join(reasons)})" if reasons else ""
        return note(f"No privacy attack in this file{why}: it needs evidence with a retrained reference.", "muted")
    picker, body = _picked(f"{key}-privacy", scored, runs, _privacy_figures, "Method")
    legend = ("For each forget instance, the signal under the chosen method's model and under the retrained "
              "model; an attack calls an output 'unlearned' by a threshold t on the signal (the direction "
              "that reaches the higher score is shown). FPR: retrained outputs called unlearned; FNR: "
              "unlearned outputs called retrained. ε = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − "
              "log FPR), δ = 1e-5, clipped at 0, with a rate of 0 counted as half an instance (1/2n) so that ε "
              "stays finite; attack score = 1 − 2^−ε; PS = 1 − the highest score over both signals, both "
              "directions and all thresholds. PS = 1: the outputs look like retraining's; PS near 0: a "
              "threshold tells them apart (with n instances per model the lowest reachable PS is 2^−ln(2n), "
              "0.09 for n = 16).")
    return picker + body + f'<p class="legend">{escape(legend)}</p>'


# Vanilla JavaScript for the pickers and the two-model gap view (see the module docstring).
ANALYST_JS = """
(function () {
  "use strict";
  var LIMITS = """ + json.dumps(GAP_LIMITS) + """;
  Array.prototype.forEach.call(document.querySelectorAll("select.view-picker"), function (select) {
    var group = select.getAttribute("data-group");
    var scope = select.closest("section") || document;
    function apply() {
      Array.prototype.forEach.call(scope.querySelectorAll(".pickable"), function (el) {
        if (el.getAttribute("data-pick-group") === group) el.hidden = el.getAttribute("data-pick") !== select.value;
      });
    }
    select.addEventListener("change", apply);
    apply();
  });
  Array.prototype.forEach.call(document.querySelectorAll("div.class-gap"), function (box) {
    var a = box.querySelector("select.gap-a"), b = box.querySelector("select.gap-b");
    var chart = box.querySelector("svg"), title = box.querySelector(".gap-title");
    if (!a || !b || !chart) return;
    var zero = parseFloat(chart.getAttribute("data-zero")), half = parseFloat(chart.getAttribute("data-half"));
    function accuracies(select) { return JSON.parse(select.options[select.selectedIndex].getAttribute("data-acc")); }
    function signed(v) { return (v >= 0 ? "+" : "") + v.toFixed(1); }
    function draw() {
      var va = accuracies(a), vb = accuracies(b), shown = [], largest = 0;
      va.forEach(function (x, i) {
        if (x !== null && vb[i] !== null && vb[i] !== undefined) largest = Math.max(largest, Math.abs(vb[i] - x));
      });
      var limit = LIMITS.filter(function (v) { return largest <= v; })[0] || LIMITS[LIMITS.length - 1];
      Array.prototype.forEach.call(chart.querySelectorAll("text[data-tick]"), function (tick) {
        var side = parseInt(tick.getAttribute("data-tick"), 10);
        if (side !== 0) tick.textContent = signed(side * limit);
      });
      Array.prototype.forEach.call(chart.querySelectorAll("rect[data-index]"), function (rect) {
        var i = parseInt(rect.getAttribute("data-index"), 10);
        var ok = va[i] !== null && vb[i] !== null && va[i] !== undefined && vb[i] !== undefined;
        var d = ok ? vb[i] - va[i] : null;
        var length = ok ? Math.min(Math.abs(d), limit) / limit * half : 0;
        rect.setAttribute("x", (ok && d < 0 ? zero - length : zero).toFixed(1));
        rect.setAttribute("width", length.toFixed(1));
        rect.setAttribute("fill", !ok ? "#ccc" : d < 0 ? "#d6604d" : "#4393c3");
        var text = ok ? signed(d) : "n/a";
        var tip = rect.querySelector("title");
        var label = chart.querySelectorAll("text.row-label")[i];
        if (tip) tip.textContent = (label ? label.textContent : i) + ": " + text;
        var value = chart.querySelector('text[data-index="' + i + '"]');
        if (value) {
          var right = !ok || d >= 0;
          value.textContent = text;
          value.setAttribute("x", (right ? zero + length + 4 : zero - length - 4).toFixed(1));
          value.setAttribute("text-anchor", right ? "start" : "end");
        }
        shown.push(d === null ? null : Math.round(d * 1000) / 1000);
      });
      if (title) title.textContent = b.value + " minus " + a.value;
      box.setAttribute("data-shown", JSON.stringify(shown));
    }
    a.addEventListener("change", draw);
    b.addEventListener("change", draw);
  });
})();
"""

#: CSS of the analyst views (appended to the report's).
ANALYST_CSS = """
.views.matrix-grid{grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:8px 18px}
.class-gap select{max-width:14em}
"""

__all__ = [
    "ANALYST_CSS", "ANALYST_JS", "class_gap_view", "embedding_view", "prediction_matrix_view", "privacy_score",
    "privacy_view", "split_cka_chart",
]
