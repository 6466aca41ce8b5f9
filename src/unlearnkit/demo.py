"""The demo on the embedded default: the digits CNN, k random forget instances, several methods.

:func:`run_demo` returns a JSON-ready report; :func:`demo_tables` renders it for a terminal.
The CLI's ``unlearnkit demo`` is a thin shell around the two.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from unlearnkit.components.unseen import per_example_loss
from unlearnkit.errors import CheckpointError
from unlearnkit.data.splits import DataSplit, draw_forget_indices, random_new_labels
from unlearnkit.methods.registry import create_method, method_class
from unlearnkit.metrics.accuracy import evaluate
from unlearnkit.models import pretrained
from unlearnkit.models.pretrained import DefaultModel, load_pretrained, load_retrained
from unlearnkit.report.table import format_table
from unlearnkit.request import ForgetRequest, Goal
from unlearnkit.result import UnlearnResult
from unlearnkit.scenarios.evidence import gather_evidence, model_figures
from unlearnkit.scenarios.forget_sets import draw_forget_set
from unlearnkit.scenarios.single import RunRecord, run_request
from unlearnkit.scenarios.views import model_views
from unlearnkit.utils.modules import predict_logits
from unlearnkit.utils.versions import environment_versions

#: Schema version of the demo report JSON (documented in the README).
DEMO_SCHEMA_VERSION = 2
#: Training rows the worst-case / easiest search runs on (a seeded pool) when there are more:
#: its lower level fine-tunes on the pool, which must stay cheap on MNIST and CIFAR-10.
FORGET_SET_POOL = 2000
DEFAULT_DEMO_METHODS: tuple[str, ...] = ("neggrad", "l2ul_adv", "l2ul")


def draw_request(
    data: DataSplit,
    k: int,
    seed: int,
    goal: Goal,
    *,
    forget_set: str = "random",
    model: nn.Module | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[ForgetRequest, Tensor]:
    """``k`` training instances drawn with ``seed`` as a request for ``goal`` (relabeling: seeded
    random new labels), and the mask of the training instances kept.

    ``forget_set`` picks how: ``"random"`` (uniform, the default), ``"worst"`` / ``"easiest"``
    (the bi-level search of :func:`~unlearnkit.scenarios.forget_sets.select_forget_set` on
    ``model``, over a seeded pool of at most :data:`FORGET_SET_POOL` training rows, cached in
    ``cache_dir/forget_sets``) or ``"one-class"`` (``k`` rows of one seeded class).
    """
    if forget_set == "random":
        forget_idx = draw_forget_indices(len(data.y_train), k, seed)
    else:
        if forget_set in ("worst", "worst-case", "easiest") and model is None:
            raise ValueError(f"a {forget_set!r} forget set is searched on a model; pass model=")
        n = len(data.y_train)
        pool = None if n <= FORGET_SET_POOL else torch.from_numpy(
            np.random.default_rng(seed).choice(n, FORGET_SET_POOL, replace=False)
        ).sort().values
        selection = draw_forget_set(
            forget_set, model, data.x_train, data.y_train, k, seed=seed, candidates=pool,  # type: ignore[arg-type]
            **({} if forget_set == "one-class" else {
                "cache_dir": Path(cache_dir or pretrained.cache_dir()) / "forget_sets", "weight_lr": 1.0,
            }),
        )
        forget_idx = torch.as_tensor(selection.indices, dtype=torch.long)
    keep = torch.ones(len(data.y_train), dtype=torch.bool)
    keep[forget_idx] = False
    labels = data.y_train[forget_idx]
    new_labels = random_new_labels(labels, data.num_classes, seed) if goal == "relabel" else None
    request = ForgetRequest(
        data.x_train[forget_idx], labels, new_labels, ids=tuple(forget_idx.tolist()),
        goal="unseen" if goal == "unseen" else None,
    )
    return request, keep


def heldout_half(data: DataSplit) -> tuple[Tensor, Tensor]:
    """The first half of the test set: data the model never saw, for calibration and validation."""
    half = len(data.y_test) // 2
    return data.x_test[:half], data.y_test[:half]


def run_demo(
    *,
    dataset: str = "digits",
    k: int = 16,
    seeds: Sequence[int] = (0,),
    goals: Sequence[Goal] = ("misclassify",),
    methods: Sequence[str] = DEFAULT_DEMO_METHODS,
    hyperparams: Mapping[str, Mapping[str, Any]] | None = None,
    cache_directory: str | Path | None = None,
    progress: bool = False,
    evidence: bool = True,
    projection: str = "pca",
) -> dict[str, Any]:
    """Runs every method on k random forget instances of a pretrained model (default: digits).

    For each seed and goal, ``k`` training instances are drawn with that seed (in relabeling
    mode each gets a random new label, also seeded) and every method unlearns them from the same
    original model.

    Args:
        dataset: ``"digits"`` (embedded) or ``"mnist"`` (reads ``mnist.npz``; trains its CNN in
            about 70 s on first use); see :data:`~unlearnkit.models.pretrained.PRETRAINED`.
        k: Forget instances per request.
        seeds: One request per seed (and goal).
        goals: ``"misclassify"``, ``"relabel"`` and/or ``"unseen"`` (loss targets calibrated on
            the first half of the test set, which the model never saw).
        methods: Registered method names.
        hyperparams: Per-method hyperparameters, ``{method: {name: value}}``.
        cache_directory: Where the default model (and each request's retrained reference) is
            cached.
        progress: Show progress bars.
        evidence: Gather the evidence of every run (membership attacks, gap to a model
            retrained without the forget set, CKA, k-NN, collateral damage, relearn steps,
            verdict; see :func:`~unlearnkit.scenarios.evidence.gather_evidence`). Retrains the
            model once per forget set (about 4 s on digits, cached).
        projection: Projection of the report's embedding maps: ``"pca"`` (default) or
            ``"umap"`` (needs umap-learn).

    Returns:
        The report: data set, model (with sha256), configuration, one entry per request with the
        original model's accuracies, one record per run, a summary over seeds, and versions.
    """
    hyperparams = dict(hyperparams or {})
    for method in methods:  # refuse bad settings before any model is loaded or trained
        create_method(method, **dict(hyperparams.get(method, {})))
    default = load_pretrained(dataset, directory=cache_directory, progress=progress)
    own_models = {
        method: model_for_method(method, default, cache_directory)
        for method in methods if method_class(method).trains_own_model
    }
    return _run_cells(
        default, own_models, k=k, seeds=seeds, goals=goals, methods=methods, hyperparams=hyperparams,
        dataset=dataset, cache_directory=cache_directory, progress=progress, evidence=evidence,
        projection=projection,
    )


def model_for_method(method: str, default: DefaultModel, cache_directory: str | Path | None = None) -> nn.Module:
    """The model ``method`` unlearns from in demos and benchmarks.

    The pretrained model itself, except for a method that trains its own model
    (``trains_own_model``, e.g. ``s3t``): that one is prepared once from the pretrained model's
    task and training set (seed 0) and kept in the model cache beside it. A cached copy that no
    longer matches the method's settings is discarded and prepared again.

    Args:
        method: A registered method name.
        default: The pretrained model and its data (:func:`~unlearnkit.models.pretrained.load_pretrained`).
        cache_directory: The model cache (default: :func:`~unlearnkit.models.pretrained.cache_dir`).
    """
    cls = method_class(method)
    if not cls.trains_own_model:
        return default.model
    directory = Path(cache_directory or pretrained.cache_dir()) / f"{default.path.stem}-{method}"
    train = (default.data.x_train, default.data.y_train)
    if directory.exists():
        try:
            return cls.prepare_model(default.model, train, seed=0, directory=directory)
        except CheckpointError:
            # A cache entry from other settings (or a damaged one): it is ours to replace.
            shutil.rmtree(directory, ignore_errors=True)
    # Trained in a private directory and renamed into place in one step, so that grid cells
    # running at once (Ray workers) never read or write a half-written model: the first rename
    # wins, the others discard their copy and load it.
    scratch = directory.with_name(f"{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        cls.prepare_model(default.model, train, seed=0, directory=scratch)
        try:
            scratch.rename(directory)
        except OSError:
            if not directory.exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return cls.prepare_model(default.model, train, seed=0, directory=directory)


def _run_cells(
    default: DefaultModel,
    own_models: Mapping[str, torch.nn.Module],
    *,
    k: int,
    seeds: Sequence[int],
    goals: Sequence[Goal],
    methods: Sequence[str],
    hyperparams: Mapping[str, Mapping[str, Any]],
    dataset: str,
    cache_directory: str | Path | None,
    progress: bool,
    evidence: bool,
    projection: str,
) -> dict[str, Any]:
    """:func:`run_demo`'s loop over seeds, goals and methods. ``own_models`` holds the models of
    methods that train their own (``trains_own_model``); they unlearn from those, and their
    evidence compares against them as the original."""
    data, model = default.data, default.model
    requests: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    cells = [(seed, goal) for seed in seeds for goal in goals]
    bar = tqdm(total=len(cells) * len(methods), desc="demo", unit="run", disable=not progress)
    for seed, goal in cells:
        request, keep = draw_request(data, k, seed, goal)
        labels, new_labels = request.known_labels, request.new_labels  # draw_request labels every request
        heldout = heldout_half(data) if goal == "unseen" else None
        splits = {"retain": (data.x_train[keep], data.y_train[keep]), "test": (data.x_test, data.y_test)}
        original = evaluate(model, {"forget": (request.inputs, labels), **splits})
        original["loss/forget"] = float(per_example_loss(predict_logits(model, request.inputs), labels).mean())
        if new_labels is not None:
            original.update(evaluate(model, {"relabel": (request.inputs, new_labels)}))
        entry: dict[str, Any] = {
            "seed": seed, "goal": goal, "ids": list(request.ids), "labels": labels.tolist(),
            "new_labels": None if new_labels is None else new_labels.tolist(), "original": original,
            "num_classes": data.num_classes, "image_shape": list(request.inputs.shape[1:]),
            "images": request.inputs.squeeze(1).tolist() if request.inputs.shape[1] == 1 else request.inputs.tolist(),
        }
        gather = None
        if evidence:
            gather, entry["retrained"], extras = evidence_for_request(
                model, data, request, splits, dataset, cache_directory, seed, progress, projection=projection
            )
            entry.update(extras)
        requests.append(entry)
        for method in methods:
            bar.set_postfix(method=method, goal=goal, seed=seed)
            cls = method_class(method)
            if (goal == "relabel" and not cls.supports_relabel) or (goal == "unseen" and not cls.supports_unseen):
                runs.append(RunRecord(method, seed, goal, "unsupported", error=f"{method} does not support goal {goal!r}").to_dict())
                bar.update(1)
                continue
            # Methods that can use retain data get it (the demo holds the whole retain split).
            retain = None if cls.data_access == "forget" else splits["retain"]
            base, gather_run = own_models.get(method, model), gather
            if evidence and base is not model:
                gather_run = evidence_for_request(
                    base, data, request, splits, dataset, cache_directory, seed, progress, projection=projection
                )[0]
            record = run_request(
                base, request, method, splits=splits, seed=seed,
                hyperparams={**cls.params_for_recipe(default.recipe), **hyperparams.get(method, {})},
                retain=retain, heldout=heldout, progress=progress, evidence=gather_run,
            )
            runs.append(record.to_dict())
            bar.update(1)
    bar.close()
    return {
        "schema_version": DEMO_SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": data.name, "n_train": len(data.y_train), "n_test": len(data.y_test)},
        "model": {
            "name": type(model).__name__, "sha256": default.sha256, "path": str(default.path),
            "test_accuracy": default.test_accuracy, "recipe": asdict(default.recipe),
        },
        "config": {
            "k": k, "seeds": list(seeds), "goals": list(goals), "methods": list(methods),
            "hyperparams": {m: dict(v) for m, v in hyperparams.items()}, "evidence": evidence,
            "projection": projection,
        },
        "requests": requests,
        "runs": runs,
        "summary": summarise(runs),
        "versions": environment_versions(),
    }


def evidence_for_request(
    model: torch.nn.Module,
    data: DataSplit,
    request: ForgetRequest,
    splits: Mapping[str, tuple[Tensor, Tensor]],
    dataset: str,
    cache_directory: str | Path | None,
    seed: int,
    progress: bool,
    *,
    projection: str = "pca",
    views: bool = True,
) -> tuple[Callable[[UnlearnResult], dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """A function gathering the evidence of one run (for
    :func:`~unlearnkit.scenarios.single.run_request`'s ``evidence``), the retrained reference
    of ``request`` (cached) with its figures and analyst views, and the request's figures of the
    original model: ``{"per_class_test_original", "original_views"}`` (the views only with
    ``views``).

    Args:
        model: The original model.
        data: Its data split; ``request.ids`` are training-set indices.
        request: The forget request.
        splits: ``retain`` and ``test`` data.
        dataset: Name of the pretrained spec (for the retrained reference).
        cache_directory: Model cache.
        seed: Seed of the attacks and relearn runs.
        progress: Show progress bars.
        projection: Projection of the embedding maps (``"pca"`` or ``"umap"``).
        views: Draw the analyst views (prediction matrices, embedding maps) of the original,
            the retrained and every unlearned model; only the HTML report shows them.
    """
    forget = (request.inputs, request.require_labels("the evidence of a request is measured against its labels; this one has none"))
    retain, test = splits["retain"], splits["test"]
    reference = load_retrained(dataset, request.ids, directory=cache_directory, progress=progress)
    original_figures = model_figures(model, forget, retain, test, num_classes=data.num_classes, seed=seed)
    retrained_figures = model_figures(reference.model, forget, retain, test, num_classes=data.num_classes, seed=seed)
    retrained = {
        **{k: v for k, v in retrained_figures.items() if k != "per_class_test"},
        "per_class_test": retrained_figures["per_class_test"],
        "sha256": reference.sha256, "seconds": reference.train_seconds, "from_cache": reference.from_cache,
    }
    original: dict[str, Any] = {"per_class_test_original": original_figures["per_class_test"]}
    if views:
        retrained["views"] = model_views(reference.model, forget, test, num_classes=data.num_classes, seed=seed, projection=projection)
        original["original_views"] = model_views(model, forget, test, num_classes=data.num_classes, seed=seed, projection=projection)

    features: dict[Any, Any] = {}  # the reference models' features, extracted once per request

    def gather(result: UnlearnResult) -> dict[str, Any]:
        return gather_evidence(
            model, result.model, forget, retain, test,
            goal_met=[o.goal_met for o in result.outcomes], ids=list(request.ids),
            original_figures=original_figures, retrained=reference.model, retrained_figures=retrained_figures,
            num_classes=data.num_classes, seed=seed, feature_cache=features,
            new_labels=request.new_labels, projection=projection, views=views,
        )

    return gather, retrained, original


#: Evidence figures averaged over seeds in the summary, and where each is in a run's evidence.
EVIDENCE_FIGURES: dict[str, Callable[[Mapping[str, Any]], float | None]] = {
    "mia_efficacy": lambda e: e["mia_efficacy"],
    "entropy_mia": lambda e: e["entropy_mia"],
    "loss_auc": lambda e: e["loss_auc"],
    "gap": lambda e: None if e["gap"] is None else e["gap"]["average"],
    "cka_original": lambda e: e["cka"]["original"],
    "cka_retrained": lambda e: e["cka"]["retrained"],
    "knn_forget": lambda e: e["knn_forget"],
    "relearn_steps": lambda e: e["relearn"]["steps"] if e["relearn"]["reached"] else None,
    "privacy_score": lambda e: (e.get("privacy") or {}).get("score"),
}


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarise(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Means over seeds per (goal, method). Diverged runs have no model: they are counted, not averaged."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["goal"], run["method"]), []).append(run)
    summary = []
    for (goal, method), group in groups.items():
        finished = [r for r in group if r["status"] not in ("diverged", "unsupported")]
        row: dict[str, Any] = {
            "goal": goal, "method": method, "runs": len(group),
            "converged": sum(r["status"] == "converged" for r in group),
            "diverged": sum(r["status"] == "diverged" for r in group),
            "unsupported": sum(r["status"] == "unsupported" for r in group),
        }
        for key in ("acc/forget", "acc/retain", "acc/test", "acc/relabel", "unseen", "loss/forget"):
            values = [r["metrics"][key] for r in finished if key in r["metrics"]]
            if values:
                row[f"mean {key}"] = _mean(values)
                row[f"min {key}"] = min(values)
        row["mean steps"] = _mean([r["result"]["steps"] for r in finished])
        row["mean seconds"] = _mean([r["result"]["seconds"] for r in finished])
        with_evidence = [r["evidence"] for r in finished if r.get("evidence")]
        if with_evidence:
            for key, value in EVIDENCE_FIGURES.items():
                values = [v for v in (value(e) for e in with_evidence) if v is not None]
                if values:
                    row[f"mean {key}"] = _mean(values)
            row["logit_only"] = sum(bool(e["logit_only"]) for e in with_evidence)
            row["verdict_passed"] = sum(bool(e["verdict"]["passed"]) for e in with_evidence)
        summary.append(row)
    return summary


def demo_tables(report: Mapping[str, Any]) -> str:
    """The report as text: one table per request, then the summary when there are several seeds."""
    blocks = []
    model = report["model"]
    blocks.append(
        f"model: {model['name']} on {report['dataset']['name']}, test accuracy "
        f"{model['test_accuracy']:.1f} %, sha256 {model['sha256'][:16]}..."
    )
    for request in report["requests"]:
        relabel = request["goal"] == "relabel"
        unseen = request["goal"] == "unseen"
        headers = ["method", "status", "Acc(D_f)", "Acc(D_r)", "Acc(D_test)"]
        headers += ["relabeled"] if relabel else []
        headers += ["loss(D_f)", "at target %"] if unseen else []
        headers += ["steps", "seconds"]
        orig = request["original"]
        rows: list[list[object]] = [
            ["original", "", orig["acc/forget"], orig["acc/retain"], orig["acc/test"]]
            + ([orig["acc/relabel"]] if relabel else [])
            + ([f"{orig['loss/forget']:.2g}", None] if unseen else []) + [None, None]
        ]
        for run in report["runs"]:
            if run["seed"] != request["seed"] or run["goal"] != request["goal"]:
                continue
            m = run["metrics"]
            result = run["result"] or {}
            rows.append(
                [run["method"], run["status"], m.get("acc/forget"), m.get("acc/retain"), m.get("acc/test")]
                + ([m.get("acc/relabel")] if relabel else [])
                + ([f"{m['loss/forget']:.2g}" if "loss/forget" in m else None, m.get("unseen")] if unseen else [])
                + [result.get("steps"), result.get("seconds")]
            )
        title = f"\n{request['goal']}, k = {len(request['ids'])}, seed {request['seed']} (accuracies in %)"
        blocks.append(title + "\n" + format_table(headers, rows))
        for run in report["runs"]:
            if run["seed"] == request["seed"] and run["goal"] == request["goal"] and run["status"] == "diverged":
                blocks.append(f"  {run['method']} diverged: {run['error']}")
        if request.get("retrained") is not None:
            blocks.append(_evidence_table(request, report["runs"]))
    if len(report["config"]["seeds"]) > 1:
        headers = ["goal / method", "converged", "diverged", "Acc(D_f)", "Acc(D_r)", "Acc(D_test)", "min Acc(D_test)", "relabeled", "steps", "seconds"]
        rows = [
            [f"{s['goal']} / {s['method']}", f"{s['converged']}/{s['runs']}", s["diverged"],
             s.get("mean acc/forget"), s.get("mean acc/retain"), s.get("mean acc/test"),
             s.get("min acc/test"), s.get("mean acc/relabel"), s.get("mean steps"), s.get("mean seconds")]
            for s in report["summary"]
        ]
        blocks.append("\nmeans over seeds " + str(report["config"]["seeds"]) + " (diverged runs excluded)\n" + format_table(headers, rows))
        if any("mean gap" in s for s in report["summary"]):
            headers = ["goal / method", "MIA-eff", "entropy MIA", "gap", "CKA orig", "CKA retr", "5-NN(D_f)", "relearn", "logit only", "verdict ok"]
            rows = [
                [f"{s['goal']} / {s['method']}", s.get("mean mia_efficacy"), s.get("mean entropy_mia"), s.get("mean gap"),
                 _fmt(s.get("mean cka_original")), _fmt(s.get("mean cka_retrained")), s.get("mean knn_forget"),
                 s.get("mean relearn_steps"), f"{s.get('logit_only', 0)}/{s['runs']}", f"{s.get('verdict_passed', 0)}/{s['runs']}"]
                for s in report["summary"] if "mean gap" in s
            ]
            blocks.append("\nevidence, means over seeds\n" + format_table(headers, rows))
    return "\n".join(blocks)


def _relearn_cell(relearn: Mapping[str, Any]) -> object:
    if relearn["steps"] is None:
        return "overflow"
    return relearn["steps"] if relearn["reached"] else f">{relearn['steps']}"


def _fmt(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _evidence_table(request: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    """The evidence of each run on one request, beside the retrained reference's figures."""
    headers = ["method", "UA", "MIA-eff", "entropy MIA", "loss AUC", "gap", "CKA orig", "CKA retr", "5-NN(D_f)", "relearn", "logit only", "verdict"]
    ref = request["retrained"]
    rows: list[list[object]] = [
        ["retrained", ref["ua"], ref["mia_efficacy"], ref["entropy_mia"], _fmt(ref["loss_auc"]), 0.0, None, "1.000", None, None, None, None]
    ]
    for run in runs:
        if run["seed"] != request["seed"] or run["goal"] != request["goal"] or not run.get("evidence"):
            continue
        e = run["evidence"]
        rows.append([
            run["method"], e["ua"], e["mia_efficacy"], e["entropy_mia"], _fmt(e["loss_auc"]),
            None if e["gap"] is None else e["gap"]["average"], _fmt(e["cka"]["original"]), _fmt(e["cka"]["retrained"]),
            e["knn_forget"], _relearn_cell(e["relearn"]),
            "yes" if e["logit_only"] else "no", "pass" if e["verdict"]["passed"] else "fail",
        ])
    return (
        "evidence (percent; gap = SalUn average gap to the retrained model; CKA on forget + test inputs; "
        "relearn = SGD steps on D_f to restore its accuracy)\n" + format_table(headers, rows)
    )
