"""Method-specific behaviour of the methods that use retain data: finetune, random_label,
neggrad_plus and retrain."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import unlearnkit
from helpers import same_weights
from unlearnkit import InvalidHyperparameterError, InvalidModelError
from unlearnkit.data import DataSplit
from unlearnkit.methods import RandomLabel, Retrain, UnlearnContext
from unlearnkit.models import SmallCNN
from unlearnkit.models.pretrained import DIGITS_RECIPE


class _Recorder(nn.Module):
    """Wraps a model and records every batch it is called on, with whether gradients were on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append((self.training, torch.is_grad_enabled(), x.detach().clone()))
        return self.inner(x)

    def trained_on(self) -> list[Tensor]:
        """The batches of the forwards that could update the weights (gradients on)."""
        return [x for _, grad, x in self.seen if grad]


def _rows_in(batch: Tensor, pool: Tensor) -> Tensor:
    """For each row of ``batch``, whether it equals some row of ``pool``."""
    flat_b, flat_p = batch.flatten(1), pool.flatten(1)
    return (flat_b[:, None, :] == flat_p[None, :, :]).all(dim=2).any(dim=1)


def _retain_without(digits: DataSplit, forget_indices: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``n`` training rows, none of them a forget row."""
    keep = torch.tensor([i for i in range(200, 200 + n + len(forget_indices)) if i not in set(forget_indices.tolist())])[:n]
    return digits.x_train[keep], digits.y_train[keep]


# -- finetune --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_retain, batch_size, epochs", [(50, 16, 3), (3, 64, 2)])
def test_finetune_trains_on_retain_only_for_a_fixed_number_of_steps(
    n_retain: int,
    batch_size: int,
    epochs: int,
    trained_linear: nn.Module,
    forget: tuple[Tensor, Tensor],
    forget_indices: Tensor,
    digits: DataSplit,
) -> None:
    retain = _retain_without(digits, forget_indices, n_retain)
    model = _Recorder(copy.deepcopy(trained_linear))
    result = unlearnkit.unlearn(
        model, forget, method="finetune", retain=retain, batch_size=batch_size, epochs=epochs, inplace=True
    )
    expected = math.ceil(n_retain / batch_size) * epochs
    assert result.steps == expected and result.passes == epochs
    assert result.stop_reason == "fixed_schedule" and result.retain_used == n_retain
    assert result.converged == all(o.goal_met for o in result.outcomes)
    batches = model.trained_on()
    assert len(batches) == expected
    for batch in batches:
        assert _rows_in(batch, retain[0]).all()
        assert not _rows_in(batch, forget[0]).any()
    # every retain row is used once per epoch
    assert sum(len(b) for b in batches) == n_retain * epochs
    # the forget set is only read without gradients (before/after predictions, the goal check)
    assert all(not grad for _, grad, x in model.seen if _rows_in(x, forget[0]).any())


def test_finetune_paper_preset_and_checks() -> None:
    paper = unlearnkit.create_method("finetune", preset="paper").get_params()
    assert paper == {
        "preset": "paper", "lr": 1e-3, "epochs": 1, "batch_size": 64, "momentum": 0.9, "weight_decay": 5e-4,
    }
    assert unlearnkit.create_method("finetune").get_params()["lr"] == 1e-2
    with pytest.raises(InvalidHyperparameterError, match="epochs must be > 0"):
        unlearnkit.create_method("finetune", epochs=0)


# -- random_label ----------------------------------------------------------------------------------


def test_random_labels_are_never_the_true_label(
    trained_cnn: SmallCNN,
    forget: tuple[Tensor, Tensor],
    new_labels: Tensor,
    digits: DataSplit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[tuple[Tensor, Tensor]] = []
    original = RandomLabel.forget_targets

    def spy(self: RandomLabel, labels: Tensor, new: Tensor | None, context: UnlearnContext) -> Tensor:
        out = original(self, labels, new, context)
        drawn.append((labels.clone(), out.clone()))
        return out

    monkeypatch.setattr(RandomLabel, "forget_targets", spy)
    retain = (digits.x_train[200:264], digits.y_train[200:264])
    result = unlearnkit.unlearn(trained_cnn, forget, method="random_label", retain=retain, lr=1e-6, max_steps=40)
    assert result.steps == 40 == len(drawn) and result.stop_reason == "max_steps"
    assert all(bool((targets != labels).all()) for labels, targets in drawn)
    all_targets = torch.stack([t for _, t in drawn])
    assert len(set(all_targets.flatten().tolist())) == 10  # uniform over the other classes: all appear
    assert len({tuple(t.tolist()) for t in all_targets}) > 1  # drawn afresh at every step
    # relabeling: the requested labels, never random ones
    drawn.clear()
    relabeled = unlearnkit.unlearn(
        trained_cnn, forget, method="random_label", retain=retain, new_labels=new_labels, lr=0.05, max_steps=300
    )
    assert relabeled.converged and drawn
    labels_by_row = {int(lab): int(new) for lab, new in zip(forget[1], new_labels)}
    for labels, targets in drawn:
        assert [labels_by_row[int(lab)] for lab in labels] == targets.tolist()


# -- neggrad_plus ----------------------------------------------------------------------------------


def test_neggrad_plus_with_alpha_one_is_fine_tuning_on_retain(
    forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = forget[0]
    labels = model(x).argmax(1).detach()
    xr, yr = digits.x_train[300:364], digits.y_train[300:364]
    steps, seed, lr = 6, 3, 0.01
    result = unlearnkit.unlearn(
        model, (x, labels), method="neggrad_plus", retain=(xr, yr), alpha=1.0, preset="paper", lr=lr,
        retain_batch_size=64, max_steps=steps, seed=seed,
    )
    assert result.steps == steps and result.stop_reason == "max_steps"
    # The same steps by hand: SGD on retain cross-entropy only, batches drawn in the same order
    # (one forget shuffle, then one retain shuffle, per step).
    manual = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(manual.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        torch.randperm(len(x), generator=generator)  # the forget batch, unused at alpha=1
        idx = torch.randperm(64, generator=generator)
        loss = F.cross_entropy(manual(xr[idx]), yr[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for mine, theirs in zip(result.model.parameters(), manual.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-7)
    # ... so the forget set's content does not matter at all
    other = (x.flip(0).clone(), labels.flip(0).clone())
    again = unlearnkit.unlearn(
        model, other, method="neggrad_plus", retain=(xr, yr), alpha=1.0, preset="paper", lr=lr,
        retain_batch_size=64, max_steps=steps, seed=seed,
    )
    assert same_weights(result.model, again.model)


def test_neggrad_plus_alpha_is_checked() -> None:
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(InvalidHyperparameterError, match=r"alpha must be a number in \[0, 1\]"):
            unlearnkit.create_method("neggrad_plus", alpha=bad)
    params = unlearnkit.create_method("neggrad_plus").get_params()
    assert params["alpha"] == 0.99 and params["forget_loss"] == "hinge"
    assert unlearnkit.create_method("neggrad_plus", preset="paper").get_params()["forget_loss"] == "ce"


# -- retrain ---------------------------------------------------------------------------------------


def test_retrain_does_not_depend_on_the_original_weights(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], forget_indices: Tensor, digits: DataSplit
) -> None:
    retain = _retain_without(digits, forget_indices, 100)
    torch.manual_seed(123)
    fresh = SmallCNN(in_channels=1, num_classes=10, image_size=8)
    assert not same_weights(fresh, trained_cnn)
    settings = {"retain": retain, "epochs": 2, "batch_size": 32, "seed": 7}
    a = unlearnkit.unlearn(trained_cnn, forget, method="retrain", **settings)
    b = unlearnkit.unlearn(fresh, forget, method="retrain", **settings)
    assert same_weights(a.model, b.model) and a.steps == b.steps == 2 * 4
    assert a.stop_reason == "fixed_schedule" and a.retain_used == 100
    c = unlearnkit.unlearn(trained_cnn, forget, method="retrain", **{**settings, "seed": 8})
    assert not same_weights(a.model, c.model)


def test_retrain_never_sees_a_forget_row(
    trained_linear: nn.Module, forget: tuple[Tensor, Tensor], forget_indices: Tensor, digits: DataSplit
) -> None:
    retain = _retain_without(digits, forget_indices, 40)
    model = _Recorder(copy.deepcopy(trained_linear))
    result = unlearnkit.unlearn(model, forget, method="retrain", retain=retain, epochs=3, batch_size=16, inplace=True)
    assert result.steps == 3 * 3
    batches = model.trained_on()
    assert len(batches) == result.steps
    for batch in batches:
        assert _rows_in(batch, retain[0]).all() and not _rows_in(batch, forget[0]).any()
    assert all(not grad for _, grad, x in model.seen if _rows_in(x, forget[0]).any())


def test_retrain_defaults_are_the_digits_recipe() -> None:
    params = unlearnkit.create_method("retrain").get_params()
    assert params == Retrain.params_for_recipe(DIGITS_RECIPE) == {
        "epochs": DIGITS_RECIPE.epochs, "batch_size": DIGITS_RECIPE.batch_size,
        "lr": DIGITS_RECIPE.lr, "weight_decay": DIGITS_RECIPE.weight_decay, "optimizer": "adam",
        "momentum": DIGITS_RECIPE.momentum, "augment": None,
    }
    assert unlearnkit.methods.NegGrad.params_for_recipe(DIGITS_RECIPE) == {}


def test_retrain_with_the_models_recipe_equals_the_retrained_reference(digits: DataSplit, tmp_path: Path) -> None:
    """Given a model's own recipe (as demos and benchmarks do) and the recipe's seed, retrain
    reproduces the cached reference bit for bit, augmentation and SGD included."""
    from unlearnkit.models import SmallCNN
    from unlearnkit.models.training import TrainRecipe, train_classifier

    recipe = TrainRecipe(epochs=2, batch_size=128, lr=0.05, weight_decay=5e-4, seed=3, optimizer="sgd", augment="crop-flip")
    keep = torch.arange(100, 400)
    forget = (digits.x_train[:4], digits.y_train[:4])
    torch.manual_seed(recipe.seed)
    reference = SmallCNN(in_channels=1, num_classes=10, image_size=8)
    train_classifier(reference, digits.x_train[keep], digits.y_train[keep], recipe)
    result = unlearnkit.unlearn(
        reference, forget, method="retrain", retain=(digits.x_train[keep], digits.y_train[keep]), seed=recipe.seed,
        **Retrain.params_for_recipe(recipe),
    )
    assert same_weights(result.model, reference)
    assert result.hyperparams["augment"] == "crop-flip" and result.steps == 3 * 2
    with pytest.raises(InvalidHyperparameterError, match="augment must be one of"):
        Retrain(augment="mixup")
    with pytest.raises(InvalidHyperparameterError, match="optimizer must be one of"):
        Retrain(optimizer="rmsprop")


class _Scaled(nn.Module):
    """A linear model with a raw learnable scale: a parameter no reset_parameters() covers."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * self.linear(x.flatten(1))


def test_retrain_refuses_parameters_it_cannot_reset(forget: tuple[Tensor, Tensor], digits: DataSplit) -> None:
    model = nn.Sequential(_Scaled())
    retain = (digits.x_train[:20], digits.y_train[:20])
    with pytest.raises(InvalidModelError, match=r"cannot re-initialise .*\['0'\].*reset_parameters"):
        unlearnkit.unlearn(model, forget, method="retrain", retain=retain, epochs=1)
