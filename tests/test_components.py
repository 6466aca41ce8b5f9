"""The building blocks of methods, each tested on its own: attacks (plain and calibrated),
shifted copies, importance, penalties, stopping, the optimisation loop, batching, losses and
optimisers."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from torch import Tensor, nn

from helpers import modes, same_state, snapshot
from unlearnkit import NonFiniteError
from unlearnkit.components import (
    StopMonitor,
    StopRule,
    default_l2_eps,
    goal_met,
    importance_weighted_l2,
    mas_importance,
    min_max_normalise,
    targeted_pgd,
)
from unlearnkit.components import attacks as attacks_module
from unlearnkit.components.attacks import CalibratedAttack, Norm, calibrated_targeted_pgd
from unlearnkit.components.augment import shifted_copies
from unlearnkit.components.batching import (
    balanced_other_classes,
    cycled_batches,
    random_other_classes,
    shuffled_batches,
)
from unlearnkit.components.loop import LoopOutcome, optimise_until
from unlearnkit.components.losses import distillation_loss, forget_hinge_loss, forget_loss
from unlearnkit.components.optim import make_optimizer
from unlearnkit.components.stopping import label_margin
from unlearnkit.data import DataSplit
from unlearnkit.models import SmallCNN


def _gen(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def _linear_model(seed: int = 0, in_features: int = 64, classes: int = 10) -> nn.Sequential:
    """A seeded untrained ``Flatten -> Linear`` classifier."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))


def _l2(delta: Tensor) -> Tensor:
    """Per-example L2 norm."""
    return delta.flatten(1).norm(dim=1)


# -- targeted_pgd ----------------------------------------------------------------------------------


@pytest.mark.parametrize("random_start", [True, False], ids=["random-start", "clean-start"])
@pytest.mark.parametrize("norm, eps", [("l2", 0.3), ("linf", 0.05)])
def test_pgd_stays_in_its_norm_ball(norm: Norm, eps: float, random_start: bool) -> None:
    model = _linear_model()
    x = torch.rand(16, 1, 8, 8, generator=_gen(1))
    targets = torch.randint(0, 10, (16,), generator=_gen(2))
    adv = targeted_pgd(
        model,
        x,
        targets,
        eps=eps,
        steps=60,
        norm=norm,
        random_start=random_start,
        generator=_gen(3),
    )
    assert adv.shape == x.shape and not adv.requires_grad
    delta = adv - x
    if norm == "l2":
        assert (_l2(delta) <= eps + 1e-5).all()
        assert (
            _l2(delta) > 0.25 * eps
        ).all()  # it did move (60 steps of eps/40 are 1.5 eps of path)
    else:
        assert (delta.abs() <= eps + 1e-6).all()
        assert delta.abs().max() > 0.9 * eps
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_pgd_per_example_eps() -> None:
    model = _linear_model()
    x = torch.rand(3, 1, 8, 8, generator=_gen(1))
    eps = torch.tensor([0.05, 0.2, 0.6])
    adv = targeted_pgd(
        model, x, torch.tensor([1, 2, 3]), eps=eps, steps=60, input_range=None, generator=_gen(0)
    )
    norms = _l2(adv - x)
    assert (norms <= eps + 1e-5).all()
    assert torch.allclose(norms, eps, atol=1e-3)  # enough steps to hit every surface


def test_pgd_clamps_to_input_range() -> None:
    model = _linear_model()
    x = torch.rand(16, 1, 8, 8, generator=_gen(1))
    targets = torch.randint(0, 10, (16,), generator=_gen(2))
    unclamped = targeted_pgd(
        model, x, targets, eps=5.0, steps=40, input_range=None, generator=_gen(3)
    )
    assert unclamped.min() < 0.0 or unclamped.max() > 1.0  # the clamp below has something to do
    clamped = targeted_pgd(
        model, x, targets, eps=5.0, steps=40, input_range=(0.0, 1.0), generator=_gen(3)
    )
    assert clamped.min() >= 0.0 and clamped.max() <= 1.0
    narrow = targeted_pgd(
        model, x * 0.5 + 0.25, targets, eps=5.0, steps=40, input_range=(0.2, 0.8), generator=_gen(3)
    )
    assert narrow.min() >= 0.2 and narrow.max() <= 0.8


def test_pgd_default_step_size_is_two_and_a_half_radii_over_the_steps() -> None:
    """The default step is 2.5 * eps / steps: the paper's 0.1 at eps 4.0 and 100 steps."""
    model = _linear_model()
    x = torch.rand(5, 1, 8, 8, generator=_gen(1))
    targets = torch.tensor([0, 1, 2, 3, 4])
    for norm, eps, steps in (("l2", 0.8, 10), ("linf", 0.4, 20)):
        default = targeted_pgd(model, x, targets, eps=eps, steps=steps, norm=norm, random_start=False, input_range=None)
        explicit = targeted_pgd(
            model, x, targets, eps=eps, steps=steps, step_size=2.5 * eps / steps, norm=norm,
            random_start=False, input_range=None,
        )
        assert torch.equal(default, explicit)
    one_step = targeted_pgd(model, x, targets, eps=0.8, steps=1, step_size=0.02, random_start=False, input_range=None)
    assert torch.allclose(_l2(one_step - x), torch.full((5,), 0.02), atol=1e-6)


