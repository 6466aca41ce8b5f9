"""U-LiRA: the Gaussian statistics against hand values and scipy, the leave-one-pair-out attack,
and the shadow-model driver on a tiny linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import Tensor, nn

from unlearnkit.errors import InvalidRequestError
from unlearnkit.metrics.gap import challenge_score, forgetting_score, per_example_epsilons
from unlearnkit.metrics.membership import logit_scaled_confidence
from unlearnkit.metrics.ulira import (
    DEFAULT_MIN_STD,
    fit_gaussians,
    log_likelihood_ratio,
    shadow_confidences,
    shadow_seeds,
    ulira_attack,
)

# -- statistics ----------------------------------------------------------------------------------


def test_fit_gaussians_hand_values_and_scipy() -> None:
    conf = np.array([[1.0, -2.0, 4.0], [3.0, 0.0, 4.0], [8.0, 2.0, 4.0]])
    mean, std = fit_gaussians(conf)
    # Column 0: mean 4, deviations -3, -1, 4 -> variance 26/3 (ddof 0).
    assert mean[0] == pytest.approx(4.0)
    assert std[0] == pytest.approx(np.sqrt(26.0 / 3.0))
    assert std[1] == pytest.approx(np.sqrt(8.0 / 3.0))
    assert std[2] == DEFAULT_MIN_STD  # no spread: the floor
    for j in range(2):
        loc, scale = norm.fit(conf[:, j])  # scipy's maximum-likelihood fit
        assert mean[j] == pytest.approx(loc)
        assert std[j] == pytest.approx(scale)


def test_fit_gaussians_floor_and_pooled_std() -> None:
    conf = np.array([[0.0, 10.0], [2.0, 10.0]])
    assert fit_gaussians(conf, min_std=0.5)[1].tolist() == [1.0, 0.5]
    # Pooled: sqrt(mean of per-example variances) = sqrt((1 + 0) / 2), not the std of all values.
    pooled = fit_gaussians(conf, global_std=True)[1]
    assert pooled == pytest.approx([np.sqrt(0.5)] * 2)
    assert fit_gaussians(conf, global_std=True, min_std=2.0)[1].tolist() == [2.0, 2.0]
    # A single model is a valid fit: std 0, floored.
    assert fit_gaussians(np.array([[3.0]]))[1].tolist() == [DEFAULT_MIN_STD]


def test_log_likelihood_ratio_hand_values() -> None:
    # Equal stds: log ratio = ((q - mu_r)^2 - (q - mu_u)^2) / (2 s^2).
    assert float(log_likelihood_ratio(2.0, 2.0, 1.0, 0.0, 1.0)) == pytest.approx(2.0)
    assert float(log_likelihood_ratio(0.0, 2.0, 1.0, 0.0, 1.0)) == pytest.approx(-2.0)
    # q = 1, mu_u = 0, s_u = 2, mu_r = 3, s_r = 1: log(1/2) - 1/8 + 4/2.
    assert float(log_likelihood_ratio(1.0, 0.0, 2.0, 3.0, 1.0)) == pytest.approx(np.log(0.5) - 0.125 + 2.0)


def test_log_likelihood_ratio_matches_scipy_and_tails() -> None:
    rng = np.random.default_rng(0)
    q, mu_u, mu_r = rng.normal(0, 5, 50), rng.normal(0, 5, 50), rng.normal(0, 5, 50)
    s_u, s_r = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    expected = norm.logpdf(q, mu_u, s_u) - norm.logpdf(q, mu_r, s_r)
    np.testing.assert_allclose(log_likelihood_ratio(q, mu_u, s_u, mu_r, s_r), expected, rtol=1e-10, atol=1e-10)
    # Far in both tails the densities underflow to 0, yet the log ratio stays finite and right.
    far = log_likelihood_ratio(1e3, 0.0, 1.0, 1.0, 1.0)
    assert np.isfinite(far) and float(far) == pytest.approx((999.0**2 - 1e6) / 2)


def test_log_likelihood_ratio_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="> 0"):
        log_likelihood_ratio(0.0, 0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood_ratio(np.nan, 0.0, 1.0, 0.0, 1.0)


def _reference_attack(u: np.ndarray, r: np.ndarray, min_std: float = DEFAULT_MIN_STD):
    """An independent, loop-by-loop leave-one-pair-out with scipy's fit and log densities."""
    k_u, k_r, n = u.shape[0], r.shape[0], u.shape[1]
    llr_u, llr_r = np.zeros((k_u, n)), np.zeros((k_r, n))
    for i in range(max(k_u, k_r)):
        for j in range(n):
            mu_u, s_u = norm.fit(np.delete(u[:, j], i) if i < k_u else u[:, j])
            mu_r, s_r = norm.fit(np.delete(r[:, j], i) if i < k_r else r[:, j])
            s_u, s_r = max(s_u, min_std), max(s_r, min_std)
            if i < k_u:
                llr_u[i, j] = norm.logpdf(u[i, j], mu_u, s_u) - norm.logpdf(u[i, j], mu_r, s_r)
            if i < k_r:
                llr_r[i, j] = norm.logpdf(r[i, j], mu_u, s_u) - norm.logpdf(r[i, j], mu_r, s_r)
    acc = 50.0 * ((llr_u > 0).mean(axis=0) + (llr_r < 0).mean(axis=0))
    return llr_u, llr_r, acc


