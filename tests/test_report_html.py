"""The HTML report: self-contained, escaped, robust to missing evidence, and clean in a browser.

The results are a synthetic fixture shaped like the demo's schema 2 JSON (see
``notes/evidence_schema.md``): four methods, two seeds, goals misclassify and relabel, 8x8 images,
and every awkward case the report must survive (a diverged run, an unsupported one, a run without
evidence, a request without retrained reference, a "logit only" flag). No model is trained here.

The browser test renders the page in headless Chromium (Debian's ``chromium`` package; CI installs
it): ``--dump-dom`` gives the DOM after the page's scripts ran, so the test reads the errors that
the page's own ``window.onerror`` hook recorded, the table rows, and the effect of a scripted click
on a header; ``--screenshot`` saves a picture of the page (to ``$UNLEARNKIT_REPORT_SCREENSHOT`` if
set). It is skipped only when no Chromium is installed.
"""

from __future__ import annotations

import html
import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from unlearnkit.cli import main
from unlearnkit.report import ResultsFormatError, render_report, write_report
from unlearnkit.report.svg import image_svg, nice_ticks

METHODS = ["l2ul", "neggrad", "ssd", "salun"]
LAYERS = ["features.0", "features.3", "classifier.1"]
PARAMETERS = ["features.0.weight", "features.0.bias", "features.3.weight", "classifier.1.weight"]


def _image(rng: random.Random, nested_channel: bool) -> list[Any]:
    """An 8x8 'digit': a bright ring on a dark background, with noise."""
    grid = [[0.0] * 8 for _ in range(8)]
    for y in range(8):
        for x in range(8):
            ring = 1.5 <= ((x - 3.5) ** 2 + (y - 3.5) ** 2) ** 0.5 <= 3.0
            grid[y][x] = round(min(1.0, (0.8 if ring else 0.0) + rng.random() * 0.2), 3)
    return [grid] if nested_channel else grid


def _matrix(rng: random.Random, labels: list[int], rows: int) -> dict[str, Any]:
    """A prediction matrix shaped like ``PredictionMatrix.to_dict``: ``rows`` examples drawn from
    ``labels`` (classes not drawn have no examples: a row of ``None``)."""
    counts = [0] * 10
    cells = [[0] * 10 for _ in range(10)]
    for _ in range(rows):
        t = rng.choice(labels)
        p = t if rng.random() < 0.7 else rng.randrange(10)
        counts[t] += 1
        cells[t][p] += 1
    return {
        "counts": counts,
        "share": [[round(c / counts[t], 3) for c in cells[t]] if counts[t] else None for t in range(10)],
        "confidence": [[round(rng.uniform(0.3, 1.0), 3) if cells[t][p] else None for p in range(10)] for t in range(10)],
    }


def analyst_views(seed: int, labels: list[int], retrained: bool) -> dict[str, Any]:
    """A model's ``views`` (prediction matrices and embedding map), as the demo records them.

    Its own generator, so that adding these fields leaves the rest of the fixture unchanged.
    """
    rng = random.Random(seed)
    marks = ["forgotten", "not forgotten", "over-forgotten"] if retrained else ["forgotten", "not forgotten"]
    return {
        "prediction_matrix": {"forget": _matrix(rng, labels, len(labels)), "test": _matrix(rng, list(range(10)), 60),
                              "test_size": 60},
        "embedding": {
            "projection": "pca", "layer": "classifier.1:input", "fit_on": "40 test points (seeded sample)",
            "test": {"x": [round(rng.gauss(0, 3), 3) for _ in range(40)], "y": [round(rng.gauss(0, 3), 3) for _ in range(40)],
                     "label": [i % 10 for i in range(40)]},
            "forget": {"x": [round(rng.gauss(0, 3), 3) for _ in labels], "y": [round(rng.gauss(0, 3), 3) for _ in labels],
                       "label": labels, "pred": [rng.randrange(10) for _ in labels],
                       "mark": [marks[i % len(marks)] for i in range(len(labels))]},
            "reference": retrained,
        },
    }


