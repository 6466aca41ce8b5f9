"""IAU (one Adam step on grad L_r - grad L_f, gradients in chunks; gradient-restriction training)
and Blindspot (a retain-only model as the forget set's target, with attention transfer)."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import unlearnkit
import unlearnkit.methods.blindspot as blindspot_module
from helpers import same_state, same_weights, snapshot
from unlearnkit import InvalidHyperparameterError
from unlearnkit.components.constraints import mean_loss_gradient
from unlearnkit.data import DataSplit
from unlearnkit.methods import IAU, Blindspot
from unlearnkit.methods.blindspot import attention_map, attention_transfer_distance, conv_layers, output_distance
from unlearnkit.methods.iau import influence_direction
from unlearnkit.models import SmallCNN, TrainRecipe, train_classifier
from unlearnkit.models.pretrained import DIGITS_RECIPE
from unlearnkit.models.training import gradient_restriction


def _retain(digits: DataSplit) -> tuple[Tensor, Tensor]:
    return digits.x_train[200:400], digits.y_train[200:400]


def _full_batch_gradient(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """The gradient of the mean cross-entropy over all rows in one batch, in eval mode."""
    model = copy.deepcopy(model).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(F.cross_entropy(model(x), y), params))


def _relative_error(a: list[Tensor], b: list[Tensor]) -> float:
    diff = torch.cat([(p - q).flatten() for p, q in zip(a, b, strict=True)]).double().norm()
    return float(diff / torch.cat([q.flatten() for q in b]).double().norm())


# -- IAU ---------------------------------------------------------------------------------------------


def test_iau_takes_exactly_one_optimiser_step(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    stepped: list[str] = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: stepped.append(type(opt).__name__))
    try:
        result = unlearnkit.unlearn(trained_cnn, forget, method="iau", retain=_retain(digits), chunk_size=64)
    finally:
        handle.remove()
    assert stepped == ["Adam"]
    assert (result.steps, result.passes, result.stop_reason) == (1, 1, "fixed_schedule")
    assert result.converged == (result.metrics["acc/forget/after"] == 0.0)
    assert result.details["iau/chunks"] == 4 + 1  # 200 retain rows / 64, 4 forget rows / 64
    assert all(p.grad is None for p in result.model.parameters())  # no stale gradients handed back


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_gradient_equals_full_batch(trained_cnn: SmallCNN, digits: DataSplit, chunk_size: int) -> None:
    x, y = _retain(digits)
    model = copy.deepcopy(trained_cnn).train()  # the helper must use eval mode itself
    state, modes = snapshot(model), [m.training for m in model.modules()]
    chunked = mean_loss_gradient(model, x, y, chunk_size=chunk_size)
    assert _relative_error(chunked, _full_batch_gradient(trained_cnn, x, y)) < 1e-6
    assert same_state(model, state)  # BatchNorm statistics did not move
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())


def test_chunked_gradient_refuses_nothing_to_do(trained_linear: nn.Module, digits: DataSplit) -> None:
    x, y = _retain(digits)
    with pytest.raises(ValueError, match="chunk_size > 0"):
        mean_loss_gradient(trained_linear, x, y, chunk_size=0)
    with pytest.raises(ValueError, match="need rows"):
        mean_loss_gradient(trained_linear, x[:0], y[:0], chunk_size=4)


@pytest.mark.parametrize("lr", [1e-3, 0.02])
def test_iau_update_is_minus_lr_times_adams_first_step(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit, lr: float
) -> None:
    xr, yr = _retain(digits)
    g_r = _full_batch_gradient(trained_cnn, xr, yr)
    g_f = _full_batch_gradient(trained_cnn, *forget)
    result = unlearnkit.unlearn(trained_cnn, forget, method="iau", retain=(xr, yr), lr=lr, chunk_size=50)
    after = dict(result.model.named_parameters())
    for (name, before), gr, gf in zip(trained_cnn.named_parameters(), g_r, g_f, strict=True):
        g = gr - gf
        # Adam's first step: bias-corrected m = g, v = g^2, so the step is lr * g / (|g| + eps).
        expected = before.detach() - lr * g / (g.abs() + 1e-8)
        assert torch.allclose(after[name].detach(), expected, rtol=0, atol=lr * 1e-3), name
    moved = max(float((after[n] - p).detach().abs().max()) for n, p in trained_cnn.named_parameters())
    assert moved == pytest.approx(lr, rel=1e-3)  # a sign step: the largest change is lr
    buffers = dict(result.model.named_buffers())
    assert all(torch.equal(buffers[n], b) for n, b in trained_cnn.named_buffers())


def test_iau_retain_and_forget_roles(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit) -> None:
    retain = _retain(digits)
    g = influence_direction(trained_cnn, forget, retain, chunk_size=32)
    swapped = influence_direction(trained_cnn, retain, forget, chunk_size=32)
    assert all(torch.allclose(a, -b) for a, b in zip(g, swapped, strict=True))
    g_r = _full_batch_gradient(trained_cnn, *retain)
    g_f = _full_batch_gradient(trained_cnn, *forget)
    assert _relative_error(g, [r - f for r, f in zip(g_r, g_f)]) < 1e-5
    # The forget term is ascended: the step raises the forget loss.
    one = unlearnkit.unlearn(trained_cnn, forget, method="iau", retain=retain, lr=1e-3)
    assert one.metrics["loss/forget/after"] > one.metrics["loss/forget/before"]


def test_iau_is_one_shot_and_misclassification_only() -> None:
    assert IAU.goal_driven is False and IAU.gradient_based is False
    assert IAU.data_access == "forget+retain" and not IAU.supports_relabel
    with pytest.raises(InvalidHyperparameterError, match="gu needs a gradient-based base method"):
        unlearnkit.create_method("gu", base="iau")
    with pytest.raises(InvalidHyperparameterError, match="chunk_size must be > 0"):
        unlearnkit.create_method("iau", chunk_size=0)
    assert unlearnkit.create_method("iau").get_params() == {"lr": 1e-3, "chunk_size": 256}


# -- gradient restriction (training) -----------------------------------------------------------------


def test_grad_restriction_keeps_existing_fingerprints() -> None:
    assert TrainRecipe(grad_restriction=0.0).fingerprint() == TrainRecipe().fingerprint()
    assert DIGITS_RECIPE.fingerprint() == "70fc1caed2dd"  # the cached digits model's key
    assert "grad_restriction" not in DIGITS_RECIPE.as_dict()
    restricted = dataclasses.replace(DIGITS_RECIPE, grad_restriction=0.005)
    assert restricted.as_dict()["grad_restriction"] == 0.005
    assert restricted.fingerprint() != DIGITS_RECIPE.fingerprint()
    for bad in (-0.1, float("nan"), True, "0.1"):
        with pytest.raises(ValueError, match="grad_restriction must be a number >= 0"):
            TrainRecipe(grad_restriction=bad)  # type: ignore[arg-type]


def test_gradient_restriction_is_the_sum_of_per_tensor_gradient_norms() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 1, 0, 1])
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    value = gradient_restriction(loss, params)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    assert value.item() == pytest.approx(sum(float(g.norm()) for g in grads), rel=1e-6)
    value.backward()  # differentiable: double backprop reaches the weights
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)


def test_training_with_gradient_restriction_adds_the_penalty_to_every_step(digits: DataSplit) -> None:
    x, y = digits.x_train[:48], digits.y_train[:48]

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))

    recipe = TrainRecipe(epochs=1, batch_size=48, lr=1e-2, weight_decay=0.0, grad_restriction=0.5)
    trained = train_classifier(fresh(), x, y, recipe)
    # By hand: one full batch, one Adam step on CE + alpha * sum ||grad||.
    manual = fresh()
    params = list(manual.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    loss = F.cross_entropy(manual(x), y)
    (loss + 0.5 * gradient_restriction(loss, params)).backward()
    optimizer.step()
    # Adam's first step is about lr * sign(g): entries with |g| near eps feel float rounding (the
    # recipe shuffles the batch), hence 1e-5 against a step of 1e-2.
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(trained.parameters(), params, strict=True))
    plain = train_classifier(fresh(), x, y, dataclasses.replace(recipe, grad_restriction=0.0))
    assert not same_weights(plain, trained)
    again = train_classifier(fresh(), x, y, recipe)
    assert same_weights(again, trained)


# -- Blindspot ---------------------------------------------------------------------------------------


def test_attention_map_and_distance_on_hand_made_activations() -> None:
    acts = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2 channels, 1, 2 positions)
    # Channel mean of squares: [(1 + 9) / 2, (4 + 0) / 2] = [5, 2], normalised by sqrt(29).
    expected = torch.tensor([[5.0, 2.0]]) / 29**0.5
    assert torch.allclose(attention_map(acts), expected)
    other = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]])  # map [0, 1]
    by_hand = ((expected - torch.tensor([[0.0, 1.0]])) ** 2).mean()
    assert attention_transfer_distance(acts, other).item() == pytest.approx(by_hand.item())
    assert attention_transfer_distance(acts, -3 * acts).item() == pytest.approx(0.0, abs=1e-7)  # sign and scale
    batch = torch.stack([acts[0], other[0]])  # averaged over examples too
    assert attention_transfer_distance(batch, batch.flip(0)).item() == pytest.approx(by_hand.item())
    assert attention_map(torch.ones(2, 3, 4)).shape == (2, 4)  # Conv1d activations
    with pytest.raises(ValueError, match=r"activations \(N, C, ...\)"):
        attention_map(torch.ones(2, 3))


def test_output_distances() -> None:
    a, b = torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]])
    assert output_distance(a, b, "l1").item() == pytest.approx(1.0)
    assert output_distance(a, b, "mse").item() == pytest.approx(5.0 / 3)
    assert output_distance(b, b, "kl").item() == pytest.approx(0.0, abs=1e-6)
    assert output_distance(a, b, "kl").item() > 0
    with pytest.raises(InvalidHyperparameterError, match="output_loss must be one of"):
        unlearnkit.create_method("blindspot", output_loss="l2")


def _spy_on_blindspot_training(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    original = blindspot_module.train_for_epochs

    def spy(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: Tensor, labels: Tensor, **kwargs: Any):
        seen: list[Tensor] = []
        handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
        try:
            out = original(model, optimizer, inputs, labels, **kwargs)
        finally:
            handle.remove()
        calls.append({"model": model, "inputs": inputs, "labels": labels, "seen": seen, **kwargs})
        return out

    monkeypatch.setattr(blindspot_module, "train_for_epochs", spy)
    return calls


def test_the_blindspot_model_never_sees_the_forget_set(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_on_blindspot_training(monkeypatch)
    retain = _retain(digits)
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="blindspot", retain=retain, blindspot_batch_size=64, blindspot_epochs=2
    )
    assert len(calls) == 1
    call = calls[0]
    assert torch.equal(call["inputs"], retain[0]) and torch.equal(call["labels"], retain[1])
    assert call["epochs"] == 2 and call["batch_size"] == 64 and call["model"] is not result.model
    rows = torch.cat(call["seen"]).flatten(1)
    assert rows.shape[0] == 2 * 200  # every retain row, once per epoch, nothing else
    forget_rows = forget[0].flatten(1)
    assert not (rows[:, None, :] == forget_rows[None, :, :]).all(dim=2).any()
    assert result.details["blindspot/steps"] == 2 * 4 and result.steps == 8 + 1  # 204 rows in one batch of 256
    assert result.passes == 2 + 1


def test_the_blindspot_model_does_not_depend_on_the_original_weights(
    trained_cnn: SmallCNN, digits: DataSplit
) -> None:
    method = Blindspot(blindspot_epochs=1, blindspot_batch_size=100)
    other = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
        for module in other.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.fill_(3.0)
    a, steps_a, _ = method.train_blindspot(trained_cnn, _retain(digits), 7, torch.Generator().manual_seed(0))
    b, steps_b, _ = method.train_blindspot(other, _retain(digits), 7, torch.Generator().manual_seed(0))
    assert steps_a == steps_b == 2
    assert same_weights(a, b)  # parameters and BatchNorm statistics
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    c, _, _ = method.train_blindspot(trained_cnn, _retain(digits), 8, torch.Generator().manual_seed(0))
    assert not same_weights(a, c)  # the seed sets the initialisation


def test_blindspot_seeds_reproduce(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit) -> None:
    def run(seed: int) -> unlearnkit.UnlearnResult:
        return unlearnkit.unlearn(trained_cnn, forget, method="blindspot", retain=_retain(digits), seed=seed)

    first, again, other = run(3), run(3), run(4)
    assert same_weights(first.model, again.model) and first.details == again.details
    assert first.details["blindspot/seed"] != other.details["blindspot/seed"]
    assert not same_weights(first.model, other.model)


def test_blindspot_attention_term_acts_on_conv_layers(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit, trained_linear: nn.Module
) -> None:
    assert len(conv_layers(trained_cnn)) == 2 and conv_layers(trained_linear) == []
    with_at = unlearnkit.unlearn(trained_cnn, forget, method="blindspot", retain=_retain(digits), batch_size=32)
    without = unlearnkit.unlearn(
        trained_cnn, forget, method="blindspot", retain=_retain(digits), batch_size=32, attention_weight=0.0
    )
    assert with_at.details["attention_layers"] == 2
    assert with_at.details["blindspot/seed"] == without.details["blindspot/seed"]
    assert not same_weights(with_at.model, without.model)
    mlp = unlearnkit.unlearn(trained_linear, forget, method="blindspot", retain=_retain(digits))
    assert mlp.details["attention_layers"] == 0 and mlp.steps > 0


def test_blindspot_forget_term_is_zero_at_the_target() -> None:
    method = Blindspot()
    logits = torch.randn(3, 5)
    acts = [torch.randn(3, 4, 2, 2), torch.randn(3, 2, 6)]
    assert method.forget_term(logits, logits, acts, acts).item() == pytest.approx(0.0, abs=1e-6)
    shifted = method.forget_term(logits, logits, acts, [a.flip(0) for a in acts])
    assert shifted.item() > 0


def test_blindspot_declares_its_contract() -> None:
    assert Blindspot.goal_driven is False and Blindspot.gradient_based is True
    assert Blindspot.data_access == "forget+retain" and not Blindspot.supports_relabel
    defaults = unlearnkit.create_method("blindspot").get_params()
    assert defaults == {
        "lr": 1e-3, "epochs": 1, "batch_size": 256, "attention_weight": 50.0, "output_loss": "l1",
        "blindspot_epochs": 2, "blindspot_lr": 1e-2, "blindspot_batch_size": 256,
    }
