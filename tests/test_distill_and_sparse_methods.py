"""Method-specific behaviour of l1_sparse, scrub and bad_teacher (fixed-schedule methods that use
retain data)."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import unlearnkit
from helpers import same_state, same_weights, snapshot
from unlearnkit import InvalidHyperparameterError, InvalidModelError
from unlearnkit.components.batching import shuffled_batches
from unlearnkit.data import DataSplit
from unlearnkit.methods import BadTeacher, L1Sparse, Scrub
from unlearnkit.methods import scrub as scrub_module
from unlearnkit.methods.bad_teacher import incompetent_teacher
from unlearnkit.methods.l1_sparse import l1_norm
from unlearnkit.methods.scrub import tempered_kl
from unlearnkit.models import SmallCNN
from unlearnkit.utils.modules import predict_logits


class _Recorder(nn.Module):
    """Wraps a model and records every batch it is called on with gradients enabled."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.trained_on: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            self.trained_on.append(x.detach().clone())
        return self.inner(x)


def _rows_in(batch: Tensor, pool: Tensor) -> Tensor:
    """For each row of ``batch``, whether it equals some row of ``pool``."""
    flat_b, flat_p = batch.flatten(1), pool.flatten(1)
    return (flat_b[:, None, :] == flat_p[None, :, :]).all(dim=2).any(dim=1)