def privacy_record(seed: int, k: int, retrained: bool) -> dict[str, Any]:
    """A run's ``privacy`` record, shaped like ``PrivacyAttack.to_dict``."""
    if not retrained:
        return {"score": None, "reason": "no retrained reference: the attack compares against retraining"}
    rng = random.Random(seed)
    curves = []
    for signal in ("entropy", "confidence"):
        thresholds = sorted(round(rng.uniform(-3, 3), 4) for _ in range(2 * k))
        fpr = [round(1 - (i + 1) / len(thresholds), 4) for i in range(len(thresholds))]
        fnr = [round(min(1.0, i / len(thresholds) * rng.uniform(0.3, 1.0)), 4) for i in range(len(thresholds))]
        score = [round(rng.uniform(0, 0.8), 4) for _ in thresholds]
        best = max(range(len(score)), key=score.__getitem__)
        curves.append({"signal": signal, "direction": ">", "best_threshold": thresholds[best], "best_score": score[best],
                       "thresholds": thresholds, "fpr": fpr, "fnr": fnr, "score": score})
    strongest = max(curves, key=lambda c: c["best_score"])
    return {"score": round(1 - strongest["best_score"], 4), "delta": 1e-5, "n": k,
            "strongest": {"signal": strongest["signal"], "direction": ">", "threshold": strongest["best_threshold"],
                          "score": strongest["best_score"]}, "curves": curves}


def _evidence(rng: random.Random, method: str, k: int, ids: list[int], retrained: bool) -> dict[str, Any]:
    ua = rng.uniform(60, 100)
    return {
        "ua": ua,
        "mia_efficacy": rng.uniform(20, 90),
        "entropy_mia": rng.uniform(5, 60),
        "loss_auc": rng.uniform(0.45, 0.9),
        "gap": {"average": rng.uniform(1, 20), "ua": 3.0, "mia_efficacy": 5.0, "ra": 1.0, "ta": 0.5} if retrained else None,
        "cka": {"original": rng.uniform(0.7, 1.0), "retrained": rng.uniform(0.6, 0.95) if retrained else None},
        "cka_layers": [
            {"layer": layer, "original": 1.0 - 0.1 * i * rng.random(), "retrained": (0.9 - 0.1 * i * rng.random()) if retrained else None,
             "original_forget": 1.0 - 0.15 * i, "original_other": 1.0 - 0.05 * i,
             "retrained_forget": (0.9 - 0.1 * i) if retrained else None, "retrained_other": (0.95 - 0.05 * i) if retrained else None}
            for i, layer in enumerate(LAYERS)
        ],
        "knn_forget": rng.uniform(0, 100),
        "weight_change": [{"parameter": p, "relative_change": rng.uniform(0.001, 0.3)} for p in PARAMETERS],
        "per_class_test": [rng.uniform(85, 100) for _ in range(10)],
        "collateral": {"neighbour_accuracy_change": -1.0, "neighbour_confidence_change": -0.02, "class_accuracy_change": -0.5},
        "relearn": {"steps": rng.randint(3, 80), "reached": method != "salun", "max_steps": 100},
        "instances": [{"id": i, "predicted_member": rng.random() < 0.4, "member_score": rng.random()} for i in ids],
        "logit_only": method == "ssd",
        "verdict": {
            "passed": method != "neggrad",
            "checks": [
                {"name": "forget accuracy", "value": 100 - ua, "threshold": "<= retrained + 5", "passed": True},
                {"name": "test accuracy drop", "value": 1.2, "threshold": "<= 2", "passed": method != "neggrad"},
            ],
        },
    }


