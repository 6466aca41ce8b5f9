"""Method-specific behaviour of salun (saliency-masked random labels) and boundary_shrink
(fine-tuning toward the class of the nearest adversarial example), and of the untargeted attack
that boundary_shrink uses."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import unlearnkit
from helpers import same_weights
from unlearnkit import InvalidHyperparameterError, InvalidRequestError
from unlearnkit.components.attacks import untargeted_pgd
from unlearnkit.data import DataSplit
from unlearnkit.methods.boundary_shrink import neighbour_labels
from unlearnkit.methods.salun import saliency_mask
from unlearnkit.models import SmallCNN
from unlearnkit.utils.modules import predict_logits

FAST = {"lr": 0.05, "max_steps": 300}


def _retain(digits: DataSplit) -> tuple[Tensor, Tensor]:
    return digits.x_train[200:400], digits.y_train[200:400]


def _abs_forget_gradient(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """|d mean CE / d theta| on the forget set, eval mode: recomputed independently of salun."""
    probe = copy.deepcopy(model).eval()
    params = [p for p in probe.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(probe(x), y), params)
    return [g.abs() for g in grads]


# -- salun -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_saliency_mask_is_the_global_top_share_of_the_gradient(
    ratio: float, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    grads = _abs_forget_gradient(trained_cnn, *forget)
    model = copy.deepcopy(trained_cnn).train()
    for p in model.parameters():
        p.grad = None
    mask = saliency_mask(model, *forget, ratio=ratio)
    total = sum(g.numel() for g in grads)
    assert mask.total == total and mask.kept == int(total * ratio)
    assert sum(int(m.sum()) for m in mask.masks) == mask.kept
    inside = torch.cat([g[m] for g, m in zip(grads, mask.masks)])
    outside = torch.cat([g[~m] for g, m in zip(grads, mask.masks)])
    # Every kept entry is at least as salient as every dropped one (up to the rounding of two
    # ways of summing the same gradient).
    assert float(inside.min()) >= float(outside.max()) * (1 - 1e-4)
    assert mask.threshold == pytest.approx(float(inside.min()), rel=1e-4)
    # One global threshold, not one per layer: the layers' shares differ.
    shares = mask.share_by_parameter()
    assert set(shares) == {n for n, p in trained_cnn.named_parameters() if p.requires_grad}
    assert max(shares.values()) - min(shares.values()) > 0.2
    # Computed in eval mode (BatchNorm statistics untouched), without filling .grad, and the
    # model's modes are kept.
    assert model.training and all(p.grad is None for p in model.parameters())
    assert same_weights(model, trained_cnn)


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_salun_changes_only_masked_weights(
    preset: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    # "paper" has SGD momentum and weight decay 5e-4, which would move every weight if only the
    # gradient were masked.
    result = unlearnkit.unlearn(
        trained_cnn, forget, method="salun", retain=_retain(digits), preset=preset, **FAST
    )
    assert result.converged and result.metrics["acc/forget/after"] == 0.0
    grads = _abs_forget_gradient(trained_cnn, *forget)
    total = sum(g.numel() for g in grads)
    kept = int(total * 0.5)
    assert result.details["salun/mask_kept"] == kept and result.details["salun/mask_total"] == total
    threshold = torch.cat([g.flatten() for g in grads]).sort(descending=True).values[kept - 1]
    changed_total = 0
    params = zip(trained_cnn.parameters(), result.model.parameters(), grads, strict=True)
    for before, after, g in params:
        changed = after.detach() != before.detach()
        # Below the threshold (clearly outside the mask): bit-identical.
        assert torch.equal(after.detach()[g < threshold * (1 - 1e-4)], before.detach()[g < threshold * (1 - 1e-4)])
        assert bool((g[changed] >= threshold * (1 - 1e-4)).all())
        changed_total += int(changed.sum())
    assert 0 < changed_total <= kept


@pytest.mark.parametrize("goal", ["misclassify", "relabel"])
def test_salun_with_the_whole_mask_is_random_label(
    goal: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor, digits: DataSplit
) -> None:
    relabel = new_labels if goal == "relabel" else None
    settings = {"retain": _retain(digits), "new_labels": relabel, "seed": 3, "preset": "paper", **FAST}
    salun = unlearnkit.unlearn(trained_cnn, forget, method="salun", mask_ratio=1.0, **settings)
    rl = unlearnkit.unlearn(trained_cnn, forget, method="random_label", **settings)
    assert salun.details["salun/mask_kept"] == salun.details["salun/mask_total"]
    assert salun.steps == rl.steps and salun.converged and rl.converged
    assert same_weights(salun.model, rl.model)
    assert salun.model_sha256_after == rl.model_sha256_after
    # ... while the paper's half mask takes another path
    half = unlearnkit.unlearn(trained_cnn, forget, method="salun", **settings)
    assert not same_weights(half.model, rl.model)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, float("nan"), True, "0.5"])
def test_salun_mask_ratio_outside_zero_one_is_refused(bad: object) -> None:
    with pytest.raises(InvalidHyperparameterError, match=r"mask_ratio must be a number in \(0, 1\]"):
        unlearnkit.create_method("salun", mask_ratio=bad)
    with pytest.raises(InvalidHyperparameterError, match="mask_batch_size must be > 0"):
        unlearnkit.create_method("salun", mask_batch_size=0)
    params = unlearnkit.create_method("salun").get_params()
    assert params["mask_ratio"] == 0.5 and params["lr"] == 1e-4 and params["optimizer"] == "adam"


def test_salun_mask_does_not_depend_on_chunking(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    whole = saliency_mask(trained_cnn, *forget, ratio=0.5)
    chunked = saliency_mask(trained_cnn, *forget, ratio=0.5, batch_size=1)
    agree = sum(int((a == b).sum()) for a, b in zip(whole.masks, chunked.masks))
    assert agree >= 0.999 * whole.total  # at most a few ties at the threshold differ by rounding


# -- boundary_shrink -------------------------------------------------------------------------------


def test_neighbour_labels_are_never_the_true_label() -> None:
    torch.manual_seed(0)
    logits = torch.randn(200, 5)
    labels = torch.randint(0, 5, (200,))
    logits[:50] = logits[:50].scatter(1, labels[:50].view(-1, 1), 100.0)  # attack failed on these
    n = neighbour_labels(logits, labels)
    assert bool((n.labels != labels).all())
    assert not bool(n.from_attack[:50].any())
    assert bool((n.labels[n.from_attack] == logits.argmax(1)[n.from_attack]).all())


@pytest.mark.parametrize("pgd_steps", [0, 5])
def test_boundary_shrink_neighbours_differ_from_the_labels(
    pgd_steps: int, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    result = unlearnkit.unlearn(trained_cnn, forget, method="boundary_shrink", pgd_steps=pgd_steps, **FAST)
    neighbours = torch.tensor(result.details["boundary/neighbour_labels"])
    assert bool((neighbours != forget[1]).all())
    assert result.details["boundary/from_attack"] + result.details["boundary/from_fallback"] == len(forget[1])
    if pgd_steps == 0:  # no attack: the model still predicts the label, every neighbour is a fallback
        assert result.details["boundary/from_fallback"] == len(forget[1])
        second = predict_logits(trained_cnn, forget[0]).scatter(1, forget[1].view(-1, 1), float("-inf")).argmax(1)
        assert torch.equal(neighbours, second)


def test_strong_attack_neighbour_is_the_prediction_at_the_adversarial_point(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    x, y = forget
    attack = {"pgd_eps": 1.0, "pgd_steps": 20, "pgd_step_size": 0.1}
    result = unlearnkit.unlearn(trained_cnn, forget, method="boundary_shrink", **attack, **FAST)
    assert result.details["boundary/from_attack"] == len(y)
    assert result.details["boundary/attack_success_rate"] == 1.0
    adversarial = untargeted_pgd(trained_cnn, x, y, eps=1.0, steps=20, step_size=0.1, input_range=(0.0, 1.0))
    predicted = predict_logits(trained_cnn, adversarial).argmax(1)
    assert bool((predicted != y).all())
    assert result.details["boundary/neighbour_labels"] == predicted.tolist()


def test_boundary_shrink_moves_the_forget_set_to_its_neighbours(
    trained_cnn: SmallCNN, digits: DataSplit
) -> None:
    x, y = digits.x_train[:40], digits.y_train[:40]
    correct = predict_logits(trained_cnn, x).argmax(1) == y
    x, y = x[correct][:16], y[correct][:16]
    result = unlearnkit.unlearn(trained_cnn, (x, y), method="boundary_shrink", seed=0)
    assert result.converged and result.stop_reason == "goal_reached"
    neighbours = result.details["boundary/neighbour_labels"]
    preds = [o.pred_after for o in result.outcomes]
    assert all(p != o.label for p, o in zip(preds, result.outcomes))
    assert sum(p == n for p, n in zip(preds, neighbours)) >= 0.75 * len(y)
    # Reproducible: the same seed gives the same neighbours and bit-identical weights.
    again = unlearnkit.unlearn(trained_cnn, (x, y), method="boundary_shrink", seed=0)
    assert again.details["boundary/neighbour_labels"] == neighbours
    assert same_weights(result.model, again.model) and again.steps == result.steps


def test_boundary_shrink_presets_attack_scale_and_refusals(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], new_labels: Tensor
) -> None:
    default = unlearnkit.create_method("boundary_shrink").get_params()
    shared = ("forget_loss", "optimizer", "lr", "stop_margin")
    assert [default[k] for k in shared] == ["hinge", "adam", 1e-4, 0.1]
    assert default["bn_mode"] == "freeze" and default["pgd_steps"] == 5
    paper = unlearnkit.create_method("boundary_shrink", preset="paper").get_params()
    assert [paper[k] for k in shared] == ["ce", "sgd", 1e-5, 0.0]
    assert paper["weight_decay"] == 0.0
    assert paper["momentum"] == 0.9 and paper["bn_mode"] == "train"
    # The radius is the released 0.1 on [0, 1] inputs and scales with the declared range.
    on_unit = unlearnkit.unlearn(trained_cnn, forget, method="boundary_shrink", max_steps=1)
    assert on_unit.hyperparams["pgd_eps"] == pytest.approx(0.1)
    assert on_unit.hyperparams["pgd_step_size"] == pytest.approx(8 / 255)
    wide = unlearnkit.unlearn(
        trained_cnn, forget, method="boundary_shrink", input_range=(-1.0, 1.0), max_steps=1
    )
    assert wide.hyperparams["pgd_eps"] == pytest.approx(0.2)
    assert wide.hyperparams["pgd_step_size"] == pytest.approx(0.2 * (8 / 255) / 0.1)
    with pytest.raises(InvalidRequestError, match="does not support relabeling"):
        unlearnkit.unlearn(trained_cnn, forget, method="boundary_shrink", new_labels=new_labels)
    with pytest.raises(InvalidRequestError, match="does not support goal 'unseen'"):
        unlearnkit.unlearn(trained_cnn, forget, method="boundary_shrink", goal="unseen")
    for bad in ({"pgd_eps": 0.0}, {"pgd_step_size": -1.0}, {"pgd_steps": -1}, {"batch_size": 0}):
        with pytest.raises(InvalidHyperparameterError):
            unlearnkit.create_method("boundary_shrink", **bad)


# -- the untargeted attack -------------------------------------------------------------------------


def test_untargeted_pgd_stays_in_the_ball_and_raises_the_loss(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    x, y = forget
    model = copy.deepcopy(trained_cnn).train()
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    adv = untargeted_pgd(model, x, y, eps=0.1, steps=5)
    assert adv.shape == x.shape and not adv.requires_grad
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    ce = F.cross_entropy(predict_logits(model, adv), y, reduction="none")
    assert bool((ce > F.cross_entropy(predict_logits(model, x), y, reduction="none")).all())
    assert [m.training for m in model.modules()] == modes  # the caller's modes are restored
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    # chunking changes nothing; no steps and no random start is the clean input
    assert torch.equal(untargeted_pgd(model, x, y, eps=0.1, steps=5, batch_size=1), adv)
    assert torch.equal(untargeted_pgd(model, x, y, eps=0.1, steps=0), x)


def test_untargeted_pgd_range_norm_and_random_start(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    x, y = forget
    free = untargeted_pgd(trained_cnn, x, y, eps=0.5, steps=5, input_range=None)
    assert float(free.min()) < 0.0 or float(free.max()) > 1.0  # unbounded inputs are not clamped
    l2 = untargeted_pgd(trained_cnn, x, y, eps=0.5, steps=5, norm="l2")
    assert bool(((l2 - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all())
    def started(seed: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        return untargeted_pgd(trained_cnn, x, y, eps=0.1, steps=2, random_start=True, generator=generator)

    one, two, other = started(1), started(1), started(2)
    assert torch.equal(one, two) and not torch.equal(one, other)
    with pytest.raises(ValueError, match="norm must be"):
        untargeted_pgd(trained_cnn, x, y, eps=0.1, norm="l1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be >= 0"):
        untargeted_pgd(trained_cnn, x, y, eps=0.1, steps=-1)