def test_pgd_steps_lower_the_target_loss() -> None:
    model = _linear_model()
    x = torch.rand(8, 1, 8, 8, generator=_gen(1))
    targets = torch.randint(0, 10, (8,), generator=_gen(2))
    adv = targeted_pgd(model, x, targets, eps=0.5, steps=10, random_start=False, generator=_gen(3))
    with torch.no_grad():
        before = F.cross_entropy(model(x), targets, reduction="none")
        after = F.cross_entropy(model(adv), targets, reduction="none")
    assert (after < before).all()


def test_pgd_zero_steps_returns_the_start() -> None:
    model = _linear_model()
    x = torch.rand(4, 1, 8, 8, generator=_gen(1))
    targets = torch.tensor([1, 2, 3, 4])
    assert torch.equal(targeted_pgd(model, x, targets, eps=0.5, steps=0, random_start=False), x)
    start_a = targeted_pgd(model, x, targets, eps=0.5, steps=0, generator=_gen(7), input_range=None)
    start_b = targeted_pgd(model, x, targets, eps=0.5, steps=0, generator=_gen(7), input_range=None)
    start_c = targeted_pgd(model, x, targets, eps=0.5, steps=0, generator=_gen(8), input_range=None)
    assert torch.equal(start_a, start_b)
    assert not torch.equal(start_a, start_c)
    assert not torch.equal(start_a, x)
    assert (_l2(start_a - x) <= 0.5 + 1e-6).all()


def test_pgd_reaches_its_target_on_a_trained_model(
    trained_cnn: SmallCNN, digits: DataSplit
) -> None:
    x, y = digits.x_test[:64], digits.y_test[:64]
    targets = random_other_classes(y, 10, _gen(1))
    adv = targeted_pgd(trained_cnn, x, targets, eps=3.0, steps=50, generator=_gen(2))
    with torch.no_grad():
        clean_hits = (trained_cnn(x).argmax(1) == targets).float().mean()
        success = (trained_cnn(adv).argmax(1) == targets).float().mean()
    assert clean_hits < 0.05
    assert success > 0.8
    assert (_l2(adv - x) <= 3.0 + 1e-5).all()


@pytest.mark.parametrize("norm, eps", [("l2", 1.0), ("linf", 0.1)])
def test_pgd_chunked_equals_unchunked(
    trained_cnn: SmallCNN, digits: DataSplit, norm: Norm, eps: float
) -> None:
    x, y = digits.x_test[:23], digits.y_test[:23]
    targets = random_other_classes(y, 10, _gen(1))
    whole = targeted_pgd(trained_cnn, x, targets, eps=eps, steps=10, norm=norm, generator=_gen(5))
    chunked = targeted_pgd(
        trained_cnn, x, targets, eps=eps, steps=10, norm=norm, generator=_gen(5), batch_size=4
    )
    # Same random starts; only float rounding of differently sized batches may differ
    # (observed: 1.2e-7), so "the same result" is checked to 1e-5.
    assert torch.allclose(whole, chunked, atol=1e-5, rtol=0)
    other_seed = targeted_pgd(
        trained_cnn, x, targets, eps=eps, steps=10, norm=norm, generator=_gen(6), batch_size=4
    )
    assert not torch.allclose(whole, other_seed, atol=1e-5, rtol=0)


def test_pgd_restores_modes_and_grad_flags_and_writes_no_grad() -> None:
    torch.manual_seed(0)
    model = SmallCNN(image_size=8)
    model.train()
    model.features[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    model.head[2].bias.requires_grad_(False)
    preset = torch.ones_like(model.head[0].weight)
    model.head[0].weight.grad = preset.clone()
    flags = [p.requires_grad for p in model.parameters()]
    mode_list = modes(model)
    state = snapshot(model)
    x = torch.rand(6, 1, 8, 8, generator=_gen(1))
    targeted_pgd(model, x, torch.tensor([0, 1, 2, 3, 4, 5]), eps=0.5, steps=3, generator=_gen(2))
    assert modes(model) == mode_list
    assert [p.requires_grad for p in model.parameters()] == flags
    assert same_state(
        model, state
    )  # BatchNorm statistics did not move: the attack ran in eval mode
    for name, p in model.named_parameters():
        if name == "head.0.weight":
            assert p.grad is not None and torch.equal(p.grad, preset)
        else:
            assert p.grad is None, name


def test_pgd_rejects_bad_arguments() -> None:
    model = _linear_model()
    x, t = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="norm must be 'l2' or 'linf'"):
        targeted_pgd(model, x, t, eps=0.1, norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be >= 0"):
        targeted_pgd(model, x, t, eps=0.1, steps=-1)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((3, 32, 32), 4.0),
        ((1, 8, 8), 4.0 * math.sqrt(64 / 3072)),
        ((1, 28, 28), 4.0 * math.sqrt(784 / 3072)),
        ((3072,), 4.0),
    ],
)
def test_default_l2_eps(shape: tuple[int, ...], expected: float) -> None:
    assert default_l2_eps(shape) == pytest.approx(expected, rel=1e-12)


# -- calibrated_targeted_pgd -----------------------------------------------------------------------


def _calibration_case() -> tuple[nn.Module, Tensor, Tensor]:
    """An untrained linear model, 40 random images and a target other than each prediction.

    At eps 0.2 with 10 steps about 2 % of the copies reach their target; doubling the radius
    reaches more each round and all of them by the sixth.
    """
    model = _linear_model(0)
    x = torch.rand(40, 1, 8, 8, generator=_gen(1))
    with torch.no_grad():
        pred = model(x).argmax(1)
    targets = (pred + 1 + torch.arange(40) % 9) % 10
    return model, x, targets


