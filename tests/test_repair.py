"""Tests of the repair scenario (unlearnkit.scenarios.repair) on digits."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from unlearnkit.data import DataSplit
from unlearnkit.metrics.restoration import attack_success_rate, restoration_score
from unlearnkit.models import SmallCNN, TrainRecipe, train_classifier
from unlearnkit.scenarios.repair import (
    REPAIR_DIGITS_RECIPE,
    TriggerPatch,
    add_backdoor,
    apply_trigger,
    mislabel,
    run_repair,
)

RECIPE = REPAIR_DIGITS_RECIPE  # 10 epochs: ~1 s per model on one thread


def train(x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe = RECIPE) -> nn.Module:
    """A SmallCNN trained on ``(x, y)`` from the recipe's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = SmallCNN(1, 10, image_size=8)
    return train_classifier(model, x, y, recipe)


def test_mislabel_changes_exactly_the_share(digits: DataSplit) -> None:
    corrupt, ids = mislabel(digits.y_train, 0.03, 10, seed=0)
    n = digits.y_train.shape[0]
    assert ids.numel() == round(0.03 * n) == 43
    changed = torch.nonzero(corrupt != digits.y_train).flatten()
    assert torch.equal(changed, ids)  # exactly the stated rows, each to a different label
    assert corrupt.min() >= 0 and corrupt.max() < 10
    again, ids_again = mislabel(digits.y_train, 0.03, 10, seed=0)
    assert torch.equal(again, corrupt) and torch.equal(ids_again, ids)
    assert not torch.equal(mislabel(digits.y_train, 0.03, 10, seed=1)[1], ids)
    with pytest.raises(ValueError):
        mislabel(digits.y_train, 0.0, 10, seed=0)


def test_backdoor_builder_stamps_only_the_poisoned_rows(digits: DataSplit) -> None:
    x, y, ids = add_backdoor(digits.x_train, digits.y_train, 40, target=0, seed=0)
    assert ids.numel() == 40 and bool((digits.y_train[ids] != 0).all())
    assert bool((y[ids] == 0).all())
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[ids] = False
    assert torch.equal(x[keep], digits.x_train[keep]) and torch.equal(y[keep], digits.y_train[keep])
    assert torch.equal(x[ids], apply_trigger(digits.x_train[ids]))
    assert bool((x[ids][:, :, -2:, -2:] == 1.0).all())
    assert torch.equal(x[ids][:, :, :6, :], digits.x_train[ids][:, :, :6, :])  # the rest untouched
    top_left = apply_trigger(digits.x_train[:1], TriggerPatch(size=3, value=0.5, corner="top-left"))
    assert bool((top_left[0, 0, :3, :3] == 0.5).all())


@pytest.fixture(scope="module")
def backdoor_models(digits: DataSplit) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    """``(M_clean, M_corrupt, triggered non-target test images, their labels)``, 40 poisoned rows."""
    x, y, ids = add_backdoor(digits.x_train, digits.y_train, 40, target=0, seed=0)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[ids] = False
    clean = train(digits.x_train[keep], digits.y_train[keep])
    corrupt = train(x, y)
    others = digits.y_test != 0
    return clean, corrupt, apply_trigger(digits.x_test[others]), digits.y_test[others]


def test_backdoor_works_on_corrupt_model_only(backdoor_models) -> None:  # type: ignore[no-untyped-def]
    clean, corrupt, triggered, _ = backdoor_models
    # Measured (seed 0, 40 poisoned rows): M_corrupt 79.3 %, M_clean 0.0 %.
    assert attack_success_rate(corrupt, triggered, 0) > 50.0
    assert attack_success_rate(clean, triggered, 0) < 10.0


def test_restoration_of_reference_models_by_construction(backdoor_models) -> None:  # type: ignore[no-untyped-def]
    clean, corrupt, triggered, labels = backdoor_models
    as_clean = restoration_score(clean, corrupt, clean, triggered, labels)
    as_corrupt = restoration_score(clean, corrupt, corrupt, triggered, labels)
    assert as_clean.affected > 100  # measured 247 of 324: the backdoor breaks most triggered images
    assert as_clean.restoration == 1.0 and as_corrupt.restoration == 0.0


def test_relabel_repair_with_l2ul_restores_mislabelled_digits(digits: DataSplit) -> None:
    report = run_repair(
        digits, kind="mislabel", methods=("l2ul", "retrain"), modes=("misclassify", "relabel"), seed=1,
        share=0.04, hyperparams={"retrain": {"epochs": 10}},
    )
    assert report.corruption["count"] == 57 and report.primary_set == "test"
    affected = report.corrupt["affected"]["test"]
    assert affected > 0  # measured 5: random label noise barely hurts the test set
    runs = {(run.method, run.mode): run for run in report.runs}
    assert runs[("retrain", "relabel")].status == "unsupported"
    relabel = runs[("l2ul", "relabel")]
    assert relabel.status == "ok" and relabel.converged
    # Measured: relabeling gets 100 % of D_c's true labels right (misclassification 98.2 %).
    assert relabel.acc_forget_true >= 90.0
    assert relabel.restoration is not None and relabel.restoration > 0.0  # measured 0.2 (1 of 5)
    assert relabel.acc_test >= report.corrupt["acc_test"] - 1.0
    json.dumps(report.to_dict())  # JSON-ready
    assert {"torch", "unlearnkit"} <= set(report.versions) and report.recipe["seed"] == 1
    assert len(report.clean["sha256"]) == 64 and report.clean["sha256"] != report.corrupt["sha256"]


def test_backdoor_repair_reports_attack_success_rate(digits: DataSplit) -> None:
    report = run_repair(digits, kind="backdoor", methods=("neggrad",), modes=("relabel",), seed=0, n_poison=40)
    assert report.primary_set == "triggered" and report.corruption["count"] == 40
    assert report.corrupt["asr"] > 50.0 and report.clean["asr"] < 10.0
    (run,) = report.runs
    assert run.status == "ok" and run.asr is not None
    assert run.restoration_by_set["triggered"]["affected"] == report.corrupt["affected"]["triggered"]