def make_results(methods: list[str] | None = None) -> dict[str, Any]:
    """A schema-2 results mapping: 2 seeds x (misclassify, relabel) x the methods, k = 3.

    Awkward cases on purpose: neggrad diverges on seed 1 (misclassify), ssd is unsupported for
    relabel, salun has no evidence on seed 0 relabel (evidence off), seed 1 relabel has no
    retrained reference, images are [C][H][W] on seed 0 and [H][W] on seed 1.
    """
    methods = methods or METHODS
    rng = random.Random(0)
    requests, runs = [], []
    for seed in (0, 1):
        for goal in ("misclassify", "relabel"):
            k = 3
            ids = [rng.randrange(1400) for _ in range(k)]
            labels = [rng.randrange(10) for _ in range(k)]
            new_labels = [(label + 3) % 10 for label in labels] if goal == "relabel" else None
            has_retrained = not (seed == 1 and goal == "relabel")
            original = {"acc/forget": 100.0, "acc/retain": 99.5, "acc/test": 97.8, "loss/forget": 0.01}
            if new_labels:
                original["acc/relabel"] = 0.0
            requests.append({
                "seed": seed, "goal": goal, "ids": ids, "labels": labels, "new_labels": new_labels,
                "original": original,
                "images": [_image(rng, nested_channel=seed == 0) for _ in range(k)],
                "image_shape": [1, 8, 8], "num_classes": 10,
                "per_class_test_original": [rng.uniform(90, 100) for _ in range(10)],
                "retrained": {
                    "sha256": "ab" * 32, "acc/forget": 66.7, "acc/retain": 99.4, "acc/test": 97.5,
                    "mia_efficacy": 70.0, "entropy_mia": 20.0, "loss_auc": 0.52,
                    "per_class_test": [rng.uniform(90, 100) for _ in range(10)], "seconds": 4.2, "from_cache": seed == 1,
                } if has_retrained else None,
            })
            requests[-1]["original_views"] = analyst_views(seed * 10 + len(requests), labels, False)
            if has_retrained:
                requests[-1]["retrained"]["views"] = analyst_views(seed * 10 + len(requests) + 5, labels, False)
            for method in methods:
                run: dict[str, Any] = {"method": method, "seed": seed, "goal": goal, "error": None}
                if method == "neggrad" and seed == 1 and goal == "misclassify":
                    run.update(status="diverged", error="loss became NaN at step 12", metrics={}, result=None, evidence=None)
                elif method == "ssd" and goal == "relabel":
                    run.update(status="unsupported", error="ssd does not support goal 'relabel'", metrics={}, result=None, evidence=None)
                else:
                    acc_forget = rng.choice([0.0, 33.3])
                    metrics = {"acc/forget": acc_forget, "acc/retain": rng.uniform(95, 99.5),
                               "acc/test": rng.uniform(93, 98), "loss/forget": rng.uniform(1, 5)}
                    if goal == "relabel":
                        metrics["acc/relabel"] = rng.choice([66.7, 100.0])
                    outcomes = []
                    for i, label in zip(ids, labels):
                        pred = rng.randrange(10)
                        outcomes.append({
                            "id": i, "label": label, "new_label": None if new_labels is None else (label + 3) % 10,
                            "pred_before": label, "pred_after": pred, "margin_before": 5.1,
                            "margin_after": rng.uniform(-4, 1), "goal_met": pred != label,
                            "loss_before": 0.01, "loss_after": 2.5, "loss_target": None,
                        })
                    evidence_off = method == "salun" and seed == 0 and goal == "relabel"
                    run.update(
                        status="converged" if method != "salun" else "not_converged", metrics=metrics,
                        result={"steps": rng.randint(5, 200), "seconds": rng.uniform(0.05, 3), "converged": True,
                                "stop_reason": "goal_reached", "hyperparams": {"lr": 0.01},
                                "model_sha256_before": "a" * 64, "model_sha256_after": "b" * 64, "outcomes": outcomes},
                        evidence=None if evidence_off else _evidence(rng, method, k, ids, has_retrained),
                    )
                    if run["evidence"] is not None:
                        salt = seed * 100 + len(runs)
                        run["evidence"]["views"] = analyst_views(salt, labels, has_retrained)
                        run["evidence"]["privacy"] = privacy_record(salt, k, has_retrained)
                runs.append(run)
    return {
        "schema_version": 2, "created": "2025-01-01T00:00:00+00:00",
        "dataset": {"name": "digits", "n_train": 1437, "n_test": 360},
        "model": {"name": "SmallCNN", "sha256": "c" * 64, "path": "/cache/model.safetensors", "test_accuracy": 97.8, "recipe": {}},
        "config": {"k": 3, "seeds": [0, 1], "goals": ["misclassify", "relabel"], "methods": methods,
                   "hyperparams": {}, "evidence": True},
        "versions": {"unlearnkit": "0.1.0", "torch": "2.x"},
        "summary": [],
        "requests": requests,
        "runs": runs,
    }


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return make_results()


@pytest.fixture(scope="module")
def page(results: dict[str, Any]) -> str:
    return render_report(results)


