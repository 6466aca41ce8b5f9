"""The contract every registered unlearning method keeps.

Parametrised over ``unlearnkit.list_methods()``, so a newly registered method is held to the same
contract without touching this file (``helpers.fast_params`` hands it the fast settings it
accepts).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import fast_params, modes, same_state, same_weights, snapshot
from unlearnkit import (
    DataContractError,
    InvalidHyperparameterError,
    InvalidModelError,
    InvalidRequestError,
    NonFiniteError,
    UnknownMethodError,
    UnlearningMethod,
)
from unlearnkit.components.stopping import label_margin
from unlearnkit.data import DataSplit
from unlearnkit.methods import (
    METHODS,
    MethodRun,
    NegGrad,
    UnlearnContext,
    method_class,
    register_method,
)
from unlearnkit.models import SmallCNN
from unlearnkit.result import RESULT_SCHEMA_VERSION, UnlearnResult
from unlearnkit.utils.hashing import state_dict_sha256
from unlearnkit.utils.modules import predict_logits

METHOD_NAMES = unlearnkit.list_methods()
#: Every (method, goal) pair a method declares it supports.
CASES = [
    (name, goal)
    for name in METHOD_NAMES
    for goal in ("misclassify", "relabel")
    if goal == "misclassify" or method_class(name).supports_relabel
]
#: Methods that draw random numbers (adversarial targets and starts).
RANDOMISED = unlearnkit.list_methods("l2ul*")
WITH_LR = [n for n in METHOD_NAMES if "lr" in method_class(n).param_names()]
#: Methods that run until the forget set meets its goal; the others (fine-tuning, retraining)
#: have a fixed schedule and only report whether the goal holds at the end.
GOAL_DRIVEN = [n for n in METHOD_NAMES if method_class(n).goal_driven]


def _check_fixed_schedule_report(result: UnlearnResult, forget: tuple[Tensor, Tensor]) -> None:
    """A fixed-schedule run (or an exact deletion) says so, and its ``converged`` and metrics
    tell the truth."""
    if method_class(result.method).exact:
        assert result.stop_reason == "exact_deletion" and result.steps == result.passes == 0
        assert result.details["exact"] is True
    else:
        assert result.stop_reason == "fixed_schedule" and result.steps > 0
    measured = unlearnkit.evaluate(result.model, {"forget": forget})["acc/forget"]
    assert measured == result.metrics["acc/forget/after"]
    assert result.converged == all(o.goal_met for o in result.outcomes) == (measured == 0.0)
    for outcome in result.outcomes:
        assert outcome.goal_met == (outcome.pred_after != outcome.label) == (outcome.margin_after < 0)


def _did_work(result: UnlearnResult) -> bool:
    """Whether the run changed the model the way its method does: optimiser steps, or, for an
    exact deletion, a switch to weights trained without the forget rows."""
    if method_class(result.method).exact:
        return result.stop_reason == "exact_deletion" and result.steps == 0
    return result.steps > 0


#: Models of methods that train their own (``trains_own_model``), built once per session.
_OWN_MODELS: dict[str, nn.Module] = {}


@pytest.fixture
def trained_model(
    name: str, trained_cnn: SmallCNN, digits: DataSplit, tmp_path_factory: pytest.TempPathFactory
) -> nn.Module:
    """The trained model ``name`` unlearns from: the digits CNN, or, for a method that trains its
    own model, that model built by its ``prepare_model`` on the digits training set. Do not
    mutate."""
    klass = method_class(name)
    if not klass.trains_own_model:
        return trained_cnn
    if name not in _OWN_MODELS:
        _OWN_MODELS[name] = klass.prepare_model(
            trained_cnn, (digits.x_train, digits.y_train), seed=0, directory=tmp_path_factory.mktemp(name)
        )
    return _OWN_MODELS[name]


@pytest.fixture
def caller_model(trained_model: nn.Module) -> nn.Module:
    """A private copy of ``trained_model`` that a test may change freely."""
    return copy.deepcopy(trained_model)


def _retain(name: str, digits: DataSplit) -> tuple[Tensor, Tensor] | None:
    """Retain data for methods that declare they need it, else ``None``."""
    if method_class(name).data_access == "forget":
        return None
    return digits.x_train[200:400], digits.y_train[200:400]


def _run(
    name: str,
    model: nn.Module,
    forget: tuple[Tensor, Tensor],
    digits: DataSplit,
    new_labels: Tensor | None = None,
    **kwargs: Any,
) -> UnlearnResult:
    """Runs ``name`` with the fast settings (overridable through ``kwargs``)."""
    call = {k: kwargs.pop(k) for k in ("seed", "ids", "inplace", "device") if k in kwargs}
    return unlearnkit.unlearn(
        model,
        forget,
        method=name,
        new_labels=new_labels,
        retain=_retain(name, digits),
        progress=False,
        **call,
        **fast_params(name, **kwargs),
    )


def _goal_labels(goal: str, new_labels: Tensor) -> Tensor | None:
    """The new labels in relabeling mode, ``None`` otherwise."""
    return new_labels if goal == "relabel" else None


# -- the caller's model ----------------------------------------------------------------------------


@pytest.mark.parametrize("caller_mode", ["eval", "train"])
@pytest.mark.parametrize("name, goal", CASES)
def test_caller_model_is_untouched(
    name: str,
    goal: str,
    caller_mode: str,
    caller_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    caller_model.train(caller_mode == "train")
    state, mode_list = snapshot(caller_model), modes(caller_model)
    result = _run(name, caller_model, forget, digits, _goal_labels(goal, new_labels))
    assert result.model is not caller_model
    assert _did_work(result)
    assert same_state(caller_model, state)  # parameters and BatchNorm statistics
    assert modes(caller_model) == mode_list
    assert all(p.grad is None for p in caller_model.parameters())
    assert not same_weights(result.model, caller_model)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_result_model_keeps_the_callers_mode(
    name: str, caller_model: nn.Module, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    caller_model.eval()
    result = _run(name, caller_model, forget, digits)
    assert _did_work(result)
    if method_class(name).exact:
        # An exact deletion may serve a shorter stack of modules: all of them in eval mode.
        assert not any(modes(result.model))
    else:
        assert modes(result.model) == modes(caller_model)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_inplace_updates_the_callers_model(
    name: str,
    caller_model: nn.Module,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    digits: DataSplit,
) -> None:
    result = _run(name, caller_model, forget, digits, inplace=True)
    assert result.model is caller_model
    assert not same_weights(caller_model, trained_model)
    assert result.model_sha256_before == state_dict_sha256(trained_model)
    assert result.model_sha256_after == state_dict_sha256(caller_model)
    if name in GOAL_DRIVEN:
        assert unlearnkit.evaluate(caller_model, {"forget": forget})["acc/forget"] == 0.0
    else:
        _check_fixed_schedule_report(result, forget)


# -- the goal is reached, and the result says so ---------------------------------------------------


@pytest.mark.parametrize("name, goal", CASES)
def test_goal_is_reached(
    name: str,
    goal: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    result = _run(name, trained_model, forget, digits, _goal_labels(goal, new_labels))
    assert result.metrics["acc/forget/before"] == 100.0
    if name not in GOAL_DRIVEN:
        _check_fixed_schedule_report(result, forget)
        return
    assert result.converged and result.stop_reason == "goal_reached"
    assert 0 < result.steps <= 300
    assert result.metrics["acc/forget/after"] == 0.0
    assert all(o.goal_met for o in result.outcomes)
    measured = unlearnkit.evaluate(
        result.model, {"forget": forget, "relabel": (forget[0], new_labels)}
    )
    assert measured["acc/forget"] == 0.0
    if goal == "relabel":
        assert result.metrics["relabel/before"] == 0.0
        assert result.metrics["relabel/after"] == 100.0
        assert measured["acc/relabel"] == 100.0
    else:
        assert "relabel/after" not in result.metrics


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_single_instance(
    name: str, trained_model: nn.Module, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    one = (forget[0][:1], forget[1][:1])
    result = _run(name, trained_model, one, digits)
    assert len(result.outcomes) == 1
    if name not in GOAL_DRIVEN:
        _check_fixed_schedule_report(result, one)
        return
    assert result.converged
    assert result.metrics["acc/forget/after"] == 0.0


@pytest.mark.parametrize("name, goal", CASES)
def test_result_fields(
    name: str,
    goal: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    ids = ["a", "b", "c", "d"]
    relabel = _goal_labels(goal, new_labels)
    result = _run(name, trained_model, forget, digits, relabel, ids=ids, seed=11)
    x, y = forget
    target = y if relabel is None else relabel
    before, after = predict_logits(trained_model, x), predict_logits(result.model, x)

    assert result.method == name and result.goal == goal and result.seed == 11
    assert result.device == "cpu" and result.seconds > 0
    assert result.retain_used == (0 if _retain(name, digits) is None else 200)
    assert {"python", "torch", "numpy", "unlearnkit"} <= result.versions.keys()
    assert set(unlearnkit.create_method(name).get_params()) <= set(result.hyperparams)
    assert len(result.outcomes) == 4
    for i, outcome in enumerate(result.outcomes):
        assert outcome.id == ids[i]
        assert outcome.label == int(y[i])
        assert outcome.new_label == (None if relabel is None else int(relabel[i]))
        assert outcome.pred_before == int(before[i].argmax()) == int(y[i])
        assert outcome.pred_after == int(after[i].argmax())
        assert outcome.margin_before == pytest.approx(
            float(label_margin(before[i : i + 1], target[i : i + 1])), abs=1e-5
        )
        assert outcome.margin_after == pytest.approx(
            float(label_margin(after[i : i + 1], target[i : i + 1])), abs=1e-5
        )
        met = (
            outcome.pred_after != outcome.label
            if relabel is None
            else outcome.pred_after == outcome.new_label
        )
        assert outcome.goal_met == met
        if name in GOAL_DRIVEN:
            assert outcome.margin_after > 0 if relabel is not None else outcome.margin_after < 0
    assert result.model_sha256_before == state_dict_sha256(trained_model)
    assert result.model_sha256_after == state_dict_sha256(result.model)
    assert result.model_sha256_before != result.model_sha256_after
    assert name in repr(result) and f"converged={result.converged}" in repr(result)
    if name in GOAL_DRIVEN:
        assert result.converged
    else:
        _check_fixed_schedule_report(result, forget)


@pytest.mark.parametrize("name, goal", CASES)
def test_to_dict_is_json_without_the_model(
    name: str,
    goal: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    result = _run(
        name, trained_model, forget, digits, _goal_labels(goal, new_labels), ids=[3, "x", 5, "y"]
    )
    data = result.to_dict()
    assert "model" not in data
    assert data["schema_version"] == RESULT_SCHEMA_VERSION
    text = json.dumps(data, allow_nan=False)
    again = json.loads(text)
    assert again == data
    assert [o["id"] for o in again["outcomes"]] == [3, "x", 5, "y"]
    assert again["metrics"] == result.metrics
    assert again["hyperparams"] == result.hyperparams
    assert again["steps"] == result.steps and again["converged"] is (name in GOAL_DRIVEN or result.converged)
    assert again["converged"] is result.converged and again["stop_reason"] == result.stop_reason


# -- seeds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, goal", CASES)
def test_same_seed_gives_bit_identical_weights(
    name: str,
    goal: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    relabel = _goal_labels(goal, new_labels)
    torch.manual_seed(1)
    rng_state = torch.random.get_rng_state()
    first = _run(name, trained_model, forget, digits, relabel, seed=5)
    assert torch.equal(
        torch.random.get_rng_state(), rng_state
    )  # the caller's global RNG is restored
    torch.manual_seed(2)  # a different global state must not matter
    second = _run(name, trained_model, forget, digits, relabel, seed=5)
    assert first.steps == second.steps
    assert same_weights(first.model, second.model)
    assert first.model_sha256_after == second.model_sha256_after
    assert first.details.keys() == second.details.keys()


@pytest.mark.parametrize("name", RANDOMISED)
def test_different_seeds_give_different_weights(
    name: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    a = _run(name, trained_model, forget, digits, new_labels, seed=0)
    b = _run(name, trained_model, forget, digits, new_labels, seed=1)
    assert not same_weights(a.model, b.model)
    assert a.model_sha256_after != b.model_sha256_after


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_configured_instance_equals_name_and_hyperparameters(
    name: str, trained_model: nn.Module, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    by_name = _run(name, trained_model, forget, digits, seed=4)
    method = unlearnkit.create_method(name, **fast_params(name))
    by_instance = unlearnkit.unlearn(
        trained_model, forget, method=method, seed=4, retain=_retain(name, digits)
    )
    assert same_weights(by_name.model, by_instance.model)
    assert by_instance.hyperparams == by_name.hyperparams


# -- caps ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, goal", CASES)
def test_max_steps_zero_changes_nothing(
    name: str,
    goal: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    if "max_steps" not in method_class(name).param_names():
        pytest.skip(f"{name} has no max_steps")
    result = _run(name, trained_model, forget, digits, _goal_labels(goal, new_labels), max_steps=0)
    assert (result.steps, result.passes) == (0, 0)
    assert not result.converged and result.stop_reason == "max_steps"
    assert same_weights(result.model, trained_model)
    assert result.model_sha256_after == result.model_sha256_before
    assert result.metrics["acc/forget/after"] == result.metrics["acc/forget/before"] == 100.0
    assert all(o.pred_after == o.pred_before and not o.goal_met for o in result.outcomes)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_a_capped_run_is_not_converged(
    name: str, trained_model: nn.Module, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    if "max_steps" not in method_class(name).param_names():
        pytest.skip(f"{name} has no max_steps")
    result = _run(name, trained_model, forget, digits, lr=1e-6, max_steps=3)
    assert result.steps == 3
    assert not result.converged and result.stop_reason == "max_steps"
    assert result.metrics["acc/forget/after"] == 100.0


# -- data contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_data_contract(
    name: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    digits: DataSplit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cls = method_class(name)
    seen: list[UnlearnContext] = []
    original = cls._unlearn

    def spy(self: UnlearningMethod, context: UnlearnContext) -> MethodRun:
        seen.append(context)
        return original(self, context)

    monkeypatch.setattr(cls, "_unlearn", spy)
    retain = (digits.x_train[200:300], digits.y_train[200:300])
    if cls.data_access == "forget":
        with pytest.raises(DataContractError, match="must not be handed retain data"):
            unlearnkit.unlearn(trained_model, forget, method=name, retain=retain, **fast_params(name))
        assert seen == []  # refused before any work
        result = unlearnkit.unlearn(trained_model, forget, method=name, **fast_params(name))
        assert len(seen) == 1 and seen[0].retain is None
        assert result.retain_used == 0
    else:
        if cls.data_access == "forget+retain":
            with pytest.raises(DataContractError, match="needs retain data"):
                unlearnkit.unlearn(trained_model, forget, method=name, **fast_params(name))
        else:
            # Optional retain data: what the method does without it is its own test's business.
            assert cls.data_access == "forget+optional-retain"
        result = unlearnkit.unlearn(
            trained_model, forget, method=name, retain=retain, **fast_params(name)
        )
        assert len(seen) == 1 and seen[0].retain is not None
        assert result.retain_used == 100
    context = seen[0]
    assert context.model is result.model and context.model is not trained_model
    assert context.num_classes == 10 and context.seed == 0 and context.request.ids == (0, 1, 2, 3)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_relabel_support_is_declared(
    name: str,
    trained_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    if method_class(name).supports_relabel:
        assert _run(name, trained_model, forget, digits, new_labels).goal == "relabel"
    else:
        with pytest.raises(InvalidRequestError, match="does not support relabeling"):
            _run(name, trained_model, forget, digits, new_labels)


# -- bad models and runs ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["weight", "buffer"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_non_finite_model_is_rejected(
    name: str, where: str, caller_model: nn.Module, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    tensors = caller_model.parameters() if where == "weight" else caller_model.buffers()
    target = next((t for t in tensors if t.is_floating_point()), None)
    if target is None:
        pytest.skip(f"{name}'s model has no floating-point {where}")
    with torch.no_grad():
        target.view(-1)[-1] = float("nan") if where == "weight" else float("inf")
    with pytest.raises(InvalidModelError, match="NaN or infinite values"):
        _run(name, caller_model, forget, digits)


class _ThreeD(nn.Module):
    """Returns logits shaped ``(N, 2, 5)``: not a classifier's output."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1)).view(-1, 2, 5)


