"""U-LiRA: a per-example likelihood-ratio test of unlearning, built from shadow models.

Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More Careful
Evaluations to Avoid a False Sense of Privacy" (SaTML 2025, arXiv 2403.01218) adapt LiRA
(Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022) to unlearning.
The attacker holds, for one forget example, its logit-scaled confidence
``c = log p_y - log(1 - p_y)`` under many shadow models that were trained on it and then
*unlearned* it, and under many that were *retrained* without it. It fits one Gaussian to each
group and decides, for a model it is shown, which group the model's ``c`` more likely came
from. If the unlearning method were as good as retraining, the two Gaussians would coincide and
no attacker could beat a coin flip (50 %). Population attacks (one threshold for all examples,
as in :mod:`unlearnkit.metrics.membership`) miss what this per-example test sees: forget
examples differ widely in how confident a retrained model is on them.

Two layers:

- Statistics on arrays: :func:`fit_gaussians`, :func:`log_likelihood_ratio` and
  :func:`ulira_attack`, which scores the attack by leave-one-shadow-pair-out: each shadow pair
  (one unlearned, one retrained model) in turn plays the target while the Gaussians are fitted on
  the other shadows.
- A driver, :func:`shadow_confidences`, that makes the shadow models from three callables
  (train, unlearn, retrain; a metric knows no unlearning method) and returns the confidence
  arrays. The same arrays feed the NeurIPS 2023 challenge score
  (:func:`~unlearnkit.metrics.gap.per_example_epsilons`,
  :func:`~unlearnkit.metrics.gap.forgetting_score`), so both figures come from one set of models.

What this implementation simplifies relative to the paper's setup, which follows LiRA's at
scale (many shadow models, each trained on a random subset of the data and unlearning a random
forget set, attacked through separately trained target models; only the abstract of the paper
could be consulted while writing this, so the details follow LiRA's reference code):

- The training set and the forget set are fixed; shadow models differ only by their seeds
  (initialisation, batch order, the unlearning method's randomness). The attacker therefore
  knows every other training example, as in the NeurIPS 2023 challenge's evaluation: a test of
  this data set and this forget set (close to differential privacy's neighbouring data sets),
  not an average over data sets and forget sets.
- A handful of shadows (the benchmark uses 8), not hundreds: the per-example standard
  deviation gets a floor (``min_std``), and ``global_std=True`` pools the variance over
  examples, LiRA's remedy for few shadows.
- The target models are the held-out shadow pairs (leave-one-out) rather than separately
  trained models, and the decision is the sign of the log likelihood ratio (equal priors), so
  the figure is an accuracy, not a ROC curve.
- The Gaussian's centre is the sample mean (the LiRA reference code uses the median).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from unlearnkit.errors import InvalidRequestError
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.metrics.gap import (
    challenge_score,
    forgetting_score,
    per_example_epsilons,
)
from unlearnkit.metrics.membership import logit_scaled_confidence

__all__ = [
    "DEFAULT_MIN_STD",
    "ShadowConfidences",
    "ULiRAResult",
    "fit_gaussians",
    "log_likelihood_ratio",
    "shadow_confidences",
    "shadow_seeds",
    "ulira_attack",
]

#: Floor of a fitted standard deviation, in units of ``c`` (natural log-odds). Trained networks
#: differ from seed to seed by roughly 0.5-3 in ``c`` on a training example, and float32 logits
#: round ``c`` at about 1e-6 relative, so 1e-3 acts only when the shadows agree to rounding (a
#: deterministic procedure, or a single shadow left in a fit). A zero std would make the
#: density infinite; with the floor, two degenerate Gaussians of equal width reduce the test to
#: "closer to which mean", which is the sensible limit.
DEFAULT_MIN_STD = 1e-3


# -- statistics ----------------------------------------------------------------------------------


def _float64(values: Tensor | np.ndarray | float) -> np.ndarray:
    """``values`` (a tensor, an array or a number) as a float64 numpy array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _matrix(values: Tensor | np.ndarray, name: str) -> np.ndarray:
    """A checked ``(models, examples)`` float64 array: 2-D, non-empty, finite."""
    array = _float64(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (models, examples), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _check_min_std(min_std: float) -> float:
    value = float(min_std)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"min_std must be a finite number > 0, got {min_std!r}")
    return value


