"""The analyst's views: prediction matrix, privacy score PS, embedding map and marks, split CKA,
their evidence from gather_evidence on the digits fixtures, and their place in the HTML report."""

from __future__ import annotations

import copy
import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# The report tests share the HTML report's synthetic fixture and browser harness.
from test_report_html import _dump_dom, _html_attributes, make_results, needs_chromium
from torch import Tensor

from unlearnkit.data import DataSplit
from unlearnkit.metrics.embedding import forget_marks, project_2d
from unlearnkit.metrics.prediction_matrix import prediction_matrix
from unlearnkit.metrics.privacy import attack_signals, epsilons, privacy_attack
from unlearnkit.models import SmallCNN
from unlearnkit.report import render_report
from unlearnkit.scenarios.evidence import gather_evidence, model_figures
from unlearnkit.scenarios.views import model_views, sample_indices

# ------------------------------------------------------------------------------------------------
# Prediction matrix
# ------------------------------------------------------------------------------------------------


def test_prediction_matrix_rows_sum_to_one_and_empty_classes_are_empty() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator) * 3
    labels = torch.randint(0, 4, (50,), generator=generator)  # class 4 never occurs
    matrix = prediction_matrix(logits, labels, 5)
    assert matrix.counts[4] == 0 and matrix.share[4] is None
    assert matrix.confidence[4] == [None] * 5
    assert sum(matrix.counts) == 50
    for t in range(4):
        assert sum(matrix.share[t]) == pytest.approx(1.0)
        for p in range(5):
            c = matrix.confidence[t][p]
            assert (c is None) == (matrix.share[t][p] == 0)
            assert c is None or 0.0 <= c <= 1.0
    # Mean confidence of one cell by hand.
    probabilities = torch.softmax(logits.double(), dim=1)
    predicted = probabilities.argmax(dim=1)
    cell = (labels == 0) & (predicted == predicted[labels == 0][0])
    assert matrix.confidence[0][int(predicted[labels == 0][0])] == pytest.approx(float(probabilities.max(dim=1).values[cell].mean()))
    as_dict = matrix.to_dict()
    assert as_dict["share"][4] is None and all(sum(r) == pytest.approx(1.0, abs=0.01) for r in as_dict["share"][:4])


@pytest.mark.parametrize(
    ("logits", "labels", "classes", "message"),
    [
        (torch.zeros(3, 4), torch.tensor([0, 1, 2]), 3, "shape"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3, "empty"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), 3, "0..2"),
        (torch.tensor([[float("nan"), 0.0, 0.0]]), torch.tensor([0]), 3, "NaN"),
        (torch.zeros(1, 3), torch.tensor([0.0]), 3, "integers"),
        (torch.zeros(1, 1), torch.tensor([0]), 1, ">= 2"),
    ],
)
def test_prediction_matrix_refuses_bad_inputs(logits: Tensor, labels: Tensor, classes: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prediction_matrix(logits, labels, classes)


# ------------------------------------------------------------------------------------------------
# Privacy score
# ------------------------------------------------------------------------------------------------


def test_privacy_score_is_one_for_a_retrained_model_against_itself() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(1)) * 4
    labels = torch.arange(16) % 10
    signals = attack_signals(logits, labels)
    attack = privacy_attack(signals, signals)
    assert attack.score == 1.0
    assert all(float(c.score.max()) == 0.0 for c in attack.curves)
    record = attack.to_dict()
    assert record["score"] == 1.0 and {c["signal"] for c in record["curves"]} == {"entropy", "confidence"}