def _calibrated(rounds: int, growth: float = 2.0, **kwargs: Any) -> CalibratedAttack:
    """The calibrated attack on ``_calibration_case`` from eps 0.2 with 10 steps, seed 0."""
    model, x, targets = _calibration_case()
    return calibrated_targeted_pgd(
        model, x, targets, eps=0.2, rounds=rounds, growth=growth, steps=10, generator=_gen(0),
        **kwargs,
    )


def test_calibrated_pgd_success_never_decreases_with_more_rounds() -> None:
    attacks = [_calibrated(r) for r in range(1, 7)]
    rates = [float(a.reached.float().mean()) for a in attacks]
    assert rates == sorted(rates)
    assert rates[0] < 0.5 and rates[-1] == 1.0  # the case is not trivial
    for fewer, more in zip(attacks, attacks[1:], strict=False):
        assert bool((more.reached | ~fewer.reached).all())  # reached stays reached
        assert more.first_round_success == attacks[0].first_round_success
        # what the shorter run reached is the same example at the same radius in the longer one
        assert torch.equal(more.adversarial[fewer.reached], fewer.adversarial[fewer.reached])
        assert torch.equal(more.eps[fewer.reached], fewer.eps[fewer.reached])


@pytest.mark.parametrize("growth, rounds", [(2.0, 4), (3.0, 3)])
def test_calibrated_pgd_grows_radii_only_for_unreached_examples(growth: float, rounds: int) -> None:
    model, x, targets = _calibration_case()
    attacks = [_calibrated(r, growth) for r in range(1, rounds + 1)]
    final = attacks[-1]
    # The round in which each example was first reached (``rounds`` if never).
    first_reached = torch.full((40,), rounds)
    for k in reversed(range(rounds)):
        first_reached[attacks[k].reached] = k
    expected = 0.2 * growth ** first_reached.clamp(max=rounds - 1).float()
    assert torch.allclose(final.eps, expected)
    unreached = ~final.reached
    assert bool(unreached.any()) and bool(final.reached.any())  # both kinds occur
    last = 0.2 * growth ** (rounds - 1)  # the last round's radius: not grown after it
    assert torch.allclose(final.eps[unreached], torch.full((int(unreached.sum()),), last))
    # each adversarial example lies in the ball of its own radius, and reached means reached
    assert (_l2(final.adversarial - x) <= final.eps + 1e-5).all()
    with torch.no_grad():
        assert torch.equal(model(final.adversarial).argmax(1) == targets, final.reached)


