"""Method-specific behaviour of the one-shot methods ssd and acu, and of the ridge component."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import same_weights, snapshot
from unlearnkit import (
    CheckpointError,
    DataContractError,
    InvalidHyperparameterError,
    InvalidModelError,
    InvalidRequestError,
)
from unlearnkit.components.importance import fisher_importance
from unlearnkit.components.ridge import ridge_fit, ridge_remove, with_bias
from unlearnkit.data import DataSplit
from unlearnkit.methods.acu import fit_analytic_head, prepare_analytic_memory
from unlearnkit.models import SmallCNN
from unlearnkit.utils.checkpoint import load_state_dict, save_state_dict

# -- helpers ---------------------------------------------------------------------------------------


def _rows_without(n_total: int, *exclude: Tensor, start: int = 0, n: int | None = None) -> Tensor:
    """Indices ``start, start + 1, ...`` (``n`` of them, or all up to ``n_total``) minus ``exclude``."""
    banned = {int(i) for group in exclude for i in group}
    keep = [i for i in range(start, n_total) if i not in banned]
    return torch.tensor(keep if n is None else keep[:n])


def _reference_ridge(x: Tensor, y: Tensor, gamma: float) -> Tensor:
    """Ridge weights ``(d + 1, C)`` by solving the normal equations directly, in float64."""
    xb = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], dim=1)
    gram = xb.T @ xb + gamma * torch.eye(xb.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, xb.T @ y.double())


@torch.no_grad()
def _cnn_features(model: SmallCNN, inputs: Tensor) -> Tensor:
    """The input of ``model.head[2]`` computed by hand (not through acu's hook), eval mode."""
    model.eval()
    return model.head[1](model.head[0](model.features(inputs))).double()


def _one_hot(labels: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(labels.long(), 10).double()


def _head_as_ridge(model: SmallCNN) -> Tensor:
    """``model.head[2]`` as ``(d + 1, C)`` float64 weights."""
    head = model.head[2]
    return torch.cat([head.weight.detach().T, head.bias.detach()[None]]).double()


# -- ridge component -------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_ridge_fit_solves_the_normal_equations(bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 5, generator=gen), torch.randn(30, 3, generator=gen)
    memory, weights = ridge_fit(x, y, gamma=0.3, bias=bias)
    xb = with_bias(x) if bias else x.double()
    gram = xb.T @ xb + 0.3 * torch.eye(xb.shape[1], dtype=torch.float64)
    assert memory.dtype == weights.dtype == torch.float64
    assert torch.equal(memory, memory.T)
    assert torch.allclose(memory @ gram, torch.eye(xb.shape[1], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(weights, torch.linalg.solve(gram, xb.T @ y.double()), atol=1e-10)


@pytest.mark.parametrize("bias", [True, False])
def test_ridge_remove_equals_refitting_without_the_rows(bias: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 6, generator=gen), torch.randn(40, 4, generator=gen)
    memory, weights = ridge_fit(x, y, gamma=0.5, bias=bias)
    # Three successive requests of different sizes, rows from anywhere in the data.
    kept = torch.ones(40, dtype=torch.bool)
    rows = 40
    for request in ([3], [0, 17, 39], list(range(20, 30))):
        idx = torch.tensor(request)
        memory, weights = ridge_remove(memory, weights, x[idx], y[idx], bias=bias, rows=rows)
        kept[idx] = False
        rows -= len(request)
        ref_memory, ref_weights = ridge_fit(x[kept], y[kept], gamma=0.5, bias=bias)
        assert torch.allclose(weights, ref_weights, atol=1e-10)
        assert torch.allclose(memory, ref_memory, atol=1e-10)
        assert torch.equal(memory, memory.T)


def test_ridge_remove_every_row_leaves_the_prior() -> None:
    x, y = torch.rand(5, 2), torch.rand(5, 3)
    memory, weights = ridge_fit(x, y, gamma=2.0)
    memory, weights = ridge_remove(memory, weights, x, y, rows=5)
    assert torch.allclose(memory, torch.eye(3, dtype=torch.float64) / 2.0, atol=1e-12)
    assert torch.allclose(weights, torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)


def test_ridge_refuses_what_makes_no_sense() -> None:
    x, y = torch.rand(4, 2), torch.rand(4, 3)
    memory, weights = ridge_fit(x, y, gamma=1e-3)
    with pytest.raises(ValueError, match="cannot remove 5 rows from a fit that holds 4"):
        ridge_remove(memory, weights, torch.rand(5, 2), torch.rand(5, 3), rows=4)
    one_memory, one_weights = ridge_fit(x[:1], y[:1], gamma=1e-3)
    once = ridge_remove(one_memory, one_weights, x[:1], y[:1])
    with pytest.raises(ValueError, match="not positive definite.*removed already"):
        ridge_remove(*once, x[:1], y[:1])  # the same row a second time
    with pytest.raises(ValueError, match="not positive definite"):
        ridge_remove(memory, weights, 100 * torch.ones(1, 2), torch.zeros(1, 3))  # never fitted
    with pytest.raises(ValueError, match="no rows"):
        ridge_remove(memory, weights, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"memory is \(3, 3\) but the removed rows have 4 columns"):
        ridge_remove(memory, weights, torch.rand(1, 3), torch.rand(1, 3))
    with pytest.raises(ValueError, match="weights are"):
        ridge_remove(memory, weights, x[:1], torch.rand(1, 2))
    with pytest.raises(ValueError, match="gamma must be > 0"):
        ridge_fit(x, y, gamma=0.0)
    with pytest.raises(ValueError, match="one row per feature row"):
        ridge_fit(x, y[:3], gamma=1.0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        ridge_fit(torch.tensor([[float("nan"), 0.0]]), y[:1], gamma=1.0)


# -- ssd -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ssd_retain(digits: DataSplit, forget_indices: Tensor) -> tuple[Tensor, Tensor]:
    """200 training rows, none of them a forget row."""
    keep = _rows_without(digits.x_train.shape[0], forget_indices, start=200, n=200)
    return digits.x_train[keep], digits.y_train[keep]


def test_ssd_dampens_exactly_the_selected_entries_by_the_stated_factor(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], ssd_retain: tuple[Tensor, Tensor]
) -> None:
    alpha, lam = 10.0, 1.0
    # The importances, recomputed here on the original model.
    data_imp = fisher_importance(trained_cnn, *ssd_retain)
    forget_imp = fisher_importance(trained_cnn, *forget)
    before = snapshot(trained_cnn)
    result = unlearnkit.unlearn(trained_cnn, forget, method="ssd", retain=ssd_retain)
    after = result.model.state_dict()

    selected_total = 0
    for name, param in trained_cnn.named_parameters():
        mask = forget_imp[name] > alpha * data_imp[name]
        beta = (lam * data_imp[name][mask] / forget_imp[name][mask]).clamp(max=1.0)
        assert torch.equal(after[name][mask], before[name][mask] * beta), name
        assert torch.equal(after[name][~mask], before[name][~mask]), name  # bit-identical
        assert bool((beta < 1).all())  # lambda < alpha: every selected entry really shrinks
        selected_total += int(mask.sum())
    # BatchNorm running statistics (buffers, not parameters) are untouched.
    params = dict(trained_cnn.named_parameters())
    for name, tensor in after.items():
        if name not in params:
            assert torch.equal(tensor, before[name]), name
    assert selected_total > 0  # the default settings do change the tiny trained model
    assert result.details["selected_entries"] == result.details["dampened_entries"] == selected_total
    total = sum(p.numel() for p in trained_cnn.parameters())
    assert result.details["parameter_entries"] == total
    assert result.details["dampened_share"] == pytest.approx(selected_total / total)
    assert sum(result.details["selected_per_tensor"].values()) == selected_total
    assert (result.steps, result.passes, result.stop_reason) == (1, 1, "fixed_schedule")
    assert result.retain_used == 200 and "never trained on" in result.details["retain_use"]


@pytest.mark.parametrize("alpha", [1e12, float("inf")])
def test_ssd_with_nothing_selected_changes_nothing_and_says_so(
    alpha: float, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], ssd_retain: tuple[Tensor, Tensor]
) -> None:
    result = unlearnkit.unlearn(trained_cnn, forget, method="ssd", retain=ssd_retain, selection_weight=alpha)
    assert same_weights(result.model, trained_cnn)
    assert result.model_sha256_after == result.model_sha256_before
    assert result.details["selected_entries"] == result.details["dampened_entries"] == 0
    assert result.details["dampened_share"] == 0.0 and result.details["selected_per_tensor"] == {}
    assert not result.converged and result.metrics["acc/forget/after"] == 100.0


def test_ssd_leaves_frozen_parameters_alone(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], ssd_retain: tuple[Tensor, Tensor]
) -> None:
    model = copy.deepcopy(trained_cnn)
    for p in model.features.parameters():
        p.requires_grad_(False)
    result = unlearnkit.unlearn(model, forget, method="ssd", retain=ssd_retain, selection_weight=1.0)
    for (name, p), (_, q) in zip(model.features.named_parameters(), result.model.features.named_parameters()):
        assert torch.equal(p, q), name
    assert result.details["selected_entries"] > 0
    assert not any(name.startswith("features") for name in result.details["selected_per_tensor"])


def test_ssd_lambda_above_alpha_can_select_without_dampening(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], ssd_retain: tuple[Tensor, Tensor]
) -> None:
    # dampening >= selection_weight: factors of selected entries may be capped at 1 (no change).
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="ssd", retain=ssd_retain, selection_weight=1.0, dampening=1e6
    )
    assert result.details["selected_entries"] > 0 and result.details["dampened_entries"] == 0
    assert same_weights(result.model, trained_cnn)


