"""How far an unlearned model is from retraining: SalUn's gap and the NeurIPS 2023 challenge score.

- :func:`unlearning_accuracy` and :func:`average_gap`: SalUn's (Fan et al., ICLR 2024) summary
  of one unlearned model against one retrained model.
- :func:`per_example_epsilon`, :func:`forgetting_score` and :func:`challenge_score`: the
  NeurIPS 2023 Machine Unlearning challenge's forgetting quality (Triantafillou et al., 2024,
  arXiv 2406.09073), which compares *many* unlearned models with *many* retrained models
  example by example. The conventions (threshold set, zero rates, undefined logarithms, the
  floor at 0, the bins) follow the organisers' published scoring functions
  ``compute_epsilon_s``, ``bin_index_fn`` and ``F``.

Everything here works on numbers and arrays; no model and no method is involved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

#: Keys :func:`average_gap` reads, all in percent: unlearning accuracy (100 - Acc(D_f)),
#: MIA-efficacy, accuracy on the retain set, accuracy on the test set.
AVERAGE_GAP_KEYS: tuple[str, ...] = ("ua", "mia_efficacy", "ra", "ta")


def _percent(value: float, name: str) -> float:
    """``value`` as a float, checked to be a finite percentage."""
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a number, got {value!r}") from err
    if not math.isfinite(number) or not 0.0 <= number <= 100.0:
        raise ValueError(f"{name} must be a percentage in [0, 100], got {value!r}")
    return number


def unlearning_accuracy(acc_forget: float) -> float:
    """SalUn's unlearning accuracy UA = 100 - Acc(D_f), in percent.

    Example:
        >>> unlearning_accuracy(92.5)
        7.5
    """
    return 100.0 - _percent(acc_forget, "acc_forget")


def average_gap(unlearned: Mapping[str, float], retrained: Mapping[str, float]) -> float:
    """SalUn's average gap: mean over UA, MIA-efficacy, RA and TA of ``|X - X_retrain|``.

    Both mappings must hold the keys of :data:`AVERAGE_GAP_KEYS` (``"ua"``,
    ``"mia_efficacy"``, ``"ra"``, ``"ta"``), each a percentage; other keys are ignored. Lower
    is better: 0 means the unlearned model matches the retrained one on all four.

    Example:
        >>> u = {"ua": 5.0, "mia_efficacy": 10.0, "ra": 99.0, "ta": 94.0}
        >>> r = {"ua": 6.0, "mia_efficacy": 14.0, "ra": 100.0, "ta": 95.0}
        >>> average_gap(u, r)  # (1 + 4 + 1 + 1) / 4
        1.75
    """
    gaps = []
    for which, figures in (("unlearned", unlearned), ("retrained", retrained)):
        missing = [key for key in AVERAGE_GAP_KEYS if key not in figures]
        if missing:
            raise ValueError(
                f"{which} lacks {missing} (average_gap needs {list(AVERAGE_GAP_KEYS)})"
            )
    for key in AVERAGE_GAP_KEYS:
        x = _percent(unlearned[key], f"unlearned[{key!r}]")
        x_retrain = _percent(retrained[key], f"retrained[{key!r}]")
        gaps.append(abs(x - x_retrain))
    return float(np.mean(gaps))


# -- NeurIPS 2023 unlearning challenge ------------------------------------------------------------


def _array(values: Tensor | np.ndarray, name: str, ndim: int) -> np.ndarray:
    """A checked float64 array of ``ndim`` dimensions, non-empty, without NaN."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(array).any():
        raise ValueError(f"{name} holds NaN")
    return array


def logit_confidence(p: Tensor | np.ndarray | float, *, clip: float = 1e-15) -> np.ndarray:
    """The challenge's confidence ``c = log p - log(1 - p)`` of true-label probabilities ``p``.

    ``p`` is clipped to ``[clip, 1 - clip]`` first, so ``p = 0`` or ``1`` (which a float32
    softmax returns for confident models) give finite values (``|c| <= 34.54`` with the default).
    ``log1p(-p)`` keeps ``log(1 - p)`` accurate for small ``p``. When logits are at hand,
    :func:`unlearnkit.metrics.membership.logit_scaled_confidence` is exact and needs no clip.

    Example:
        >>> logit_confidence(np.array([0.5, 0.9, 1.0])).round(2)
        array([ 0.  ,  2.2 , 34.54])
    """
    if not 0.0 < clip < 0.5:
        raise ValueError(f"clip must lie in (0, 0.5), got {clip}")
    if isinstance(p, torch.Tensor):
        p = p.detach().cpu().numpy()
    probabilities = np.asarray(p, dtype=np.float64)
    if probabilities.size == 0:
        raise ValueError("logit_confidence got no probabilities")
    if np.isnan(probabilities).any():
        raise ValueError("probabilities hold NaN")
    if (probabilities < 0.0).any() or (probabilities > 1.0).any():
        raise ValueError("probabilities must lie in [0, 1]")
    clipped = np.clip(probabilities, clip, 1.0 - clip)
    return np.log(clipped) - np.log1p(-clipped)