def test_calibrated_pgd_attacks_only_the_unreached(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = attacks_module.targeted_pgd

    def counting(model: nn.Module, inputs: Tensor, targets: Tensor, **kwargs: Any) -> Tensor:
        sizes.append(inputs.shape[0])
        return real(model, inputs, targets, **kwargs)

    attacks = [_calibrated(r) for r in (1, 2)]
    monkeypatch.setattr(attacks_module, "targeted_pgd", counting)
    _calibrated(3)
    unreached = [40 - int(a.reached.sum()) for a in attacks]
    assert sizes == [40, *unreached]
    sizes.clear()
    final = _calibrated(10)  # stops once every example is reached
    assert bool(final.reached.all()) and len(sizes) < 10


def test_calibrated_pgd_one_round_is_targeted_pgd_with_success_flags() -> None:
    model, x, targets = _calibration_case()
    for norm, eps in (("l2", 0.8), ("linf", 0.05)):
        attack = calibrated_targeted_pgd(
            model, x, targets, eps=eps, rounds=1, steps=10, norm=norm, generator=_gen(3)
        )
        plain = targeted_pgd(model, x, targets, eps=eps, steps=10, norm=norm, generator=_gen(3))
        assert torch.equal(attack.adversarial, plain)
        with torch.no_grad():
            assert torch.equal(attack.reached, model(plain).argmax(1) == targets)
        assert torch.equal(attack.eps, torch.full((40,), eps))
        assert attack.first_round_success == pytest.approx(float(attack.reached.float().mean()))
        assert 0 < attack.first_round_success < 1, norm


def test_calibrated_pgd_honours_a_fixed_step_size() -> None:
    model, x, targets = _calibration_case()
    attack = calibrated_targeted_pgd(
        model, x, targets, eps=0.2, rounds=1, steps=1, step_size=0.05, random_start=False,
        input_range=None,
    )
    assert torch.allclose(_l2(attack.adversarial - x), torch.full((40,), 0.05), atol=1e-6)


@pytest.mark.parametrize("rounds", [0, -1])
def test_calibrated_pgd_rejects_rounds_below_one(rounds: int) -> None:
    model, x, targets = _calibration_case()
    with pytest.raises(ValueError, match=f"rounds must be >= 1, got {rounds}"):
        calibrated_targeted_pgd(model, x, targets, eps=0.2, rounds=rounds)


# -- shifted_copies --------------------------------------------------------------------------------


def _manual_shift(image: Tensor, dy: int, dx: int) -> Tensor:
    """``image`` (C, H, W) moved down by ``dy`` and right by ``dx``, edges replicated."""
    _, h, w = image.shape
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return image[:, rows][:, :, cols]


@pytest.mark.parametrize("max_shift", [1, 2])
def test_shifted_copies_are_every_shift_with_edge_replication(max_shift: int) -> None:
    images = torch.rand(3, 2, 5, 6, generator=_gen(0))
    copies, source = shifted_copies(images, max_shift)
    per_image = (2 * max_shift + 1) ** 2 - 1
    assert copies.shape == (3 * per_image, 2, 5, 6)
    assert source.dtype == torch.long and source.shape == (3 * per_image,)
    assert torch.bincount(source, minlength=3).tolist() == [per_image] * 3
    shifts = [
        (dy, dx)
        for dy in range(-max_shift, max_shift + 1)
        for dx in range(-max_shift, max_shift + 1)
        if (dy, dx) != (0, 0)
    ]
    for i in range(3):
        mine = copies[source == i]
        expected = torch.stack([_manual_shift(images[i], dy, dx) for dy, dx in shifts])
        # the same set of images, in any order: a one-to-one match
        matches = (mine.flatten(1)[:, None] == expected.flatten(1)[None]).all(dim=2)
        assert matches.sum(dim=1).tolist() == [1] * per_image
        assert matches.sum(dim=0).tolist() == [1] * per_image
        assert not (mine.flatten(1) == images[i].flatten()).all(dim=1).any()  # no identity copy


def test_shifted_copies_by_one_pixel_by_hand() -> None:
    image = torch.arange(9.0).view(1, 1, 3, 3)
    copies, _ = shifted_copies(image, 1)
    as_lists = [c[0].tolist() for c in copies]
    assert [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [3.0, 3.0, 4.0]] in as_lists  # down 1, right 1
    assert [[4.0, 5.0, 5.0], [7.0, 8.0, 8.0], [7.0, 8.0, 8.0]] in as_lists  # up 1, left 1
    assert [[1.0, 2.0, 2.0], [4.0, 5.0, 5.0], [7.0, 8.0, 8.0]] in as_lists  # left 1
    assert len(as_lists) == 8


def test_shifted_copies_zero_shift_and_bad_shapes() -> None:
    images = torch.rand(2, 1, 4, 4)
    copies, source = shifted_copies(images, 0)
    assert copies.shape == (0, 1, 4, 4) and source.shape == (0,)
    for bad in (torch.rand(2, 16), torch.rand(2, 4, 4), torch.rand(1, 2, 1, 4, 4)):
        with pytest.raises(ValueError, match=r"need \(N, C, H, W\) images"):
            shifted_copies(bad, 1)


# -- MAS importance --------------------------------------------------------------------------------


def _hand_mas_linear(model: nn.Linear, x: Tensor) -> dict[str, Tensor]:
    """|d ||W x + b||_2 / d(W, b)| for one sample ``x`` of shape ``(in,)``."""
    with torch.no_grad():
        z = model.weight @ x + model.bias
        unit = z / z.norm()
    return {"weight": torch.outer(unit, x).abs(), "bias": unit.abs()}


def test_mas_matches_hand_computation_on_one_sample() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.tensor([0.5, -1.0, 2.0])
    importance = mas_importance(model, x[None])
    expected = _hand_mas_linear(model, x)
    assert sorted(importance) == ["bias", "weight"]
    for name in expected:
        assert torch.allclose(importance[name], expected[name], atol=1e-6), name


def test_mas_batches_are_weighted_by_their_share() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    xs = torch.randn(3, 3, generator=_gen(4))
    per_sample = [_hand_mas_linear(model, x) for x in xs]
    one_at_a_time = mas_importance(model, xs, batch_size=1)
    for name in ("weight", "bias"):
        expected = torch.stack([p[name] for p in per_sample]).mean(0)
        assert torch.allclose(one_at_a_time[name], expected, atol=1e-6)
    # One batch takes |gradient of the batch mean| instead: different in general.
    whole = mas_importance(model, xs, batch_size=3)
    with torch.no_grad():
        z = xs @ model.weight.T + model.bias
        units = z / z.norm(dim=1, keepdim=True)
    assert torch.allclose(whole["bias"], units.mean(0).abs(), atol=1e-6)
    assert not torch.allclose(whole["weight"], one_at_a_time["weight"], atol=1e-4)


def test_mas_properties_on_a_cnn(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    model = copy.deepcopy(trained_cnn).train()
    model.head[2].weight.requires_grad_(False)
    marker = torch.full_like(model.head[0].bias, 3.0)
    model.head[0].bias.grad = marker.clone()
    state = snapshot(model)
    importance = mas_importance(model, forget[0], batch_size=3)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert importance.keys() == trainable.keys()
    for name, value in importance.items():
        assert value.shape == trainable[name].shape
        assert (value >= 0).all()
    assert any(bool((v > 0).any()) for v in importance.values())
    assert model.training and all(m.training for m in model.modules())
    assert same_state(model, state)  # eval mode: BatchNorm statistics untouched
    assert torch.equal(model.head[0].bias.grad, marker)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.0.bias")


def test_mas_rejects_an_empty_input() -> None:
    with pytest.raises(ValueError, match="at least one input"):
        mas_importance(nn.Linear(3, 2), torch.empty(0, 3))


# -- min-max normalisation -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, database=None)
@given(
    arrays(
        np.float32,
        array_shapes(min_dims=1, max_dims=3, max_side=6),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    arrays(
        np.float32,
        array_shapes(min_dims=1, max_dims=2, max_side=5),
        elements=st.floats(0, 1e3, width=32),
    ),
)
def test_min_max_normalise_properties(a: np.ndarray, b: np.ndarray) -> None:
    tensors = {"a": torch.from_numpy(a.copy()), "b": torch.from_numpy(b.copy())}
    originals = {k: v.clone() for k, v in tensors.items()}
    out = min_max_normalise(tensors)
    assert out.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(t, originals[name])  # input not modified
        o = out[name]
        assert o.shape == t.shape
        assert ((o >= 0) & (o <= 1)).all()
        if t.min() == t.max():
            assert torch.equal(o, torch.zeros_like(t))
        else:
            assert o.min() == 0.0 and o.max() == 1.0
            assert (o[t == t.min()] == 0).all() and (o[t == t.max()] == 1).all()
            flat_t, flat_o = t.flatten(), o.flatten()
            order = torch.argsort(flat_t, stable=True)
            assert (flat_o[order].diff() >= 0).all()  # order preserving


def test_min_max_normalise_examples() -> None:
    out = min_max_normalise(
        {"w": torch.tensor([[1.0, 3.0], [5.0, 2.0]]), "c": torch.full((4,), 7.5)}
    )
    assert torch.allclose(out["w"], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    assert torch.equal(out["c"], torch.zeros(4))


# -- importance-weighted L2 ------------------------------------------------------------------------


def test_importance_weighted_l2_matches_hand_computation_and_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    reference = {
        n: p.detach() - torch.randn(p.shape, generator=_gen(i))
        for i, (n, p) in enumerate(model.named_parameters())
    }
    weights = {"weight": torch.rand(3, 4, generator=_gen(9))}  # "bias" missing: weighted 1
    penalty = importance_weighted_l2(model, reference, weights)
    with torch.no_grad():
        dw = model.weight - reference["weight"]
        db = model.bias - reference["bias"]
        expected = 0.5 * (weights["weight"] * dw**2).sum() + 0.5 * (db**2).sum()
    assert penalty.dim() == 0
    assert torch.allclose(penalty, expected, rtol=1e-6)
    penalty.backward()
    assert torch.allclose(model.weight.grad, weights["weight"] * dw, atol=1e-6)
    assert torch.allclose(model.bias.grad, db, atol=1e-6)


def test_importance_weighted_l2_is_zero_at_the_reference_and_only_counts_named_params() -> None:
    model = nn.Linear(2, 2)
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}

    def value(ref: dict[str, Tensor], weights: dict[str, Tensor]) -> float:
        """The penalty as a Python float."""
        return float(importance_weighted_l2(model, ref, weights).detach())

    assert value(reference, {}) == 0.0
    with torch.no_grad():
        model.bias.add_(1.0)
    assert value({"weight": reference["weight"]}, {}) == 0.0
    assert value(reference, {}) == pytest.approx(1.0)  # 0.5 * (1 + 1)
    assert value(reference, {"bias": torch.zeros(2)}) == 0.0
    assert value({}, {}) == 0.0


# -- goals and margins -----------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 1.0], [1.0, 1.2, 0.0]])
LABELS = torch.tensor([0, 1, 0])
NEW = torch.tensor([2, 0, 1])


def test_label_margin() -> None:
    assert torch.allclose(label_margin(LOGITS, LABELS), torch.tensor([1.0, 2.0, -0.2]))
    assert torch.allclose(label_margin(LOGITS, NEW), torch.tensor([-1.0, -3.0, 0.2]))


@pytest.mark.parametrize(
    "new_labels, margin, expected",
    [
        (None, 0.0, [False, False, True]),
        (None, 0.1, [False, False, True]),
        (None, 0.5, [False, False, False]),
        (NEW, 0.0, [False, False, True]),
        (NEW, 0.1, [False, False, True]),
        (NEW, 0.3, [False, False, False]),
    ],
)
def test_goal_met(new_labels: Tensor | None, margin: float, expected: list[bool]) -> None:
    assert goal_met(LOGITS, LABELS, new_labels, margin).tolist() == expected


def test_goal_met_on_a_tie_keeps_the_label() -> None:
    # argmax takes the first maximum: a tie with the label's logit is not a misclassification.
    assert goal_met(torch.tensor([[1.0, 1.0]]), torch.tensor([0])).tolist() == [False]


# -- StopRule, StopMonitor and optimise_until ------------------------------------------------------


def _bias_model(b0: float, b1: float) -> nn.Linear:
    """A two-class ``Linear(1, 2)`` with zero weight: its logits are its bias."""
    model = nn.Linear(1, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([b0, b1]))
    return model


X0 = torch.zeros(1, 1)
Y0 = torch.tensor([0])


def _run(
    model: nn.Linear, rule: StopRule, batches_per_pass: int = 4, new_labels: Tensor | None = None
) -> tuple[LoopOutcome, list[float]]:
    """Runs ``optimise_until`` with a loss whose SGD step (lr 1) moves 0.1 from bias 0 to bias 1.

    Returns the outcome and the margin ``bias0 - bias1`` seen by every loss call.
    """
    seen: list[float] = []

    def loss_fn(batch: int) -> Tensor:
        assert model.training
        logits = model(X0)
        seen.append(float((logits[0, 0] - logits[0, 1]).detach()))
        return 0.1 * (logits[:, 0] - logits[:, 1]).sum()

    outcome = optimise_until(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        loss_fn=loss_fn,
        make_pass=lambda p: list(range(batches_per_pass)),
        monitor=StopMonitor(rule, X0, Y0, new_labels),
    )
    return outcome, seen


def test_loop_stops_at_the_first_step_where_the_goal_holds() -> None:
    # margin after t steps: 1.05 - 0.2 t; first negative at t = 6.
    model = _bias_model(1.05, 0.0).eval()
    outcome, seen = _run(model, StopRule(max_passes=100))
    assert outcome.steps == 6
    assert outcome.converged and outcome.stop_reason == "goal_reached"
    assert outcome.passes == 1  # one full pass of 4 batches, the second stopped after 2
    assert outcome.goal_share == 1.0
    assert len(outcome.losses) == 6
    assert seen[-1] > 0  # before the last step the goal did not hold yet
    assert float((model.bias[0] - model.bias[1]).detach()) == pytest.approx(-0.15, abs=1e-5)


def test_loop_counts_a_pass_that_ends_with_the_goal() -> None:
    outcome, _ = _run(_bias_model(1.05, 0.0), StopRule(max_passes=100), batches_per_pass=3)
    assert (outcome.steps, outcome.passes) == (6, 2)


def test_loop_margin_delays_the_stop() -> None:
    outcome, _ = _run(_bias_model(1.05, 0.0), StopRule(max_passes=100, margin=0.3))
    assert outcome.steps == 7  # 1.05 - 0.2 t < -0.3 first at t = 7
    assert outcome.converged


def test_loop_relabel_goal() -> None:
    # Three classes: bias [1.05, 0, 0.5]; the loss moves bias 0 down and bias 1 up; new label 1.
    model = nn.Linear(1, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.05, 0.0, 0.5]))
    outcome = optimise_until(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        loss_fn=lambda _: 0.1 * (model(X0)[:, 0] - model(X0)[:, 1]).sum(),
        make_pass=lambda p: [0],
        monitor=StopMonitor(StopRule(max_passes=100), X0, Y0, torch.tensor([1])),
    )
    # After t steps: bias0 = 1.05 - 0.1 t, bias1 = 0.1 t, bias2 = 0.5; class 1 wins first at t = 6.
    assert outcome.steps == 6 and outcome.converged


def test_loop_hits_max_steps() -> None:
    outcome, _ = _run(_bias_model(1.05, 0.0), StopRule(max_passes=None, max_steps=3))
    assert (outcome.steps, outcome.converged, outcome.stop_reason) == (3, False, "max_steps")
    assert outcome.goal_share == 0.0


def test_loop_hits_max_passes() -> None:
    outcome, _ = _run(_bias_model(5.0, 0.0), StopRule(max_passes=2))
    assert (outcome.steps, outcome.passes) == (8, 2)
    assert not outcome.converged and outcome.stop_reason == "max_passes"


def test_loop_max_steps_zero_changes_nothing() -> None:
    model = _bias_model(1.05, 0.0)
    state = snapshot(model)
    outcome, seen = _run(model, StopRule(max_steps=0))
    assert (outcome.steps, outcome.passes, outcome.stop_reason, outcome.converged) == (
        0,
        0,
        "max_steps",
        False,
    )
    assert seen == [] and outcome.losses == ()
    assert same_state(model, state)


def test_loop_goal_at_start_takes_no_step_even_with_a_cap() -> None:
    model = _bias_model(-1.0, 0.0)
    outcome, seen = _run(model, StopRule(max_steps=0))
    assert (outcome.steps, outcome.converged, outcome.stop_reason) == (0, True, "goal_reached")
    assert seen == []


def test_loop_max_seconds_zero_stops_at_once() -> None:
    outcome, seen = _run(_bias_model(1.05, 0.0), StopRule(max_passes=None, max_seconds=0.0))
    assert (outcome.steps, outcome.stop_reason, outcome.converged) == (0, "max_seconds", False)
    assert seen == []


def test_loop_nan_loss_raises() -> None:
    model = _bias_model(1.05, 0.0)
    with pytest.raises(NonFiniteError, match=r"the loss became NaN or infinite \(nan\) at step 1"):
        optimise_until(
            model,
            torch.optim.SGD(model.parameters(), lr=1.0),
            loss_fn=lambda _: model(X0).sum() * float("nan"),
            make_pass=lambda p: [0],
            monitor=StopMonitor(StopRule(), X0, Y0),
        )


def test_loop_non_finite_logits_raise() -> None:
    model = _bias_model(1.05, 0.0)
    # A finite loss whose step sends the bias to infinity.
    with pytest.raises(NonFiniteError, match="logits on the forget set became NaN or infinite"):
        optimise_until(
            model,
            torch.optim.SGD(model.parameters(), lr=1e38),
            loss_fn=lambda _: 1e38 * (model(X0)[:, 0] - model(X0)[:, 1]).sum(),
            make_pass=lambda p: [0],
            monitor=StopMonitor(StopRule(), X0, Y0),
        )


def test_loop_rejects_an_empty_pass() -> None:
    model = _bias_model(1.05, 0.0)
    with pytest.raises(ValueError, match="no batches"):
        optimise_until(
            model,
            torch.optim.SGD(model.parameters(), lr=1.0),
            loss_fn=lambda _: model(X0).sum(),
            make_pass=lambda p: [],
            monitor=StopMonitor(StopRule(), X0, Y0),
        )


def test_loop_uses_the_given_train_mode() -> None:
    model = nn.Sequential(nn.Linear(1, 2), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.05, 0.0]))
    calls: list[bool] = []

    def keep_dropout_off(m: nn.Module) -> None:
        m.train()
        m[1].eval()

    def loss_fn(_: int) -> Tensor:
        calls.append(model[1].training)
        return 0.1 * (model(X0)[:, 0] - model(X0)[:, 1]).sum()

    outcome = optimise_until(
        model,
        torch.optim.SGD(model.parameters(), lr=1.0),
        loss_fn=loss_fn,
        make_pass=lambda p: [0],
        monitor=StopMonitor(StopRule(), X0, Y0),
        set_train_mode=keep_dropout_off,
    )
    assert outcome.steps == 6 and calls == [False] * 6