class _Scalar(nn.Module):
    """Returns one number per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1)).sum()


@pytest.mark.parametrize("model_cls", [_ThreeD, _Scalar])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_model_output_must_be_2d(
    name: str, model_cls: type[nn.Module], forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    with pytest.raises(InvalidModelError, match=r"must map a batch \(N, ...\) to logits \(N, C\)"):
        _run(name, model_cls(), forget, digits)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_model_that_cannot_read_the_inputs(
    name: str, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(32, 10))
    with pytest.raises(
        InvalidModelError, match=r"the model failed on inputs of shape \(4, 1, 8, 8\)"
    ):
        _run(name, model, forget, digits)


@pytest.mark.parametrize("name", WITH_LR)
@pytest.mark.parametrize("goal", ["misclassify", "relabel"])
def test_diverging_run_raises_and_returns_no_model(
    name: str,
    goal: str,
    caller_model: nn.Module,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
) -> None:
    if goal == "relabel" and not method_class(name).supports_relabel:
        pytest.skip(f"{name} does not relabel")
    state = snapshot(caller_model)
    with pytest.raises(NonFiniteError, match="NaN or infinite"):
        _run(name, caller_model, forget, digits, _goal_labels(goal, new_labels), lr=1e10)
    assert same_state(caller_model, state)


# -- configuration errors --------------------------------------------------------------------------


def test_unknown_method_lists_known_names(forget: tuple[Tensor, Tensor]) -> None:
    known = ", ".join(METHOD_NAMES)
    with pytest.raises(UnknownMethodError, match=f"unknown method 'nope'; known: {known}$") as info:
        unlearnkit.unlearn(nn.Linear(64, 10), forget, method="nope")
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith("unknown method")  # not quoted the way KeyError quotes
    with pytest.raises(UnknownMethodError):
        unlearnkit.create_method("l2ul ")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_unknown_hyperparameter(name: str, forget: tuple[Tensor, Tensor]) -> None:
    with pytest.raises(
        InvalidHyperparameterError,
        match=rf"method '{name}' has no hyperparameter\(s\) \['bogus', 'zeta'\]",
    ):
        unlearnkit.unlearn(nn.Linear(64, 10), forget, method=name, bogus=1, zeta=2)
    with pytest.raises(InvalidHyperparameterError, match="bogus"):
        unlearnkit.create_method(name, bogus=1)


@pytest.mark.parametrize("value", [-0.1, 0.0, float("nan")])
@pytest.mark.parametrize("name", WITH_LR)
def test_non_positive_lr(name: str, value: float) -> None:
    with pytest.raises(InvalidHyperparameterError, match="lr must be > 0"):
        unlearnkit.create_method(name, lr=value)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_negative_caps(name: str) -> None:
    names = method_class(name).param_names()
    caps = [c for c in ("max_steps", "max_passes", "max_seconds") if c in names]
    if not caps:
        pytest.skip(f"{name} has no caps")
    for cap in caps:
        with pytest.raises(InvalidHyperparameterError, match=f"{cap} must be >= 0"):
            unlearnkit.create_method(name, **{cap: -1})


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("l2ul_adv", {"n_adv": 0}, "n_adv must be > 0"),
        ("l2ul_adv", {"pgd_eps": 0.0}, "pgd_eps must be > 0"),
        ("l2ul_adv", {"pgd_steps": -1}, "pgd_steps must be >= 0"),
        ("l2ul_adv", {"pgd_norm": "l1"}, r"pgd_norm must be one of \('l2', 'linf'\)"),
        ("l2ul_adv", {"adv_batch_size": 0}, "adv_batch_size must be > 0"),
        ("l2ul", {"reg_lambda": -1.0}, "reg_lambda must be >= 0"),
        ("l2ul", {"importance_batch_size": 0}, "importance_batch_size must be > 0"),
        ("l2ul", {"momentum": -0.5}, "momentum must be >= 0"),
        ("neggrad", {"batch_size": 0}, "batch_size must be > 0"),
        ("neggrad", {"weight_decay": -1e-4}, "weight_decay must be >= 0"),
    ],
)
def test_out_of_range_hyperparameters(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidHyperparameterError, match=match):
        unlearnkit.create_method(name, **params)


# -- any classifier --------------------------------------------------------------------------------


class _FlattenInside(nn.Module):
    """An MLP that flattens its input itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.reshape(x.shape[0], -1))))


