"""Presets (``default``: robust; ``paper``: the published recipe), the shared forget-objective
hyperparameters (optimiser, forget loss, stop margin), and how l2ul / l2ul_adv build their anchors
(calibrated adversarial copies, dropped when unreached, shifted copies, none at all)."""

from __future__ import annotations

import copy
import functools
import json
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
import unlearnkit.methods.l2ul as l2ul_module
from helpers import fast_params
from unlearnkit import InvalidHyperparameterError
from unlearnkit.components.augment import shifted_copies
from unlearnkit.components.losses import forget_hinge_loss, forget_loss
from unlearnkit.data import load_digits_split
from unlearnkit.methods import FROM_PRESET, ForgetObjectiveMethod, method_class
from unlearnkit.models import SmallCNN
from unlearnkit.result import UnlearnResult
from unlearnkit.utils.modules import predict_logits

#: Every registered method that takes a preset.
PRESET_METHODS = [
    n for n in unlearnkit.list_methods() if issubclass(method_class(n), ForgetObjectiveMethod)
]
ADV_METHODS = ["l2ul", "l2ul_adv"]
PRESETS = ["default", "paper"]

#: The shared hyperparameters of every forget-objective method, per preset (from the spec).
SHARED = {
    "default": {
        "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "forget_loss": "hinge",
        "stop_margin": 0.1, "bn_mode": "freeze",
    },
    "paper": {
        "optimizer": "sgd", "lr": 1e-3, "weight_decay": 1e-4, "forget_loss": "ce",
        "stop_margin": 0.0, "bn_mode": "train",
    },
}
#: Values that do not depend on the preset.
COMMON = {"momentum": 0.9, "forget_margin": 0.5, "max_passes": 1000, "max_steps": None}
#: The anchor hyperparameters of l2ul / l2ul_adv, per preset.
ANCHORS = {
    "default": {
        "anchor_targets": "balanced", "anchor_loss": "kl", "anchor_weight": 50.0,
        "shift_anchors": 1, "pgd_steps": 50, "pgd_rounds": 4, "drop_unreached": True,
        "pgd_stop_margin": 3.0, "adv_batch_size": 64, "attack_precision": "auto",
    },
    "paper": {
        "anchor_targets": "random", "anchor_loss": "ce", "anchor_weight": None,
        "shift_anchors": 0, "pgd_steps": 100, "pgd_rounds": 1, "drop_unreached": False,
        "pgd_stop_margin": None, "adv_batch_size": 256, "attack_precision": "fp32",
    },
}


def _expected(name: str, preset: str) -> dict[str, Any]:
    """The values ``name`` must resolve under ``preset``."""
    values = {**SHARED[preset], **COMMON}
    if name in ADV_METHODS:
        values.update(ANCHORS[preset])
        values.update(n_adv=20, pgd_norm="l2", forget_batch_size=32)
    if name == "l2ul":
        values.update(reg_lambda=1.0)
    if name == "boundary_shrink" and preset == "paper":
        values.update(lr=1e-5, weight_decay=0.0)  # the released Boundary Shrink optimiser
    return values


@functools.cache
def _digits_retain() -> tuple[Tensor, Tensor]:
    """200 digits training rows, retain data for the methods that need it."""
    digits = load_digits_split()
    return digits.x_train[200:400], digits.y_train[200:400]


def _retain(name: str) -> tuple[Tensor, Tensor] | None:
    """Retain data if ``name`` declares it needs some, else ``None``."""
    return None if method_class(name).data_access == "forget" else _digits_retain()


def _unlearn(
    name: str,
    model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor | None = None,
    **overrides: Any,
) -> UnlearnResult:
    """Runs ``name`` with the fast settings plus ``overrides``."""
    return unlearnkit.unlearn(
        model,
        forget,
        method=name,
        new_labels=new_labels,
        retain=_retain(name),
        **fast_params(name, **overrides),
    )


# -- presets ---------------------------------------------------------------------------------------


def test_the_preset_methods() -> None:
    assert {"neggrad", "l2ul", "l2ul_adv"} <= set(PRESET_METHODS)
    for name in PRESET_METHODS:
        cls = method_class(name)
        assert set(cls.presets) == {"default", "paper"}
        assert "preset" in cls.param_names()


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", PRESET_METHODS)
def test_a_preset_sets_its_values(name: str, preset: str) -> None:
    params = unlearnkit.create_method(name, preset=preset).get_params()
    assert params["preset"] == preset
    for key, value in _expected(name, preset).items():
        assert params[key] == value, key
    assert not any(v is FROM_PRESET for v in params.values())
    assert "FROM_PRESET" not in repr(unlearnkit.create_method(name, preset=preset))