@pytest.mark.parametrize("field", ["max_passes", "max_steps", "max_seconds", "margin"])
def test_stop_rule_rejects_negative_values(field: str) -> None:
    with pytest.raises(ValueError, match=f"{field} must be >= 0"):
        StopRule(**{field: -1})


def test_stop_monitor_goal_wins_over_caps() -> None:
    model = _bias_model(-1.0, 0.0)
    decision = StopMonitor(StopRule(max_steps=1), X0, Y0).check(model, steps=5, passes=5)
    assert (decision.stop, decision.converged, decision.reason) == (True, True, "goal_reached")
    unmet = StopMonitor(StopRule(max_steps=10, max_passes=3), X0, Y0)
    assert unmet.check(_bias_model(1.0, 0.0), steps=2, passes=2).reason == "continue"
    assert unmet.check(_bias_model(1.0, 0.0), steps=2, passes=3).reason == "max_passes"
    assert unmet.checks == 2


# -- batching --------------------------------------------------------------------------------------


def test_shuffled_batches() -> None:
    batches = shuffled_batches(10, 3, _gen(0))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    again = shuffled_batches(10, 3, _gen(0))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = shuffled_batches(10, 3, _gen(1))
    assert not torch.equal(torch.cat(batches), torch.cat(other))


@pytest.mark.parametrize("n, batch_size", [(0, 3), (5, 0), (-1, 2)])
def test_shuffled_batches_rejects_empty(n: int, batch_size: int) -> None:
    with pytest.raises(ValueError, match="need n > 0 and batch_size > 0"):
        shuffled_batches(n, batch_size, _gen(0))