def test_ssd_hyperparameter_checks() -> None:
    assert unlearnkit.create_method("ssd").get_params() == {
        "selection_weight": 10.0, "dampening": 1.0, "importance_batch_size": 32, "importance": "per_example",
    }
    with pytest.raises(InvalidHyperparameterError, match="selection_weight must be >= 0"):
        unlearnkit.create_method("ssd", selection_weight=-1.0)
    with pytest.raises(InvalidHyperparameterError, match="dampening must be >= 0"):
        unlearnkit.create_method("ssd", dampening=float("nan"))
    with pytest.raises(InvalidHyperparameterError, match="importance_batch_size must be > 0"):
        unlearnkit.create_method("ssd", importance_batch_size=0)


# -- acu -------------------------------------------------------------------------------------------


def _backbone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("head.2.")}


def test_acu_head_equals_a_ridge_head_refitted_on_the_retain_rows(
    trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor], forget_indices: Tensor
) -> None:
    keep = _rows_without(digits.x_train.shape[0], forget_indices, start=0, n=300)
    retain = digits.x_train[keep], digits.y_train[keep]
    result = unlearnkit.unlearn(trained_cnn, forget, method="acu", retain=retain, gamma=0.5)
    expected = _reference_ridge(_cnn_features(copy.deepcopy(trained_cnn), retain[0]), _one_hot(retain[1]), 0.5)
    assert torch.allclose(_head_as_ridge(result.model), expected, atol=1e-5)
    # The stored memory is the inverse gram matrix of the retain rows.
    xb = with_bias(_cnn_features(copy.deepcopy(trained_cnn), retain[0]))
    gram = xb.T @ xb + 0.5 * torch.eye(129, dtype=torch.float64)
    memory = result.model.head[2].acu_memory
    assert memory.dtype == torch.float64 and memory.shape == (129, 129)
    assert torch.allclose(memory @ gram, torch.eye(129, dtype=torch.float64), atol=1e-8)
    assert result.model.head[2].acu_memory_meta.tolist() == [300.0, 0.5]
    # The backbone (parameters and BatchNorm statistics) is bit-identical.
    before, after = _backbone_state(trained_cnn), _backbone_state(result.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert result.details == {
        "gamma": 0.5, "feature_dim": 128, "rows_removed": 4, "memory": "fitted_now",
        "rows_before": 304, "rows_remaining": 300, "head": "head.2", "memory_format": "channels_last",
    }
    assert result.hyperparams == {"gamma": 0.5, "head": None}
    assert (result.steps, result.passes, result.stop_reason, result.retain_used) == (1, 1, "fixed_schedule", 300)
    assert not hasattr(trained_cnn.head[2], "acu_memory")  # the caller's model is not touched


def test_acu_successive_requests_through_the_memory_equal_a_refit(
    trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor], forget_indices: Tensor
) -> None:
    n = digits.x_train.shape[0]
    model = fit_analytic_head(copy.deepcopy(trained_cnn), digits.x_train, digits.y_train, gamma=2.0)
    fitted = _reference_ridge(_cnn_features(copy.deepcopy(trained_cnn), digits.x_train), _one_hot(digits.y_train), 2.0)
    assert torch.allclose(_head_as_ridge(model), fitted, atol=1e-5)
    second_indices = _rows_without(n, forget_indices, start=50, n=6)
    second = digits.x_train[second_indices], digits.y_train[second_indices]

    first_result = unlearnkit.unlearn(model, forget, method="acu")
    second_result = unlearnkit.unlearn(first_result.model, second, method="acu")

    keep = _rows_without(n, forget_indices, second_indices)
    expected = _reference_ridge(_cnn_features(copy.deepcopy(trained_cnn), digits.x_train[keep]), _one_hot(digits.y_train[keep]), 2.0)
    assert torch.allclose(_head_as_ridge(second_result.model), expected, atol=1e-5)
    for result, rows in ((first_result, n - 4), (second_result, n - 10)):
        assert result.details["memory"] == "reused" and result.details["rows_remaining"] == rows
        assert result.retain_used == 0 and result.hyperparams["gamma"] == 2.0  # the memory's own
    before, after = _backbone_state(trained_cnn), _backbone_state(second_result.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_acu_memory_travels_with_a_checkpoint(
    trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor], tmp_path: Path
) -> None:
    model = fit_analytic_head(copy.deepcopy(trained_cnn), digits.x_train[:500], digits.y_train[:500])
    path = tmp_path / "with_memory.safetensors"
    save_state_dict(model, path)
    with pytest.raises(CheckpointError, match="acu_memory"):
        load_state_dict(copy.deepcopy(trained_cnn), path)  # a fresh model lacks the buffers
    fresh = copy.deepcopy(trained_cnn)
    prepare_analytic_memory(fresh)
    with pytest.raises(DataContractError, match="needs either retain data"):
        unlearnkit.unlearn(fresh, forget, method="acu")  # an empty placeholder is no memory
    load_state_dict(fresh, path)
    from_checkpoint = unlearnkit.unlearn(fresh, forget, method="acu")
    in_memory = unlearnkit.unlearn(model, forget, method="acu")
    assert same_weights(from_checkpoint.model, in_memory.model)
    assert from_checkpoint.details["memory"] == "reused"