# ------------------------------------------------------------------------------------------------
# Plain Python checks
# ------------------------------------------------------------------------------------------------


def test_page_is_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page and "https://" not in page
    # No reference that a browser would fetch: no src/href attributes, no @import or url().
    assert not re.search(r"\s(src|href)\s*=", page)
    assert "@import" not in page and "url(" not in page
    assert "<script>" in page and "<style>" in page and "<svg" in page


def test_page_has_every_view(page: str, results: dict[str, Any]) -> None:
    for heading in ("Methods compared", "Forgetting versus utility", "Per-class test accuracy change",
                    "Forget instances", "Layer-wise change", "Summary over seeds"):
        assert heading in page
    assert page.count('<section class="view-section request"') == len(results["requests"])
    for name in METHODS:
        assert f'data-method="{name}"' in page
    assert 'data-ref="retrained"' in page and 'data-ref="original"' in page
    assert "logit only" in page
    assert 'class="pixels"' in page  # the images
    assert "CKA to the original model" in page and "Weight change per layer" in page
    assert "view-error" not in page.replace(".view-error", "")  # no view failed on the fixture
    # Every column the brief asks for.
    for header in ("status", "Acc(D_f)", "Acc(D_r)", "Acc(D_test)", "UA", "MIA-efficacy", "entropy MIA",
                   "loss AUC", "avg gap", "CKA orig.", "CKA retr.", "relearn steps", "steps", "seconds", "verdict"):
        assert f">{html.escape(header)}</button>" in page


def test_sort_script_and_sortable_headers(page: str) -> None:
    assert "function sortBy(th)" in page and 'addEventListener("click"' in page
    assert 'data-type="num"' in page and 'data-type="text"' in page
    assert 'data-sort="' in page


def test_method_names_are_escaped() -> None:
    evil = '<script>alert("x")</script>'
    page = render_report(make_results(["l2ul", evil]), title="<b>title</b>")
    assert evil not in page and "<b>title</b>" not in page
    assert html.escape(evil) in page and "&lt;b&gt;title&lt;/b&gt;" in page
    # The only <script> tags are the report's own two.
    assert page.count("<script>") == 2


def test_missing_pieces_render_with_notes(results: dict[str, Any]) -> None:
    page = render_report(results)
    assert "neggrad diverged" in page and "loss became NaN at step 12" in page
    assert "ssd was not run" in page
    assert "salun: no evidence recorded" in page
    assert "No retrained reference for this request" in page
    assert "Relabel goal" in page and "→ new" in page


def test_schema_1_file_without_any_evidence_renders() -> None:
    results = make_results()
    results["schema_version"] = 1
    for request in results["requests"]:
        for key in ("images", "image_shape", "num_classes", "per_class_test_original", "retrained"):
            request.pop(key)
    for run in results["runs"]:
        run.pop("evidence")
    page = render_report(results)
    assert "No images in this file" in page
    assert "Per-class test accuracy of the original model is not in this file" in page
    assert "No weight-change evidence" in page
    assert "view-error" not in page.replace(".view-error", "")
    for name in METHODS:
        assert f'data-method="{name}"' in page


def test_every_run_diverged_and_odd_values_do_not_crash() -> None:
    results = make_results()
    for run in results["runs"]:
        run.update(status="diverged", error="boom", metrics={}, result=None, evidence=None)
    results["requests"][0]["images"][0] = [[0.0, "x"]]  # malformed image
    results["requests"][0]["original"]["acc/test"] = float("nan")
    page = render_report(results)
    assert "nothing to place on the forgetting-versus-utility plot" in page
    assert "no image" in page
    assert "view-error" not in page.replace(".view-error", "")


def test_a_malformed_field_becomes_a_note_not_a_crash() -> None:
    results = make_results()
    results["runs"][0]["evidence"]["weight_change"] = "not a list"
    results["runs"][0]["evidence"]["cka_layers"] = [None, 3, {"layer": "x", "original": "high"}]
    results["requests"][0]["labels"] = "oops"
    page = render_report(results)
    assert 'data-method="l2ul"' in page