def test_cycled_batches_reshuffle_every_pass() -> None:
    stream = cycled_batches(5, 2, _gen(0))
    passes = [torch.cat([next(stream) for _ in range(3)]) for _ in range(4)]
    for p in passes:
        assert sorted(p.tolist()) == [0, 1, 2, 3, 4]
    assert len({tuple(p.tolist()) for p in passes}) > 1


def test_random_other_classes_never_the_label_and_uniform() -> None:
    labels = torch.zeros(9000, dtype=torch.long)
    others = random_other_classes(labels, 10, _gen(0))
    assert (others != labels).all()
    counts = torch.bincount(others, minlength=10)
    assert counts[0] == 0
    assert ((counts[1:] > 850) & (counts[1:] < 1150)).all()  # ~1000 each, sd ~30
    mixed = torch.arange(10).repeat(300)
    drawn = random_other_classes(mixed, 10, _gen(1))
    assert (drawn != mixed).all() and drawn.min() >= 0 and drawn.max() <= 9
    assert torch.equal(drawn, random_other_classes(mixed, 10, _gen(1)))
    assert torch.equal(
        random_other_classes(torch.tensor([0, 1, 0]), 2, _gen(0)), torch.tensor([1, 0, 1])
    )


def test_random_other_classes_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_other_classes(torch.tensor([0]), 1, _gen(0))