def test_acu_error_paths(
    trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor]
) -> None:
    retain = digits.x_train[200:260], digits.y_train[200:260]
    with pytest.raises(DataContractError, match=r"needs either retain data .*fit_analytic_head"):
        unlearnkit.unlearn(trained_cnn, forget, method="acu")
    small = fit_analytic_head(copy.deepcopy(trained_cnn), forget[0][:2], forget[1][:2], gamma=1e-3)
    with pytest.raises(DataContractError, match="already holds an analytic memory.*pass retain=None"):
        unlearnkit.unlearn(small, forget, method="acu", retain=retain)
    with pytest.raises(InvalidHyperparameterError, match="fitted with gamma=0.001; a request cannot change gamma"):
        unlearnkit.unlearn(small, forget, method="acu", gamma=1.0)
    with pytest.raises(InvalidRequestError, match="cannot remove 4 rows from a fit that holds 2"):
        unlearnkit.unlearn(small, forget, method="acu")
    with pytest.raises(InvalidRequestError, match="not positive definite"):
        unlearnkit.unlearn(small, (forget[0][2:3], forget[1][2:3]), method="acu")  # never fitted
    with pytest.raises(InvalidHyperparameterError, match=r"no module named 'fc'; its nn.Linear modules: \['head.0', 'head.2'\]"):
        unlearnkit.unlearn(trained_cnn, forget, method="acu", retain=retain, head="fc")
    with pytest.raises(InvalidHyperparameterError, match="'features.0' is a Conv2d, not an nn.Linear"):
        unlearnkit.unlearn(trained_cnn, forget, method="acu", retain=retain, head="features.0")
    with pytest.raises(InvalidModelError, match="output of head 'head.0' is not the model's logits"):
        unlearnkit.unlearn(trained_cnn, forget, method="acu", retain=retain, head="head.0")
    torch.manual_seed(0)
    no_linear = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    with pytest.raises(InvalidModelError, match="has no nn.Linear"):
        unlearnkit.unlearn(no_linear, forget, method="acu", retain=retain)
    with pytest.raises(InvalidHyperparameterError, match="gamma must be > 0"):
        unlearnkit.create_method("acu", gamma=0.0)
    with pytest.raises(InvalidHyperparameterError, match="head must be a module name or None"):
        unlearnkit.create_method("acu", head="")


