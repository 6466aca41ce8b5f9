"""Behaviour particular to each built-in method: l2ul's importance penalty, the adversarial
anchors of l2ul / l2ul_adv, their resolved attack settings, pass accounting, BatchNorm handling and
NegGrad's final loss, under both presets (``paper``: the published recipe; ``default``: robust)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import unlearnkit
import unlearnkit.components.attacks as attacks_module
import unlearnkit.components.regularizers as regularizers_module
from helpers import fast_params, same_weights, snapshot
from unlearnkit.components import (
    default_l2_eps,
    importance_weighted_l2,
    mas_importance,
    min_max_normalise,
)
from unlearnkit.components.losses import forget_hinge_loss
from unlearnkit.methods import FROM_PRESET
from unlearnkit.methods.l2ul import DEFAULT_LINF_EPS
from unlearnkit.models import SmallCNN
from unlearnkit.result import UnlearnResult
from unlearnkit.utils.modules import clone_parameters, predict_logits

ADV_METHODS = ["l2ul", "l2ul_adv"]


def _unlearn(
    name: str,
    model: SmallCNN,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor | None = None,
    seed: int = 0,
    **overrides: Any,
) -> UnlearnResult:
    """Runs ``name`` on ``forget`` with the fast settings plus ``overrides``."""
    return unlearnkit.unlearn(
        model,
        forget,
        method=name,
        new_labels=new_labels,
        seed=seed,
        **fast_params(name, **overrides),
    )


# -- l2ul: the importance penalty ------------------------------------------------------------------


def test_l2ul_penalty_is_zero_at_the_start_and_positive_after(
    trained_cnn: SmallCNN,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values: list[float] = []

    def recording(*args: Any, **kwargs: Any) -> Tensor:
        value = importance_weighted_l2(*args, **kwargs)
        values.append(float(value.detach()))
        return value

    monkeypatch.setattr(regularizers_module, "importance_weighted_l2", recording)
    result = _unlearn("l2ul", trained_cnn, forget, new_labels)
    assert result.converged and result.steps >= 5
    assert len(values) == result.steps  # evaluated once per optimiser step
    assert values[0] == 0.0  # the first step starts at the original weights
    assert all(v > 0 for v in values[1:])
    assert 0.0 < result.details["importance/mean"] < 1.0


def test_l2ul_penalty_is_computed_on_the_original_weights(
    trained_cnn: SmallCNN,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    captured: dict[str, Any] = {}

    def recording(
        model: torch.nn.Module, reference: dict[str, Tensor], weights: dict[str, Tensor]
    ) -> Tensor:
        captured.setdefault("reference", reference)
        captured.setdefault("weights", weights)
        return importance_weighted_l2(model, reference, weights)

    monkeypatch.setattr(regularizers_module, "importance_weighted_l2", recording)
    _unlearn("l2ul", trained_cnn, forget, new_labels)
    original = clone_parameters(trained_cnn)
    expected = min_max_normalise(mas_importance(trained_cnn, forget[0]))
    assert captured["reference"].keys() == original.keys()
    for name, value in original.items():
        assert torch.equal(captured["reference"][name], value), name
        assert torch.allclose(captured["weights"][name], 1.0 - expected[name], atol=1e-6), name


def test_l2ul_without_penalty_equals_l2ul_adv(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor
) -> None:
    settings = {"lr": 0.02, "max_steps": 200}
    plain = _unlearn("l2ul_adv", trained_cnn, forget, new_labels, seed=3, **settings)
    zero = _unlearn("l2ul", trained_cnn, forget, new_labels, seed=3, reg_lambda=0.0, **settings)
    assert plain.steps >= 10  # a real run, not one step
    assert zero.steps == plain.steps
    assert same_weights(zero.model, plain.model)
    assert zero.details["attack/success_rate"] == plain.details["attack/success_rate"]
    with_penalty = _unlearn(
        "l2ul", trained_cnn, forget, new_labels, seed=3, reg_lambda=1.0, **settings
    )
    assert not same_weights(with_penalty.model, plain.model)


def test_l2ul_penalty_keeps_weights_closer_to_the_original(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor
) -> None:
    freedom = {
        k: 1.0 - v for k, v in min_max_normalise(mas_importance(trained_cnn, forget[0])).items()
    }
    reference = clone_parameters(trained_cnn)

    def anchored_distance(lam: float) -> float:
        """Importance-weighted distance to the original after 10 steps with ``reg_lambda=lam``."""
        result = _unlearn(
            "l2ul", trained_cnn, forget, new_labels, reg_lambda=lam, lr=0.005, max_steps=10
        )
        assert result.steps == 10
        return float(importance_weighted_l2(result.model, reference, freedom).detach())

    assert anchored_distance(20.0) < anchored_distance(0.0)


# -- l2ul / l2ul_adv: the adversarial anchors ------------------------------------------------------


def _record_attacks(
    monkeypatch: pytest.MonkeyPatch, original_state: dict[str, Tensor]
) -> list[dict[str, Any]]:
    """Replaces ``targeted_pgd`` (as ``calibrated_targeted_pgd`` calls it) by a recording wrapper.

    Returns the list that receives one entry per call: whether the model had the original
    weights, the inputs, targets, adversarial outputs, which reached their target, and the
    keyword arguments.
    """
    calls: list[dict[str, Any]] = []
    real = attacks_module.targeted_pgd

    def recording(model: torch.nn.Module, inputs: Tensor, targets: Tensor, **kwargs: Any) -> Tensor:
        adversarial = real(model, inputs, targets, **kwargs)
        calls.append(
            {
                "weights_are_original": all(
                    torch.equal(v, original_state[k]) for k, v in model.state_dict().items()
                ),
                "inputs": inputs,
                "targets": targets,
                "adversarial": adversarial,
                "reached": predict_logits(model, adversarial).argmax(1) == targets,
                **kwargs,
            }
        )
        return adversarial

    monkeypatch.setattr(attacks_module, "targeted_pgd", recording)
    return calls


@pytest.mark.parametrize("name", ADV_METHODS)
def test_anchors_are_targeted_attacks_on_the_original_model(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The paper: one attack at radius pgd_eps, 100 steps of eps / 40, every copy kept.
    calls = _record_attacks(monkeypatch, snapshot(trained_cnn))
    result = _unlearn(
        name, trained_cnn, forget, preset="paper", n_adv=3, pgd_eps=1.5, pgd_steps=FROM_PRESET
    )
    assert len(calls) == 1
    call = calls[0]
    x, y = forget
    assert call["weights_are_original"]
    assert torch.equal(call["inputs"], x.repeat_interleave(3, dim=0))
    assert (call["targets"] != y.repeat_interleave(3)).all()
    assert torch.equal(call["eps"], torch.full((12,), 1.5))
    assert call["steps"] == 100 and call["norm"] == "l2"
    assert call["step_size"] is None  # targeted_pgd's default: 2.5 * eps / steps = eps / 40
    assert result.hyperparams["pgd_steps"] == 100
    assert result.hyperparams["pgd_step_size"] == pytest.approx(1.5 / 40)
    assert call["input_range"] == (0.0, 1.0)
    assert ((call["adversarial"] - call["inputs"]).flatten(1).norm(dim=1) <= 1.5 + 1e-5).all()
    assert result.details["attack/examples"] == 12
    assert result.details["attack/success_rate"] == pytest.approx(
        float(call["reached"].float().mean())
    )
    details = result.details
    assert details["attack/first_round_success_rate"] == details["attack/success_rate"]
    assert result.details["anchors/adversarial"] == 12  # reached or not
    assert result.details["anchors/shifted"] == 0
    assert result.details["attack/seconds"] >= 0.0


@pytest.mark.parametrize("name", ADV_METHODS)
def test_default_anchors_grow_the_radius_of_unreached_copies(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default: up to pgd_rounds attacks on the original model, each on the copies that have
    # not reached their target yet, at twice the previous radius.
    calls = _record_attacks(monkeypatch, snapshot(trained_cnn))
    result = _unlearn(name, trained_cnn, forget, n_adv=4, pgd_eps=0.1, pgd_steps=10, max_steps=0)
    x, y = forget
    assert 2 <= len(calls) <= 4
    assert all(c["weights_are_original"] and c["steps"] == 10 for c in calls)
    first = calls[0]
    assert torch.equal(first["inputs"], x.repeat_interleave(4, dim=0))
    targets = first["targets"]
    assert (targets != y.repeat_interleave(4)).all()
    # balanced targets: each instance's 4 targets are 4 different classes
    assert all(len(set(row)) == 4 for row in targets.view(4, 4).tolist())
    pending = torch.ones(16, dtype=torch.bool)
    radius_reached = torch.zeros(16)
    for k, call in enumerate(calls):
        todo = pending.nonzero().flatten()
        assert torch.equal(call["inputs"], first["inputs"][todo])
        assert torch.equal(call["targets"], targets[todo])
        assert torch.allclose(call["eps"], torch.full((len(todo),), 0.1 * 2**k))
        pending[todo[call["reached"]]] = False
        radius_reached[todo[call["reached"]]] = 0.1 * 2**k
    reached = ~pending
    details = result.details
    assert details["attack/examples"] == 16
    assert details["attack/first_round_success_rate"] == pytest.approx(
        float(calls[0]["reached"].float().mean())
    )
    assert details["attack/success_rate"] == pytest.approx(float(reached.float().mean()))
    assert details["attack/success_rate"] > details["attack/first_round_success_rate"]
    assert details["attack/eps_initial"] == 0.1
    mean_radius = float(radius_reached[reached].mean())
    assert details["attack/eps_mean_reached"] == pytest.approx(mean_radius)
    assert details["attack/eps_max_reached"] == pytest.approx(float(radius_reached.max()))
    assert details["anchors/adversarial"] == int(reached.sum())  # unreached copies are dropped


@pytest.mark.parametrize("name", ADV_METHODS)
def test_attack_success_rate_reflects_the_attack(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    default = _unlearn(name, trained_cnn, forget, max_steps=0)
    strong = _unlearn(name, trained_cnn, forget, max_steps=0, pgd_eps=3.0, pgd_steps=50, n_adv=5)
    weak = _unlearn(name, trained_cnn, forget, max_steps=0, pgd_eps=1e-3, pgd_steps=5)
    for result in (default, strong, weak):
        assert 0.0 <= result.details["attack/success_rate"] <= 1.0
    assert strong.details["attack/success_rate"] >= 0.8
    assert weak.details["attack/success_rate"] == 0.0
    assert strong.details["attack/examples"] == 20 and default.details["attack/examples"] == 8


@pytest.mark.parametrize("name", ADV_METHODS)
def test_resolved_attack_settings_are_recorded(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    default = _unlearn(name, trained_cnn, forget, max_steps=0)  # pgd_steps=5
    eps = default_l2_eps((1, 8, 8))
    assert default.hyperparams["pgd_eps"] == pytest.approx(eps)
    assert default.hyperparams["pgd_step_size"] == pytest.approx(2.5 * eps / 5)
    given = _unlearn(name, trained_cnn, forget, max_steps=0, pgd_eps=0.3)
    assert given.hyperparams["pgd_eps"] == 0.3
    assert given.hyperparams["pgd_step_size"] == pytest.approx(2.5 * 0.3 / 5)
    # The default preset's 50 steps, and the paper's 100 steps of eps / 40.
    preset_steps = _unlearn(name, trained_cnn, forget, max_steps=0, pgd_steps=FROM_PRESET)
    assert preset_steps.hyperparams["pgd_steps"] == 50
    assert preset_steps.hyperparams["pgd_step_size"] == pytest.approx(2.5 * eps / 50)
    paper = _unlearn(
        name, trained_cnn, forget, max_steps=0, preset="paper", pgd_steps=FROM_PRESET, pgd_eps=0.3
    )
    assert paper.hyperparams["pgd_steps"] == 100
    assert paper.hyperparams["pgd_step_size"] == pytest.approx(0.3 / 40)
    both = _unlearn(name, trained_cnn, forget, max_steps=0, pgd_eps=0.3, pgd_step_size=0.05)
    assert both.hyperparams["pgd_step_size"] == 0.05
    linf = _unlearn(name, trained_cnn, forget, max_steps=0, pgd_norm="linf")
    assert linf.hyperparams["pgd_eps"] == pytest.approx(DEFAULT_LINF_EPS)
    assert linf.hyperparams["pgd_norm"] == "linf"
    method = unlearnkit.create_method(name, **fast_params(name, max_steps=0))
    result = unlearnkit.unlearn(trained_cnn, forget, method=method)
    assert result.hyperparams["pgd_eps"] == pytest.approx(eps)
    assert (
        method.pgd_eps is None and method.get_params()["pgd_eps"] is None
    )  # the instance keeps None


def test_l2ul_adv_counts_passes_over_the_adversarial_set(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    # The paper: 4 instances x 2 copies = 8 anchors (all kept, no shifted copies) in batches of 4:
    # two steps per pass.
    result = _unlearn(
        "l2ul_adv",
        trained_cnn,
        forget,
        preset="paper",
        lr=1e-7,
        adv_batch_size=4,
        max_passes=3,
        max_steps=None,
    )
    assert result.details["anchors/adversarial"] == 8 and result.details["anchors/shifted"] == 0
    assert (result.steps, result.passes) == (6, 3)
    assert not result.converged and result.stop_reason == "max_passes"


def test_l2ul_adv_default_counts_passes_over_every_anchor(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    # The default: a pass runs over the kept adversarial copies and the shifted copies.
    result = _unlearn(
        "l2ul_adv", trained_cnn, forget, lr=1e-9, adv_batch_size=4, max_passes=3, max_steps=None
    )
    anchors = result.details["anchors/adversarial"] + result.details["anchors/shifted"]
    assert result.details["anchors/shifted"] > 0
    assert (result.steps, result.passes) == (3 * -(-anchors // 4), 3)
    assert not result.converged and result.stop_reason == "max_passes"


@pytest.mark.parametrize("name", ["neggrad", *ADV_METHODS])
def test_paper_preset_moves_batchnorm_statistics(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    # The paper trains in train mode during unlearning: BatchNorm running statistics move.
    result = _unlearn(name, trained_cnn, forget, preset="paper", lr=1e-7, max_steps=2)
    assert result.steps == 2
    bn_before, bn_after = trained_cnn.features[1], result.model.features[1]
    assert not torch.equal(bn_before.running_mean, bn_after.running_mean)
    assert int(bn_after.num_batches_tracked) == int(bn_before.num_batches_tracked) + 2


@pytest.mark.parametrize("name", ["neggrad", *ADV_METHODS])
def test_default_preset_keeps_batchnorm_statistics(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    # The default freezes the running statistics; the affine BatchNorm weights still learn.
    result = _unlearn(name, trained_cnn, forget, lr=FROM_PRESET, max_steps=2)  # Adam at 1e-4
    assert result.steps == 2
    for index in (1, 5):
        bn_before, bn_after = trained_cnn.features[index], result.model.features[index]
        assert torch.equal(bn_before.running_mean, bn_after.running_mean)
        assert torch.equal(bn_before.running_var, bn_after.running_var)
        assert int(bn_after.num_batches_tracked) == int(bn_before.num_batches_tracked)
    assert not torch.equal(trained_cnn.features[1].weight, result.model.features[1].weight)
    explicit = _unlearn(name, trained_cnn, forget, lr=FROM_PRESET, max_steps=2, bn_mode="train")
    assert not torch.equal(
        trained_cnn.features[1].running_mean, explicit.model.features[1].running_mean
    )


# -- neggrad ---------------------------------------------------------------------------------------


def test_neggrad_counts_passes_over_the_forget_set(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    result = _unlearn(
        "neggrad", trained_cnn, forget, lr=1e-7, batch_size=3, max_passes=2, max_steps=None
    )
    assert (result.steps, result.passes) == (4, 2)  # batches of 3 and 1, twice
    assert not result.converged and result.stop_reason == "max_passes"


@pytest.mark.parametrize("goal", ["misclassify", "relabel"])
def test_neggrad_paper_final_loss(
    goal: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor
) -> None:
    relabel = new_labels if goal == "relabel" else None
    result = _unlearn("neggrad", trained_cnn, forget, relabel, preset="paper", max_steps=1)
    final = result.details["final_loss"]
    x, y = forget
    # The loss of step 1 is the original model's, in train mode (BatchNorm on batch statistics).
    with torch.no_grad():
        logits = copy.deepcopy(trained_cnn).train()(x)
    expected = F.cross_entropy(logits, y if relabel is None else relabel)
    assert final == pytest.approx(float(-expected if relabel is None else expected), rel=1e-5)
    assert (final < 0) if relabel is None else (final > 0)
    none = _unlearn("neggrad", trained_cnn, forget, preset="paper", max_steps=0)
    assert none.details["final_loss"] is None


@pytest.mark.parametrize("goal", ["misclassify", "relabel"])
def test_neggrad_default_final_loss_is_the_hinge_loss(
    goal: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor
) -> None:
    relabel = new_labels if goal == "relabel" else None
    result = _unlearn("neggrad", trained_cnn, forget, relabel, max_steps=1)
    final = result.details["final_loss"]
    x, y = forget
    # Step 1 sees the original model with frozen BatchNorm statistics (= its eval-mode logits).
    logits = predict_logits(trained_cnn, x)
    expected = float(forget_hinge_loss(logits, y, relabel, margin=0.5))
    assert final == pytest.approx(expected, rel=1e-5)
    assert final > 0.5  # every instance starts on the wrong side: margin + its logit gap
    wider = _unlearn("neggrad", trained_cnn, forget, relabel, max_steps=1, forget_margin=2.0)
    assert wider.details["final_loss"] == pytest.approx(final + 1.5, rel=1e-5)
    none = _unlearn("neggrad", trained_cnn, forget, max_steps=0)
    assert none.details["final_loss"] is None