def test_privacy_score_drops_on_a_separable_case_and_stays_finite() -> None:
    n = 16
    unlearned = {"confidence": np.linspace(5, 6, n), "entropy": np.linspace(0.0, 0.1, n)}
    retrained = {"confidence": np.linspace(-2, -1, n), "entropy": np.linspace(1.0, 2.0, n)}
    attack = privacy_attack(unlearned, retrained)
    # A perfect split of n per group: zero rates count as 1/(2n), eps = log(1 - delta) + log(2n).
    eps = math.log(1 - 1e-5) + math.log(2 * n)
    assert attack.score == pytest.approx(2.0**-eps, rel=1e-9)
    assert attack.score < 0.1
    for curve in attack.curves:
        assert np.isfinite(curve.score).all() and np.isfinite(curve.fpr).all() and np.isfinite(curve.fnr).all()
    record = attack.to_dict()
    assert record["strongest"]["score"] == pytest.approx(1 - attack.score, abs=1e-4)
    # Outputs that overlap half-way give a PS between the two.
    half = {"confidence": np.r_[np.linspace(5, 6, 8), np.linspace(-2, -1, 8)], "entropy": np.r_[np.zeros(8), np.ones(8)]}
    assert attack.score < privacy_attack(half, retrained).score < 1.0


def test_fpr_and_fnr_are_monotone_over_thresholds() -> None:
    rng = np.random.default_rng(0)
    attack = privacy_attack({"confidence": rng.normal(1, 1, 30)}, {"confidence": rng.normal(0, 1, 30)})
    for curve in attack.curves:
        assert (np.diff(curve.thresholds) > 0).all()
        if curve.direction == ">":  # "unlearned if s > t": fewer calls as t grows
            assert (np.diff(curve.fpr) <= 0).all() and (np.diff(curve.fnr) >= 0).all()
        else:
            assert (np.diff(curve.fpr) >= 0).all() and (np.diff(curve.fnr) <= 0).all()
        assert ((0 <= curve.score) & (curve.score < 1)).all()


def test_epsilon_convention_for_zero_rates() -> None:
    # FPR = FNR = 0 on 4 per group: log(1 - delta) - log(1/8); FPR = 1 makes its term undefined (0).
    values = epsilons(np.array([0.0, 1.0, 0.5]), np.array([0.0, 0.0, 0.5]), 4, 4, delta=0.0)
    assert values.tolist() == pytest.approx([math.log(8), 0.0, 0.0])
    with pytest.raises(ValueError, match="same signals"):
        privacy_attack({"entropy": [1.0]}, {"confidence": [1.0]})
    with pytest.raises(ValueError, match="one each per instance"):
        privacy_attack({"entropy": [1.0, 2.0]}, {"entropy": [1.0]})
    with pytest.raises(ValueError, match="NaN or infinite"):
        privacy_attack({"entropy": [float("nan")]}, {"entropy": [1.0]})


def test_attack_signals_are_exact_for_confident_logits() -> None:
    signals = attack_signals(torch.tensor([[60.0, 0.0, 0.0]]), torch.tensor([0]))
    assert signals["confidence"][0] == pytest.approx(60.0 - math.log(2.0))
    assert np.isfinite(signals["entropy"]).all()


# ------------------------------------------------------------------------------------------------
# Embedding map and marks
# ------------------------------------------------------------------------------------------------


def test_forget_marks_follow_the_definition() -> None:
    labels = [0, 1, 2, 3]
    unlearned = [0, 5, 5, 5]  # instance 0 still right; 1-3 wrong
    retrained = [0, 9, 2, 3]  # retraining gets 2 and 3 right: unlearning erased more there
    assert forget_marks(unlearned, labels, retrained_predictions=retrained) == [
        "not forgotten", "forgotten", "over-forgotten", "over-forgotten"
    ]
    assert forget_marks(unlearned, labels) == ["not forgotten", "forgotten", "forgotten", "forgotten"]
    # Relabel: forgotten means predicted as the new label, whatever the reference says.
    assert forget_marks(unlearned, labels, retrained_predictions=retrained, new_labels=[4, 5, 6, 5]) == [
        "not forgotten", "forgotten", "not forgotten", "forgotten"
    ]
    with pytest.raises(ValueError, match="entries"):
        forget_marks([0, 1], [0])