def _retain_without(digits: DataSplit, forget_indices: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``n`` training rows, none of them a forget row."""
    banned = set(forget_indices.tolist())
    keep = torch.tensor([i for i in range(200, 200 + n + len(banned)) if i not in banned])[:n]
    return digits.x_train[keep], digits.y_train[keep]


def _forget_kl(teacher: nn.Module, model: nn.Module, x: Tensor) -> float:
    """``KL(softmax(teacher) || softmax(model))`` on ``x``, batch mean, both in eval mode."""
    target = F.softmax(predict_logits(teacher, x), dim=1)
    return float(F.kl_div(F.log_softmax(predict_logits(model, x), dim=1), target, reduction="batchmean"))


# -- l1_sparse -------------------------------------------------------------------------------------


def test_l1_sparse_with_alpha_zero_is_finetune(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], forget_indices: Tensor, digits: DataSplit
) -> None:
    retain = _retain_without(digits, forget_indices, 100)
    shared: dict[str, Any] = {
        "lr": 0.05, "epochs": 3, "batch_size": 32, "momentum": 0.8, "weight_decay": 1e-3, "seed": 3, "retain": retain,
    }
    tuned = unlearnkit.unlearn(trained_cnn, forget, method="finetune", **shared)
    sparse = unlearnkit.unlearn(trained_cnn, forget, method="l1_sparse", alpha=0.0, schedule="cosine", **shared)
    assert sparse.steps == tuned.steps == 3 * 4
    assert same_weights(sparse.model, tuned.model)
    with_penalty = unlearnkit.unlearn(trained_cnn, forget, method="l1_sparse", alpha=1e-3, schedule="cosine", **shared)
    assert not same_weights(with_penalty.model, tuned.model)


def test_l1_sparse_is_the_released_recipe_by_hand(
    trained_linear: nn.Module, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    """Constant lr (the paper preset's schedule) and ``CE + alpha * (1 - e / E) * ||theta||_1``,
    written out step by step."""
    xr, yr = digits.x_train[300:350], digits.y_train[300:350]
    alpha, lr, epochs, batch, seed = 0.01, 0.05, 3, 16, 2
    result = unlearnkit.unlearn(
        trained_linear, forget, method="l1_sparse", retain=(xr, yr), preset="paper", alpha=alpha, lr=lr,
        epochs=epochs, batch_size=batch, seed=seed,
    )
    assert result.steps == epochs * math.ceil(50 / batch)
    manual = copy.deepcopy(trained_linear).train()
    params = list(manual.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        for idx in shuffled_batches(50, batch, generator):
            penalty = alpha * (1 - epoch / epochs) * sum(p.abs().sum() for p in params)
            loss = F.cross_entropy(manual(xr[idx]), yr[idx]) + penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    for mine, theirs in zip(result.model.parameters(), manual.parameters(), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6)
    assert result.details["final_l1_norm"] == pytest.approx(float(l1_norm(params).detach()), rel=1e-5)


def test_l1_penalty_lowers_the_l1_norm(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], forget_indices: Tensor, digits: DataSplit
) -> None:
    retain = _retain_without(digits, forget_indices, 100)
    settings: dict[str, Any] = {"retain": retain, "epochs": 3, "batch_size": 32, "seed": 0}
    plain = unlearnkit.unlearn(trained_cnn, forget, method="l1_sparse", alpha=0.0, **settings)
    sparse = unlearnkit.unlearn(trained_cnn, forget, method="l1_sparse", alpha=5e-3, **settings)
    with torch.no_grad():
        norm_plain = float(l1_norm(list(plain.model.parameters())))
        norm_sparse = float(l1_norm(list(sparse.model.parameters())))
    assert norm_sparse < 0.99 * norm_plain
    assert sparse.details["final_l1_norm"] == pytest.approx(norm_sparse, rel=1e-5)
    assert plain.details["final_l1_norm"] == pytest.approx(norm_plain, rel=1e-5)


def test_l1_penalty_weight_decays_linearly_over_the_epochs(
    trained_linear: nn.Module,
    forget: tuple[Tensor, Tensor],
    digits: DataSplit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, float]] = []
    original = L1Sparse.penalty_weight

    def spy(self: L1Sparse, epoch: int) -> float:
        weight = original(self, epoch)
        calls.append((epoch, weight))
        return weight

    monkeypatch.setattr(L1Sparse, "penalty_weight", spy)
    retain = (digits.x_train[300:340], digits.y_train[300:340])
    result = unlearnkit.unlearn(
        trained_linear, forget, method="l1_sparse", retain=retain, alpha=0.2, epochs=4, batch_size=20
    )
    assert result.steps == 8 == len(calls)  # the weight is taken at every step
    assert [epoch for epoch, _ in calls] == [0, 0, 1, 1, 2, 2, 3, 3]  # 0-based epochs
    assert [weight for _, weight in calls] == pytest.approx([0.2, 0.2, 0.15, 0.15, 0.1, 0.1, 0.05, 0.05])


def test_l1_sparse_presets_and_checks() -> None:
    paper = unlearnkit.create_method("l1_sparse", preset="paper").get_params()
    assert paper == {
        "preset": "paper", "alpha": 1e-4, "schedule": "constant", "lr": 1e-2, "epochs": 10, "batch_size": 256,
        "momentum": 0.9, "weight_decay": 5e-4,
    }
    default = unlearnkit.create_method("l1_sparse").get_params()
    assert default["schedule"] == "cosine" and default["alpha"] == 5e-4 and default.keys() == paper.keys()
    assert unlearnkit.create_method("l1_sparse", preset="paper", alpha=0.0).get_params()["lr"] == 1e-2
    with pytest.raises(InvalidHyperparameterError, match="alpha must be >= 0"):
        unlearnkit.create_method("l1_sparse", alpha=-1e-4)
    with pytest.raises(InvalidHyperparameterError, match=r"schedule must be one of \('cosine', 'constant'\)"):
        unlearnkit.create_method("l1_sparse", schedule="step")
    with pytest.raises(InvalidHyperparameterError, match="has no preset 'fast'"):
        unlearnkit.create_method("l1_sparse", preset="fast")


# -- scrub -----------------------------------------------------------------------------------------


def test_scrub_student_starts_as_the_teacher(
    trained_linear: nn.Module,
    forget: tuple[Tensor, Tensor],
    digits: DataSplit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kls: list[float] = []

    def spy(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
        out = tempered_kl(student_logits, teacher_logits, temperature)
        kls.append(float(out.detach()))
        return out

    monkeypatch.setattr(scrub_module, "tempered_kl", spy)
    retain = (digits.x_train[300:364], digits.y_train[300:364])
    result = unlearnkit.unlearn(trained_linear, forget, method="scrub", retain=retain, epochs=2, lr=0.01)
    # Calls in order: epoch 0's max-step and two min-steps, then epoch 1's.
    assert len(kls) == result.steps == 2 * 1 + 2 * 2
    # A model without BatchNorm or dropout: student and teacher agree exactly before any step.
    assert abs(kls[0]) < 1e-6
    # The second max-step starts from a student that has moved away.
    assert kls[3] > 1e-4 and result.details["final_forget_kl"] == pytest.approx(kls[3], rel=1e-5)


def test_scrub_teacher_is_the_frozen_original(
    trained_cnn: SmallCNN,
    forget: tuple[Tensor, Tensor],
    forget_indices: Tensor,
    digits: DataSplit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    teachers: list[nn.Module] = []
    original = Scrub.make_teacher

    def spy(self: Scrub, model: nn.Module) -> nn.Module:
        assert same_state(model, snapshot(trained_cnn))  # taken before any step
        teacher = original(self, model)
        teachers.append(teacher)
        return teacher

    monkeypatch.setattr(Scrub, "make_teacher", spy)
    retain = _retain_without(digits, forget_indices, 100)
    result = unlearnkit.unlearn(trained_cnn, forget, method="scrub", retain=retain, epochs=3, lr=0.01)
    (teacher,) = teachers
    assert teacher is not result.model
    # Weights and BatchNorm statistics are exactly the original's after the run: never updated.
    assert same_state(teacher, snapshot(trained_cnn))
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert not same_weights(result.model, trained_cnn)


@pytest.mark.parametrize("epochs, forget_epochs", [(4, 2), (2, 5), (3, 0)])
def test_scrub_steps_are_forget_passes_plus_retain_passes(
    epochs: int,
    forget_epochs: int,
    trained_linear: nn.Module,
    forget: tuple[Tensor, Tensor],
    forget_indices: Tensor,
    digits: DataSplit,
) -> None:
    retain = _retain_without(digits, forget_indices, 50)
    model = _Recorder(copy.deepcopy(trained_linear))
    result = unlearnkit.unlearn(
        model, forget, method="scrub", retain=retain, epochs=epochs, forget_epochs=forget_epochs, batch_size=3,
        retain_batch_size=16, lr=1e-3, inplace=True,
    )
    forget_passes = min(epochs, forget_epochs)
    per_forget_pass, per_retain_pass = math.ceil(4 / 3), math.ceil(50 / 16)
    assert result.details["max_steps"] == forget_passes * per_forget_pass
    assert result.details["min_steps"] == epochs * per_retain_pass
    assert result.steps == forget_passes * per_forget_pass + epochs * per_retain_pass
    assert result.passes == epochs and result.stop_reason == "fixed_schedule"
    # One student forward per step; per epoch the forget pass (while e < forget_epochs), then
    # the retain pass, each covering its set exactly once.
    batches = model.trained_on
    assert len(batches) == result.steps
    position = 0
    for epoch in range(epochs):
        if epoch < forget_epochs:
            chunk = batches[position : position + per_forget_pass]
            assert all(_rows_in(b, forget[0]).all() for b in chunk)
            assert sum(len(b) for b in chunk) == 4
            position += per_forget_pass
        chunk = batches[position : position + per_retain_pass]
        assert all(_rows_in(b, retain[0]).all() and not _rows_in(b, forget[0]).any() for b in chunk)
        assert sum(len(b) for b in chunk) == 50
        position += per_retain_pass
    assert position == len(batches)


def test_scrub_learning_rate_decays_after_the_listed_epochs(
    trained_linear: nn.Module,
    forget: tuple[Tensor, Tensor],
    digits: DataSplit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lrs: list[float] = []
    original = scrub_module.take_step

    def spy(model: nn.Module, optimizer: torch.optim.Optimizer, *args: Any) -> float:
        lrs.append(optimizer.param_groups[0]["lr"])
        return original(model, optimizer, *args)

    monkeypatch.setattr(scrub_module, "take_step", spy)
    retain = (digits.x_train[300:332], digits.y_train[300:332])
    unlearnkit.unlearn(
        trained_linear, forget, method="scrub", retain=retain, epochs=4, forget_epochs=1, lr=1e-3,
        lr_decay_epochs=[1, 3], lr_decay_rate=0.5,
    )
    # epoch 1 (counted from 1): a max-step and a min-step at 1e-3; epoch 2 after the decay at
    # 1; epoch 3 unchanged; epoch 4 after the decay at 3.
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4])


def test_scrub_defaults_and_checks() -> None:
    params = unlearnkit.create_method("scrub").get_params()
    assert params == {
        "alpha": 0.5, "gamma": 1.0, "temperature": 2.0, "lr": 5e-4, "weight_decay": 0.1, "epochs": 10,
        "forget_epochs": 3, "lr_decay_epochs": [5, 8, 9], "lr_decay_rate": 0.1, "batch_size": 64,
        "retain_batch_size": 32,
    }
    assert unlearnkit.create_method("scrub", lr_decay_epochs=(2,)).get_params()["lr_decay_epochs"] == [2]
    for bad, match in [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"alpha": -1.0}, "alpha must be >= 0"),
        ({"forget_epochs": -1}, "forget_epochs must be >= 0"),
        ({"lr_decay_epochs": 5}, "lr_decay_epochs must be a list"),
        ({"lr_decay_epochs": [2, -1]}, "lr_decay_epochs must be >= 0"),
        ({"retain_batch_size": 0}, "retain_batch_size must be > 0"),
    ]:
        with pytest.raises(InvalidHyperparameterError, match=match):
            unlearnkit.create_method("scrub", **bad)


def test_tempered_kl_scales_with_t_squared() -> None:
    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    by_hand = (F.softmax(teacher / 2, 1) * (F.log_softmax(teacher / 2, 1) - F.log_softmax(student / 2, 1))).sum()
    assert float(tempered_kl(student, teacher, 2.0)) == pytest.approx(4 * float(by_hand), rel=1e-5)


# -- bad_teacher -----------------------------------------------------------------------------------


def test_incompetent_teacher_depends_only_on_the_seed(trained_cnn: SmallCNN) -> None:
    torch.manual_seed(123)
    fresh = SmallCNN(in_channels=1, num_classes=10, image_size=8)
    rng_state = torch.random.get_rng_state()
    a = incompetent_teacher(trained_cnn, seed=5)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is untouched
    b = incompetent_teacher(fresh, seed=5)
    c = incompetent_teacher(trained_cnn, seed=6)
    assert same_weights(a, b)  # the original weights do not matter
    assert not same_weights(a, c)  # the seed does
    assert not same_weights(a, trained_cnn)
    assert torch.equal(a.features[1].running_mean, torch.zeros(32))  # BatchNorm statistics reset
    assert not a.training and all(not p.requires_grad for p in a.parameters())
    assert same_state(trained_cnn, snapshot(trained_cnn))


def test_incompetent_teacher_needs_resettable_modules(forget: tuple[Tensor, Tensor], digits: DataSplit) -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(64, 10)
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x: Tensor) -> Tensor:
            return self.scale * self.linear(x.flatten(1))

    retain = (digits.x_train[:20], digits.y_train[:20])
    with pytest.raises(InvalidModelError, match=r"bad_teacher cannot re-initialise .*reset_parameters"):
        unlearnkit.unlearn(nn.Sequential(Scaled()), forget, method="bad_teacher", retain=retain)


def test_bad_teacher_targets_are_the_incompetent_teacher_on_forget_rows_and_the_original_elsewhere(
    trained_cnn: SmallCNN,
    forget: tuple[Tensor, Tensor],
    forget_indices: Tensor,
    digits: DataSplit,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[Tensor, Tensor, Tensor]] = []
    original = BadTeacher.teacher_probs

    def spy(self: BadTeacher, competent: nn.Module, incompetent: nn.Module, x: Tensor, is_forget: Tensor) -> Tensor:
        out = original(self, competent, incompetent, x, is_forget)
        seen.append((x.clone(), is_forget.clone(), out.clone()))
        return out

    monkeypatch.setattr(BadTeacher, "teacher_probs", spy)
    retain = _retain_without(digits, forget_indices, 100)
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="bad_teacher", retain=retain, epochs=2, batch_size=16, temperature=2.0, seed=4
    )
    bad = incompetent_teacher(trained_cnn, result.details["incompetent_teacher_seed"])
    assert len(seen) == result.steps == 2 * math.ceil((4 + 30) / 16)
    forget_rows = 0
    for x, is_forget, probs in seen:
        in_forget = _rows_in(x, forget[0])
        assert torch.equal(is_forget, in_forget)
        assert _rows_in(x[~in_forget], retain[0]).all()
        expected_bad = F.softmax(predict_logits(bad, x) / 2.0, dim=1)
        expected_good = F.softmax(predict_logits(trained_cnn, x) / 2.0, dim=1)
        assert torch.allclose(probs[in_forget], expected_bad[in_forget], atol=1e-6)
        assert torch.allclose(probs[~in_forget], expected_good[~in_forget], atol=1e-6)
        forget_rows += int(in_forget.sum())
    assert forget_rows == 2 * 4  # every forget row once per epoch


def test_teacher_probs_picks_rows() -> None:
    method = BadTeacher(temperature=1.0)
    x = torch.zeros(3, 2)
    good, bad = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        good.weight.zero_(), bad.weight.zero_()
        good.bias.copy_(torch.tensor([5.0, 0.0])), bad.bias.copy_(torch.tensor([0.0, 5.0]))
    probs = method.teacher_probs(good, bad, x, torch.tensor([True, False, True]))
    assert probs.argmax(1).tolist() == [1, 0, 1]


def test_bad_teacher_uses_a_fixed_retain_sample(
    trained_linear: nn.Module, forget: tuple[Tensor, Tensor], forget_indices: Tensor, digits: DataSplit
) -> None:
    retain = _retain_without(digits, forget_indices, 50)
    model = _Recorder(copy.deepcopy(trained_linear))
    result = unlearnkit.unlearn(
        model, forget, method="bad_teacher", retain=retain, epochs=3, batch_size=8, inplace=True
    )
    assert result.details["retain_rows_used"] == 15 and result.details["forget_rows"] == 4
    assert result.retain_used == 50
    assert result.steps == 3 * math.ceil(19 / 8) == len(model.trained_on)
    epochs = [torch.cat(model.trained_on[i * 3 : (i + 1) * 3]) for i in range(3)]
    for rows in epochs:
        assert rows.shape[0] == 19 and int(_rows_in(rows, forget[0]).sum()) == 4
    sample = epochs[0][~_rows_in(epochs[0], forget[0])]
    for rows in epochs[1:]:  # the same retain rows every epoch
        others = rows[~_rows_in(rows, forget[0])]
        assert _rows_in(others, sample).all() and _rows_in(sample, others).all()
    tiny = unlearnkit.unlearn(
        trained_linear, forget, method="bad_teacher", retain=(retain[0][:2], retain[1][:2]), epochs=1
    )
    assert tiny.details["retain_rows_used"] == 1  # int(0.3 * 2) = 0, but at least one row


def test_bad_teacher_moves_the_forget_set_toward_the_incompetent_teacher(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], forget_indices: Tensor, digits: DataSplit
) -> None:
    retain = _retain_without(digits, forget_indices, 200)
    result = unlearnkit.unlearn(trained_cnn, forget, method="bad_teacher", retain=retain, seed=1)
    bad = incompetent_teacher(trained_cnn, result.details["incompetent_teacher_seed"])
    before = _forget_kl(bad, trained_cnn, forget[0])
    after = _forget_kl(bad, result.model, forget[0])
    assert after < 0.5 * before
    # ... while the retain rows stay close to the original's outputs.
    assert _forget_kl(trained_cnn, result.model, retain[0]) < after


def test_bad_teacher_presets_and_checks() -> None:
    paper = unlearnkit.create_method("bad_teacher", preset="paper").get_params()
    assert paper == {
        "preset": "paper", "lr": 1e-4, "epochs": 1, "batch_size": 256, "temperature": 1.0,
        "retain_fraction": 0.3, "weight_decay": 0.0,
    }
    default = unlearnkit.create_method("bad_teacher").get_params()
    assert (default["lr"], default["epochs"], default["batch_size"]) == (1e-3, 5, 64)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(InvalidHyperparameterError, match="retain_fraction must be"):
            unlearnkit.create_method("bad_teacher", retain_fraction=bad)