def test_acu_named_head_and_head_without_bias(digits: DataSplit) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10, bias=False)).eval()
    x, y = digits.x_train[:120], digits.y_train[:120]
    labels = unlearnkit.utils.modules.predict_logits(model, x[:3]).argmax(1)
    retain = x[3:], y[3:]
    result = unlearnkit.unlearn(model, (x[:3], labels), method="acu", retain=retain, head="3", gamma=0.1)
    with torch.no_grad():
        feats = model[2](model[1](model[0](retain[0]))).double()
    gram = feats.T @ feats + 0.1 * torch.eye(16, dtype=torch.float64)
    expected = torch.linalg.solve(gram, feats.T @ _one_hot(retain[1]))
    assert torch.allclose(result.model[3].weight.detach().T.double(), expected, atol=1e-5)
    assert result.model[3].acu_memory.shape == (16, 16) and result.details["head"] == "3"
    assert torch.equal(result.model[1].weight, model[1].weight)


def test_ssd_batch_importance_follows_the_released_code(digits, forget) -> None:
    """``importance="batch"`` squares each mini-batch's mean gradient (the released
    ``calc_importance``); with batches of 1 it is the per-example Fisher, and it selects at
    least as many entries as the per-example one on the same data (batch gradients cancel)."""
    import torch
    import unlearnkit
    from unlearnkit.components.importance import batch_fisher_importance, fisher_importance
    from unlearnkit.models import SmallCNN, TrainRecipe, train_classifier

    torch.manual_seed(0)
    model = SmallCNN(1, 10, image_size=8)
    train_classifier(model, digits.x_train, digits.y_train, TrainRecipe(epochs=2, seed=0))
    x, y = digits.x_train[:64], digits.y_train[:64]
    full = batch_fisher_importance(model, x, y, batch_size=64)
    for name, value in full.items():
        grads = torch.autograd.grad(
            torch.nn.functional.cross_entropy(model.eval()(x), y), dict(model.named_parameters())[name]
        )[0]
        assert torch.allclose(value, grads.square(), atol=1e-8)
    ones = batch_fisher_importance(model, x[:8], y[:8], batch_size=1)
    per = fisher_importance(model, x[:8], y[:8])
    assert all(torch.allclose(ones[k], per[k], atol=1e-9) for k in per)
    retain = (digits.x_train[100:400], digits.y_train[100:400])
    batch = unlearnkit.unlearn(model, forget, method="ssd", retain=retain, importance="batch", importance_batch_size=64)
    example = unlearnkit.unlearn(model, forget, method="ssd", retain=retain)
    assert batch.hyperparams["importance"] == "batch"
    assert batch.details["selected_entries"] != example.details["selected_entries"]
    with pytest.raises(unlearnkit.InvalidHyperparameterError, match="importance must be one of"):
        unlearnkit.create_method("ssd", importance="exact")