def test_pca_coordinates_are_deterministic_and_fitted_on_the_test_points() -> None:
    generator = torch.Generator().manual_seed(3)
    fit, extra = torch.randn(40, 6, generator=generator), torch.randn(5, 6, generator=generator)
    a1, b1 = project_2d(fit, extra, seed=0)
    a2, b2 = project_2d(fit.clone(), extra.clone(), seed=0)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert a1.shape == (40, 2) and b1.shape == (5, 2)
    assert np.allclose(a1.mean(axis=0), 0.0, atol=1e-9)  # centred on the points it was fitted on
    # The extra points do not move the map.
    assert np.array_equal(project_2d(fit, extra[:2])[0], a1)
    assert a1[:, 0].var() >= a1[:, 1].var()  # first axis carries the most variance
    with pytest.raises(ValueError, match="projection"):
        project_2d(fit, extra, projection="tsne")


def test_umap_is_optional() -> None:
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            project_2d(torch.randn(10, 3), projection="umap")
    else:  # pragma: no cover - only where umap-learn is installed
        a, _ = project_2d(torch.randn(30, 3), projection="umap")
        assert a.shape == (30, 2)


def test_sample_indices_are_seeded_and_capped() -> None:
    assert sample_indices(10, 20, 0).tolist() == list(range(10))
    a, b = sample_indices(1000, 50, 7), sample_indices(1000, 50, 7)
    assert torch.equal(a, b) and len(a) == 50 and bool((a[1:] > a[:-1]).all())
    assert not torch.equal(a, sample_indices(1000, 50, 8))


# ------------------------------------------------------------------------------------------------
# Evidence on the digits fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits(digits: DataSplit, forget_indices: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    keep = torch.ones(len(digits.y_train), dtype=torch.bool)
    keep[forget_indices] = False
    return {
        "forget": (digits.x_train[forget_indices], digits.y_train[forget_indices]),
        "retain": (digits.x_train[keep][:400], digits.y_train[keep][:400]),
        "test": (digits.x_test, digits.y_test),
    }


def _perturbed(model: SmallCNN, scale: float) -> SmallCNN:
    changed = copy.deepcopy(model)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in changed.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * parameter.std())
    return changed


@pytest.fixture(scope="module")
def evidence(trained_cnn: SmallCNN, splits: dict) -> dict:
    def figures(model: torch.nn.Module) -> dict:
        return model_figures(model, splits["forget"], splits["retain"], splits["test"], num_classes=10)

    unlearned, retrained = _perturbed(trained_cnn, 0.5), _perturbed(trained_cnn, 0.2)
    return gather_evidence(
        trained_cnn, unlearned, splits["forget"], splits["retain"], splits["test"], goal_met=[True] * 4,
        ids=list(range(4)), original_figures=figures(trained_cnn), retrained=retrained,
        retrained_figures=figures(retrained), num_classes=10, relearn_max_steps=20, probe_size=200,
    )


def test_evidence_holds_cka_on_forget_and_other_data(evidence: dict) -> None:
    assert len(evidence["cka_layers"]) >= 3
    for entry in evidence["cka_layers"]:
        for key in ("original_forget", "original_other", "retrained_forget", "retrained_other"):
            assert 0.0 <= entry[key] <= 1.0, (entry["layer"], key)
        assert 0.0 <= entry["original"] <= 1.0  # the combined figure is still there


def test_evidence_holds_views_and_privacy(evidence: dict, splits: dict) -> None:
    views = evidence["views"]
    forget_matrix = views["prediction_matrix"]["forget"]
    assert sum(forget_matrix["counts"]) == 4
    assert all(row is None or sum(row) == pytest.approx(1.0, abs=0.01) for row in forget_matrix["share"])
    assert views["prediction_matrix"]["test_size"] == 360
    embedding = views["embedding"]
    assert embedding["projection"] == "pca" and embedding["reference"] is True
    assert len(embedding["test"]["x"]) == 300 and len(embedding["forget"]["mark"]) == 4
    assert set(embedding["forget"]["mark"]) <= {"forgotten", "not forgotten", "over-forgotten"}
    privacy = evidence["privacy"]
    assert 0.0 <= privacy["score"] <= 1.0 and len(privacy["curves"]) == 2
    for curve in privacy["curves"]:
        assert len(curve["thresholds"]) == len(curve["fpr"]) == len(curve["fnr"]) == len(curve["score"]) <= 100


