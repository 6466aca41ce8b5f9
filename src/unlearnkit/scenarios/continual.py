"""Continual unlearning: requests applied one after another to the current model.

Each request is applied to the model the previous one produced, with only that request's
instances (plus retain data, for methods that read it, with every instance requested so far
removed from it). After every request the scenario measures every request so far: whether its
instances still meet their goal (a *relapse* is an earlier request whose goal held once and no
longer does), and the drift of retain and test accuracy; and the cost of the step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from unlearnkit.components.stopping import goal_met
from unlearnkit.data.splits import DataSplit, draw_forget_indices, random_new_labels
from unlearnkit.errors import NonFiniteError
from unlearnkit.methods.registry import create_method, method_class
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.request import ForgetRequest
from unlearnkit.utils.modules import predict_logits


@dataclass
class StepRecord:
    """The state after one request of a sequence.

    Attributes:
        step: 0-based position of the request in the sequence.
        status: ``converged``, ``not_converged`` or ``diverged`` (the sequence stops there:
            a diverged run hands back no model).
        goal_share: For every request so far (index ``j <= step``), the percent of its
            instances meeting their goal now.
        forget_accuracy: For every request so far, Acc(D_f^j) on its true labels, percent.
        relapsed: Indices of earlier requests whose goal held fully after they were applied
            and no longer does.
        retain_accuracy: Acc on the retain data (every row never requested), percent.
        test_accuracy: Acc on the test data, percent.
        steps: Optimiser steps of this request.
        seconds: Wall time of this request's unlearning call.
        model_sha256: Hash of the model after this request.
        error: The error of a diverged run.
    """

    step: int
    status: str
    goal_share: list[float] = field(default_factory=list)
    forget_accuracy: list[float] = field(default_factory=list)
    relapsed: list[int] = field(default_factory=list)
    retain_accuracy: float | None = None
    test_accuracy: float | None = None
    steps: int | None = None
    seconds: float | None = None
    model_sha256: str | None = None
    error: str | None = None


def draw_sequence(data: DataSplit, requests: int, k: int, seed: int, *, relabel: bool = False) -> list[ForgetRequest]:
    """``requests`` disjoint requests of ``k`` training instances each, drawn with ``seed``
    (relabeling: seeded random new labels); the ids are training-set indices.

    Example:
        >>> from unlearnkit.data import load_digits_split
        >>> seq = draw_sequence(load_digits_split(), 3, 4, seed=0)
        >>> [len(r) for r in seq], len({i for r in seq for i in r.ids})
        ([4, 4, 4], 12)
    """
    if requests < 1:
        raise ValueError(f"requests must be >= 1, got {requests}")
    drawn = draw_forget_indices(len(data.y_train), requests * k, seed)
    order = torch.randperm(drawn.numel(), generator=torch.Generator().manual_seed(seed))
    sequence = []
    for r in range(requests):
        idx = drawn[order[r * k : (r + 1) * k]].sort().values
        labels = data.y_train[idx]
        new = random_new_labels(labels, data.num_classes, seed * 1000 + r) if relabel else None
        sequence.append(ForgetRequest(data.x_train[idx], labels, new, ids=tuple(idx.tolist())))
    return sequence


def run_sequence(
    model: nn.Module,
    sequence: Sequence[ForgetRequest],
    method: str,
    *,
    data: DataSplit,
    hyperparams: Mapping[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Applies ``sequence`` to a copy of ``model`` one request at a time with ``method``.

    Args:
        model: The original model (not modified).
        sequence: The requests, in order; their ids must be training-set indices of ``data``.
        method: Registered method name.
        data: The training and test data (retain = training rows never requested so far).
        hyperparams: The method's hyperparameters.
        seed: Seed of request ``j`` is ``seed + j``.
        progress: Show a progress bar over the requests.

    Returns:
        A JSON-ready dict: ``method``, ``hyperparams``, ``seed``, ``original`` (retain and test
        accuracy), ``requests`` (ids, labels, new labels) and ``steps`` (one
        :class:`StepRecord` per applied request).

    Raises:
        ValueError: If a request's ids are not training indices or repeat an earlier request's.
        InvalidRequestError: If a request has no labels: every request is measured against its
            own labels after each later one (refused before any request is applied).
    """
    n = len(data.y_train)
    seen: set[int] = set()
    for j, request in enumerate(sequence):
        request.require_labels(f"request {j} has no labels; a continual sequence measures each request against its labels")
        ids = [int(i) for i in request.ids]
        if any(not 0 <= i < n for i in ids):
            raise ValueError(f"request {j} has ids outside the {n} training rows")
        if seen & set(ids):
            raise ValueError(f"request {j} repeats instance(s) {sorted(seen & set(ids))} of an earlier request")
        seen |= set(ids)
    algorithm = create_method(method, **dict(hyperparams or {}))
    uses_retain = method_class(method).data_access != "forget"
    current = model
    requested = torch.zeros(n, dtype=torch.bool)
    held_once = [False] * len(sequence)
    original = {
        "retain_accuracy": accuracy(model, data.x_train, data.y_train),
        "test_accuracy": accuracy(model, data.x_test, data.y_test),
    }
    records: list[StepRecord] = []
    for step, request in enumerate(tqdm(sequence, desc=f"continual {method}", unit="request", disable=not progress)):
        requested[list(request.ids)] = True
        keep = ~requested
        retain = (data.x_train[keep], data.y_train[keep])
        started = time.perf_counter()
        try:
            result = algorithm.unlearn(current, request, retain=retain if uses_retain else None, seed=seed + step)
        except NonFiniteError as err:
            records.append(StepRecord(step, "diverged", error=str(err)))
            break
        current = result.model
        shares, accuracies = [], []
        for j in range(step + 1):
            earlier = sequence[j]
            labels = earlier.known_labels  # every request was checked for labels above
            logits = predict_logits(current, earlier.inputs)
            met = goal_met(logits, labels, earlier.new_labels)
            shares.append(100.0 * float(met.float().mean()))
            accuracies.append(100.0 * float((logits.argmax(1) == labels).float().mean()))
        held_once[step] = shares[step] == 100.0
        relapsed = [j for j in range(step) if held_once[j] and shares[j] < 100.0]
        records.append(StepRecord(
            step, "converged" if result.converged else "not_converged", shares, accuracies, relapsed,
            retain_accuracy=accuracy(current, *retain), test_accuracy=accuracy(current, data.x_test, data.y_test),
            steps=result.steps, seconds=time.perf_counter() - started, model_sha256=result.model_sha256_after,
        ))
    return {
        "method": method,
        "hyperparams": algorithm.get_params(),
        "seed": seed,
        "original": original,
        "requests": [
            {"ids": list(r.ids), "labels": None if r.labels is None else r.labels.tolist(),
             "new_labels": None if r.new_labels is None else r.new_labels.tolist()}
            for r in sequence
        ],
        "steps": [asdict(r) for r in records],
    }