@pytest.mark.parametrize(
    "num_classes, per_instance", [(10, 9), (10, 18), (3, 4), (10, 20), (5, 3), (2, 3)]
)
def test_balanced_other_classes(num_classes: int, per_instance: int) -> None:
    labels = torch.arange(num_classes).repeat(4)
    targets = balanced_other_classes(labels, per_instance, num_classes, _gen(0))
    assert targets.shape == (len(labels) * per_instance,) and targets.dtype == torch.long
    rows = targets.view(len(labels), per_instance)  # instance-major
    assert (rows != labels[:, None]).all()  # never the label
    assert rows.min() >= 0 and rows.max() < num_classes
    for label, row in zip(labels.tolist(), rows, strict=True):
        counts = torch.bincount(row, minlength=num_classes)
        others = torch.cat([counts[:label], counts[label + 1 :]])
        assert int(others.max() - others.min()) <= 1  # spread evenly over the other classes
        if per_instance % (num_classes - 1) == 0:
            assert (others == per_instance // (num_classes - 1)).all()
    totals = torch.bincount(targets, minlength=num_classes)
    if per_instance % (num_classes - 1) == 0:
        assert (totals == totals[0]).all()  # every class receives the same number of targets
    else:
        assert int(totals.max() - totals.min()) <= len(labels)  # at most 1 per instance apart
    assert torch.equal(targets, balanced_other_classes(labels, per_instance, num_classes, _gen(0)))
    if num_classes > 2:
        assert not torch.equal(
            targets, balanced_other_classes(labels, per_instance, num_classes, _gen(1))
        )


def test_balanced_other_classes_by_hand_and_errors() -> None:
    two = balanced_other_classes(torch.tensor([0, 1]), 3, 2, _gen(0))
    assert two.tolist() == [1, 1, 1, 0, 0, 0]
    assert balanced_other_classes(torch.tensor([2, 0]), 0, 5, _gen(0)).shape == (0,)
    with pytest.raises(ValueError, match="at least 2 classes"):
        balanced_other_classes(torch.tensor([0]), 3, 1, _gen(0))


# -- losses ----------------------------------------------------------------------------------------


def test_forget_loss() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.2, 0.1]])
    labels, new = torch.tensor([0, 1]), torch.tensor([2, 0])
    assert torch.allclose(forget_loss(logits, labels), -F.cross_entropy(logits, labels))
    assert torch.allclose(forget_loss(logits, labels, new), F.cross_entropy(logits, new))


