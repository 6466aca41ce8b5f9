"""NegGrad plus L2 / MAS / EWC toward the original weights, and the Fisher importance."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import fast_params, same_weights
from unlearnkit.components.importance import fisher_importance
from unlearnkit.methods import method_class
from unlearnkit.models import SmallCNN
from unlearnkit.result import UnlearnResult

REGULARIZED = ["neggrad_l2", "neggrad_mas", "neggrad_ewc"]
#: Keeps every run going for exactly ``max_steps`` steps: small steps, and no instance meets a
#: million-logit margin within them.
NEVER_DONE = {"stop_margin": 1e6, "lr": 1e-3}


def _unlearn(name: str, model: nn.Module, forget: tuple[Tensor, Tensor], **overrides: Any) -> UnlearnResult:
    return unlearnkit.unlearn(model, forget, method=name, seed=0, **fast_params(name, **overrides))


def _distance(model: nn.Module, original: nn.Module) -> float:
    ref = dict(original.named_parameters())
    return float(sum((p.detach() - ref[n].detach()).square().sum() for n, p in model.named_parameters()).sqrt())


# -- fisher_importance ----------------------------------------------------------------------------


def test_fisher_importance_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.25, -0.5]])
    y = torch.tensor([1, 0])
    expected_w, expected_b, mean_b = torch.zeros(2, 3), torch.zeros(2), torch.zeros(2)
    with torch.no_grad():
        for xi, yi in zip(x, y):
            # d CE / d logits = softmax - onehot; d logits / d W = outer(., x), d / d b = identity.
            g = torch.softmax(model(xi), dim=0) - nn.functional.one_hot(yi, 2).float()
            expected_w += torch.outer(g, xi).square() / 2
            expected_b += g.square() / 2
            mean_b += g / 2
    imp = fisher_importance(model, x, y, batch_size=2)
    assert sorted(imp) == ["bias", "weight"]
    torch.testing.assert_close(imp["weight"], expected_w)
    torch.testing.assert_close(imp["bias"], expected_b)
    # Per-example squares, not the square of the mean gradient.
    assert not torch.allclose(imp["bias"], mean_b.square())
    # The batch size only changes how many instances share a forward pass.
    one = fisher_importance(model, x, y, batch_size=1)
    torch.testing.assert_close(one["weight"], imp["weight"])


def test_fisher_importance_is_non_negative_and_leaves_grad_and_mode_alone(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    model = SmallCNN(in_channels=1, num_classes=10, image_size=8)
    model.load_state_dict(trained_cnn.state_dict())
    model.train()
    imp = fisher_importance(model, *forget, batch_size=3)
    assert set(imp) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all((v >= 0).all() and torch.isfinite(v).all() for v in imp.values())
    assert any(v.sum() > 0 for v in imp.values())
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    with pytest.raises(ValueError):
        fisher_importance(model, forget[0][:0], forget[1][:0])


# -- the three methods ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", REGULARIZED)
def test_hyperparameters_and_validation(name: str) -> None:
    for preset in ("default", "paper"):
        method = unlearnkit.methods.create_method(name, preset=preset)
        assert method.reg_lambda == 1.0
        neggrad = unlearnkit.methods.create_method("neggrad", preset=preset)
        assert {k: v for k, v in method.get_params().items() if k in neggrad.get_params()} == neggrad.get_params()
    assert issubclass(method_class(name), method_class("neggrad"))
    with pytest.raises(unlearnkit.InvalidHyperparameterError):
        unlearnkit.methods.create_method(name, reg_lambda=-1.0)


@pytest.mark.parametrize("name", REGULARIZED)
def test_penalty_is_zero_at_step_zero_and_grows(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    cls = method_class(name)
    original = cls._penalty
    seen: dict[str, Any] = {}

    def spy(self: Any, context: Any) -> Any:
        penalty, details = original(self, context)
        seen["initial"], seen["penalty"] = float(penalty().detach()), penalty
        return penalty, details

    monkeypatch.setattr(cls, "_penalty", spy)
    result = _unlearn(name, trained_cnn, forget, max_steps=5, **NEVER_DONE)
    assert seen["initial"] == 0.0
    assert result.steps == 5
    assert float(seen["penalty"]().detach()) > 0.0  # bound to the model being updated
    if name == "neggrad_l2":
        assert "importance/mean" not in result.details
    else:
        assert 0.0 < result.details["importance/mean"] <= 1.0


@pytest.mark.parametrize("name", REGULARIZED)
def test_reg_lambda_zero_is_neggrad_bit_for_bit_and_positive_differs(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    base = _unlearn("neggrad", trained_cnn, forget, max_steps=5, **NEVER_DONE)
    zero = _unlearn(name, trained_cnn, forget, reg_lambda=0.0, max_steps=5, **NEVER_DONE)
    assert zero.steps == base.steps == 5
    assert same_weights(zero.model, base.model)
    assert zero.details["final_loss"] == base.details["final_loss"]
    regularized = _unlearn(name, trained_cnn, forget, reg_lambda=1.0, max_steps=5, **NEVER_DONE)
    assert regularized.steps == 5
    assert not same_weights(regularized.model, base.model)
    # A full (goal-driven) run with the defaults of the fast settings also matches at 0.
    assert same_weights(
        _unlearn(name, trained_cnn, forget, reg_lambda=0.0).model, _unlearn("neggrad", trained_cnn, forget).model
    )


@pytest.mark.parametrize("name", REGULARIZED)
def test_large_reg_lambda_stays_closer_to_the_original(
    name: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    free = _unlearn(name, trained_cnn, forget, reg_lambda=0.0, max_steps=30, **NEVER_DONE)
    held = _unlearn(name, trained_cnn, forget, reg_lambda=1000.0, max_steps=30, **NEVER_DONE)
    assert free.steps == held.steps == 30
    assert _distance(held.model, trained_cnn) < _distance(free.model, trained_cnn)