@pytest.mark.parametrize("name", PRESET_METHODS)
def test_default_preset_is_used_when_none_is_named(name: str) -> None:
    unnamed = unlearnkit.create_method(name).get_params()
    assert unnamed == unlearnkit.create_method(name, preset="default").get_params()
    assert unnamed["preset"] == "default"


def test_explicit_hyperparameters_override_the_preset() -> None:
    method = unlearnkit.create_method(
        "l2ul", preset="paper", lr=0.5, bn_mode="freeze", anchor_weight=3.0, pgd_rounds=2
    )
    params = method.get_params()
    assert (params["lr"], params["bn_mode"], params["anchor_weight"], params["pgd_rounds"]) == (
        0.5, "freeze", 3.0, 2,
    )
    untouched = {
        k: v
        for k, v in _expected("l2ul", "paper").items()
        if k not in {"lr", "bn_mode", "anchor_weight", "pgd_rounds"}
    }
    assert {k: params[k] for k in untouched} == untouched
    # An explicit value equal to what the *other* preset uses, including None, wins too.
    default = unlearnkit.create_method("l2ul_adv", anchor_weight=None, drop_unreached=False)
    params = default.get_params()
    assert params["anchor_weight"] is None and params["drop_unreached"] is False
    assert params["optimizer"] == "adam"
    sgd = unlearnkit.create_method("neggrad", optimizer="sgd", forget_loss="ce").get_params()
    assert (sgd["optimizer"], sgd["forget_loss"], sgd["lr"], sgd["bn_mode"]) == (
        "sgd", "ce", 1e-4, "freeze",
    )
    # Passing the sentinel itself means "from the preset".
    paper = unlearnkit.create_method("neggrad", preset="paper", lr=FROM_PRESET)
    assert paper.get_params()["lr"] == 1e-3


@pytest.mark.parametrize("name", PRESET_METHODS)
@pytest.mark.parametrize("preset", ["fast", "Paper", "", None])
def test_unknown_preset(
    name: str, preset: Any, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    message = rf"method '{name}' has no preset {preset!r}; presets: \['default', 'paper'\]"
    with pytest.raises(InvalidHyperparameterError, match=message):
        unlearnkit.create_method(name, preset=preset)
    with pytest.raises(InvalidHyperparameterError, match="has no preset"):
        unlearnkit.unlearn(trained_cnn, forget, method=name, preset=preset)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("neggrad", {"optimizer": "rmsprop"}, r"optimizer must be one of \('adam', 'sgd'\)"),
        ("neggrad", {"forget_loss": "mse"}, r"forget_loss must be one of \('hinge', 'ce'\)"),
        ("neggrad", {"bn_mode": "eval"}, r"bn_mode must be one of \('freeze', 'train'\)"),
        ("neggrad", {"stop_margin": -0.1}, "stop_margin must be >= 0"),
        ("neggrad", {"forget_margin": -1.0}, "forget_margin must be >= 0"),
        ("l2ul_adv", {"anchor_targets": "uniform"}, r"anchor_targets must be one of"),
        ("l2ul_adv", {"anchor_loss": "mse"}, r"anchor_loss must be one of \('kl', 'ce'\)"),
        ("l2ul_adv", {"anchor_weight": 0.0}, "anchor_weight must be > 0"),
        ("l2ul_adv", {"shift_anchors": -1}, "shift_anchors must be >= 0"),
        ("l2ul_adv", {"pgd_rounds": 0}, "pgd_rounds must be > 0"),
        ("l2ul", {"drop_unreached": "yes"}, r"drop_unreached must be one of \(True, False\)"),
        ("l2ul", {"preset": "paper", "optimizer": "lbfgs"}, "optimizer must be one of"),
    ],
)
def test_out_of_range_shared_and_anchor_hyperparameters(
    name: str, params: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidHyperparameterError, match=match):
        unlearnkit.create_method(name, **params)


@pytest.mark.parametrize("params", [{"pgd_rounds": 1.5}, {"shift_anchors": 1.5}])
def test_fractional_counts_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidHyperparameterError):
        unlearnkit.create_method("l2ul_adv", **params)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", PRESET_METHODS)