@pytest.mark.parametrize("k_u,k_r", [(4, 4), (3, 5), (5, 2)])
def test_ulira_attack_matches_a_scipy_reference(k_u: int, k_r: int) -> None:
    rng = np.random.default_rng(k_u * 10 + k_r)
    u = rng.normal(1.0, 1.0, (k_u, 6)) + np.linspace(0, 3, 6)
    r = rng.normal(0.0, 2.0, (k_r, 6))
    result = ulira_attack(u, r)
    llr_u, llr_r, acc = _reference_attack(u, r)
    np.testing.assert_allclose(result.heldout_llr_unlearned, llr_u, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.heldout_llr_retrained, llr_r, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(result.per_example_accuracy, acc)
    assert result.accuracy == pytest.approx(acc.mean())
    assert float(result) == result.accuracy
    assert (result.n_unlearned, result.n_retrained) == (k_u, k_r)


def test_ulira_attack_hand_computed_fold() -> None:
    # One example, 3 per side: u = (3, 2, 4), r = (1, 0, 2).
    u = np.array([[3.0], [2.0], [4.0]])
    r = np.array([[1.0], [0.0], [2.0]])
    result = ulira_attack(u, r)
    # Fold 0 fits u on {2, 4} (mean 3, std 1) and r on {0, 2} (mean 1, std 1): held-out u = 3
    # gives LLR = 0 + (3 - 1)^2 / 2 = 2 (right), held-out r = 1 gives -(1 - 3)^2 / 2 = -2 (right).
    assert result.heldout_llr_unlearned[0, 0] == pytest.approx(2.0)
    assert result.heldout_llr_retrained[0, 0] == pytest.approx(-2.0)
    # Fold 1: u {3, 4} (3.5, 0.5), r {1, 2} (1.5, 0.5); held-out u = 2:
    # (-(2 - 3.5)^2 + (2 - 1.5)^2) / (2 * 0.25) = -4, called retrained (wrong).
    assert result.heldout_llr_unlearned[1, 0] == pytest.approx(-4.0)
    # Fold 2: u {3, 2} (2.5, 0.5), r {1, 0} (0.5, 0.5); held-out r = 2:
    # (-(2 - 2.5)^2 + (2 - 0.5)^2) / 0.5 = 4, called unlearned (wrong).
    assert result.heldout_llr_retrained[2, 0] == pytest.approx(4.0)
    # Two of three right on each side.
    assert result.per_example_accuracy[0] == pytest.approx(100.0 * 2 / 3)
    # Per held-out model, credit (1, 0, 1) on each side: variance 1/3 (ddof 1), so the standard
    # error is 50 * sqrt(2 * (1/3) / 3).
    assert result.standard_error == pytest.approx(50.0 * np.sqrt(2.0 / 9.0))


def test_separated_groups_give_100_in_either_direction() -> None:
    # Far apart compared with the spread, so no unlucky std estimate can flip a call.
    rng = np.random.default_rng(1)
    high, low = rng.normal(100, 1, (6, 5)), rng.normal(0, 1, (6, 5))
    assert ulira_attack(high, low).accuracy == 100.0
    # Unlearning that leaves the examples *less* confident than retraining is caught as well.
    assert ulira_attack(low, high).accuracy == 100.0


def test_variance_matters_not_only_the_mean() -> None:
    # Same mean, different spread: a nearest-mean rule is blind, the likelihood ratio is not.
    narrow = np.array([[-0.01], [0.0], [0.01], [0.0]])
    wide = np.array([[-4.0], [4.0], [-3.0], [3.0]])
    result = ulira_attack(narrow, wide, target_conf=np.array([0.0]))
    assert result.accuracy == 100.0
    assert result.target_llr[0] > 0  # at the common mean, the narrow (unlearned) one is denser
    assert ulira_attack(narrow, wide, target_conf=np.array([3.5])).target_llr[0] < 0


def test_identical_groups_tie_at_50_and_ties_count_half() -> None:
    same = np.array([[1.0, 2.0], [2.0, 0.0], [4.0, 1.0]])
    result = ulira_attack(same, same.copy())
    assert (result.heldout_llr_unlearned == 0).all()
    assert result.per_example_accuracy.tolist() == [50.0, 50.0]


def test_indistinguishable_groups_average_50() -> None:
    # Both groups from one distribution with per-example means: the pair hold-out keeps the
    # expected accuracy at exactly 50 %, so the mean over many examples sits close to it.
    rng = np.random.default_rng(2)
    centres = rng.normal(5, 3, 3000)
    u = rng.normal(centres, 1.5, (8, 3000))
    r = rng.normal(centres, 1.5, (8, 3000))
    null = ulira_attack(u, r)
    assert null.accuracy == pytest.approx(50.0, abs=1.0)
    # The models, not the examples, are the sampling unit: with independent examples the
    # per-model shares vary little and so does the error bar.
    assert 0.0 < null.standard_error < 1.0
    assert ulira_attack(u, r, global_std=True).accuracy == pytest.approx(50.0, abs=1.0)


def test_standard_error_grows_when_models_shift_every_example() -> None:
    # A model-wide offset (one seed gives a model that is more confident everywhere) moves the
    # calls on all examples together: the same number of decisions carries far less evidence.
    rng = np.random.default_rng(4)
    centres = rng.normal(5, 3, 400)
    u = centres + rng.normal(0, 1.5, (8, 1)) + rng.normal(0, 0.1, (8, 400))
    r = centres + rng.normal(0, 1.5, (8, 1)) + rng.normal(0, 0.1, (8, 400))
    shifted = ulira_attack(u, r)
    independent = ulira_attack(rng.normal(centres, 1.5, (8, 400)), rng.normal(centres, 1.5, (8, 400)))
    assert shifted.standard_error > 5.0 > 2.0 > independent.standard_error


def test_target_llr_uses_all_shadows() -> None:
    rng = np.random.default_rng(3)
    u, r, q = rng.normal(2, 1, (5, 4)), rng.normal(0, 1, (5, 4)), rng.normal(1, 1, 4)
    result = ulira_attack(u, r, target_conf=torch.from_numpy(q))
    expected = [
        norm.logpdf(q[j], *norm.fit(u[:, j])) - norm.logpdf(q[j], *norm.fit(r[:, j])) for j in range(4)
    ]
    np.testing.assert_allclose(result.target_llr, expected, rtol=1e-9)
    assert ulira_attack(u, r).target_llr is None


def test_global_std_changes_the_fit() -> None:
    u = np.array([[0.0, 0.0], [0.1, 4.0], [-0.1, -4.0]])
    r = np.array([[1.0, 1.0], [1.1, 5.0], [0.9, -3.0]])
    per_example = ulira_attack(u, r)
    pooled = ulira_attack(u, r, global_std=True)
    assert pooled.global_std and not per_example.global_std
    assert not np.allclose(per_example.heldout_llr_unlearned, pooled.heldout_llr_unlearned)


@pytest.mark.parametrize(
    "u,r,match",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "same forget examples"),
        (np.zeros(3), np.zeros((3, 3)), "2-D"),
        (np.zeros((1, 2)), np.zeros((3, 2)), "at least 2"),
        (np.zeros((3, 2)), np.zeros((1, 2)), "at least 2"),
        (np.zeros((0, 2)), np.zeros((3, 2)), "empty"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros((2, 2)), "NaN"),
        (np.zeros((2, 2)), np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or infinite"),
    ],
)
def test_ulira_attack_rejects_bad_arrays(u: np.ndarray, r: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ulira_attack(u, r)


def test_ulira_attack_rejects_bad_target_and_floor() -> None:
    u, r = np.zeros((2, 3)), np.ones((2, 3))
    with pytest.raises(ValueError, match="3 values"):
        ulira_attack(u, r, target_conf=np.zeros(2))
    with pytest.raises(ValueError, match="NaN"):
        ulira_attack(u, r, target_conf=np.array([0.0, np.nan, 0.0]))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="min_std"):
            ulira_attack(u, r, min_std=bad)


