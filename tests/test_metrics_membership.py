"""Membership-inference metrics (metrics.membership) and the gap / challenge scores (metrics.gap).

Each formula is checked against a hand computation or an independent brute-force
implementation written here, so that a wrong sign, orientation, bin or convention fails.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC
from torch import Tensor, nn

from helpers import modes, same_weights
from unlearnkit.data import DataSplit
from unlearnkit.metrics.gap import (
    AVERAGE_GAP_KEYS,
    average_gap,
    challenge_score,
    epsilon_from_rates,
    forgetting_score,
    logit_confidence,
    per_example_epsilon,
    per_example_epsilons,
    threshold_rates,
    unlearning_accuracy,
)
from unlearnkit.metrics.membership import (
    MembershipAttackResult,
    cross_entropy_loss,
    entropy_mia,
    entropy_mia_from_scores,
    logit_scaled_confidence,
    loss_auc_from_losses,
    loss_threshold_auc,
    mia_efficacy,
    mia_efficacy_from_scores,
    softmax_entropy,
    true_label_probability,
)

# -- per-example figures ---------------------------------------------------------------------------


def _reference_outputs(model: nn.Module, x: Tensor) -> Tensor:
    """Float64 log-softmax of the model in eval mode, computed directly."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        return torch.log_softmax(model(x).double(), dim=1)


