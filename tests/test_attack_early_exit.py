"""Targeted PGD's early exit: examples that lead by the margin stop, leave the batch, and keep
what they reached; without it nothing changes."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from unlearnkit.components.attacks import calibrated_targeted_pgd, targeted_pgd
from unlearnkit.components.stopping import label_margin
from unlearnkit.models import SmallCNN
from unlearnkit.utils.modules import predict_logits


def _rows_seen(model: nn.Module) -> list[int]:
    rows: list[int] = []
    model.register_forward_hook(lambda _m, args, _out: rows.append(int(args[0].shape[0])))
    return rows


@pytest.fixture
def attack_inputs(forget: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    x, y = forget
    x, labels = x.repeat_interleave(3, dim=0), y.repeat_interleave(3, dim=0)
    offsets = torch.arange(len(labels)) % 9 + 1  # never the label itself
    targets = (labels + offsets) % 10
    return x, targets


def test_early_exit_keeps_each_example_at_the_step_it_met_the_margin(cnn: SmallCNN, attack_inputs) -> None:
    x, targets = attack_inputs
    rows = _rows_seen(cnn)
    adv = targeted_pgd(cnn, x, targets, eps=2.0, steps=40, stop_margin=1.0, generator=torch.Generator().manual_seed(0))
    rows = list(rows)  # the attack's forward passes only
    margins = label_margin(predict_logits(cnn, adv), targets)
    assert bool((margins > 1.0).all()), "every example should reach a margin of 1 at radius 2 in 40 steps"
    assert ((adv - x).flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    assert rows[0] == len(x) and rows[-1] < len(x), "done examples must leave the batch"
    assert sum(rows) < 40 * len(x)


def test_an_unreachable_margin_changes_nothing(cnn: SmallCNN, attack_inputs) -> None:
    x, targets = attack_inputs
    kwargs = {"eps": 0.5, "steps": 10, "generator": None}
    plain = targeted_pgd(cnn, x, targets, **kwargs)
    never = targeted_pgd(cnn, x, targets, stop_margin=1e9, **kwargs)
    assert torch.equal(plain, never)


def test_early_exit_is_the_same_in_chunks_and_in_one_batch(cnn: SmallCNN, attack_inputs) -> None:
    x, targets = attack_inputs
    one = targeted_pgd(cnn, x, targets, eps=1.0, steps=20, stop_margin=0.5)
    chunked = targeted_pgd(cnn, x, targets, eps=1.0, steps=20, stop_margin=0.5, batch_size=5)
    torch.testing.assert_close(one, chunked, rtol=0, atol=1e-6)


def test_a_negative_margin_is_refused(cnn: SmallCNN, attack_inputs) -> None:
    x, targets = attack_inputs
    with pytest.raises(ValueError, match="stop_margin"):
        targeted_pgd(cnn, x, targets, eps=1.0, stop_margin=-1.0)


def test_the_calibrated_attack_passes_the_exit_on_and_reports_reach(cnn: SmallCNN, attack_inputs) -> None:
    x, targets = attack_inputs
    attack = calibrated_targeted_pgd(cnn, x, targets, eps=0.05, rounds=6, steps=20, stop_margin=0.0)
    reached = predict_logits(cnn, attack.adversarial).argmax(dim=1) == targets
    assert torch.equal(reached, attack.reached)
    assert attack.reached.float().mean() > attack.first_round_success


def test_auto_precision_is_fp32_on_cpu_and_bf16_runs_and_is_rechecked_in_fp32(cnn: SmallCNN, attack_inputs) -> None:
    x, targets = attack_inputs
    kwargs = {"eps": 1.0, "steps": 10}
    assert torch.equal(targeted_pgd(cnn, x, targets, precision="auto", **kwargs), targeted_pgd(cnn, x, targets, **kwargs))
    half = targeted_pgd(cnn, x, targets, precision="bf16", **kwargs)
    assert half.dtype == x.dtype and ((half - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all()
    full = targeted_pgd(cnn, x, targets, **kwargs)
    assert not torch.equal(half, full)  # bf16 really ran: the path differs slightly
    attack = calibrated_targeted_pgd(cnn, x, targets, eps=0.5, rounds=2, steps=10, precision="bf16")
    assert torch.equal(predict_logits(cnn, attack.adversarial).argmax(dim=1) == targets, attack.reached)


def test_l2ul_records_the_attack_precision_and_refuses_unknown_ones(cnn: SmallCNN, forget) -> None:
    import unlearnkit
    from unlearnkit.errors import InvalidHyperparameterError

    result = unlearnkit.unlearn(cnn, forget, method="l2ul", n_adv=2, pgd_steps=5, max_steps=2)
    assert result.details["attack/precision"] == "fp32" and result.hyperparams["attack_precision"] == "auto"
    with pytest.raises(InvalidHyperparameterError, match="attack_precision"):
        unlearnkit.create_method("l2ul", attack_precision="fp16")