def _architecture(kind: str) -> nn.Module:
    """A seeded untrained classifier of 1x8x8 inputs of the given kind."""
    torch.manual_seed(0)
    if kind == "mlp-flatten-inside":
        return _FlattenInside()
    if kind == "mlp-dropout":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)
        )
    if kind == "mlp-batchnorm":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)
        )
    if kind == "caller_model-no-batchnorm":
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
        )
    raise ValueError(kind)


ARCHITECTURES = ["mlp-flatten-inside", "mlp-dropout", "mlp-batchnorm", "caller_model-no-batchnorm"]


#: Preset and a learning rate that suits its optimiser on an untrained MLP: Adam (default)
#: oscillates at SGD's 0.1 and crawls at its own 1e-4.
PRESET_LRS = [("default", 0.01), ("paper", 0.1)]


@pytest.mark.parametrize("preset, lr", PRESET_LRS, ids=[p for p, _ in PRESET_LRS])
@pytest.mark.parametrize("kind", ARCHITECTURES)
@pytest.mark.parametrize("name, goal", CASES)
def test_any_classifier(
    name: str,
    goal: str,
    kind: str,
    preset: str,
    lr: float,
    digits: DataSplit,
    new_labels: Tensor,
    forget: tuple[Tensor, Tensor],
) -> None:
    if method_class(name).trains_own_model:
        pytest.skip(f"{name} unlearns only from the model it trains itself (prepare_model), not any classifier")
    model = _architecture(kind).eval()
    x = forget[0]
    labels = predict_logits(model, x).argmax(dim=1)  # the model "knows" these labels
    relabel = (labels + 3) % 10 if goal == "relabel" else None
    state = snapshot(model)
    settings: dict[str, Any] = {"lr": lr}
    if "preset" in method_class(name).param_names():
        settings["preset"] = preset
    elif preset != "default":
        pytest.skip(f"{name} has no presets")
    result = _run(name, model, (x, labels), digits, relabel, **settings)
    assert result.metrics["acc/forget/before"] == 100.0
    if name not in GOAL_DRIVEN:
        _check_fixed_schedule_report(result, (x, labels))
    elif goal == "misclassify":
        assert result.converged and result.metrics["acc/forget/after"] == 0.0
    else:
        # Relabeling an untrained MLP is not always reached in 300 steps (l2ul's importance
        # penalty at reg_lambda=1 stalls at 25-75 % on some of them; with reg_lambda <= 0.1 it
        # converges): the machinery must work and make progress.
        assert result.metrics["relabel/before"] == 0.0 and result.metrics["relabel/after"] > 0.0
    assert same_state(model, state) and not model.training
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    torch.manual_seed(12345)  # the global RNG state must not matter: dropout masks are seeded too
    again = _run(name, model, (x, labels), digits, relabel, **settings)
    assert same_weights(result.model, again.model)
    # Dropout masks follow the seed only for methods that train; closed-form and one-shot ones
    # read the model in eval mode and draw nothing.
    if kind == "mlp-dropout" and result.steps > 0 and method_class(name).gradient_based:
        other = _run(
            name, model, (x, labels), digits, relabel, seed=1, max_steps=result.steps, **settings
        )
        assert not same_weights(result.model, other.model)


