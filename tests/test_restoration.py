"""Tests of the restoration score and the attack success rate (unlearnkit.metrics.restoration)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unlearnkit.errors import InvalidRequestError
from unlearnkit.metrics.restoration import attack_success_rate, restoration_score


class FixedPredictions(nn.Module):
    """A "model" that predicts a fixed class per input row: input ``i`` is the row index."""

    def __init__(self, predictions: list[int], num_classes: int = 4) -> None:
        super().__init__()
        self.register_buffer("logits", nn.functional.one_hot(torch.tensor(predictions), num_classes).float())
        self.dummy = nn.Parameter(torch.zeros(()))  # predict_logits reads the parameters' device and dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x[:, 0].long()] + 0 * self.dummy


def rows(n: int) -> torch.Tensor:
    """Inputs naming their own row index, for :class:`FixedPredictions`."""
    return torch.arange(n, dtype=torch.float32)[:, None]


LABELS = torch.tensor([0, 1, 2, 3, 0, 1])
CLEAN = FixedPredictions([0, 1, 2, 3, 0, 2])  # right on rows 0-4
CORRUPT = FixedPredictions([0, 2, 3, 0, 0, 1])  # wrong on rows 1, 2, 3 (all clean-right): A = {1, 2, 3}


def test_clean_scores_one_and_corrupt_zero() -> None:
    clean = restoration_score(CLEAN, CORRUPT, CLEAN, rows(6), LABELS)
    corrupt = restoration_score(CLEAN, CORRUPT, CORRUPT, rows(6), LABELS)
    assert clean.restoration == 1.0 and corrupt.restoration == 0.0
    assert clean.affected == corrupt.affected == 3 and clean.total == 6
    assert (clean.acc_clean, clean.acc_corrupt, clean.acc_unlearned) == (100.0, 0.0, 100.0)
    assert corrupt.acc_unlearned == 0.0


def test_hand_computed_partial_restoration() -> None:
    # Right on rows 1 and 3 of A = {1, 2, 3}; wrong on row 0 and row 5, which lie outside A and
    # must not count.
    unlearned = FixedPredictions([1, 1, 0, 3, 0, 0])
    score = restoration_score(CLEAN, CORRUPT, unlearned, rows(6), LABELS)
    assert score.affected == 3
    assert score.acc_unlearned == pytest.approx(200 / 3, rel=1e-6)
    assert score.restoration == pytest.approx(2 / 3, rel=1e-6)
    # Only row 2 right: R = 1/3.
    assert restoration_score(
        CLEAN, CORRUPT, FixedPredictions([0, 0, 2, 0, 0, 0]), rows(6), LABELS
    ).restoration == pytest.approx(1 / 3, rel=1e-6)


def test_empty_affected_set_is_undefined_not_zero() -> None:
    score = restoration_score(CLEAN, CLEAN, CORRUPT, rows(6), LABELS)
    assert score.affected == 0 and not score.defined
    assert score.restoration is None and score.acc_unlearned is None
    assert score.to_dict()["restoration"] is None
    # Where the corrupt model is wrong only on inputs the clean one also gets wrong, A is empty too.
    both_wrong = FixedPredictions([0, 1, 2, 3, 0, 3])
    assert restoration_score(CLEAN, both_wrong, CORRUPT, rows(6), LABELS).restoration is None


def test_restoration_rejects_bad_inputs() -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        restoration_score(CLEAN, CORRUPT, CLEAN, rows(0), LABELS[:0])
    with pytest.raises(InvalidRequestError, match="labels"):
        restoration_score(CLEAN, CORRUPT, CLEAN, rows(6), LABELS[:5])


def test_attack_success_rate_counts_target_predictions() -> None:
    model = FixedPredictions([2, 2, 0, 2, 1])
    assert attack_success_rate(model, rows(5), 2) == pytest.approx(60.0)
    assert attack_success_rate(model, rows(5), 3) == 0.0
    assert not math.isnan(attack_success_rate(model, rows(1), 2))
    with pytest.raises(InvalidRequestError):
        attack_success_rate(model, rows(0), 2)