def test_unseen_goal_shows_its_columns() -> None:
    results = make_results()
    for request in results["requests"]:
        request["goal"] = request["goal"].replace("relabel", "unseen")
        request["new_labels"] = None
    for run in results["runs"]:
        run["goal"] = run["goal"].replace("relabel", "unseen")
        if run["goal"] == "unseen" and run["metrics"]:
            run["metrics"].pop("acc/relabel")
            run["metrics"]["unseen"] = 66.7
            for outcome in run["result"]["outcomes"]:
                outcome.update(new_label=None, loss_target=1.9)
    page = render_report(results)
    assert ">at target %</button>" in page and ">loss(D_f)</button>" in page
    assert "<th>loss / target</th>" in page and "Unseen goal" in page
    assert "view-error" not in page.replace(".view-error", "")


def test_runs_without_requests_still_get_sections() -> None:
    page = render_report({"runs": [{"method": "a", "seed": 3, "goal": "misclassify", "status": "converged",
                                    "metrics": {"acc/forget": 0.0, "acc/retain": 99.0, "acc/test": 97.0}}]})
    assert "seed 3" in page and 'data-method="a"' in page


@pytest.mark.parametrize("bad", [[], {}, {"runs": []}, {"runs": "x"}, {"runs": [1]}])
def test_results_without_runs_are_refused(bad: Any) -> None:
    with pytest.raises(ResultsFormatError):
        render_report(bad)


def test_write_report_is_atomic(tmp_path: Path, results: dict[str, Any]) -> None:
    path = write_report(results, tmp_path / "sub" / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    with pytest.raises(ResultsFormatError):
        write_report({"runs": []}, tmp_path / "empty.html")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["report.html"]


def test_svg_helpers() -> None:
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    svg = image_svg([[[0.0] * 8 for _ in range(8)], [[1.0] * 8 for _ in range(8)], [[0.5] * 8 for _ in range(8)]])
    assert svg is not None and "#00ff80" in svg  # three channels are drawn as RGB
    normalised = image_svg([[-1.0, 2.0]])  # outside [0, 1]: min-max scaled
    assert normalised is not None and "#ffffff" in normalised and "#000000" in normalised


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_cli_report_writes_next_to_the_input(tmp_path: Path, results: dict[str, Any]) -> None:
    source = tmp_path / "demo.json"
    source.write_text(json.dumps(results))
    code, out = _invoke("report", str(source))
    assert code == 0, out
    assert (tmp_path / "demo.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert str(tmp_path / "demo.html") in out
    code, out = _invoke("report", str(source), "-o", str(tmp_path / "out" / "r.html"), "--title", "My report")
    assert code == 0, out
    assert "<title>My report</title>" in (tmp_path / "out" / "r.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        (json.dumps({"schema_version": 2, "runs": []}), "no runs"),
        (json.dumps({"schema_version": 2}), "no 'runs'"),
        (json.dumps([1, 2]), "JSON object"),
    ],
)
def test_cli_report_errors(tmp_path: Path, content: str | None, message: str) -> None:
    source = tmp_path / "results.json"
    if content is not None:
        source.write_text(content)
    code, out = _invoke("report", str(source), "-o", str(tmp_path / "report.html"))
    assert code != 0
    assert "Error" in out and message in out
    assert not (tmp_path / "report.html").exists()
    assert [p.name for p in tmp_path.iterdir()] == (["results.json"] if content is not None else [])


# ------------------------------------------------------------------------------------------------
# Headless Chromium
# ------------------------------------------------------------------------------------------------

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
if CHROMIUM is None and os.environ.get("UNLEARNKIT_REQUIRE_BROWSER") == "1":
    # CI sets this: there the browser test must run, never skip quietly.
    raise RuntimeError("UNLEARNKIT_REQUIRE_BROWSER=1 but no chromium is installed")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium; CI installs it)"
)