def _log_or_nan(x: np.ndarray) -> np.ndarray:
    """``log x`` with ``log 0 = -inf`` and ``log x = nan`` for ``x < 0``, without warnings
    (numpy's own ``log`` gives these values too, plus RuntimeWarnings)."""
    out = np.full(x.shape, np.nan)
    out[x == 0.0] = -np.inf
    positive = x > 0.0
    out[positive] = np.log(x[positive])
    return out


def epsilon_from_rates(
    fpr: Tensor | np.ndarray, fnr: Tensor | np.ndarray, delta: float = 1e-5
) -> float:
    """One example's epsilon from the (FPR, FNR) pairs of several attacks, as the challenge
    scores it (``compute_epsilon_s``).

    Per attack: FPR = FNR = 0 (a perfect attack) gives ``inf``; exactly one of them 0 discards
    the attack (one rate of 0 from finitely many models is not evidence of an infinite
    epsilon); otherwise ``max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR)``,
    where a term whose ``1 - delta - rate`` is negative is undefined and skipped, and an attack
    whose two terms are both undefined (it is wrong nearly always, so its opposite is right
    nearly always) gives ``inf``. The result is the largest of these and 0.

    Example:
        >>> round(epsilon_from_rates([0.1], [0.2], delta=0.0), 4)  # max(log .9/.2, log .8/.1)
        2.0794
        >>> epsilon_from_rates([0.0, 0.5], [0.3, 0.5])  # first discarded, second below 0
        0.0
    """
    fprs = _array(fpr, "fpr", 1)
    fnrs = _array(fnr, "fnr", 1)
    if fprs.shape != fnrs.shape:
        raise ValueError(f"fpr and fnr must pair up, got {fprs.size} and {fnrs.size} values")
    if ((fprs < 0) | (fprs > 1) | (fnrs < 0) | (fnrs > 1)).any():
        raise ValueError("fpr and fnr must be rates in [0, 1]")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must lie in [0, 1), got {delta}")
    if ((fprs == 0) & (fnrs == 0)).any():
        return math.inf
    # The organisers' list of per-attack epsilons starts with 0: the estimate is never negative.
    keep = (fprs > 0) & (fnrs > 0)
    fprs, fnrs = fprs[keep], fnrs[keep]
    first = _log_or_nan(1.0 - delta - fprs) - np.log(fnrs)
    second = _log_or_nan(1.0 - delta - fnrs) - np.log(fprs)
    if (np.isnan(first) & np.isnan(second)).any():
        return math.inf
    best = np.fmax(first, second)  # fmax: a NaN term gives way to the other one
    return float(max(0.0, best.max(initial=0.0)))