# -- shadow models -------------------------------------------------------------------------------

X = torch.randn(10, 12, generator=torch.Generator().manual_seed(0))
Y = torch.arange(10) % 2
FORGET = [1, 4, 7]


def train_linear(x: Tensor, y: Tensor, seed: int, *, random_init: bool = True) -> nn.Module:
    """Full-batch gradient descent on a linear model: 10 rows in 12 dimensions, so each training
    row is fitted closely and a row left out is not. The initialisation draws from torch's
    global RNG, which the driver seeds."""
    model = nn.Linear(x.shape[1], 2)
    if not random_init:
        with torch.no_grad():
            model.weight.zero_()
            model.bias.zero_()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


def no_unlearning(model: nn.Module, forget_index: Tensor, seed: int) -> nn.Module:
    return model


def test_driver_shapes_accuracies_and_scores() -> None:
    test = (torch.randn(6, 12, generator=torch.Generator().manual_seed(1)), torch.arange(6) % 2)
    shadows = shadow_confidences(
        train_linear, no_unlearning, train_linear, X, Y, FORGET, 3, seed=0, eval_sets={"test": test}
    )
    assert shadows.unlearned.shape == shadows.retrained.shape == shadows.original.shape == (3, 3)
    assert shadows.forget_index.tolist() == FORGET
    assert shadows.seeds.tolist() == shadow_seeds(0, 3).tolist()
    assert set(shadows.accuracy) == {"original", "unlearned", "retrained"}
    assert set(shadows.accuracy["unlearned"]) == {"forget", "retain", "test"}
    assert shadows.accuracy["unlearned"]["forget"].shape == (3,)
    assert shadows.unlearn_seconds.shape == shadows.retrain_seconds.shape == (3,)
    # No unlearning: the "unlearned" models are the originals, which fit the forget rows
    # closely; retrained ones have not seen them. (With 2 shadows per fit the Gaussians' widths
    # are rough, so the held-out calls are not all right even so.)
    np.testing.assert_array_equal(shadows.unlearned, shadows.original)
    assert (shadows.unlearned.min(axis=0) > shadows.retrained.max(axis=0)).all()
    assert shadows.attack().accuracy > 50.0
    # The NeurIPS score comes from the same arrays.
    eps = per_example_epsilons(shadows.unlearned, shadows.retrained)
    np.testing.assert_array_equal(shadows.epsilons(), eps)
    assert shadows.forgetting_score() == forgetting_score(eps)
    acc_u, acc_r = shadows.accuracy["unlearned"], shadows.accuracy["retrained"]
    assert shadows.challenge_score() == pytest.approx(challenge_score(
        forgetting_score(eps), acc_u["retain"].mean(), acc_r["retain"].mean(),
        acc_u["test"].mean(), acc_r["test"].mean(),
    ))
    with pytest.raises(KeyError, match="holdout"):
        shadows.challenge_score("holdout")


