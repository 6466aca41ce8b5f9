"""Edge cases found in review: each must give an unlearnkit error or work, never a raw crash."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import fast_params
from unlearnkit import (
    DataContractError,
    ForgetRequest,
    InvalidHyperparameterError,
    InvalidModelError,
    UnlearnkitError,
)
from unlearnkit.data import DataSplit
from unlearnkit.models import SmallCNN
from unlearnkit.tuning import FloatRange


@pytest.mark.parametrize(
    "params",
    [{"lr": "fast"}, {"lr": None}, {"forget_margin": None}, {"stop_margin": None}, {"batch_size": "a"},
     {"momentum": True}],
)
def test_non_numbers_are_refused(params: dict) -> None:
    with pytest.raises(InvalidHyperparameterError, match="must be a number|whole number"):
        unlearnkit.create_method("neggrad", **params)


def test_l2ul_refuses_non_numbers_and_fractional_counts() -> None:
    with pytest.raises(InvalidHyperparameterError):
        unlearnkit.create_method("l2ul", reg_lambda=None)
    with pytest.raises(InvalidHyperparameterError, match="whole number"):
        unlearnkit.create_method("l2ul", importance_batch_size=2.5)


@pytest.mark.parametrize("name", ["neggrad", "l2ul_adv", "neggrad_plus", "random_label"])
def test_a_run_without_any_cap_is_refused(name: str) -> None:
    with pytest.raises(InvalidHyperparameterError, match="at least one of max_passes"):
        unlearnkit.create_method(name, max_passes=None, max_steps=None, max_seconds=None)
    unlearnkit.create_method(name, max_passes=None, max_steps=None, max_seconds=5.0)
    with pytest.raises(InvalidHyperparameterError, match="whole number"):
        unlearnkit.create_method(name, max_passes=2.5)


@pytest.mark.parametrize("name", ["neggrad", "l2ul_adv", "l2ul"])
def test_half_precision_models_run(name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    model = SmallCNN(image_size=8)
    model.load_state_dict(trained_cnn.state_dict())
    model = model.to(torch.bfloat16)
    result = unlearnkit.unlearn(model, forget, method=name, **fast_params(name, max_steps=3))
    assert next(result.model.parameters()).dtype == torch.bfloat16
    assert unlearnkit.evaluate(result.model, {"f": forget})["acc/f"] >= 0.0


def test_models_that_cannot_be_unlearned_are_named(forget: tuple[Tensor, Tensor]) -> None:
    frozen = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(InvalidModelError, match="no trainable parameters"):
        unlearnkit.unlearn(frozen, forget, method="l2ul")
    one_class = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    with pytest.raises(InvalidModelError, match="at least 2"):
        unlearnkit.unlearn(one_class, (forget[0], torch.zeros_like(forget[1])), method="l2ul")


def test_bad_heldout_is_named_and_refused_before_work(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    with pytest.raises(DataContractError, match="heldout data: the heldout set is empty"):
        unlearnkit.unlearn(trained_cnn, forget, method="neggrad", goal="unseen", heldout=(digits.x_test[:0], digits.y_test[:0]))
    with pytest.raises(DataContractError, match="only to calibrate"):
        unlearnkit.unlearn(trained_cnn, forget, method="neggrad", heldout=(digits.x_test, digits.y_test))


def test_time_cap_counts_the_attack(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    """A cap shorter than the attack stops the run at its first check, not max_seconds after it."""
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="l2ul_adv", n_adv=20, pgd_steps=200, max_seconds=1e-3, max_passes=None,
    )
    assert result.stop_reason in {"max_seconds", "goal_reached"}
    assert result.steps <= 1


def test_auto_lr_without_anchors_falls_back_to_the_preset(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = unlearnkit.unlearn(
            trained_cnn, forget, method="l2ul_adv", lr="auto", n_adv=1, pgd_eps=1e-6, pgd_steps=1, pgd_rounds=1,
            shift_anchors=0, max_steps=5,
        )
    assert any("has no anchors" in str(w.message) for w in caught)
    assert result.details["lr/chosen"] == 1e-4 and "lr/trials" not in result.details


def test_tune_refuses_a_searched_and_fixed_parameter(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    pytest.importorskip("optuna")
    with pytest.raises(InvalidHyperparameterError, match="both searched and held fixed"):
        unlearnkit.tune(
            trained_cnn, ForgetRequest(*forget), "neggrad", validation=(digits.x_test, digits.y_test),
            search_space={"lr": FloatRange(1e-4, 1e-3)}, lr=1e-3,
        )
    with pytest.raises(UnlearnkitError, match="no trial finished"):
        unlearnkit.tune(
            trained_cnn, ForgetRequest(*forget), "neggrad", validation=(digits.x_test, digits.y_test),
            search_space={"lr": FloatRange(1e-4, 1e-3)}, n_trials=1, timeout=1e-9,
        )


def test_accuracy_in_the_models_dtype(forget: tuple[Tensor, Tensor]) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    assert 0.0 <= unlearnkit.evaluate(model, {"f": forget})["acc/f"] <= 100.0


def test_reversed_seed_range_is_a_usage_error() -> None:
    import click

    from unlearnkit.cli import parse_seeds

    with pytest.raises(click.BadParameter):
        parse_seeds("0,3-1")


def test_written_files_are_readable_by_others(tmp_path, trained_cnn: SmallCNN) -> None:  # type: ignore[no-untyped-def]
    import os
    import stat

    from unlearnkit.utils.checkpoint import save_state_dict
    from unlearnkit.utils.io import default_file_mode, write_json_atomic

    json_path = write_json_atomic(tmp_path / "a.json", {"x": 1})
    save_state_dict(trained_cnn, tmp_path / "m.safetensors")
    for path in (json_path, tmp_path / "m.safetensors"):
        assert stat.S_IMODE(os.stat(path).st_mode) == default_file_mode()


def test_progress_bars_are_drawn_when_asked(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], capsys) -> None:  # type: ignore[no-untyped-def]
    unlearnkit.unlearn(trained_cnn, forget, method="neggrad", progress=True, max_steps=3)
    assert "neggrad" in capsys.readouterr().err
    unlearnkit.unlearn(trained_cnn, forget, method="neggrad", progress=False, max_steps=3)
    assert "neggrad" not in capsys.readouterr().err