def relapse_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows of the relapse table: one row per applied request ``t``, one column per
    request ``j``: Acc(D_f^j) after request ``t`` (percent; relabeling: the share predicted as
    the new labels is in ``goal_share``), then retain/test accuracy and cost."""
    total = len(report["requests"])
    headers = ["after"] + [f"D_f{j + 1}" for j in range(total)] + ["Acc(D_r)", "Acc(D_test)", "relapsed", "steps", "seconds"]
    rows: list[list[object]] = []
    for rec in report["steps"]:
        if rec["status"] == "diverged":
            rows.append([f"request {rec['step'] + 1}", "diverged"] + [None] * (total + 4))
            continue
        cells: list[object] = list(rec["forget_accuracy"]) + [None] * (total - len(rec["forget_accuracy"]))
        relapsed = ",".join(str(j + 1) for j in rec["relapsed"]) or "-"
        rows.append([f"request {rec['step'] + 1}", *cells, rec["retain_accuracy"], rec["test_accuracy"], relapsed,
                     rec["steps"], rec["seconds"]])
    return headers, rows



def summarise_sequences(reports: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (data set, method, mode, requests, k) over the seeds of :func:`run_sequence`
    reports (as the CLI writes them): the state after the last request, averaged.

    Each row holds ``runs``, ``seeds``, ``complete`` (runs in which no request diverged),
    ``final_forget`` (per request ``j``, mean Acc(D_f^j) after the last request), ``retain`` and
    ``test`` (mean Acc(D_r) and Acc(D_test) after the last request, with the original's),
    ``relapsed`` (mean number of earlier requests relapsed after the last one), ``converged``
    (requests that met their goal when applied, over all requests) and ``seconds`` (mean
    seconds per request). Runs with a diverged request are counted but not averaged.

    Args:
        reports: Continual reports with ``dataset``, ``method``, ``mode``, ``k``, ``seed``,
            ``original`` and ``steps``.

    Example:
        >>> step = {"status": "converged", "forget_accuracy": [0.0], "retain_accuracy": 99.0,
        ...         "test_accuracy": 98.0, "relapsed": [], "seconds": 2.0}
        >>> report = {"dataset": "digits", "method": "l2ul", "mode": "misclassify", "k": 16, "seed": 0,
        ...           "original": {"retain_accuracy": 100.0, "test_accuracy": 99.0}, "steps": [step]}
        >>> row = summarise_sequences([report])[0]
        >>> row["final_forget"], row["test"], row["converged"]
        ([0.0], 98.0, '1/1')
    """
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for report in reports:
        key = (report["dataset"], report["method"], report["mode"], len(report["steps"]), report["k"])
        groups.setdefault(key, []).append(report)
    rows = []
    for (dataset, method, mode, requests, k), group in sorted(groups.items()):
        complete = [r for r in group if all(s["status"] != "diverged" for s in r["steps"])]
        last = [r["steps"][-1] for r in complete]

        def mean(values: Sequence[float]) -> float | None:
            return sum(values) / len(values) if values else None

        met = sum(s["status"] == "converged" for r in group for s in r["steps"])
        rows.append({
            "dataset": dataset, "method": method, "mode": mode, "requests": requests, "k": k,
            "runs": len(group), "seeds": sorted(r["seed"] for r in group), "complete": len(complete),
            "final_forget": [mean([s["forget_accuracy"][j] for s in last]) for j in range(requests)] if last else [],
            "retain": mean([s["retain_accuracy"] for s in last]), "test": mean([s["test_accuracy"] for s in last]),
            "original_test": mean([r["original"]["test_accuracy"] for r in group]),
            "relapsed": mean([len(s["relapsed"]) for s in last]),
            "converged": f"{met}/{sum(len(r['steps']) for r in group)}",
            "seconds": mean([s["seconds"] for r in complete for s in r["steps"]]),
        })
    return rows