def test_driver_passes_the_right_rows_and_seeds() -> None:
    calls: list[tuple[str, object, int]] = []

    def train(x: Tensor, y: Tensor, seed: int) -> nn.Module:
        calls.append(("train", (x.clone(), y.clone()), seed))
        return train_linear(x, y, seed)

    def unlearn(model: nn.Module, forget_index: Tensor, seed: int) -> nn.Module:
        calls.append(("unlearn", forget_index.clone(), seed))
        return model

    def retrain(x: Tensor, y: Tensor, seed: int) -> nn.Module:
        calls.append(("retrain", (x.clone(), y.clone()), seed))
        return train_linear(x, y, seed)

    shadows = shadow_confidences(train, unlearn, retrain, X, Y, np.array(FORGET), 2, seed=7)
    keep = [i for i in range(10) if i not in FORGET]
    seeds = shadow_seeds(7, 2)
    assert [c[0] for c in calls] == ["train", "unlearn", "retrain"] * 2
    for s in range(2):
        (_, (x_all, y_all), t), (_, index, u), (_, (x_keep, y_keep), r) = calls[3 * s: 3 * s + 3]
        assert (t, u, r) == tuple(seeds[s].tolist()) and len({t, u, r}) == 3
        assert torch.equal(x_all, X) and torch.equal(y_all, Y)
        assert index.dtype == torch.int64 and index.tolist() == FORGET
        assert torch.equal(x_keep, X[keep]) and torch.equal(y_keep, Y[keep])
    # The recorded confidences are those of models rebuilt from the same seeds.
    for s in range(2):
        t, _, r = (int(v) for v in seeds[s])
        torch.manual_seed(t)
        rebuilt = train_linear(X, Y, t)
        np.testing.assert_allclose(shadows.original[s], logit_scaled_confidence(rebuilt, X[FORGET], Y[FORGET]))
        torch.manual_seed(r)
        rebuilt = train_linear(X[keep], Y[keep], r)
        np.testing.assert_allclose(shadows.retrained[s], logit_scaled_confidence(rebuilt, X[FORGET], Y[FORGET]))