def test_model_views_of_the_same_model_are_identical(trained_cnn: SmallCNN, splits: dict) -> None:
    first = model_views(trained_cnn, splits["forget"], splits["test"], num_classes=10, seed=1)
    again = model_views(copy.deepcopy(trained_cnn), splits["forget"], splits["test"], num_classes=10, seed=1)
    assert first == again
    assert first["embedding"]["reference"] is False
    assert first["embedding"]["forget"]["mark"] == ["not forgotten"] * 4  # the fixture's set is classified right


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------

VIEW_HEADINGS = ("Per-class accuracy gap between two models", "Prediction matrix",
                 "Embedding map of penultimate features", "Privacy attack")


def _no_view_failed(page: str) -> bool:
    return "view-error" not in page.replace(".view-error", "")


def test_report_renders_the_analyst_views() -> None:
    results = make_results()
    page = render_report(results)
    assert _no_view_failed(page)
    for heading in VIEW_HEADINGS:
        assert f"<h3>{heading}</h3>" in page
    for slug in ("gap", "matrix", "embedding", "privacy", "layers"):
        assert f'id="request-0-{slug}"' in page
    assert ">PS</button>" in page
    # The PS of the first run is in the table; the retrained row shows 1.
    first = results["runs"][0]
    assert f'data-sort="{first["evidence"]["privacy"]["score"]!r}"' in page
    assert "true 0" in page and "mean confidence" in page and "no examples" in page
    assert "over-forgotten" in page and "PS = " in page
    assert "· forget" in page and 'stroke-dasharray="6 4"' in page  # split CKA: dashed = other data
    # The request without a retrained reference says why it has no privacy attack.
    assert "no retrained reference: the attack compares against retraining" in page
    # The two-model gap: every model's per-class accuracy is in the page as JSON.
    section = page.split('id="request-1"')[0]
    options = re.findall(r'<select class="gap-a">(.*?)</select>', section)[0]
    names = [html.unescape(n) for n in re.findall(r'<option value="([^"]*)"', options)]
    assert names[:2] == ["original", "retrained"] and "l2ul" in names
    assert "l2ul minus original" in section


def test_analyst_views_escape_method_names() -> None:
    evil = '<img onerror="x()">'
    page = render_report(make_results(["l2ul", evil]))
    assert evil not in page and html.escape(evil) in page
    assert page.count("<script>") == 2  # JSON data sits in escaped attributes, not in scripts
    assert _no_view_failed(page)


def _strip_analyst_fields(results: dict[str, Any]) -> dict[str, Any]:
    for request in results["requests"]:
        request.pop("original_views", None)
        if isinstance(request.get("retrained"), dict):
            request["retrained"].pop("views", None)
    for run in results["runs"]:
        evidence = run.get("evidence")
        if evidence:
            evidence.pop("views", None)
            evidence.pop("privacy", None)
            for entry in evidence["cka_layers"]:
                for key in ("original_forget", "original_other", "retrained_forget", "retrained_other"):
                    entry.pop(key, None)
    return results


def test_old_files_without_the_new_fields_render_notes() -> None:
    page = render_report(_strip_analyst_fields(make_results()))
    assert _no_view_failed(page)
    assert "No prediction matrices in this file" in page
    assert "No embedding maps in this file" in page
    assert "No privacy attack in this file" in page
    assert "CKA to the original model" in page and "· forget" not in page  # the combined CKA as before
    assert "l2ul minus original" in page  # per-class accuracies were there before: the gap view works