def fit_gaussians(
    conf: Tensor | np.ndarray,
    *,
    min_std: float = DEFAULT_MIN_STD,
    global_std: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example Gaussian of confidences ``(models, examples)``: mean and floored std.

    The std is the maximum-likelihood one (``ddof=0``, as ``scipy.stats.norm.fit`` returns and
    LiRA uses), so a single model is a valid fit (std 0, then the floor). With
    ``global_std=True`` every example gets the same std, ``sqrt(mean over examples of the
    per-example variance)``: a pooled within-example spread, which LiRA recommends when there
    are too few shadow models to estimate each example's own.

    Args:
        conf: Confidences, one row per model, one column per example.
        min_std: Floor of every std (see :data:`DEFAULT_MIN_STD`).
        global_std: Share one pooled std across examples.

    Returns:
        ``(mean, std)``, each of shape ``(examples,)``.

    Example:
        >>> mean, std = fit_gaussians(np.array([[1.0, 5.0], [3.0, 5.0]]))
        >>> mean.tolist(), std.tolist()  # the second column has no spread: the floor
        ([2.0, 5.0], [1.0, 0.001])
        >>> fit_gaussians(np.array([[1.0, 5.0], [3.0, 5.0]]), global_std=True)[1].round(4)
        array([0.7071, 0.7071])
    """
    values = _matrix(conf, "conf")
    floor = _check_min_std(min_std)
    mean = values.mean(axis=0)
    variance = values.var(axis=0)
    if global_std:
        variance = np.full_like(variance, variance.mean())
    return mean, np.maximum(np.sqrt(variance), floor)


def log_likelihood_ratio(
    query: Tensor | np.ndarray | float,
    mean_unlearned: np.ndarray | float,
    std_unlearned: np.ndarray | float,
    mean_retrained: np.ndarray | float,
    std_retrained: np.ndarray | float,
) -> np.ndarray:
    """``log N(q; mu_u, s_u) - log N(q; mu_r, s_r)``, elementwise (numpy broadcasting).

    Positive: the query confidence is more likely under the unlearned models' Gaussian, i.e.
    the model it came from looks unlearned rather than retrained. Computed in closed form,
    ``log(s_r / s_u) - (q - mu_u)^2 / (2 s_u^2) + (q - mu_r)^2 / (2 s_r^2)``: the ``sqrt(2 pi)``
    terms cancel, and no density is ever exponentiated, so a query far in a tail gives a large
    finite value instead of ``0 / 0``.

    Example:
        >>> float(log_likelihood_ratio(1.0, 1.0, 1.0, 0.0, 1.0))  # 0 - 0 + 1/2
        0.5
        >>> float(log_likelihood_ratio(0.0, 0.0, 2.0, 0.0, 1.0))  # log(1/2): wider is less dense
        -0.6931471805599453
    """
    q = _float64(query)
    mu_u, s_u = _float64(mean_unlearned), _float64(std_unlearned)
    mu_r, s_r = _float64(mean_retrained), _float64(std_retrained)
    if (s_u <= 0).any() or (s_r <= 0).any():
        raise ValueError("standard deviations must be > 0 (fit_gaussians floors them)")
    if np.isnan(q).any():
        raise ValueError("query holds NaN")
    return np.log(s_r / s_u) - (q - mu_u) ** 2 / (2.0 * s_u**2) + (q - mu_r) ** 2 / (2.0 * s_r**2)


@dataclass(frozen=True)
class ULiRAResult:
    """What the U-LiRA attack achieved on each forget example.

    ``float(result)`` is ``result.accuracy``.

    Attributes:
        accuracy: Mean over examples of :attr:`per_example_accuracy`, in percent. 50: the
            unlearned models cannot be told from retrained ones; 100: always told apart.
        per_example_accuracy: ``(examples,)`` balanced accuracy in percent of the sign-of-LLR
            decision on the held-out shadows: the mean of the share of held-out unlearned models
            called unlearned and the share of held-out retrained models called retrained (the
            plain accuracy when both groups have the same size). An LLR of exactly 0 counts half.
        standard_error: Rough standard error of :attr:`accuracy`, in points. A held-out model
            that happens to sit high or low moves the calls on *all* examples together, so the
            unit of sampling is the model, not the example: with ``a_i`` the share of examples
            on which held-out model ``i`` was called right, it is
            ``50 * sqrt(var(a_unlearned) / K_u + var(a_retrained) / K_r)`` (``ddof=1``). It
            ignores that the folds' fits overlap, so read it as an order of magnitude.
        heldout_llr_unlearned: ``(K_u, examples)`` LLR of each unlearned shadow when held out.
        heldout_llr_retrained: ``(K_r, examples)`` LLR of each retrained shadow when held out.
        target_llr: ``(examples,)`` LLR of the target model's confidences with the Gaussians
            fitted on all shadows (``None`` without a target). Positive: it looks unlearned.
        n_unlearned: Unlearned shadow models ``K_u``.
        n_retrained: Retrained shadow models ``K_r``.
        min_std: The std floor used.
        global_std: Whether one pooled std per group was used.
    """

    accuracy: float
    per_example_accuracy: np.ndarray
    standard_error: float
    heldout_llr_unlearned: np.ndarray
    heldout_llr_retrained: np.ndarray
    target_llr: np.ndarray | None
    n_unlearned: int
    n_retrained: int
    min_std: float
    global_std: bool

    def __float__(self) -> float:
        return self.accuracy


def _decision_credit(llr: np.ndarray, positive: bool) -> np.ndarray:
    """1 for a right call, 0 for a wrong one, 1/2 for a tie (LLR exactly 0: a coin flip)."""
    right = llr > 0 if positive else llr < 0
    return np.where(llr == 0, 0.5, right.astype(np.float64))


def ulira_attack(
    unlearned_conf: Tensor | np.ndarray,
    retrained_conf: Tensor | np.ndarray,
    *,
    target_conf: Tensor | np.ndarray | None = None,
    min_std: float = DEFAULT_MIN_STD,
    global_std: bool = False,
) -> ULiRAResult:
    """Scores U-LiRA per forget example by leave-one-shadow-pair-out.

    Fold ``i`` holds out unlearned shadow ``i`` and retrained shadow ``i`` (a pair, when both
    exist), fits the two Gaussians of :func:`fit_gaussians` on the remaining shadows, and calls
    each held-out model "unlearned" when its :func:`log_likelihood_ratio` is positive and
    "retrained" when it is negative. Holding out a pair (rather than one model) keeps the
    test fair: both fits then exclude the held-out models, so when unlearning equals retraining
    in distribution the two fits are exchangeable and the expected accuracy is exactly 50 %.
    Each fold's attacker has ``K - 1`` shadows per side, one fewer than the full attacker.

    Args:
        unlearned_conf: ``(K_u, N)`` confidences ``c`` of the ``N`` forget examples under
            ``K_u >= 2`` shadow models that were trained on them and then unlearned them
            (see :func:`~unlearnkit.metrics.membership.logit_scaled_confidence`).
        retrained_conf: ``(K_r, N)`` the same under ``K_r >= 2`` models retrained without them.
        target_conf: Optional ``(N,)`` confidences under one model to judge; its LLR is
            computed with the Gaussians fitted on all shadows.
        min_std: Floor of every fitted std (see :data:`DEFAULT_MIN_STD`).
        global_std: Pool one std per group over the examples (for few shadows).

    Returns:
        :class:`ULiRAResult` with per-example and mean attack accuracy in percent.

    Raises:
        ValueError: Shapes that do not match, fewer than 2 shadows on a side, NaN or infinite
            values, or a bad ``min_std``.

    Example:
        >>> u = np.array([[5.0, 1.0], [6.0, 2.0], [7.0, 3.0]])  # 3 unlearned x 2 examples
        >>> r = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # 3 retrained
        >>> result = ulira_attack(u, r, target_conf=np.array([6.0, 2.0]))
        >>> result.per_example_accuracy.tolist()  # 0: always told apart; 1: identical, all ties
        [100.0, 50.0]
        >>> result.accuracy, bool(result.target_llr[0] > 0)
        (75.0, True)
    """
    unlearned = _matrix(unlearned_conf, "unlearned_conf")
    retrained = _matrix(retrained_conf, "retrained_conf")
    if unlearned.shape[1] != retrained.shape[1]:
        raise ValueError(
            f"unlearned_conf covers {unlearned.shape[1]} examples but retrained_conf "
            f"{retrained.shape[1]}: columns must be the same forget examples"
        )
    k_u, k_r = unlearned.shape[0], retrained.shape[0]
    if k_u < 2 or k_r < 2:
        raise ValueError(
            f"leave-one-out needs at least 2 shadow models per side, got {k_u} unlearned and "
            f"{k_r} retrained"
        )
    floor = _check_min_std(min_std)
    n = unlearned.shape[1]
    llr_u = np.empty((k_u, n))
    llr_r = np.empty((k_r, n))
    all_u, all_r = np.arange(k_u), np.arange(k_r)
    for i in range(max(k_u, k_r)):
        mean_u, std_u = fit_gaussians(unlearned[all_u != i], min_std=floor, global_std=global_std)
        mean_r, std_r = fit_gaussians(retrained[all_r != i], min_std=floor, global_std=global_std)
        if i < k_u:
            llr_u[i] = log_likelihood_ratio(unlearned[i], mean_u, std_u, mean_r, std_r)
        if i < k_r:
            llr_r[i] = log_likelihood_ratio(retrained[i], mean_u, std_u, mean_r, std_r)
    credit_u = _decision_credit(llr_u, positive=True)
    credit_r = _decision_credit(llr_r, positive=False)
    # Balanced: each group weighs one half whatever its size, so chance stays at 50 %.
    per_example = 50.0 * (credit_u.mean(axis=0) + credit_r.mean(axis=0))
    per_model_u, per_model_r = credit_u.mean(axis=1), credit_r.mean(axis=1)
    standard_error = 50.0 * math.sqrt(
        per_model_u.var(ddof=1) / k_u + per_model_r.var(ddof=1) / k_r
    )
    target_llr = None
    if target_conf is not None:
        target = _matrix(np.atleast_2d(_float64(target_conf)), "target_conf")
        if target.shape != (1, n):
            raise ValueError(
                f"target_conf must hold {n} values (one per example), got {target.size}"
            )
        mean_u, std_u = fit_gaussians(unlearned, min_std=floor, global_std=global_std)
        mean_r, std_r = fit_gaussians(retrained, min_std=floor, global_std=global_std)
        target_llr = log_likelihood_ratio(target[0], mean_u, std_u, mean_r, std_r)
    return ULiRAResult(
        accuracy=float(per_example.mean()),
        per_example_accuracy=per_example,
        standard_error=float(standard_error),
        heldout_llr_unlearned=llr_u,
        heldout_llr_retrained=llr_r,
        target_llr=target_llr,
        n_unlearned=k_u,
        n_retrained=k_r,
        min_std=floor,
        global_std=bool(global_std),
    )


# -- shadow models -------------------------------------------------------------------------------

#: ``train_fn(x, y, seed)``: a model trained on all rows.
TrainFn = Callable[[Tensor, Tensor, int], nn.Module]
#: ``unlearn_fn(model, forget_index, seed)``: ``model`` after unlearning the rows ``forget_index``.
UnlearnFn = Callable[[nn.Module, Tensor, int], nn.Module]
#: ``retrain_fn(x_keep, y_keep, seed)``: a model trained without the forget rows.
RetrainFn = Callable[[Tensor, Tensor, int], nn.Module]

#: Order of the three seeds of a shadow in :func:`shadow_seeds`.
SEED_ROLES: tuple[str, str, str] = ("train", "unlearn", "retrain")


def shadow_seeds(seed: int, shadows: int) -> np.ndarray:
    """``(shadows, 3)`` seeds (train, unlearn, retrain) of each shadow, derived from ``seed``.

    Shadow ``s`` draws from ``numpy.random.SeedSequence(seed, spawn_key=(s,))``, the stream
    ``SeedSequence(seed).spawn`` would give it: its seeds depend on ``(seed, s)`` only, so a
    run with more shadows extends a run with fewer, and the three roles never share a seed (a
    retrained shadow and a "retrain" unlearning method run with one seed would be the same
    model, and the attack would be blind by construction).

    Example:
        >>> shadow_seeds(0, 3).shape, bool((shadow_seeds(0, 2) == shadow_seeds(0, 3)[:2]).all())
        ((3, 3), True)
    """
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    if isinstance(shadows, bool) or int(shadows) != shadows or shadows < 1:
        raise ValueError(f"shadows must be a whole number >= 1, got {shadows!r}")
    return np.array(
        [
            np.random.SeedSequence(int(seed), spawn_key=(s,)).generate_state(3, dtype=np.uint32)
            for s in range(int(shadows))
        ],
        dtype=np.int64,
    )


@dataclass(frozen=True)
class ShadowConfidences:
    """The shadow models' confidences on the forget rows, and their accuracies.

    Attributes:
        unlearned: ``(S, N)`` confidence ``c`` of each forget row under each unlearned model.
        retrained: ``(S, N)`` the same under each retrained model.
        original: ``(S, N)`` the same under each trained model before unlearning.
        forget_index: ``(N,)`` the forget rows, in the column order of the arrays.
        seeds: ``(S, 3)`` each shadow's train, unlearn and retrain seeds (:func:`shadow_seeds`).
        accuracy: ``{"original" | "unlearned" | "retrained": {split: (S,) accuracy in %}}``,
            splits ``"forget"``, ``"retain"`` (when measured) and those of ``eval_sets``.
        unlearn_seconds: ``(S,)`` wall time of each ``unlearn_fn`` call.
        retrain_seconds: ``(S,)`` wall time of each ``retrain_fn`` call.
    """

    unlearned: np.ndarray
    retrained: np.ndarray
    original: np.ndarray
    forget_index: np.ndarray
    seeds: np.ndarray
    accuracy: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    unlearn_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    retrain_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def attack(
        self, *, min_std: float = DEFAULT_MIN_STD, global_std: bool = False
    ) -> ULiRAResult:
        """:func:`ulira_attack` on the unlearned versus the retrained shadows."""
        return ulira_attack(self.unlearned, self.retrained, min_std=min_std, global_std=global_std)

    def epsilons(self, delta: float = 1e-5, *, two_sided: bool = False) -> np.ndarray:
        """The NeurIPS 2023 challenge's per-example epsilons from the same shadow models
        (:func:`~unlearnkit.metrics.gap.per_example_epsilons`)."""
        return per_example_epsilons(self.unlearned, self.retrained, delta, two_sided=two_sided)

    def forgetting_score(self, delta: float = 1e-5, *, two_sided: bool = False) -> float:
        """The challenge's forgetting quality F
        (:func:`~unlearnkit.metrics.gap.forgetting_score`)."""
        return forgetting_score(self.epsilons(delta, two_sided=two_sided))

    def challenge_score(
        self, test_split: str = "test", delta: float = 1e-5, *, two_sided: bool = False
    ) -> float:
        """The challenge's ``F * (RA_u / RA_r) * (TA_u / TA_r)``, accuracies averaged over shadows.

        Raises:
            KeyError: If the retain accuracy or ``test_split`` was not measured.
        """
        acc_u, acc_r = self.accuracy["unlearned"], self.accuracy["retrained"]
        for split in ("retain", test_split):
            if split not in acc_u:
                raise KeyError(f"no {split!r} accuracy measured (have {sorted(acc_u)})")
        return challenge_score(
            self.forgetting_score(delta, two_sided=two_sided),
            ra_u=float(acc_u["retain"].mean()), ra_r=float(acc_r["retain"].mean()),
            ta_u=float(acc_u[test_split].mean()), ta_r=float(acc_r[test_split].mean()),
        )


def _forget_rows(forget_index: Tensor | np.ndarray | Sequence[int], n_rows: int) -> np.ndarray:
    """Checked forget row indices: 1-D whole numbers, unique, in range, leaving rows to keep."""
    if isinstance(forget_index, torch.Tensor):
        forget_index = forget_index.detach().cpu().numpy()
    index = np.asarray(forget_index)
    if index.dtype == bool:
        raise InvalidRequestError("forget_index must hold row indices, not a boolean mask")
    if index.ndim != 1 or index.size == 0:
        raise InvalidRequestError(
            f"forget_index must be a non-empty 1-D index, got shape {index.shape}"
        )
    if not np.issubdtype(index.dtype, np.integer):
        whole = np.issubdtype(index.dtype, np.floating) and bool(np.isfinite(index).all())
        if not whole or not np.array_equal(index, np.round(index)):
            raise InvalidRequestError("forget_index must hold whole row numbers")
    index = index.astype(np.int64)
    if index.min() < 0 or index.max() >= n_rows:
        raise InvalidRequestError(f"forget_index must lie in 0..{n_rows - 1}")
    if np.unique(index).size != index.size:
        raise InvalidRequestError("forget_index holds a row twice")
    if index.size >= n_rows:
        raise InvalidRequestError("forget_index covers every row: nothing is left to retrain on")
    return index


def _seeded_call(
    what: str, shadow: int, seed: int, fn: Callable[..., object], *args: object
) -> nn.Module:
    """``fn(*args)`` with torch's global RNG seeded by ``seed`` and restored afterwards.

    Seeding the global RNG makes callables that draw from it (``nn.Linear(...)`` built inside
    ``train_fn``, dropout) reproducible without asking them to, and forking it leaves the
    caller's random stream as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            out = fn(*args)
        except Exception as err:
            if hasattr(err, "add_note"):  # Python >= 3.11: say where it failed
                err.add_note(f"in {what} of shadow {shadow} (seed {seed})")
            raise
    if not isinstance(out, nn.Module):
        raise TypeError(f"{what} must return an nn.Module, got {type(out).__name__}")
    return out


def shadow_confidences(
    train_fn: TrainFn,
    unlearn_fn: UnlearnFn,
    retrain_fn: RetrainFn,
    x: Tensor,
    y: Tensor,
    forget_index: Tensor | np.ndarray | Sequence[int],
    shadows: int,
    seed: int,
    *,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    measure_retain: bool = True,
    progress: bool = False,
) -> ShadowConfidences:
    """Trains ``shadows`` shadow triples and returns their confidences on the forget rows.

    For shadow ``s`` with seeds ``(t, u, r)`` from :func:`shadow_seeds`:
    ``original = train_fn(x, y, t)``; ``unlearned = unlearn_fn(original, forget_index, u)``;
    ``retrained = retrain_fn(x[keep], y[keep], r)``, ``keep`` being every row not in
    ``forget_index``. Each call runs with torch's global RNG seeded by its own seed (and the
    caller's RNG restored), so the result depends on ``seed`` alone when the callables are
    deterministic given their seed. The original model's figures are taken before
    ``unlearn_fn`` runs, so an in-place unlearning method does not spoil them.

    The confidence is :func:`~unlearnkit.metrics.membership.logit_scaled_confidence`, exact
    from the logits. Accuracies on the forget rows (and the retain rows, with
    ``measure_retain``) cost one forward pass each; ``eval_sets`` (e.g. ``{"test": (x, y)}``)
    adds more, so that :meth:`ShadowConfidences.challenge_score` can be computed.

    Args:
        train_fn: ``(x, y, seed) -> model`` trained on all rows.
        unlearn_fn: ``(model, forget_index, seed) -> model`` after unlearning those rows;
            ``forget_index`` arrives as an int64 tensor of row numbers into ``x``.
        retrain_fn: ``(x_keep, y_keep, seed) -> model`` trained without the forget rows.
        x: Inputs of all training rows.
        y: Their labels.
        forget_index: Row numbers of the forget examples (unique, at least one row kept).
        shadows: Shadow triples to make (at least 2 for :func:`ulira_attack`).
        seed: Seed from which every shadow's seeds derive.
        eval_sets: Extra named ``(inputs, labels)`` splits to measure accuracy on.
        measure_retain: Also measure accuracy on the kept rows.
        progress: Show a progress bar over shadows.

    Returns:
        :class:`ShadowConfidences`; ``.attack()`` runs U-LiRA, ``.forgetting_score()`` the
        challenge's F.

    Raises:
        InvalidRequestError: Bad ``x``/``y``/``forget_index``.
        ValueError: Bad ``seed`` or ``shadows``.
        TypeError: A callable returned something other than an ``nn.Module``.

    Example:
        >>> x, y = torch.randn(12, 3), torch.arange(12) % 2
        >>> def fit(xs, ys, seed):  # a stand-in for real training
        ...     model = nn.Linear(3, 2)
        ...     with torch.no_grad():
        ...         model.weight.add_(xs.T.mm(nn.functional.one_hot(ys, 2).float()).T)
        ...     return model
        >>> shadows = shadow_confidences(fit, lambda m, idx, s: m, fit, x, y, [0, 5], 3, seed=0)
        >>> shadows.unlearned.shape, shadows.attack().n_unlearned
        ((3, 2), 3)
    """
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() == 0 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise InvalidRequestError(
            f"x must hold one row per label: got x of shape {tuple(x.shape)}, "
            f"y of shape {tuple(y.shape)}"
        )
    index = _forget_rows(forget_index, x.shape[0])
    seeds = shadow_seeds(seed, shadows)
    rows = torch.from_numpy(index)
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    keep[rows] = False
    x_forget, y_forget = x[rows], y[rows]
    x_keep, y_keep = x[keep], y[keep]
    splits: dict[str, tuple[Tensor, Tensor]] = {"forget": (x_forget, y_forget)}
    if measure_retain:
        splits["retain"] = (x_keep, y_keep)
    for name, split in (eval_sets or {}).items():
        if name in splits:
            raise InvalidRequestError(f"eval_sets may not reuse the split name {name!r}")
        splits[name] = split

    conf: dict[str, list[np.ndarray]] = {"original": [], "unlearned": [], "retrained": []}
    acc: dict[str, dict[str, list[float]]] = {role: {s: [] for s in splits} for role in conf}
    unlearn_seconds, retrain_seconds = [], []

    def record(role: str, model: nn.Module) -> None:
        conf[role].append(logit_scaled_confidence(model, x_forget, y_forget))
        for name, (xs, ys) in splits.items():
            acc[role][name].append(accuracy(model, xs, ys))

    bar = tqdm(range(len(seeds)), desc="U-LiRA shadows", unit="shadow", disable=not progress)
    for s in bar:
        train_seed, unlearn_seed, retrain_seed = (int(v) for v in seeds[s])
        original = _seeded_call("train_fn", s, train_seed, train_fn, x, y, train_seed)
        record("original", original)  # before unlearn_fn, which may work in place
        started = time.perf_counter()
        unlearned = _seeded_call(
            "unlearn_fn", s, unlearn_seed, unlearn_fn, original, rows.clone(), unlearn_seed
        )
        unlearn_seconds.append(time.perf_counter() - started)
        record("unlearned", unlearned)
        started = time.perf_counter()
        retrained = _seeded_call(
            "retrain_fn", s, retrain_seed, retrain_fn, x_keep, y_keep, retrain_seed
        )
        retrain_seconds.append(time.perf_counter() - started)
        record("retrained", retrained)
    bar.close()
    return ShadowConfidences(
        unlearned=np.stack(conf["unlearned"]),
        retrained=np.stack(conf["retrained"]),
        original=np.stack(conf["original"]),
        forget_index=index,
        seeds=seeds,
        accuracy={role: {s: np.array(v) for s, v in per.items()} for role, per in acc.items()},
        unlearn_seconds=np.array(unlearn_seconds),
        retrain_seconds=np.array(retrain_seconds),
    )