def test_result_records_the_preset_and_every_resolved_value(
    name: str, preset: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    settings: dict[str, Any] = {"preset": preset, "max_steps": 0}
    if name in ADV_METHODS:
        settings["n_adv"] = 2
    result = unlearnkit.unlearn(trained_cnn, forget, method=name, retain=_retain(name), **settings)
    hyper = result.hyperparams
    assert set(hyper) == set(method_class(name).param_names())
    assert hyper["preset"] == preset
    expected = {**_expected(name, preset), "max_steps": 0}
    if name in ADV_METHODS:
        expected["n_adv"] = 2
    for key, value in expected.items():
        assert hyper[key] == value, key
    assert not any(v is FROM_PRESET for v in hyper.values())
    if name in ADV_METHODS:  # data-dependent defaults are filled in
        assert hyper["pgd_eps"] > 0
        assert hyper["pgd_step_size"] == pytest.approx(2.5 * hyper["pgd_eps"] / hyper["pgd_steps"])
    assert json.loads(json.dumps(result.to_dict()))["hyperparams"] == hyper


# -- the shared hyperparameters in a run -----------------------------------------------------------


def _linear(seed: int = 0) -> nn.Sequential:
    """A seeded untrained ``Flatten -> Linear(64, 10)`` (no BatchNorm, no dropout)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


@pytest.mark.parametrize("goal", ["misclassify", "relabel"])
@pytest.mark.parametrize("preset", PRESETS)
def test_neggrad_first_step_uses_the_presets_optimizer_and_loss(
    preset: str, goal: str, forget: tuple[Tensor, Tensor]
) -> None:
    model = _linear().eval()
    x = forget[0]
    labels = predict_logits(model, x).argmax(1)
    relabel = (labels + 3) % 10 if goal == "relabel" else None
    result = unlearnkit.unlearn(
        model, (x, labels), method="neggrad", new_labels=relabel, preset=preset, max_steps=1
    )
    assert result.steps == 1
    # The same step by hand: the preset's loss on the whole forget set (one batch), its optimiser.
    manual = copy.deepcopy(model).train()
    if preset == "default":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(manual.parameters(), lr=1e-4)
        loss = forget_hinge_loss(manual(x), labels, relabel, margin=0.5)
    else:
        optimizer = torch.optim.SGD(manual.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
        loss = forget_loss(manual(x), labels, relabel)
    loss.backward()
    optimizer.step()
    for mine, theirs in zip(result.model.parameters(), manual.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-7)
    assert result.details["final_loss"] == pytest.approx(float(loss.detach()), rel=1e-5)


@pytest.mark.parametrize("stop_margin", [FROM_PRESET, 0.4])
@pytest.mark.parametrize("goal", ["misclassify", "relabel"])
@pytest.mark.parametrize("name", PRESET_METHODS)
def test_stop_margin_is_honoured(
    name: str,
    goal: str,
    stop_margin: Any,
    trained_cnn: SmallCNN,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
) -> None:
    if goal == "relabel" and not method_class(name).supports_relabel:
        pytest.skip(f"{name} does not relabel")
    relabel = new_labels if goal == "relabel" else None
    result = _unlearn(name, trained_cnn, forget, relabel, lr=1e-3, stop_margin=stop_margin)
    margin = result.hyperparams["stop_margin"]
    assert margin == (0.1 if stop_margin is FROM_PRESET else stop_margin)
    assert result.converged and result.stop_reason == "goal_reached"
    for outcome in result.outcomes:
        if relabel is None:
            assert outcome.margin_after <= -margin
        else:
            assert outcome.margin_after >= margin


def test_stop_margin_above_the_hinge_margin_is_refused_or_reached(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    try:
        method = unlearnkit.create_method(
            "l2ul_adv", **fast_params("l2ul_adv", lr=1e-3, stop_margin=1.0, max_steps=200)
        )
    except InvalidHyperparameterError:
        return
    result = unlearnkit.unlearn(trained_cnn, forget, method=method)
    assert result.converged


# -- anchors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADV_METHODS)
def test_default_drops_unreached_copies(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    settings = {"n_adv": 3, "pgd_eps": 1.0, "pgd_rounds": 1, "max_steps": 0}
    kept = _unlearn(name, trained_cnn, forget, **settings).details
    reached = round(kept["attack/success_rate"] * kept["attack/examples"])
    assert kept["attack/examples"] == 12 and 0 < reached < 12  # some reach, some do not
    assert kept["anchors/adversarial"] == reached
    everything = _unlearn(name, trained_cnn, forget, drop_unreached=False, **settings).details
    assert everything["attack/success_rate"] == kept["attack/success_rate"]
    assert everything["anchors/adversarial"] == 12
    tiny = _unlearn(name, trained_cnn, forget, **{**settings, "pgd_eps": 1e-3}).details
    assert tiny["attack/success_rate"] == 0.0 and tiny["anchors/adversarial"] == 0
    assert tiny["attack/eps_mean_reached"] is None and tiny["attack/eps_max_reached"] is None


@pytest.mark.parametrize("name", ADV_METHODS)
def test_paper_keeps_every_copy(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    details = _unlearn(
        name, trained_cnn, forget, preset="paper", n_adv=3, pgd_eps=1e-3, max_steps=0
    ).details
    assert details["attack/success_rate"] == 0.0
    assert details["anchors/adversarial"] == 12 and details["anchors/shifted"] == 0


def _still_assigned(model: nn.Module, x: Tensor, y: Tensor, max_shift: int) -> int:
    """How many shifted copies (clamped to [0, 1]) ``model`` still assigns to their label."""
    copies, source = shifted_copies(x, max_shift)
    return int((predict_logits(model, copies.clamp(0, 1)).argmax(1) == y[source]).sum())


@pytest.mark.parametrize("name", ADV_METHODS)
def test_shifted_anchors_are_counted(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor
) -> None:
    x, y = forget
    for shift in (1, 2):
        for relabel in (None, new_labels):
            details = _unlearn(
                name, trained_cnn, forget, relabel, shift_anchors=shift, max_steps=0
            ).details
            expected = _still_assigned(trained_cnn, x, y, shift)  # by their original label
            assert details["anchors/shifted"] == expected
            assert 0 < expected <= 4 * ((2 * shift + 1) ** 2 - 1)
    assert _unlearn(name, trained_cnn, forget, shift_anchors=0, max_steps=0).details[
        "anchors/shifted"
    ] == 0
    paper = _unlearn(name, trained_cnn, forget, preset="paper", shift_anchors=1, max_steps=0)
    assert paper.details["anchors/shifted"] == _still_assigned(trained_cnn, x, y, 1)


@pytest.mark.parametrize("name", ADV_METHODS)
def test_no_shifted_anchors_for_flat_inputs(name: str, forget: tuple[Tensor, Tensor]) -> None:
    model = _linear().eval()
    x = forget[0].flatten(1)  # (N, 64): not images
    labels = predict_logits(model, x).argmax(1)
    result = _unlearn(name, model, (x, labels), shift_anchors=2, lr=0.01, pgd_eps=3.0)
    assert result.details["anchors/shifted"] == 0
    assert result.details["anchors/adversarial"] > 0
    assert result.converged


@pytest.mark.parametrize("name", ADV_METHODS)
def test_no_anchors_warns_and_still_unlearns(name: str, forget: tuple[Tensor, Tensor]) -> None:
    model = _linear().eval()
    x = forget[0].flatten(1)
    labels = predict_logits(model, x).argmax(1)
    with pytest.warns(UserWarning, match="no adversarial copy reached its target"):
        result = _unlearn(name, model, (x, labels), lr=0.01, pgd_eps=1e-4, pgd_rounds=1)
    assert result.details["anchors/adversarial"] == 0 and result.details["anchors/shifted"] == 0
    assert result.converged and result.steps > 0
    assert result.metrics["acc/forget/after"] == 0.0
    json.dumps(result.to_dict(), allow_nan=False)
    # The paper keeps the unreached copies: anchors exist, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paper = _unlearn(name, model, (x, labels), preset="paper", lr=0.1, pgd_eps=1e-4)
    assert paper.details["anchors/adversarial"] == 2 * 4


def test_no_anchors_on_images_warns_too(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    with pytest.warns(UserWarning, match="unlearning runs without anchors"):
        result = _unlearn(
            "l2ul_adv", trained_cnn, forget, shift_anchors=0, pgd_eps=1e-4, pgd_rounds=1, lr=1e-3
        )
    assert result.converged


def test_default_anchor_loss_keeps_the_original_outputs(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    values: list[float] = []
    real = l2ul_module.distillation_loss

    def recording(logits: Tensor, teacher: Tensor) -> Tensor:
        value = real(logits, teacher)
        values.append(float(value.detach()))
        return value

    monkeypatch.setattr(l2ul_module, "distillation_loss", recording)
    result = _unlearn("l2ul_adv", trained_cnn, forget, lr=1e-3, max_steps=5)
    assert len(values) == result.steps == 5
    # Step 1 runs the original model with frozen BatchNorm: its outputs are the teacher's.
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(v > 0 for v in values[1:])
    values.clear()
    _unlearn("l2ul_adv", trained_cnn, forget, preset="paper", max_steps=3)
    assert values == []  # the paper's anchors use cross-entropy toward their targets