def threshold_rates(
    unlearned_conf: Tensor | np.ndarray,
    retrained_conf: Tensor | np.ndarray,
    *,
    two_sided: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, FNR) of every threshold test "unlearned if c > t" on one example's confidences.

    The attack tells a model that was unlearned (positive) from one that was retrained
    (negative). As in the challenge's ``best_threshold_attack``, ``t`` runs over every observed
    value; FPR is the share of retrained models called unlearned, FNR the share of unlearned
    models called retrained. ``two_sided=True`` adds the opposite tests "unlearned if
    c <= t", i.e. the pairs ``(1 - FPR, 1 - FNR)``: the challenge scores only the first
    direction, which suits methods that leave the forget examples *more* confident than
    retraining does, and undercounts methods that leave them less confident.

    Example:
        >>> fpr, fnr = threshold_rates(np.array([2.0, 3.0]), np.array([0.0, 2.0]))
        >>> fpr.tolist(), fnr.tolist()  # thresholds 0, 2, 3
        ([0.5, 0.0, 0.0], [0.0, 0.5, 1.0])
    """
    unlearned = _array(unlearned_conf, "unlearned_conf", 1)
    retrained = _array(retrained_conf, "retrained_conf", 1)
    thresholds = np.unique(np.concatenate([unlearned, retrained]))
    unlearned, retrained = np.sort(unlearned), np.sort(retrained)
    # Counts of values <= t by binary search: exact, and O((n + m) log(n + m)) for all t.
    fpr = 1.0 - np.searchsorted(retrained, thresholds, side="right") / retrained.size
    fnr = np.searchsorted(unlearned, thresholds, side="right") / unlearned.size
    if two_sided:
        fpr, fnr = np.concatenate([fpr, 1.0 - fpr]), np.concatenate([fnr, 1.0 - fnr])
    return fpr, fnr


def per_example_epsilon(
    unlearned_conf: Tensor | np.ndarray,
    retrained_conf: Tensor | np.ndarray,
    delta: float = 1e-5,
    *,
    two_sided: bool = False,
) -> float:
    """The challenge's epsilon for one forget example.

    ``unlearned_conf`` holds the example's confidence ``c = log p_y - log(1 - p_y)`` (see
    :func:`logit_confidence`) under each of many unlearned models, ``retrained_conf`` under
    each of many models retrained without it (the counts may differ; the challenge used 512 of
    each). Every threshold test of :func:`threshold_rates` is one attack, scored by
    :func:`epsilon_from_rates`. 0 means no threshold separates the two groups better than
    chance; ``inf`` means one separates them perfectly. With ``N`` models per side the largest
    finite value is about ``log N``, so a small ``N`` cannot show a large epsilon.

    Example:
        >>> per_example_epsilon(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
        0.0
        >>> per_example_epsilon(np.array([5.0, 6.0]), np.array([1.0, 2.0]))
        inf
        >>> u, r = np.array([1.0, 3.0, 4.0]), np.array([0.0, 2.0, 3.0])
        >>> round(per_example_epsilon(u, r, delta=0.0), 4)  # t = 2: FPR = FNR = 1/3, log 2
        0.6931
    """
    fpr, fnr = threshold_rates(unlearned_conf, retrained_conf, two_sided=two_sided)
    return epsilon_from_rates(fpr, fnr, delta)


def per_example_epsilons(
    unlearned_conf: Tensor | np.ndarray,
    retrained_conf: Tensor | np.ndarray,
    delta: float = 1e-5,
    *,
    two_sided: bool = False,
) -> np.ndarray:
    """:func:`per_example_epsilon` for each column of ``(models, examples)`` confidence arrays.

    Example:
        >>> u = np.array([[5.0, 1.0], [6.0, 2.0]])  # 2 unlearned models x 2 examples
        >>> r = np.array([[1.0, 1.0], [2.0, 2.0]])
        >>> per_example_epsilons(u, r)
        array([inf,  0.])
    """
    unlearned = _array(unlearned_conf, "unlearned_conf", 2)
    retrained = _array(retrained_conf, "retrained_conf", 2)
    if unlearned.shape[1] != retrained.shape[1]:
        raise ValueError(
            f"unlearned_conf covers {unlearned.shape[1]} examples but retrained_conf "
            f"{retrained.shape[1]}: columns must be the same forget examples"
        )
    return np.array(
        [
            per_example_epsilon(unlearned[:, j], retrained[:, j], delta, two_sided=two_sided)
            for j in range(unlearned.shape[1])
        ]
    )


def forgetting_score(
    epsilons: Tensor | np.ndarray, *, bin_width: float = 0.5, num_bins: int = 13
) -> float:
    """The challenge's forgetting quality F in ``[2**-(num_bins - 1), 1]`` (higher is better).

    Example ``i`` falls in bin ``j = min(floor(eps_i / bin_width), num_bins - 1)`` (``inf`` in
    the last) and earns ``2**-j``; F is the mean over examples. Same as the organisers'
    ``F`` with ``bin_index_fn`` (``np.digitize`` on ``arange(num_bins) * bin_width``).

    Example:
        >>> forgetting_score(np.array([0.0, 0.49, 0.5, 1.2]))  # (1 + 1 + 0.5 + 0.25) / 4
        0.6875
        >>> forgetting_score(np.array([np.inf]))
        0.000244140625
    """
    values = _array(epsilons, "epsilons", 1)
    if (values < 0).any():
        raise ValueError("epsilons must be >= 0")
    if not bin_width > 0 or int(num_bins) != num_bins or num_bins < 1:
        raise ValueError(
            f"need bin_width > 0 and a whole num_bins >= 1, got {bin_width} and {num_bins}"
        )
    edges = np.arange(int(num_bins)) * float(bin_width)
    # digitize returns 1 for [0, w), 2 for [w, 2w), ..., num_bins for [last edge, inf].
    bins = np.digitize(values, edges) - 1
    return float(np.mean(2.0 ** (-bins)))


def challenge_score(forgetting: float, ra_u: float, ra_r: float, ta_u: float, ta_r: float) -> float:
    """The challenge's final score ``F * (RA_u / RA_r) * (TA_u / TA_r)``.

    ``RA`` and ``TA`` are retain and test accuracies of the unlearned (``_u``) and retrained
    (``_r``) models, in any one unit (percent or fraction: only ratios enter). The ratios are
    not capped, so a model more accurate than retraining earns more than F.

    Example:
        >>> challenge_score(0.5, ra_u=90.0, ra_r=100.0, ta_u=80.0, ta_r=80.0)
        0.45
    """
    f = float(forgetting)
    if not math.isfinite(f) or not 0.0 <= f <= 1.0:
        raise ValueError(f"forgetting must lie in [0, 1], got {forgetting!r}")
    ratios = []
    for name_u, u, name_r, r in (("ra_u", ra_u, "ra_r", ra_r), ("ta_u", ta_u, "ta_r", ta_r)):
        u, r = float(u), float(r)
        if not math.isfinite(u) or u < 0:
            raise ValueError(f"{name_u} must be a finite accuracy >= 0, got {u}")
        if not math.isfinite(r) or r <= 0:
            raise ValueError(f"{name_r} must be a finite accuracy > 0 (it divides), got {r}")
        ratios.append(u / r)
    return f * ratios[0] * ratios[1]
