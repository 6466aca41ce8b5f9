"""Continual unlearning: requests applied one after another, with the relapse check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import same_state, snapshot
from unlearnkit.data import DataSplit
from unlearnkit.errors import InvalidRequestError
from unlearnkit.methods import METHODS, MethodRun, UnlearnContext, UnlearningMethod, method_class, register_method
from unlearnkit.models import SmallCNN
from unlearnkit.request import ForgetRequest
from unlearnkit.scenarios.continual import draw_sequence, relapse_table, run_sequence
from unlearnkit.utils.modules import predict_logits


def _sequence(digits: DataSplit, model: nn.Module, requests: int = 3, k: int = 3, relabel: bool = False) -> list[ForgetRequest]:
    """Requests of correctly classified instances only (so every goal starts unmet)."""
    correct = (predict_logits(model, digits.x_train).argmax(1) == digits.y_train).nonzero().flatten()
    sequence = []
    for r in range(requests):
        idx = correct[r * 50 : r * 50 + k * 7 : 7]
        labels = digits.y_train[idx]
        new = (labels + 1) % 10 if relabel else None
        sequence.append(ForgetRequest(digits.x_train[idx], labels, new, ids=tuple(idx.tolist())))
    return sequence


def test_draw_sequence_is_disjoint_and_seeded(digits: DataSplit) -> None:
    first = draw_sequence(digits, 4, 5, seed=2)
    again = draw_sequence(digits, 4, 5, seed=2)
    other = draw_sequence(digits, 4, 5, seed=3)
    ids = [i for r in first for i in r.ids]
    assert len(ids) == len(set(ids)) == 20
    assert [r.ids for r in first] == [r.ids for r in again] and [r.ids for r in first] != [r.ids for r in other]
    for r in first:
        assert torch.equal(r.labels, digits.y_train[list(r.ids)])
    relabel = draw_sequence(digits, 2, 5, seed=2, relabel=True)
    assert all(bool((r.new_labels != r.labels).all()) for r in relabel)


def test_each_request_is_applied_to_the_current_model(
    trained_cnn: SmallCNN, digits: DataSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequence = _sequence(digits, trained_cnn)
    state = snapshot(trained_cnn)
    seen: list[tuple[nn.Module, UnlearnContext]] = []
    cls = method_class("neggrad")
    original = cls._unlearn

    def spy(self, context: UnlearnContext) -> MethodRun:
        seen.append((snapshot(context.model), context))
        return original(self, context)

    monkeypatch.setattr(cls, "_unlearn", spy)
    report = run_sequence(trained_cnn, sequence, "neggrad", data=digits, hyperparams={"lr": 0.02}, seed=5)
    assert same_state(trained_cnn, state)  # the caller's model is untouched
    assert len(seen) == 3
    for j, (_, context) in enumerate(seen):
        assert context.request.ids == sequence[j].ids  # only that request's instances
        assert context.seed == 5 + j and context.retain is None  # neggrad reads no retain data
    # Request 2 starts from the model request 1 produced, not from the original.
    assert not all(torch.equal(seen[1][0][k], state[k]) for k in state)
    steps = report["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert [len(s["goal_share"]) for s in steps] == [1, 2, 3]
    assert steps[0]["model_sha256"] != steps[2]["model_sha256"]


class _Restore(UnlearningMethod):
    """A toy method: the first call applies neggrad; every later call restores the weights the
    sequence started from, which brings every earlier forgotten instance back: a relapse."""

    summary = "toy"
    start: dict = {}

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        if not _Restore.start:
            _Restore.start = snapshot(context.model)
            return method_class("neggrad")(lr=0.02)._unlearn(context)
        context.model.load_state_dict(_Restore.start)
        return MethodRun(1, 1, False, "fixed_schedule")


def test_a_relapse_is_an_earlier_goal_that_held_and_no_longer_does(
    trained_cnn: SmallCNN, digits: DataSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    monkeypatch.setattr(_Restore, "start", {})
    register_method("test_restore")(_Restore)
    sequence = _sequence(digits, trained_cnn)
    report = run_sequence(trained_cnn, sequence, "test_restore", data=digits)
    first, second, third = report["steps"]
    assert first["goal_share"] == [100.0] and first["forget_accuracy"] == [0.0] and first["relapsed"] == []
    assert second["goal_share"][0] == 0.0 and second["forget_accuracy"][0] == 100.0
    assert second["relapsed"] == [0]  # request 1 held after it was applied, and no longer does
    assert third["relapsed"] == [0]  # request 2 never held, so it cannot relapse
    headers, rows = relapse_table(report)
    assert headers[1:4] == ["D_f1", "D_f2", "D_f3"] and len(rows) == 3
    assert rows[0][1] == 0.0 and rows[0][2] is None and rows[0][3] is None  # later requests not applied yet
    assert rows[1][1] == 100.0 and rows[1][headers.index("relapsed")] == "1"


def test_neggrad_meets_each_request_when_it_is_applied(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    report = run_sequence(trained_cnn, _sequence(digits, trained_cnn), "neggrad", data=digits, hyperparams={"lr": 0.02})
    for rec in report["steps"]:
        assert rec["status"] == "converged" and rec["goal_share"][rec["step"]] == 100.0
        for j in range(rec["step"]):
            assert (j in rec["relapsed"]) == (rec["goal_share"][j] < 100.0)


def test_retain_data_excludes_every_instance_requested_so_far(
    trained_cnn: SmallCNN, digits: DataSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    sequence = _sequence(digits, trained_cnn)
    sizes: list[int] = []
    cls = method_class("finetune")
    original = cls._unlearn

    def spy(self, context: UnlearnContext) -> MethodRun:
        sizes.append(int(context.retain[0].shape[0]))
        return original(self, context)

    monkeypatch.setattr(cls, "_unlearn", spy)
    run_sequence(trained_cnn, sequence, "finetune", data=digits, hyperparams={"epochs": 1})
    n = len(digits.y_train)
    assert sizes == [n - 3, n - 6, n - 9]


def test_a_diverged_request_stops_the_sequence(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    sequence = _sequence(digits, trained_cnn)
    report = run_sequence(trained_cnn, sequence, "neggrad", data=digits, hyperparams={"preset": "paper", "lr": 1e8})
    assert report["steps"][-1]["status"] == "diverged" and "NaN or infinite" in report["steps"][-1]["error"]
    assert len(report["steps"]) <= len(sequence)


def test_bad_sequences_are_refused(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    sequence = _sequence(digits, trained_cnn)
    with pytest.raises(ValueError, match="repeats instance"):
        run_sequence(trained_cnn, [sequence[0], sequence[0]], "neggrad", data=digits)
    outside = ForgetRequest(digits.x_train[:2], digits.y_train[:2], ids=(0, 99999))
    with pytest.raises(ValueError, match="outside the 1437 training rows"):
        run_sequence(trained_cnn, [outside], "neggrad", data=digits)
    unlabelled = ForgetRequest(digits.x_train[:2], None, ids=(0, 1))
    with pytest.raises(InvalidRequestError, match="request 1 has no labels"):
        run_sequence(trained_cnn, [sequence[0], unlabelled], "neggrad", data=digits)
    with pytest.raises(ValueError, match="requests must be >= 1"):
        draw_sequence(digits, 0, 4, seed=0)


def test_relabel_sequences_measure_the_new_labels(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    sequence = _sequence(digits, trained_cnn, requests=2, relabel=True)
    report = run_sequence(trained_cnn, sequence, "neggrad", data=digits, hyperparams={"lr": 0.02})
    last = report["steps"][-1]
    assert last["goal_share"][1] == 100.0 and last["forget_accuracy"][1] == 0.0
    assert report["requests"][1]["new_labels"] == sequence[1].new_labels.tolist()


def test_summarise_sequences_averages_the_last_state_and_skips_diverged_runs() -> None:
    from unlearnkit.scenarios.continual import summarise_sequences

    def step(status: str, forget: list[float], test: float, relapsed: list[int]) -> dict:
        return {"status": status, "forget_accuracy": forget, "retain_accuracy": test + 1, "test_accuracy": test,
                "relapsed": relapsed, "seconds": 1.0}

    def report(seed: int, steps: list[dict]) -> dict:
        return {"dataset": "digits", "method": "l2ul", "mode": "misclassify", "k": 4, "seed": seed,
                "original": {"retain_accuracy": 100.0, "test_accuracy": 99.0}, "steps": steps}

    reports = [
        report(0, [step("converged", [0.0], 98.0, []), step("converged", [50.0, 0.0], 96.0, [0])]),
        report(1, [step("converged", [0.0], 97.0, []), step("not_converged", [0.0, 25.0], 94.0, [])]),
        report(2, [step("converged", [0.0], 97.0, []), step("diverged", [], 0.0, [])]),
    ]
    (row,) = summarise_sequences(reports)
    assert (row["runs"], row["complete"], row["seeds"]) == (3, 2, [0, 1, 2])
    assert row["final_forget"] == [25.0, 12.5] and row["test"] == 95.0 and row["retain"] == 96.0
    assert row["relapsed"] == 0.5 and row["converged"] == "4/6" and row["seconds"] == 1.0