def test_forget_hinge_loss_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.2, 0.0]])
    labels = torch.tensor([0, 0, 0])
    # label margins 2.0, -2.0, -0.2 -> relu(0.5 + m) = 2.5, 0, 0.3
    assert float(forget_hinge_loss(logits, labels)) == pytest.approx((2.5 + 0.0 + 0.3) / 3)
    assert float(forget_hinge_loss(logits, labels, margin=0.0)) == pytest.approx(2.0 / 3)
    new = torch.tensor([1, 1, 2])
    # new-label margins -2.0, 1.0, -1.2 -> relu(0.5 - m) = 2.5, 0, 1.7
    assert float(forget_hinge_loss(logits, labels, new)) == pytest.approx((2.5 + 0.0 + 1.7) / 3)
    assert float(forget_hinge_loss(logits, labels, new, margin=2.0)) == pytest.approx(
        (4.0 + 1.0 + 3.2) / 3
    )


@pytest.mark.parametrize("relabel", [False, True], ids=["misclassify", "relabel"])
def test_forget_hinge_loss_ignores_instances_past_the_margin(relabel: bool) -> None:
    # Label 0 (new label 1). Row 0 is far from its goal, row 1 meets it by more than the margin,
    # row 2 meets it by less than the margin.
    logits = torch.tensor([[3.0, 0.0, 1.0], [0.0, 4.0, 1.0], [0.0, 0.3, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 0])
    new = torch.tensor([1, 1, 1]) if relabel else None
    forget_hinge_loss(logits, labels, new, margin=0.5).backward()
    grad = logits.grad
    assert grad is not None
    assert torch.equal(grad[1], torch.zeros(3))  # past the margin: no push at all
    assert grad[2].abs().sum() > 0  # inside the margin: still pushed
    # Row 0: misclassify lowers the label's logit and raises the best rival (class 2);
    # relabel raises the new label's logit and lowers the best rival (class 0).
    if relabel:
        assert grad[0].tolist() == pytest.approx([1 / 3, -1 / 3, 0.0])
    else:
        assert grad[0].tolist() == pytest.approx([1 / 3, 0.0, -1 / 3])


def test_forget_hinge_loss_is_bounded_by_the_logits() -> None:
    logits = torch.randn(50, 10, generator=_gen(0)) * 100
    labels = torch.randint(0, 10, (50,), generator=_gen(1))
    loss = forget_hinge_loss(logits, labels)
    assert 0.0 <= float(loss) <= float(logits.max() - logits.min()) + 0.5


def test_distillation_loss() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    student = F.softmax(logits, dim=1)
    assert float(distillation_loss(logits, student)) == pytest.approx(0.0, abs=1e-7)
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    # KL(teacher || student) per example, averaged over the batch
    by_hand = sum(
        float(p) * (math.log(float(p)) - math.log(float(q)))
        for t_row, s_row in zip(teacher, student, strict=True)
        for p, q in zip(t_row, s_row, strict=True)
    ) / 2
    assert float(distillation_loss(logits, teacher)) == pytest.approx(by_hand, rel=1e-5)
    assert by_hand > 0
    # a zero teacher probability contributes nothing (0 log 0 = 0)
    one_hot = torch.tensor([[1.0, 0.0, 0.0]])
    assert float(distillation_loss(logits[:1], one_hot)) == pytest.approx(
        -math.log(float(student[0, 0])), rel=1e-5
    )
    # logits shifted by a constant are the same distribution
    assert float(distillation_loss(logits + 7.0, teacher)) == pytest.approx(by_hand, rel=1e-5)


# -- optimisers ------------------------------------------------------------------------------------


def test_make_optimizer() -> None:
    model = nn.Linear(3, 2)
    sgd = make_optimizer("sgd", model.parameters(), lr=0.1, momentum=0.5, weight_decay=0.01)
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.5, 0.01)
    assert len(group["params"]) == 2
    adam = make_optimizer("adam", model.parameters(), lr=1e-3, momentum=0.5, weight_decay=0.02)
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (1e-3, 0.02)
    assert make_optimizer("sgd", model.parameters(), lr=1.0).param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adam', got 'rmsprop'"):
        make_optimizer("rmsprop", model.parameters(), lr=1.0)  # type: ignore[arg-type]


def test_make_optimizer_steps_by_hand() -> None:
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    sgd = make_optimizer("sgd", [weight], lr=0.1, momentum=0.9, weight_decay=0.5)
    (weight * torch.tensor([3.0, 4.0])).sum().backward()
    sgd.step()  # first step: w - lr * (grad + wd * w)
    assert torch.allclose(weight.detach(), torch.tensor([1.0 - 0.1 * 3.5, -2.0 - 0.1 * 3.0]))
    other = nn.Parameter(torch.tensor([1.0, -2.0]))
    adam = make_optimizer("adam", [other], lr=0.01)
    (other * torch.tensor([3.0, -4.0])).sum().backward()
    adam.step()  # Adam's first step is lr * sign(grad)
    assert torch.allclose(other.detach(), torch.tensor([0.99, -1.99]), atol=1e-6)
