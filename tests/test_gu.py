"""GU: the wrapper executes only update components orthogonal to the retain gradients it kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import unlearnkit
from unlearnkit import InvalidHyperparameterError, InvalidRequestError, UnknownMethodError
from unlearnkit.components.batching import shuffled_batches
from unlearnkit.components.constraints import loss_gradients
from unlearnkit.data import DataSplit
from unlearnkit.methods import METHODS, MethodRun, UnlearnContext, UnlearningMethod, method_class, register_method
from unlearnkit.models import SmallCNN


def _flat(model: torch.nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


def _retain(digits: DataSplit) -> tuple[Tensor, Tensor]:
    return digits.x_train[200:400], digits.y_train[200:400]


@pytest.mark.parametrize("base, base_params", [
    ("neggrad", {"lr": 0.02}),
    ("neggrad", {"lr": 0.02, "optimizer": "sgd", "weight_decay": 1e-3}),
    ("l2ul", {"lr": 0.02, "n_adv": 2, "pgd_steps": 3}),
    ("neggrad_plus", {"lr": 0.02, "alpha": 0.5}),
])
def test_the_executed_change_is_orthogonal_to_the_kept_retain_gradients(
    base: str, base_params: dict, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    retain = _retain(digits)
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="gu", retain=retain, seed=3, base=base, base_params=base_params,
        retain_gradients=5, retain_batch_size=20,
    )
    assert result.converged and result.steps > 0
    assert result.details["gu/projected_steps"] == result.steps
    # The same retain batches as the method drew: its generator is seeded with the run's seed and
    # the basis is its first random choice.
    batches = shuffled_batches(200, 20, torch.Generator().manual_seed(3))[:5]
    kept = loss_gradients(trained_cnn, retain[0], retain[1], batches)
    change = _flat(result.model) - _flat(trained_cnn)
    assert change.norm() > 1e-3
    cosines = (kept.T @ change) / (kept.norm(dim=0) * change.norm())
    assert cosines.abs().max() < 1e-4
    # Without GU the same base moves along the retain gradients.
    plain = unlearnkit.unlearn(trained_cnn, forget, method=base, seed=3, retain=retain if base == "neggrad_plus" else None,
                               **base_params)
    plain_change = _flat(plain.model) - _flat(trained_cnn)
    assert ((kept.T @ plain_change) / (kept.norm(dim=0) * plain_change.norm())).abs().max() > 1e-2


def test_details_report_the_cost(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit) -> None:
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="gu", retain=_retain(digits), base_params={"lr": 0.02}, retain_gradients=4,
        retain_batch_size=16,
    )
    d = sum(p.numel() for p in trained_cnn.parameters())
    rank = result.details["gu/basis_rank"]
    assert 1 <= rank <= 4
    assert result.details["gu/trainable_parameters"] == d
    assert result.details["gu/basis_megabytes"] == pytest.approx(d * rank * 4 / 2**20)
    assert result.details["gu/basis_seconds"] > 0 and result.details["gu/base"] == "neggrad"
    assert result.hyperparams["base"] == "neggrad"
    assert result.hyperparams["base_params"]["lr"] == 0.02  # the base's resolved hyperparameters
    assert result.hyperparams["base_params"]["preset"] == "default"
    assert result.retain_used == 200


def test_fewer_retain_rows_than_asked_give_fewer_gradients(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    retain = (digits.x_train[200:230], digits.y_train[200:230])  # 2 batches of 16 at most
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="gu", retain=retain, base_params={"lr": 0.02}, retain_gradients=16,
        retain_batch_size=16,
    )
    assert result.details["gu/basis_rank"] == 2 and result.converged


def test_the_base_sees_retain_data_only_if_it_reads_it(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, UnlearnContext] = {}
    for name in ("neggrad", "neggrad_plus"):
        cls = method_class(name)
        original = cls._unlearn

        def spy(self: UnlearningMethod, context: UnlearnContext, _original=original, _name=name) -> MethodRun:
            seen[_name] = context
            return _original(self, context)

        monkeypatch.setattr(cls, "_unlearn", spy)
        unlearnkit.unlearn(trained_cnn, forget, method="gu", base=name, base_params={"lr": 0.02},
                           retain=_retain(digits))
    assert seen["neggrad"].retain is None
    assert seen["neggrad_plus"].retain is not None and seen["neggrad_plus"].retain[0].shape[0] == 200


def test_configuration_errors(forget: tuple[Tensor, Tensor], new_labels: Tensor, trained_cnn: SmallCNN,
                              digits: DataSplit) -> None:
    with pytest.raises(InvalidHyperparameterError, match="gu cannot wrap itself"):
        unlearnkit.create_method("gu", base="gu")
    with pytest.raises(UnknownMethodError, match="unknown method 'nope'"):
        unlearnkit.create_method("gu", base="nope")
    with pytest.raises(InvalidHyperparameterError, match="method 'neggrad' has no hyperparameter"):
        unlearnkit.create_method("gu", base_params={"bogus": 1})
    with pytest.raises(InvalidHyperparameterError, match="lr must be > 0"):
        unlearnkit.create_method("gu", base_params={"lr": -1.0})
    with pytest.raises(InvalidHyperparameterError, match="base_params must be a dict"):
        unlearnkit.create_method("gu", base_params=[("lr", 1.0)])
    with pytest.raises(InvalidHyperparameterError, match="retain_gradients must be > 0"):
        unlearnkit.create_method("gu", retain_gradients=0)
    with pytest.raises(InvalidRequestError, match="base method 'finetune' does not support relabeling"):
        unlearnkit.unlearn(trained_cnn, forget, method="gu", base="finetune", new_labels=new_labels,
                           retain=_retain(digits))


class _OneShot(UnlearningMethod):
    """A toy closed-form method: no optimiser steps."""

    summary = "toy"
    gradient_based = False

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        return MethodRun(1, 1, False, "fixed_schedule")


class _SneakyOneShot(_OneShot):
    """Claims to be gradient-based but changes the weights without an optimiser."""

    gradient_based = True

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        with torch.no_grad():
            for p in context.model.parameters():
                p.mul_(0.5)
        return MethodRun(1, 1, False, "fixed_schedule")


def test_bases_without_optimiser_steps_are_refused(
    monkeypatch: pytest.MonkeyPatch, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))
    register_method("test_one_shot")(_OneShot)
    register_method("test_sneaky")(_SneakyOneShot)
    with pytest.raises(InvalidHyperparameterError, match="gu needs a gradient-based base method"):
        unlearnkit.create_method("gu", base="test_one_shot")
    with pytest.raises(InvalidHyperparameterError, match="without an optimiser step; nothing was projected"):
        unlearnkit.unlearn(trained_cnn, forget, method="gu", base="test_sneaky", retain=_retain(digits))


def test_gu_keeps_the_retain_loss_closer_than_its_base(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    retain = _retain(digits)
    plain = unlearnkit.unlearn(trained_cnn, forget, method="neggrad", lr=0.02, optimizer="sgd")
    projected = unlearnkit.unlearn(trained_cnn, forget, method="gu", retain=retain,
                                   base_params={"lr": 0.02, "optimizer": "sgd"})
    assert plain.converged and projected.converged

    def retain_loss(model: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model.eval()(retain[0]), retain[1]))

    base_loss = retain_loss(trained_cnn)
    assert abs(retain_loss(projected.model) - base_loss) < abs(retain_loss(plain.model) - base_loss)