# Appended to a copy of the page: clicks the Acc(D_test) header of the first table twice and
# records the column's sort keys after each click, so the test can check the order; then picks
# one method in the first section's card filter and records the methods of the visible card rows.
SORT_PROBE = """
<script>
(function () {
  var section = document.querySelector("section.request");
  var filter = section.querySelector("select.card-filter");
  filter.value = "ssd";
  filter.dispatchEvent(new Event("change"));
  var visible = Array.prototype.filter.call(section.querySelectorAll("tr[data-card-method]"), function (tr) {
    return !tr.hidden;
  }).map(function (tr) { return tr.getAttribute("data-card-method"); });
  document.documentElement.setAttribute("data-probe-cards", JSON.stringify(visible));
  var table = section.querySelector("table.sortable");
  var th = table.querySelector('th[data-key="acc_test"]');
  var index = Array.prototype.indexOf.call(th.parentNode.children, th);
  function keys() {
    return Array.prototype.map.call(table.querySelectorAll("tbody.rows tr"), function (tr) {
      return tr.cells[index].getAttribute("data-sort");
    });
  }
  th.querySelector("button").click();
  document.documentElement.setAttribute("data-probe-ascending", JSON.stringify(keys()));
  th.querySelector("button").click();
  document.documentElement.setAttribute("data-probe-descending", JSON.stringify(keys()));
})();
</script>
"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs headless Chromium with its own profile directory and console logging on stderr."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def _html_attributes(dom: str) -> dict[str, str]:
    match = re.search(r"<html([^>]*)>", dom)
    assert match, dom[:500]
    return {k: html.unescape(v) for k, v in re.findall(r'([\w-]+)="([^"]*)"', match.group(1))}


def _console_lines(stderr: str) -> list[str]:
    # Chromium logs every console message and uncaught error of the page as ":CONSOLE".
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _dump_dom(tmp_path: Path, page: Path) -> tuple[str, list[str]]:
    done = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, _console_lines(done.stderr)


@needs_chromium
def test_report_in_headless_chromium(tmp_path: Path, results: dict[str, Any]) -> None:
    page = write_report(results, tmp_path / "report.html")
    dom, console = _dump_dom(tmp_path, page)
    attributes = _html_attributes(dom)
    assert attributes.get("data-report-ready") == "1", "the page's script did not run to its end"
    assert "data-js-errors" not in attributes, attributes.get("data-js-errors")
    assert console == [], console
    # Every method is in the first request's table after the scripts ran (one row each).
    first = dom.split('id="request-1"')[0]
    rows = [html.unescape(m) for m in re.findall(r'<tr data-method="([^"]*)"', first)]
    assert sorted(rows) == sorted(METHODS)
    assert 'data-ref="retrained"' in first and 'data-ref="original"' in first
    # The section selector shows the first request only.
    assert re.search(r'<section[^>]*id="request-1"[^>]*hidden', dom)
    assert not re.search(r'<section[^>]*id="request-0"[^>]*hidden', dom)

    screenshot = Path(os.environ.get("UNLEARNKIT_REPORT_SCREENSHOT") or tmp_path / "report.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    done = _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1400,2000", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert _console_lines(done.stderr) == []
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, screenshot
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"report screenshot: {screenshot}")


@needs_chromium
def test_sorting_and_filter_in_headless_chromium(tmp_path: Path, results: dict[str, Any]) -> None:
    page = tmp_path / "probe.html"
    page.write_text(render_report(results).replace("</body>", SORT_PROBE + "</body>"), encoding="utf-8")
    dom, console = _dump_dom(tmp_path, page)
    attributes = _html_attributes(dom)
    assert "data-js-errors" not in attributes and console == [], (attributes.get("data-js-errors"), console)
    ascending = [float(v) if v else None for v in json.loads(attributes["data-probe-ascending"])]
    descending = [float(v) if v else None for v in json.loads(attributes["data-probe-descending"])]
    present = [v for v in ascending if v is not None]
    assert len(present) >= 3
    assert ascending == sorted(present) + [None] * (len(ascending) - len(present))  # numeric, missing last
    assert descending == sorted(present, reverse=True) + [None] * (len(ascending) - len(present))
    assert json.loads(attributes["data-probe-cards"]) == ["ssd"] * 3  # one row per card, k = 3


@needs_chromium
def test_error_hook_catches_script_errors(tmp_path: Path, results: dict[str, Any]) -> None:
    """The harness itself: a broken script on the page must show up, or the checks above prove nothing."""
    page = tmp_path / "broken.html"
    page.write_text(render_report(results).replace("</body>", "<script>undefinedFunction();</script></body>"),
                    encoding="utf-8")
    dom, console = _dump_dom(tmp_path, page)
    assert "undefinedFunction" in _html_attributes(dom).get("data-js-errors", "")
    assert any("undefinedFunction" in line for line in console)