# -- the registry and the base class ---------------------------------------------------------------


def test_duplicate_registration_is_refused() -> None:
    class Duplicate(NegGrad):
        """A second class claiming an existing name."""

    with pytest.raises(ValueError, match="method 'neggrad' is already registered"):
        register_method("neggrad")(Duplicate)
    assert method_class("neggrad") is NegGrad


def test_l2ul_params_extend_l2ul_adv() -> None:
    adv = method_class("l2ul_adv").param_names()
    full = method_class("l2ul").param_names()
    assert set(adv) < set(full)
    assert set(full) - set(adv) == {"reg_lambda", "importance_batch_size"}
    assert full[:2] == ["reg_lambda", "importance_batch_size"]  # most derived first
    assert len(full) == len(set(full))
    defaults = unlearnkit.create_method("l2ul").get_params()
    assert defaults["reg_lambda"] == 1.0 and defaults["lr"] == 1e-4 and defaults["n_adv"] == 20
    assert defaults["preset"] == "default"
    paper = unlearnkit.create_method("l2ul", preset="paper").get_params()
    assert paper["reg_lambda"] == 1.0 and paper["lr"] == 1e-3 and paper["n_adv"] == 20
    assert paper.keys() == defaults.keys()


def test_list_methods_pattern() -> None:
    assert {"neggrad", "l2ul", "l2ul_adv"} <= set(METHOD_NAMES)
    assert METHOD_NAMES == sorted(METHOD_NAMES)
    assert unlearnkit.list_methods("neg*") == ["neggrad", "neggrad_ewc", "neggrad_l2", "neggrad_mas", "neggrad_plus"]
    assert unlearnkit.list_methods("neggrad") == ["neggrad"]
    assert unlearnkit.list_methods("nothing*") == []