def test_per_example_figures_match_direct_computation(
    trained_linear: nn.Module, digits: DataSplit
) -> None:
    x, y = digits.x_test[:50], digits.y_test[:50]
    log_p = _reference_outputs(trained_linear, x)
    p_true = log_p.exp()[torch.arange(50), y].numpy()
    entropy = -(log_p.exp() * log_p).sum(1).numpy()

    got = true_label_probability(trained_linear, x, y, batch_size=7)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, p_true, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(softmax_entropy(trained_linear, x), entropy, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        cross_entropy_loss(trained_linear, x, y), -np.log(p_true), rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(
        logit_scaled_confidence(trained_linear, x, y),
        np.log(p_true) - np.log1p(-p_true),
        rtol=1e-4,
        atol=1e-6,
    )


def test_logit_scaled_confidence_is_exact_where_the_probability_rounds_to_one() -> None:
    model = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3))
    # logits (60, 0, 0): p_y = 1 in float64, 1 - p_y = 2 e^-60; c = 60 - log 2.
    x, y = torch.tensor([[60.0, 0.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([0, 2])
    c = logit_scaled_confidence(model, x, y)
    assert c[0] == pytest.approx(60.0 - math.log(2.0), abs=1e-9)
    assert c[1] == pytest.approx(2.0 - math.log(1.0 + math.e), abs=1e-9)
    assert true_label_probability(model, x[:1], y[:1])[0] == 1.0  # why the exact route matters


def test_figures_use_eval_mode_restore_modes_and_leave_weights(
    cnn: nn.Module, digits: DataSplit
) -> None:
    before = copy.deepcopy(cnn)
    cnn.train()
    training_modes = modes(cnn)
    x, y = digits.x_test[:20], digits.y_test[:20]
    p_train_mode = true_label_probability(cnn, x, y)
    assert modes(cnn) == training_modes
    cnn.eval()
    np.testing.assert_array_equal(p_train_mode, true_label_probability(cnn, x, y))
    assert same_weights(cnn, before)
    assert all(p.grad is None for p in cnn.parameters())


def _identity_model(num_classes: int = 3) -> nn.Module:
    model = nn.Linear(num_classes, num_classes, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(num_classes))
    return model


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
        (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), "4 inputs but labels"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), r"0\.\.2"),
        (torch.zeros(2, 3), torch.tensor([-1, 0]), r"0\.\.2"),
        (torch.zeros(2, 3), torch.tensor([0.5, 1.0]), "whole class indices"),
        (torch.tensor([[0.0, float("nan"), 0.0]]), torch.tensor([0]), "NaN"),
    ],
)
def test_per_example_figures_reject_bad_input(
    inputs: Tensor, labels: Tensor, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        true_label_probability(_identity_model(), inputs, labels)


def test_non_finite_logits_are_an_error() -> None:
    model = _identity_model()
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite logits"):
        softmax_entropy(model, torch.tensor([[0.0, 1.0, 0.0]]))  # inf * 0 = NaN


# -- MIA-efficacy (SalUn) --------------------------------------------------------------------------


def test_mia_efficacy_on_perfectly_separable_probabilities() -> None:
    rng = np.random.default_rng(0)
    members = rng.uniform(0.9, 1.0, 100)
    non_members = rng.uniform(0.0, 0.1, 100)
    like_non_members = rng.uniform(0.0, 0.1, 8)
    like_members = rng.uniform(0.9, 1.0, 8)

    result = mia_efficacy_from_scores(members, non_members, like_non_members)
    assert result.score == 100.0 and result.predicted_member == 0.0
    assert result.attack_accuracy == 100.0
    assert (result.n_members, result.n_non_members, result.n_targets) == (100, 100, 8)
    assert float(mia_efficacy_from_scores(members, non_members, like_members)) == 0.0
    # 3 of 4 forget rows look unseen: efficacy 75.
    mixed = np.concatenate([like_non_members[:3], like_members[:1]])
    assert mia_efficacy_from_scores(members, non_members, mixed).score == 75.0


def test_mia_efficacy_matches_a_reference_svc() -> None:
    """Equal set sizes (nothing subsampled): the result must be SalUn's SVC, C=3, gamma='auto',
    members labelled 1, on the raw probabilities."""
    rng = np.random.default_rng(1)
    members = np.clip(rng.normal(0.8, 0.2, 60), 0, 1)
    non_members = np.clip(rng.normal(0.6, 0.3, 60), 0, 1)
    # A fine grid of targets reads the decision boundary closely: C = 1, 2 or 10, or
    # gamma = "scale", move it enough to change the result on these data.
    targets = np.linspace(0.0, 1.0, 2001)
    reference = SVC(C=3, gamma="auto", kernel="rbf").fit(
        np.concatenate([members, non_members])[:, None],
        np.concatenate([np.ones(60), np.zeros(60)]),
    )
    expected = 100.0 * (1.0 - reference.predict(targets[:, None]).mean())
    assert 0.0 < expected < 100.0  # the data overlap, so the hyperparameters matter
    assert mia_efficacy_from_scores(members, non_members, targets).score == pytest.approx(expected)


def test_mia_efficacy_balances_and_caps_with_a_seed() -> None:
    rng = np.random.default_rng(2)
    members, non_members = rng.uniform(0.3, 1.0, 300), rng.uniform(0.0, 0.7, 40)
    targets = rng.uniform(0, 1, 50)
    result = mia_efficacy_from_scores(members, non_members, targets, seed=3)
    assert (result.n_members, result.n_non_members) == (40, 40)
    assert mia_efficacy_from_scores(members, non_members, targets, seed=3) == result
    capped = mia_efficacy_from_scores(members, non_members, targets, seed=3, max_samples=25)
    assert (capped.n_members, capped.n_non_members) == (25, 25)
    # Different seeds draw different member subsets; across several seeds they must not all
    # agree on this overlapping data (a seed that is ignored would give one value).
    scores = {
        mia_efficacy_from_scores(members, non_members, targets, seed=s).score for s in range(8)
    }
    assert len(scores) > 1


def test_mia_efficacy_on_a_model_equals_the_array_version(
    trained_linear: nn.Module, digits: DataSplit
) -> None:
    retain = (digits.x_train[:200], digits.y_train[:200])
    test = (digits.x_test[:100], digits.y_test[:100])
    forget = (digits.x_train[200:210], digits.y_train[200:210])
    result = mia_efficacy(trained_linear, retain, test, forget, seed=5)
    expected = mia_efficacy_from_scores(
        true_label_probability(trained_linear, *retain),
        true_label_probability(trained_linear, *test),
        true_label_probability(trained_linear, *forget),
        seed=5,
    )
    assert result == expected
    assert isinstance(result, MembershipAttackResult)


# -- entropy attack (SSD) --------------------------------------------------------------------------


def test_entropy_mia_on_separable_entropies() -> None:
    rng = np.random.default_rng(0)
    members, non_members = rng.uniform(0.0, 0.2, 50), rng.uniform(1.5, 2.0, 50)
    low, high = rng.uniform(0.0, 0.2, 6), rng.uniform(1.5, 2.0, 6)
    assert entropy_mia_from_scores(members, non_members, low).score == 100.0
    assert entropy_mia_from_scores(members, non_members, high).score == 0.0
    both = entropy_mia_from_scores(members, non_members, np.concatenate([low[:1], high]))
    assert both.score == pytest.approx(100.0 / 7.0)
    assert both.attack_accuracy == 100.0


def test_entropy_mia_balances_the_classes_like_ssd() -> None:
    """500 members against 20 non-members: class weights put the boundary near the midpoint
    (1.0); an unweighted fit would call a row at 1.5 a member."""
    rng = np.random.default_rng(4)
    members, non_members = rng.normal(0.0, 1.0, 500), rng.normal(2.0, 1.0, 20)
    target = np.array([1.5])
    assert entropy_mia_from_scores(members, non_members, target).score == 0.0
    unweighted = LogisticRegression().fit(
        np.concatenate([members, non_members])[:, None],
        np.concatenate([np.ones(500), np.zeros(20)]),
    )
    assert unweighted.predict(target[:, None])[0] == 1.0  # the test is sensitive to weighting
    reference = LogisticRegression(class_weight="balanced", solver="lbfgs").fit(
        np.concatenate([members, non_members])[:, None],
        np.concatenate([np.ones(500), np.zeros(20)]),
    )
    grid = np.linspace(-3, 5, 81)
    assert entropy_mia_from_scores(members, non_members, grid).score == pytest.approx(
        100.0 * reference.predict(grid[:, None]).mean()
    )


def test_entropy_mia_seed_and_cap() -> None:
    rng = np.random.default_rng(5)
    members, non_members = rng.normal(0, 1, 200), rng.normal(1, 1, 200)
    targets = rng.normal(0, 1, 30)
    full = entropy_mia_from_scores(members, non_members, targets)
    assert (full.n_members, full.n_non_members) == (200, 200)  # SSD: every row, weighted
    capped = entropy_mia_from_scores(members, non_members, targets, seed=1, max_samples=50)
    assert (capped.n_members, capped.n_non_members) == (50, 50)
    assert entropy_mia_from_scores(members, non_members, targets, seed=1, max_samples=50) == capped


# -- loss AUC --------------------------------------------------------------------------------------


def _brute_force_auc(members: np.ndarray, non_members: np.ndarray) -> float:
    """P(member loss < non-member loss) + P(tie) / 2 over all pairs."""
    wins = sum(
        1.0 if m < n else 0.5 if m == n else 0.0 for m in members for n in non_members
    )
    return wins / (members.size * non_members.size)


def test_loss_auc_hand_cases_and_brute_force() -> None:
    assert loss_auc_from_losses(np.array([0.1, 0.2]), np.array([0.15, 3.0])) == 0.75
    assert loss_auc_from_losses(np.array([1.0, 1.0]), np.array([1.0, 2.0])) == 0.75  # ties: 1/2
    assert loss_auc_from_losses(np.array([5.0]), np.array([1.0, 2.0])) == 0.0
    rng = np.random.default_rng(0)
    members, non_members = rng.integers(0, 6, 40).astype(float), rng.integers(1, 8, 30) * 1.0
    auc = loss_auc_from_losses(members, non_members)
    assert auc == pytest.approx(_brute_force_auc(members, non_members))
    # Mann-Whitney U of the non-member losses against the member losses, normalised.
    u_statistic = mannwhitneyu(non_members, members).statistic
    assert auc == pytest.approx(u_statistic / (40 * 30))


def test_model_based_membership_on_digits(trained_cnn: nn.Module, digits: DataSplit) -> None:
    """The CNN on its own training rows vs test rows: the loss ranks training rows lower."""
    train = (digits.x_train, digits.y_train)
    test = (digits.x_test, digits.y_test)
    auc = loss_threshold_auc(trained_cnn, train, test)
    assert 0.5 <= auc <= 1.0

    forget = (digits.x_train[:40], digits.y_train[:40])
    efficacy = mia_efficacy(trained_cnn, train, test, forget, seed=0)
    assert math.isfinite(efficacy.score) and 0.0 <= efficacy.score <= 100.0
    assert (efficacy.n_members, efficacy.n_non_members, efficacy.n_targets) == (360, 360, 40)
    assert 0.0 <= efficacy.attack_accuracy <= 100.0
    assert mia_efficacy(trained_cnn, train, test, forget, seed=0) == efficacy

    entropy_result = entropy_mia(trained_cnn, train, test, forget)
    assert 0.0 <= entropy_result.score <= 100.0
    assert (entropy_result.n_members, entropy_result.n_non_members) == (1437, 360)


def test_attacks_reject_bad_input(trained_linear: nn.Module, digits: DataSplit) -> None:
    ok = (digits.x_test[:10], digits.y_test[:10])
    empty = (digits.x_test[:0], digits.y_test[:0])
    with pytest.raises(ValueError, match="forget is empty"):
        mia_efficacy(trained_linear, ok, ok, empty)
    with pytest.raises(ValueError, match="retain labels"):
        entropy_mia(trained_linear, (digits.x_test[:10], digits.y_test[:10] + 10), ok, ok)
    with pytest.raises(ValueError, match="test has 10 inputs"):
        mia_efficacy(trained_linear, ok, (digits.x_test[:10], digits.y_test[:9]), ok)
    with pytest.raises(ValueError, match="pair"):
        loss_threshold_auc(trained_linear, digits.x_test[:10], ok)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NaN"):
        mia_efficacy_from_scores(np.array([0.5, np.nan]), np.array([0.1]), np.array([0.2]))
    with pytest.raises(ValueError, match="non_member_entropies is empty"):
        entropy_mia_from_scores(np.array([0.5]), np.array([]), np.array([0.2]))
    with pytest.raises(ValueError, match="1-D"):
        loss_auc_from_losses(np.ones((2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="max_samples"):
        mia_efficacy_from_scores(np.ones(3), np.zeros(3), np.ones(1), max_samples=0)


# -- SalUn's UA and average gap --------------------------------------------------------------------


def test_unlearning_accuracy_and_average_gap_arithmetic() -> None:
    assert unlearning_accuracy(92.5) == 7.5
    assert unlearning_accuracy(0.0) == 100.0
    unlearned = {"ua": 10.0, "mia_efficacy": 20.0, "ra": 97.0, "ta": 90.0, "other": 1e9}
    retrained = {"ua": 4.0, "mia_efficacy": 30.0, "ra": 100.0, "ta": 92.0}
    assert average_gap(unlearned, retrained) == pytest.approx((6 + 10 + 3 + 2) / 4)
    assert average_gap(retrained, unlearned) == average_gap(unlearned, retrained)
    assert average_gap(retrained, retrained) == 0.0
    assert AVERAGE_GAP_KEYS == ("ua", "mia_efficacy", "ra", "ta")


def test_gap_errors_name_the_problem() -> None:
    full = dict.fromkeys(AVERAGE_GAP_KEYS, 50.0)
    without_mia = {k: v for k, v in full.items() if k != "mia_efficacy"}
    with pytest.raises(ValueError, match="retrained lacks \\['mia_efficacy'\\]"):
        average_gap(full, without_mia)
    with pytest.raises(ValueError, match="unlearned\\['ta'\\]"):
        average_gap({**full, "ta": float("nan")}, full)
    for bad in (-0.1, 100.5, float("nan")):
        with pytest.raises(ValueError, match="acc_forget"):
            unlearning_accuracy(bad)


# -- NeurIPS 2023 challenge: epsilon, F, final score -----------------------------------------------


def _organisers_epsilon(fprs: list[float], fnrs: list[float], delta: float) -> float:
    """The challenge's ``compute_epsilon_s`` rewritten loop by loop (numpy log of a negative
    number is NaN, of 0 is -inf)."""
    per_attack = [0.0]
    for fpr, fnr in zip(fprs, fnrs):
        if fpr == 0 and fnr == 0:
            per_attack.append(np.inf)
        elif fpr == 0 or fnr == 0:
            continue
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                e1 = np.log(1.0 - delta - fpr) - np.log(fnr)
                e2 = np.log(1.0 - delta - fnr) - np.log(fpr)
            if np.isnan(e1) and np.isnan(e2):
                per_attack.append(np.inf)
            else:
                per_attack.append(np.nanmax([e1, e2]))
    return float(np.nanmax(per_attack))


def _brute_force_epsilon(
    unlearned: np.ndarray, retrained: np.ndarray, delta: float, two_sided: bool = False
) -> float:
    """Every observed value as a threshold, "unlearned if c > t", rates by counting."""
    samples = np.concatenate([retrained, unlearned])
    truth = np.array([0] * retrained.size + [1] * unlearned.size)
    fprs, fnrs = [], []
    for t in sorted(samples):
        for predicted in [samples > t] + ([samples <= t] if two_sided else []):
            fprs.append(np.sum(predicted & (truth == 0)) / np.sum(truth == 0))
            fnrs.append(np.sum(~predicted & (truth == 1)) / np.sum(truth == 1))
    return _organisers_epsilon(fprs, fnrs, delta)


@pytest.mark.parametrize("two_sided", [False, True])
def test_per_example_epsilon_matches_brute_force(two_sided: bool) -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        n_u, n_r = rng.integers(1, 9), rng.integers(1, 9)
        # Small integers: many ties, the case where a threshold convention shows.
        shift = rng.integers(-3, 4)
        unlearned = rng.integers(0, 6, n_u).astype(float) + shift
        retrained = rng.integers(0, 6, n_r).astype(float)
        delta = [1e-5, 0.0, 0.2][trial % 3]
        got = per_example_epsilon(unlearned, retrained, delta, two_sided=two_sided)
        expected = _brute_force_epsilon(unlearned, retrained, delta, two_sided)
        assert got == pytest.approx(expected, abs=1e-12) or got == expected == math.inf, (
            unlearned,
            retrained,
            delta,
        )


def test_per_example_epsilon_hand_cases() -> None:
    same = np.array([0.0, 1.0, 2.0, 3.0])
    assert per_example_epsilon(same, same) == 0.0
    # Unlearned models all more confident than retrained ones: the threshold t = max retrained
    # gives FPR = FNR = 0.
    assert per_example_epsilon(np.array([5.0, 6.0]), np.array([1.0, 2.0])) == math.inf
    # The reverse (over-forgetting): "c > t" is then wrong nearly always (FPR = FNR = 1 at
    # t = max unlearned); both terms are undefined and the organisers score that as inf.
    assert per_example_epsilon(np.array([1.0, 2.0]), np.array([5.0, 6.0])) == math.inf
    # t = 2: FPR = FNR = 1/3, eps = log((2/3) / (1/3)) = log 2; delta shrinks it slightly.
    u, r = np.array([1.0, 3.0, 4.0]), np.array([0.0, 2.0, 3.0])
    assert per_example_epsilon(u, r, delta=0.0) == pytest.approx(math.log(2.0))
    assert per_example_epsilon(u, r) == pytest.approx(math.log((2 / 3 - 1e-5) / (1 / 3)))
    fpr, fnr = threshold_rates(u, r)
    np.testing.assert_allclose(fpr, [2 / 3, 2 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(fnr, [0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_two_sided_catches_partial_over_forgetting() -> None:
    """Unlearned confidences mostly below the retrained ones: the one-sided test sees little,
    the opposite test sees FPR = FNR = 1/4 -> log 3."""
    unlearned = np.array([0.0, 1.0, 2.0, 5.0])
    retrained = np.array([3.0, 4.0, 6.0, 1.5])
    one_sided = per_example_epsilon(unlearned, retrained, delta=0.0)
    two_sided = per_example_epsilon(unlearned, retrained, delta=0.0, two_sided=True)
    assert one_sided == 0.0
    assert two_sided == pytest.approx(math.log(3.0))


def test_epsilon_from_rates_conventions() -> None:
    assert epsilon_from_rates([0.0], [0.0]) == math.inf  # perfect attack
    assert epsilon_from_rates([0.0, 0.3], [0.4, 0.0]) == 0.0  # one zero rate: discarded
    # 1 - delta - FPR < 0: that term is skipped, the other one counts (here negative -> 0).
    assert epsilon_from_rates([0.9], [0.2], delta=0.2) == 0.0
    assert epsilon_from_rates([0.7], [0.05], delta=0.2) == pytest.approx(math.log(0.1 / 0.05))
    # Both terms undefined: inf.
    assert epsilon_from_rates([0.95], [0.9], delta=0.2) == math.inf
    # 1 - delta - FPR == 0 exactly: log 0 = -inf, the other term decides.
    assert epsilon_from_rates([0.5], [0.25], delta=0.5) == pytest.approx(
        max(0.0, math.log(0.25) - math.log(0.5))
    )
    with pytest.raises(ValueError, match="pair up"):
        epsilon_from_rates([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="rates"):
        epsilon_from_rates([1.5], [0.1])
    with pytest.raises(ValueError, match="delta"):
        epsilon_from_rates([0.1], [0.1], delta=1.0)


def test_per_example_epsilons_columns_and_errors() -> None:
    unlearned = np.array([[5.0, 1.0, 1.0], [6.0, 2.0, 3.0], [7.0, 3.0, 4.0]])
    retrained = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    got = per_example_epsilons(unlearned, retrained, delta=0.0)
    np.testing.assert_allclose(got, [math.inf, 0.0, math.log(2.0)])
    with pytest.raises(ValueError, match="same forget examples"):
        per_example_epsilons(unlearned, retrained[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        per_example_epsilon(np.array([1.0, np.nan]), np.array([1.0]))
    with pytest.raises(ValueError, match="empty"):
        per_example_epsilon(np.array([]), np.array([1.0]))


def test_logit_confidence() -> None:
    p = np.array([0.1, 0.5, 0.75, 0.999])
    np.testing.assert_allclose(logit_confidence(p), np.log(p / (1 - p)), rtol=1e-12)
    np.testing.assert_allclose(logit_confidence(1 - p), -logit_confidence(p), rtol=1e-9)
    assert logit_confidence(np.array([1e-10]))[0] == pytest.approx(math.log(1e-10), rel=1e-9)
    edges = logit_confidence(torch.tensor([0.0, 1.0]))
    assert np.isfinite(edges).all() and edges[0] == pytest.approx(-edges[1], rel=1e-3)
    for bad in ([1.2], [-0.1], [np.nan]):
        with pytest.raises(ValueError, match="probabilities"):
            logit_confidence(np.array(bad))


def test_forgetting_score_bins() -> None:
    # bin j = floor(eps / 0.5), capped at 12; bin j earns 2^-j.
    cases = {0.0: 1.0, 0.49: 1.0, 0.5: 0.5, 0.99: 0.5, 1.0: 0.25, 5.99: 2.0**-11, 6.0: 2.0**-12,
             100.0: 2.0**-12, math.inf: 2.0**-12}
    for eps, earned in cases.items():
        assert forgetting_score(np.array([eps])) == earned, eps
    assert forgetting_score(np.array(list(cases))) == pytest.approx(np.mean(list(cases.values())))
    for bad, message in (([-0.1], ">= 0"), ([np.nan], "NaN"), ([], "empty")):
        with pytest.raises(ValueError, match=message):
            forgetting_score(np.array(bad))


def test_forgetting_score_end_to_end() -> None:
    rng = np.random.default_rng(0)
    retrained = rng.normal(0.0, 1.0, (64, 5))
    # Same models on both sides: no threshold does better than chance.
    assert forgetting_score(per_example_epsilons(retrained, retrained)) == 1.0
    # Far apart: every example perfectly separable.
    assert forgetting_score(per_example_epsilons(retrained + 100.0, retrained)) == 2.0**-12
    # In between, F lies strictly between.
    shifted = forgetting_score(per_example_epsilons(retrained + 1.0, rng.normal(0, 1, (64, 5))))
    assert 2.0**-12 < shifted < 1.0


def test_challenge_score() -> None:
    assert challenge_score(0.5, 90.0, 100.0, 80.0, 80.0) == pytest.approx(0.45)
    assert challenge_score(1.0, 0.9, 0.9, 0.7, 0.8) == pytest.approx(0.875)  # fractions work too
    with pytest.raises(ValueError, match="ra_r"):
        challenge_score(0.5, 90.0, 0.0, 80.0, 80.0)
    with pytest.raises(ValueError, match="forgetting"):
        challenge_score(1.5, 90.0, 100.0, 80.0, 80.0)
    with pytest.raises(ValueError, match="ta_u"):
        challenge_score(0.5, 90.0, 100.0, float("nan"), 80.0)