def test_driver_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = shadow_confidences(train_linear, no_unlearning, train_linear, X, Y, FORGET, 3, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = shadow_confidences(train_linear, no_unlearning, train_linear, X, Y, FORGET, 3, seed=5)
    np.testing.assert_array_equal(first.unlearned, again.unlearned)
    np.testing.assert_array_equal(first.retrained, again.retrained)
    other = shadow_confidences(train_linear, no_unlearning, train_linear, X, Y, FORGET, 3, seed=6)
    assert not np.allclose(first.retrained, other.retrained)
    # More shadows extend fewer: shadow s depends on (seed, s) only.
    fewer = shadow_confidences(train_linear, no_unlearning, train_linear, X, Y, FORGET, 2, seed=5)
    np.testing.assert_array_equal(fewer.retrained, first.retrained[:2])


def test_original_figures_are_taken_before_in_place_unlearning() -> None:
    def wipe(model: nn.Module, forget_index: Tensor, seed: int) -> nn.Module:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        return model

    shadows = shadow_confidences(train_linear, wipe, train_linear, X, Y, FORGET, 2, seed=0)
    assert (shadows.unlearned == 0).all()  # all-zero logits: c = log(1/2) - log(1/2)
    assert (shadows.original > 1).all()


def test_exact_retraining_is_indistinguishable() -> None:
    # Deterministic training (zero init, full batch): "unlearning" by retraining gives the very
    # model a retrained shadow is, so every held-out call is a tie and the accuracy exactly 50.
    def train(x: Tensor, y: Tensor, seed: int) -> nn.Module:
        return train_linear(x, y, seed, random_init=False)

    keep = torch.ones(10, dtype=torch.bool)
    keep[FORGET] = False

    def retrain_as_unlearning(model: nn.Module, forget_index: Tensor, seed: int) -> nn.Module:
        return train(X[keep], Y[keep], seed)

    shadows = shadow_confidences(train, retrain_as_unlearning, train, X, Y, FORGET, 3, seed=0)
    result = shadows.attack()
    assert result.per_example_accuracy.tolist() == [50.0] * 3
    assert shadows.forgetting_score() == 1.0


def test_driver_rejects_bad_input() -> None:
    args = (train_linear, no_unlearning, train_linear)
    bad_indices = (
        [], [1, 1], [10], [-1], np.zeros(10, dtype=bool), list(range(10)), [[1, 2]], [0.5], [np.inf],
    )
    for bad in bad_indices:
        with pytest.raises(InvalidRequestError):
            shadow_confidences(*args, X, Y, bad, 2, seed=0)
    with pytest.raises(InvalidRequestError, match="one row per label"):
        shadow_confidences(*args, X, Y[:-1], FORGET, 2, seed=0)
    with pytest.raises(InvalidRequestError, match="split name"):
        shadow_confidences(*args, X, Y, FORGET, 2, seed=0, eval_sets={"forget": (X, Y)})
    with pytest.raises(ValueError, match="shadows"):
        shadow_confidences(*args, X, Y, FORGET, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        shadow_confidences(*args, X, Y, FORGET, 2, seed=-1)
    with pytest.raises(TypeError, match="unlearn_fn must return an nn.Module"):
        shadow_confidences(train_linear, lambda m, i, s: None, train_linear, X, Y, FORGET, 2, seed=0)


def test_driver_names_the_failing_shadow() -> None:
    def broken(model: nn.Module, forget_index: Tensor, seed: int) -> nn.Module:
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged") as info:
        shadow_confidences(train_linear, broken, train_linear, X, Y, FORGET, 2, seed=0)
    notes = getattr(info.value, "__notes__", None)
    if notes is not None:  # Python >= 3.11
        assert "unlearn_fn of shadow 0" in notes[0]


def test_float_row_numbers_are_accepted_when_whole() -> None:
    shadows = shadow_confidences(
        train_linear, no_unlearning, train_linear, X, Y, torch.tensor([1.0, 4.0]), 2, seed=0,
        measure_retain=False,
    )
    assert shadows.forget_index.tolist() == [1, 4]
    assert set(shadows.accuracy["retrained"]) == {"forget"}