@pytest.fixture
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets a test register methods; the registry is restored afterwards."""
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))


class _Scale(UnlearningMethod):
    """A toy method: multiplies every parameter by ``scale`` (no optimiser, fixed schedule)."""

    summary = "toy"

    def __init__(self, *, scale: float = -1.0) -> None:
        self.scale = scale

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        with torch.no_grad():
            for p in context.model.parameters():
                p.mul_(self.scale)
        met = bool(
            (
                predict_logits(context.model, context.request.inputs).argmax(1)
                != context.request.labels
            ).all()
        )
        return MethodRun(1, 1, met, "fixed_schedule", {"scaled": True})


def test_a_new_method_gets_the_base_class_services(
    scratch_registry: None, trained_linear: nn.Module, forget: tuple[Tensor, Tensor]
) -> None:
    register_method("test_scale")(_Scale)
    assert "test_scale" in unlearnkit.list_methods()
    assert _Scale.param_names() == ["scale"]
    with pytest.raises(InvalidHyperparameterError, match=r"takes \['scale'\]"):
        unlearnkit.create_method("test_scale", lr=1.0)
    state = snapshot(trained_linear)
    result = unlearnkit.unlearn(trained_linear, forget, method="test_scale", scale=-1.0)
    assert same_state(trained_linear, state)
    assert result.method == "test_scale" and result.hyperparams == {"scale": -1.0}
    assert result.details == {"scaled": True, "memory_format": "contiguous"} and result.stop_reason == "fixed_schedule"
    with torch.no_grad():
        assert torch.allclose(result.model(forget[0]), -trained_linear(forget[0]))
    assert repr(unlearnkit.create_method("test_scale", scale=2.0)) == "_Scale(scale=2.0)"


def test_a_method_producing_nan_weights_is_refused(
    scratch_registry: None, trained_linear: nn.Module, forget: tuple[Tensor, Tensor]
) -> None:
    register_method("test_nan")(_Scale)
    state = snapshot(trained_linear)
    with pytest.raises(
        NonFiniteError, match="test_nan: the unlearned model has NaN or infinite values"
    ):
        unlearnkit.unlearn(trained_linear, forget, method="test_nan", scale=float("nan"))
    assert same_state(trained_linear, state)


class _NeedsRetain(_Scale):
    """A toy method that declares it reads retain data."""

    data_access = "forget+retain"

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        assert context.retain is not None
        return MethodRun(0, 0, False, "fixed_schedule", {"retain": int(context.retain[0].shape[0])})


def test_retain_data_is_checked_for_methods_that_need_it(
    scratch_registry: None,
    trained_linear: nn.Module,
    forget: tuple[Tensor, Tensor],
    digits: DataSplit,
) -> None:
    register_method("test_retain")(_NeedsRetain)
    with pytest.raises(DataContractError, match="needs retain data"):
        unlearnkit.unlearn(trained_linear, forget, method="test_retain")
    with pytest.raises(DataContractError, match=r"retain must be a pair \(inputs, labels\)"):
        unlearnkit.unlearn(trained_linear, forget, method="test_retain", retain=digits.x_train[:5])  # type: ignore[arg-type]
    bad_labels = torch.tensor([0, 1, 12])
    with pytest.raises(DataContractError, match="retain data: .*out of range for a model with 10 classes"):
        unlearnkit.unlearn(
            trained_linear, forget, method="test_retain", retain=(digits.x_train[:3], bad_labels)
        )
    with pytest.raises(DataContractError, match="retain data: the retain set is empty"):
        unlearnkit.unlearn(
            trained_linear, forget, method="test_retain", retain=(digits.x_train[:0], digits.y_train[:0])
        )
    result = unlearnkit.unlearn(
        trained_linear,
        forget,
        method="test_retain",
        retain=(digits.x_train[:7], digits.y_train[:7]),
    )
    assert result.retain_used == 7 and result.details == {"retain": 7, "memory_format": "contiguous"}
