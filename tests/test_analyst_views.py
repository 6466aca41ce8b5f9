"""The analyst's views: prediction matrix, privacy score PS, embedding map and marks, split CKA,
their evidence from gather_evidence on the digits fixtures, and their place in the HTML report."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from unlearnkit.data import DataSplit
from unlearnkit.metrics.embedding import forget_marks, project_2d
from unlearnkit.metrics.prediction_matrix import prediction_matrix
from unlearnkit.metrics.privacy import attack_signals, epsilons, privacy_attack
from unlearnkit.models import SmallCNN
from unlearnkit.scenarios.evidence import gather_evidence, model_figures
from unlearnkit.scenarios.views import model_views, sample_indices

# ------------------------------------------------------------------------------------------------
# Prediction matrix
# ------------------------------------------------------------------------------------------------


def test_prediction_matrix_rows_sum_to_one_and_empty_classes_are_empty() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator) * 3
    labels = torch.randint(0, 4, (50,), generator=generator)  # class 4 never occurs
    matrix = prediction_matrix(logits, labels, 5)
    assert matrix.counts[4] == 0 and matrix.share[4] is None
    assert matrix.confidence[4] == [None] * 5
    assert sum(matrix.counts) == 50
    for t in range(4):
        assert sum(matrix.share[t]) == pytest.approx(1.0)
        for p in range(5):
            c = matrix.confidence[t][p]
            assert (c is None) == (matrix.share[t][p] == 0)
            assert c is None or 0.0 <= c <= 1.0
    # Mean confidence of one cell by hand.
    probabilities = torch.softmax(logits.double(), dim=1)
    predicted = probabilities.argmax(dim=1)
    cell = (labels == 0) & (predicted == predicted[labels == 0][0])
    assert matrix.confidence[0][int(predicted[labels == 0][0])] == pytest.approx(float(probabilities.max(dim=1).values[cell].mean()))
    as_dict = matrix.to_dict()
    assert as_dict["share"][4] is None and all(sum(r) == pytest.approx(1.0, abs=0.01) for r in as_dict["share"][:4])


@pytest.mark.parametrize(
    ("logits", "labels", "classes", "message"),
    [
        (torch.zeros(3, 4), torch.tensor([0, 1, 2]), 3, "shape"),
        (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3, "empty"),
        (torch.zeros(2, 3), torch.tensor([0, 3]), 3, "0..2"),
        (torch.tensor([[float("nan"), 0.0, 0.0]]), torch.tensor([0]), 3, "NaN"),
        (torch.zeros(1, 3), torch.tensor([0.0]), 3, "integers"),
        (torch.zeros(1, 1), torch.tensor([0]), 1, ">= 2"),
    ],
)
def test_prediction_matrix_refuses_bad_inputs(logits: Tensor, labels: Tensor, classes: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prediction_matrix(logits, labels, classes)


# ------------------------------------------------------------------------------------------------
# Privacy score
# ------------------------------------------------------------------------------------------------


def test_privacy_score_is_one_for_a_retrained_model_against_itself() -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(1)) * 4
    labels = torch.arange(16) % 10
    signals = attack_signals(logits, labels)
    attack = privacy_attack(signals, signals)
    assert attack.score == 1.0
    assert all(float(c.score.max()) == 0.0 for c in attack.curves)
    record = attack.to_dict()
    assert record["score"] == 1.0 and {c["signal"] for c in record["curves"]} == {"entropy", "confidence"}


def test_privacy_score_drops_on_a_separable_case_and_stays_finite() -> None:
    n = 16
    unlearned = {"confidence": np.linspace(5, 6, n), "entropy": np.linspace(0.0, 0.1, n)}
    retrained = {"confidence": np.linspace(-2, -1, n), "entropy": np.linspace(1.0, 2.0, n)}
    attack = privacy_attack(unlearned, retrained)
    # A perfect split of n per group: zero rates count as 1/(2n), eps = log(1 - delta) + log(2n).
    eps = math.log(1 - 1e-5) + math.log(2 * n)
    assert attack.score == pytest.approx(2.0**-eps, rel=1e-9)
    assert attack.score < 0.1
    for curve in attack.curves:
        assert np.isfinite(curve.score).all() and np.isfinite(curve.fpr).all() and np.isfinite(curve.fnr).all()
    record = attack.to_dict()
    assert record["strongest"]["score"] == pytest.approx(1 - attack.score, abs=1e-4)
    # Outputs that overlap half-way give a PS between the two.
    half = {"confidence": np.r_[np.linspace(5, 6, 8), np.linspace(-2, -1, 8)], "entropy": np.r_[np.zeros(8), np.ones(8)]}
    assert attack.score < privacy_attack(half, retrained).score < 1.0


def test_fpr_and_fnr_are_monotone_over_thresholds() -> None:
    rng = np.random.default_rng(0)
    attack = privacy_attack({"confidence": rng.normal(1, 1, 30)}, {"confidence": rng.normal(0, 1, 30)})
    for curve in attack.curves:
        assert (np.diff(curve.thresholds) > 0).all()
        if curve.direction == ">":  # "unlearned if s > t": fewer calls as t grows
            assert (np.diff(curve.fpr) <= 0).all() and (np.diff(curve.fnr) >= 0).all()
        else:
            assert (np.diff(curve.fpr) >= 0).all() and (np.diff(curve.fnr) <= 0).all()
        assert ((0 <= curve.score) & (curve.score < 1)).all()


def test_epsilon_convention_for_zero_rates() -> None:
    # FPR = FNR = 0 on 4 per group: log(1 - delta) - log(1/8); FPR = 1 makes its term undefined (0).
    values = epsilons(np.array([0.0, 1.0, 0.5]), np.array([0.0, 0.0, 0.5]), 4, 4, delta=0.0)
    assert values.tolist() == pytest.approx([math.log(8), 0.0, 0.0])
    with pytest.raises(ValueError, match="same signals"):
        privacy_attack({"entropy": [1.0]}, {"confidence": [1.0]})
    with pytest.raises(ValueError, match="one each per instance"):
        privacy_attack({"entropy": [1.0, 2.0]}, {"entropy": [1.0]})
    with pytest.raises(ValueError, match="NaN or infinite"):
        privacy_attack({"entropy": [float("nan")]}, {"entropy": [1.0]})


def test_attack_signals_are_exact_for_confident_logits() -> None:
    signals = attack_signals(torch.tensor([[60.0, 0.0, 0.0]]), torch.tensor([0]))
    assert signals["confidence"][0] == pytest.approx(60.0 - math.log(2.0))
    assert np.isfinite(signals["entropy"]).all()


# ------------------------------------------------------------------------------------------------
# Embedding map and marks
# ------------------------------------------------------------------------------------------------


def test_forget_marks_follow_the_definition() -> None:
    labels = [0, 1, 2, 3]
    unlearned = [0, 5, 5, 5]  # instance 0 still right; 1-3 wrong
    retrained = [0, 9, 2, 3]  # retraining gets 2 and 3 right: unlearning erased more there
    assert forget_marks(unlearned, labels, retrained_predictions=retrained) == [
        "not forgotten", "forgotten", "over-forgotten", "over-forgotten"
    ]
    assert forget_marks(unlearned, labels) == ["not forgotten", "forgotten", "forgotten", "forgotten"]
    # Relabel: forgotten means predicted as the new label, whatever the reference says.
    assert forget_marks(unlearned, labels, retrained_predictions=retrained, new_labels=[4, 5, 6, 5]) == [
        "not forgotten", "forgotten", "not forgotten", "forgotten"
    ]
    with pytest.raises(ValueError, match="entries"):
        forget_marks([0, 1], [0])


def test_pca_coordinates_are_deterministic_and_fitted_on_the_test_points() -> None:
    generator = torch.Generator().manual_seed(3)
    fit, extra = torch.randn(40, 6, generator=generator), torch.randn(5, 6, generator=generator)
    a1, b1 = project_2d(fit, extra, seed=0)
    a2, b2 = project_2d(fit.clone(), extra.clone(), seed=0)
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert a1.shape == (40, 2) and b1.shape == (5, 2)
    assert np.allclose(a1.mean(axis=0), 0.0, atol=1e-9)  # centred on the points it was fitted on
    # The extra points do not move the map.
    assert np.array_equal(project_2d(fit, extra[:2])[0], a1)
    assert a1[:, 0].var() >= a1[:, 1].var()  # first axis carries the most variance
    with pytest.raises(ValueError, match="projection"):
        project_2d(fit, extra, projection="tsne")


def test_umap_is_optional() -> None:
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="umap-learn"):
            project_2d(torch.randn(10, 3), projection="umap")
    else:  # pragma: no cover - only where umap-learn is installed
        a, _ = project_2d(torch.randn(30, 3), projection="umap")
        assert a.shape == (30, 2)


def test_sample_indices_are_seeded_and_capped() -> None:
    assert sample_indices(10, 20, 0).tolist() == list(range(10))
    a, b = sample_indices(1000, 50, 7), sample_indices(1000, 50, 7)
    assert torch.equal(a, b) and len(a) == 50 and bool((a[1:] > a[:-1]).all())
    assert not torch.equal(a, sample_indices(1000, 50, 8))


# ------------------------------------------------------------------------------------------------
# Evidence on the digits fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splits(digits: DataSplit, forget_indices: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    keep = torch.ones(len(digits.y_train), dtype=torch.bool)
    keep[forget_indices] = False
    return {
        "forget": (digits.x_train[forget_indices], digits.y_train[forget_indices]),
        "retain": (digits.x_train[keep][:400], digits.y_train[keep][:400]),
        "test": (digits.x_test, digits.y_test),
    }


def _perturbed(model: SmallCNN, scale: float) -> SmallCNN:
    changed = copy.deepcopy(model)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for parameter in changed.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * parameter.std())
    return changed


@pytest.fixture(scope="module")
def evidence(trained_cnn: SmallCNN, splits: dict) -> dict:
    def figures(model: torch.nn.Module) -> dict:
        return model_figures(model, splits["forget"], splits["retain"], splits["test"], num_classes=10)

    unlearned, retrained = _perturbed(trained_cnn, 0.5), _perturbed(trained_cnn, 0.2)
    return gather_evidence(
        trained_cnn, unlearned, splits["forget"], splits["retain"], splits["test"], goal_met=[True] * 4,
        ids=list(range(4)), original_figures=figures(trained_cnn), retrained=retrained,
        retrained_figures=figures(retrained), num_classes=10, relearn_max_steps=20, probe_size=200,
    )


def test_evidence_holds_cka_on_forget_and_other_data(evidence: dict) -> None:
    assert len(evidence["cka_layers"]) >= 3
    for entry in evidence["cka_layers"]:
        for key in ("original_forget", "original_other", "retrained_forget", "retrained_other"):
            assert 0.0 <= entry[key] <= 1.0, (entry["layer"], key)
        assert 0.0 <= entry["original"] <= 1.0  # the combined figure is still there


def test_evidence_holds_views_and_privacy(evidence: dict, splits: dict) -> None:
    views = evidence["views"]
    forget_matrix = views["prediction_matrix"]["forget"]
    assert sum(forget_matrix["counts"]) == 4
    assert all(row is None or sum(row) == pytest.approx(1.0, abs=0.01) for row in forget_matrix["share"])
    assert views["prediction_matrix"]["test_size"] == 360
    embedding = views["embedding"]
    assert embedding["projection"] == "pca" and embedding["reference"] is True
    assert len(embedding["test"]["x"]) == 300 and len(embedding["forget"]["mark"]) == 4
    assert set(embedding["forget"]["mark"]) <= {"forgotten", "not forgotten", "over-forgotten"}
    privacy = evidence["privacy"]
    assert 0.0 <= privacy["score"] <= 1.0 and len(privacy["curves"]) == 2
    for curve in privacy["curves"]:
        assert len(curve["thresholds"]) == len(curve["fpr"]) == len(curve["fnr"]) == len(curve["score"]) <= 100


def test_model_views_of_the_same_model_are_identical(trained_cnn: SmallCNN, splits: dict) -> None:
    first = model_views(trained_cnn, splits["forget"], splits["test"], num_classes=10, seed=1)
    again = model_views(copy.deepcopy(trained_cnn), splits["forget"], splits["test"], num_classes=10, seed=1)
    assert first == again
    assert first["embedding"]["reference"] is False
    assert first["embedding"]["forget"]["mark"] == ["not forgotten"] * 4  # the fixture's set is classified right
