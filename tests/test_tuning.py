"""``tune`` and ``unlearnkit tune``: budgeted search, scoring, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from torch import Tensor

import unlearnkit
from unlearnkit import ForgetRequest, InvalidHyperparameterError
from unlearnkit.cli import main
from unlearnkit.data import DataSplit
from unlearnkit.models import SmallCNN
from unlearnkit.tuning import Choice, FloatRange, IntRange

pytest.importorskip("optuna")

SPACE = {"lr": FloatRange(1e-4, 1e-2, log=True), "n_adv": IntRange(2, 3), "shift_anchors": Choice((0, 1))}
FIXED = {"pgd_steps": 5, "max_steps": 60}


def _tune(model: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit, **kwargs):  # type: ignore[no-untyped-def]
    return unlearnkit.tune(
        model, ForgetRequest(*forget), "l2ul_adv", validation=(digits.x_test[:100], digits.y_test[:100]),
        n_trials=kwargs.pop("n_trials", 4), search_space=kwargs.pop("search_space", SPACE), **{**FIXED, **kwargs},
    )


def test_tune_returns_the_best_trial_and_every_row(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    result = _tune(trained_cnn, forget, digits)
    assert len(result.trials) == 4
    scores = [t["score"] for t in result.trials]
    assert result.best_score == max(scores)
    best = next(t for t in result.trials if t["score"] == result.best_score)
    assert result.best_params == {**FIXED, **best["params"]}
    for t in result.trials:
        assert set(t["params"]) == set(SPACE)
        assert 1e-4 <= t["params"]["lr"] <= 1e-2 and t["params"]["n_adv"] in (2, 3)
        if t["converged"]:
            assert t["score"] == t["validation_accuracy"]
        else:
            assert t["score"] == pytest.approx(100 * t["goal_share"] - 100) and t["score"] <= 0


def test_tune_is_reproducible(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit) -> None:
    first = _tune(trained_cnn, forget, digits, n_trials=3)
    second = _tune(trained_cnn, forget, digits, n_trials=3)
    assert [t["params"] for t in first.trials] == [t["params"] for t in second.trials]
    assert [t["score"] for t in first.trials] == [t["score"] for t in second.trials]


def test_tune_records_a_failing_trial_as_failed(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    result = unlearnkit.tune(
        trained_cnn, ForgetRequest(*forget), "neggrad", validation=(digits.x_test, digits.y_test), n_trials=1,
        search_space={"forget_margin": FloatRange(-2.0, -1.0)}, max_steps=5,
    )
    (trial,) = result.trials
    assert trial["state"].startswith("failed") and trial["score"] == -200.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"search_space": {"nope": IntRange(1, 2)}}, "no hyperparameter"), ({"bogus": 1}, "no hyperparameter")],
)
def test_tune_rejects_unknown_hyperparameters(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit, kwargs: dict, match: str
) -> None:
    with pytest.raises(InvalidHyperparameterError, match=match):
        _tune(trained_cnn, forget, digits, **kwargs)


def test_cli_tune(tmp_path: Path) -> None:
    output = tmp_path / "tune.json"
    result = CliRunner().invoke(
        main, ["tune", "-k", "3", "--method", "neggrad", "--trials", "2", "--set", "max_steps=20", "-o", str(output)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "best (neggrad" in result.output
    saved = json.loads(output.read_text())
    assert saved["method"] == "neggrad" and len(saved["trials"]) == 2 and saved["best_params"]["max_steps"] == 20
