"""The privacy score PS of the Unlearning Comparator: can a threshold attack tell unlearned
from retrained outputs on the forget set?

For each forget instance two signals are read from a model's logits: the softmax entropy and
the confidence ``c = log p_y - log(1 - p_y)`` (the NeurIPS 2023 challenge's statistic, exact
from the logits). An attack calls a forget instance's output "unlearned" (positive) or
"retrained" (negative) by thresholding one signal, in either direction. Over every threshold
(all distinct values of the two groups) its false positive rate (retrained outputs called
unlearned) and false negative rate give an epsilon as in the challenge (section 3 of the
protocol), its attack score ``1 - 2^-eps``, and

    PS = 1 - max over signals, directions and thresholds of (1 - 2^-eps).

PS = 1: no threshold tells the unlearned model's outputs from retraining's; PS near 0: one does
almost perfectly.

**Convention for zero rates.** ``eps = max(log(1 - delta - FPR) - log FNR,
log(1 - delta - FNR) - log FPR)``. A rate of 0 in a denominator is replaced by ``1 / (2 n)``
(half an instance of the ``n`` it is measured on, a continuity correction), so a perfect
attack on ``n`` instances per group gives ``eps ~ log(2 n)``, finite and growing with the
evidence, and no inf or NaN is ever recorded. A term whose ``1 - delta - rate`` is not
positive is undefined and counts as 0, and eps is clipped at 0 (the challenge's floor).
Identical groups therefore give eps = 0 at every threshold and PS = 1 exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unlearnkit.metrics.gap import threshold_rates

#: The signals of the attack, in the order they are reported.
SIGNALS: tuple[str, ...] = ("entropy", "confidence")
#: Directions of a threshold test: "unlearned if s > t" and "unlearned if s <= t".
DIRECTIONS: tuple[str, ...] = (">", "<=")


def attack_signals(logits: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
    """Entropy and confidence ``c = log p_y - log(1 - p_y)`` per example (float64).

    ``c`` is computed as ``z_y - logsumexp_{j != y} z_j``, exact where ``1 - p_y`` rounds to 0.

    Args:
        logits: ``(N, C)`` finite logits, ``C >= 2``.
        labels: ``(N,)`` true labels in ``0..C - 1``.

    Returns:
        ``{"entropy": (N,), "confidence": (N,)}``.

    Raises:
        ValueError: On bad shapes, non-finite logits or labels out of range.

    Example:
        >>> s = attack_signals(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 0]))
        >>> s["confidence"].tolist(), s["entropy"].round(4).tolist()
        ([0.0, 2.0], [0.6931, 0.3653])
    """
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if logits.dim() != 2 or logits.shape[1] < 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, C) with N >= 1 and C >= 2, got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be ({logits.shape[0]},) integers, got {tuple(labels.shape)} {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}")
    logits = logits.detach().cpu().double()
    if not torch.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values")
    labels = labels.cpu().long()
    log_p = torch.log_softmax(logits, dim=1)
    entropy = -(log_p.exp() * log_p).sum(dim=1)
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return {"entropy": entropy.numpy(), "confidence": (true - torch.logsumexp(others, dim=1)).numpy()}


def epsilons(fpr: np.ndarray, fnr: np.ndarray, n_negative: int, n_positive: int, delta: float = 1e-5) -> np.ndarray:
    """Per threshold, eps with the module's convention for zero rates (finite, >= 0).

    Args:
        fpr: False positive rates, one per threshold.
        fnr: False negative rates, one per threshold.
        n_negative: Retrained outputs (the FPR's denominator).
        n_positive: Unlearned outputs (the FNR's denominator).
        delta: The challenge's delta.

    Example:
        >>> epsilons(np.array([0.0, 0.5]), np.array([0.0, 0.5]), 4, 4, delta=0.0).round(3).tolist()
        [2.079, 0.0]
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    if n_negative < 1 or n_positive < 1:
        raise ValueError("each group needs at least one output")
    fpr, fnr = np.asarray(fpr, dtype=np.float64), np.asarray(fnr, dtype=np.float64)

    def term(numerator_rate: np.ndarray, denominator_rate: np.ndarray, n: int) -> np.ndarray:
        numerator = 1.0 - delta - numerator_rate
        safe = np.where(numerator > 0, numerator, 1.0)  # undefined terms are masked below
        value = np.log(safe) - np.log(np.maximum(denominator_rate, 0.5 / n))
        return np.where(numerator > 0, value, 0.0)

    return np.maximum(0.0, np.maximum(term(fpr, fnr, n_positive), term(fnr, fpr, n_negative)))


@dataclass(frozen=True)
class AttackCurve:
    """One signal's threshold attack in one direction.

    Attributes:
        signal: ``"entropy"`` or ``"confidence"``.
        direction: ``">"`` (unlearned if s > t) or ``"<="``.
        thresholds: The thresholds, ascending.
        fpr: Share of retrained outputs called unlearned, per threshold.
        fnr: Share of unlearned outputs called retrained, per threshold.
        score: Attack score ``1 - 2^-eps`` per threshold.
    """

    signal: str
    direction: str
    thresholds: np.ndarray
    fpr: np.ndarray
    fnr: np.ndarray
    score: np.ndarray

    @property
    def best(self) -> int:
        """Index of the threshold with the highest attack score (the first on ties)."""
        return int(np.argmax(self.score))


@dataclass(frozen=True)
class PrivacyAttack:
    """The threshold attacks on one forget set and the privacy score.

    Attributes:
        score: PS = 1 - the highest attack score over signals, directions and thresholds.
        curves: One :class:`AttackCurve` per signal and direction.
        delta: The delta of eps.
        n: Forget instances (outputs per group).
    """

    score: float
    curves: list[AttackCurve] = field(default_factory=list)
    delta: float = 1e-5
    n: int = 0

    def to_dict(self, max_points: int = 100, digits: int = 4) -> dict[str, Any]:
        """JSON-ready: PS, the strongest attack, and per signal the curve of the direction that
        reaches the highest score, at most ``max_points`` thresholds (evenly spaced in rank,
        the best threshold always kept), floats rounded to ``digits`` decimals.

        Example:
            >>> d = privacy_attack({"entropy": [1.0, 2.0]}, {"entropy": [1.0, 2.0]}).to_dict()
            >>> d["score"], d["curves"][0]["direction"], d["curves"][0]["fpr"]
            (1.0, '>', [0.5, 0.0])
        """
        if max_points < 2:
            raise ValueError(f"max_points must be >= 2, got {max_points}")
        curves, strongest = [], None
        for signal in dict.fromkeys(c.signal for c in self.curves):
            mine = [c for c in self.curves if c.signal == signal]
            curve = max(mine, key=lambda c: float(c.score[c.best]))  # first direction on ties
            keep = np.unique(np.concatenate([
                np.linspace(0, len(curve.thresholds) - 1, min(max_points - 1, len(curve.thresholds))).round().astype(int),
                [curve.best],
            ]))
            entry = {
                "signal": signal, "direction": curve.direction,
                "best_threshold": round(float(curve.thresholds[curve.best]), digits),
                "best_score": round(float(curve.score[curve.best]), digits),
                **{name: [round(float(v), digits) for v in getattr(curve, name)[keep]]
                   for name in ("thresholds", "fpr", "fnr", "score")},
            }
            curves.append(entry)
            if strongest is None or entry["best_score"] > strongest["score"]:
                strongest = {"signal": signal, "direction": curve.direction,
                             "threshold": entry["best_threshold"], "score": entry["best_score"]}
        return {"score": round(self.score, digits), "delta": self.delta, "n": self.n,
                "strongest": strongest, "curves": curves}


def _signal(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu().numpy() if isinstance(values, Tensor) else values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what} must be a non-empty 1-D array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return array


def privacy_attack(
    unlearned: Mapping[str, Any], retrained: Mapping[str, Any], *, delta: float = 1e-5
) -> PrivacyAttack:
    """Threshold attacks telling unlearned from retrained outputs, and the privacy score PS.

    Args:
        unlearned: Signal name -> values on the forget set under the unlearned model (e.g.
            :func:`attack_signals`).
        retrained: The same signals under the retrained model (same instances).
        delta: The delta of eps (the challenge's 1e-5).

    Returns:
        The :class:`PrivacyAttack`: PS (1 for identical outputs), and FPR, FNR and attack
        score over the thresholds of each signal and direction. See the module docstring for
        the convention on zero rates.

    Raises:
        ValueError: If the two mappings name different signals, a signal is empty or not
            finite, or the groups differ in size.

    Example:
        >>> same = {"confidence": np.array([0.5, 2.0, 3.0])}
        >>> privacy_attack(same, same).score
        1.0
        >>> # a perfect split of 2 instances: rates of 0 count as 1/4, eps = log 4, PS = 2^-log 4
        >>> round(privacy_attack({"confidence": [5.0, 6.0]}, {"confidence": [1.0, 2.0]}).score, 3)
        0.383
    """
    if set(unlearned) != set(retrained) or not unlearned:
        raise ValueError(f"both models need the same signals, got {sorted(unlearned)} and {sorted(retrained)}")
    curves, best = [], 0.0
    n = 0
    for name in [s for s in SIGNALS if s in unlearned] + sorted(set(unlearned) - set(SIGNALS)):
        u, r = _signal(unlearned[name], f"unlearned[{name!r}]"), _signal(retrained[name], f"retrained[{name!r}]")
        if u.size != r.size:
            raise ValueError(f"signal {name!r}: {u.size} unlearned and {r.size} retrained outputs; one each per instance")
        n = u.size
        thresholds = np.unique(np.concatenate([u, r]))
        fpr, fnr = threshold_rates(u, r)  # "unlearned if s > t", t over the same unique values
        for direction, (a, b) in zip(DIRECTIONS, ((fpr, fnr), (1.0 - fpr, 1.0 - fnr))):
            score = 1.0 - np.exp2(-epsilons(a, b, r.size, u.size, delta))
            curves.append(AttackCurve(name, direction, thresholds, a, b, score))
            best = max(best, float(score.max()))
    return PrivacyAttack(score=1.0 - best, curves=curves, delta=delta, n=n)


__all__ = ["DIRECTIONS", "SIGNALS", "AttackCurve", "PrivacyAttack", "attack_signals", "epsilons", "privacy_attack"]