def test_malformed_analyst_fields_do_not_break_the_page() -> None:
    results = make_results()
    results["runs"][0]["evidence"]["views"] = {"prediction_matrix": {"forget": {"counts": "x"}}, "embedding": 3}
    results["runs"][1]["evidence"]["privacy"] = {"score": "high", "curves": [None, {"signal": 1}]}
    results["requests"][0]["original_views"] = {"embedding": {"test": {"x": [1, None, "a"], "y": [2], "label": ["q"]}}}
    page = render_report(results)
    assert 'data-method="l2ul"' in page and "Privacy attack" in page


# Appended to a copy of the page: picks two models in the first gap view, and "retrained" in the
# first prediction-matrix picker, and records what the page then shows.
GAP_PROBE = """
<script>
(function () {
  var section = document.querySelector("section.request");
  var box = section.querySelector("div.class-gap");
  var a = box.querySelector("select.gap-a"), b = box.querySelector("select.gap-b");
  a.value = "retrained"; a.dispatchEvent(new Event("change"));
  b.value = "neggrad"; b.dispatchEvent(new Event("change"));
  var root = document.documentElement;
  root.setAttribute("data-probe-gap", box.getAttribute("data-shown"));
  root.setAttribute("data-probe-gap-title", box.querySelector(".gap-title").textContent);
  root.setAttribute("data-probe-gap-ticks", JSON.stringify(Array.prototype.map.call(
    box.querySelectorAll("text[data-tick]"), function (t) { return t.textContent; })));
  var picker = section.querySelector('select.view-picker[data-group$="-matrix"]');
  picker.value = "retrained"; picker.dispatchEvent(new Event("change"));
  var visible = Array.prototype.filter.call(section.querySelectorAll(".pickable"), function (el) {
    return el.getAttribute("data-pick-group") === picker.getAttribute("data-group") && !el.hidden;
  }).map(function (el) { return el.getAttribute("data-pick"); });
  root.setAttribute("data-probe-matrix", JSON.stringify(visible));
})();
</script>
"""


@needs_chromium
def test_gap_view_and_pickers_in_headless_chromium(tmp_path: Path) -> None:
    results = make_results()
    page = tmp_path / "probe.html"
    page.write_text(render_report(results).replace("</body>", GAP_PROBE + "</body>"), encoding="utf-8")
    dom, console = _dump_dom(tmp_path, page)
    attributes = _html_attributes(dom)
    assert attributes.get("data-report-ready") == "1"
    assert "data-js-errors" not in attributes and console == [], (attributes.get("data-js-errors"), console)
    request = results["requests"][0]
    neggrad = next(r for r in results["runs"] if r["method"] == "neggrad" and r["seed"] == request["seed"]
                   and r["goal"] == request["goal"])
    expected = [round(b - a, 3) for a, b in zip(request["retrained"]["per_class_test"], neggrad["evidence"]["per_class_test"])]
    assert json.loads(attributes["data-probe-gap"]) == pytest.approx(expected, abs=1e-3)
    assert attributes["data-probe-gap-title"] == "neggrad minus retrained"
    largest = max(abs(v) for v in expected)
    limit = next(v for v in (1, 2, 5, 10, 20, 50, 100) if largest <= v)
    assert json.loads(attributes["data-probe-gap-ticks"]) == [f"-{limit:.1f}", "0", f"+{limit:.1f}"]
    assert json.loads(attributes["data-probe-matrix"]) == ["retrained"]


@needs_chromium
def test_the_page_with_analyst_views_has_no_script_errors(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(render_report(make_results()), encoding="utf-8")
    dom, console = _dump_dom(tmp_path, page)
    attributes = _html_attributes(dom)
    assert attributes.get("data-report-ready") == "1"
    assert "data-js-errors" not in attributes and console == [], (attributes.get("data-js-errors"), console)
    # The default pickers show the first method's figures only.
    first = dom.split('id="request-1"')[0]
    shown = re.findall(r'<div class="pickable" data-pick-group="request-0-embedding" data-pick="([^"]*)"(?! hidden)>', first)
    assert shown == ["l2ul"]
