"""Representation-level and collateral-damage metrics: features, CKA, k-NN, collateral, relearn."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from torch import Tensor, nn

from helpers import same_state, snapshot
from unlearnkit.data import DataSplit
from unlearnkit.metrics.accuracy import accuracy
from unlearnkit.metrics.collateral import collateral_damage
from unlearnkit.metrics.features import extract_features, extract_layer_features, feature_layer
from unlearnkit.metrics.relearn import relearn_steps
from unlearnkit.metrics.representation import (
    knn_accuracy,
    linear_cka,
    representation_report,
    weight_change_by_layer,
)
from unlearnkit.models import SmallCNN
from unlearnkit.utils.modules import eval_mode, predict_logits


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _mlp() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# --------------------------------------------------------------------------- linear CKA


def _hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference: CKA as normalised HSIC of linear kernels, HSIC = tr(K H L H)/(n-1)^2.

    Uses the *uncentred* features and the centring matrix H on the kernels (Kornblith et al.
    2019, eqs. 3-4), not the centred-feature form of the implementation.
    """
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k: np.ndarray, l_: np.ndarray) -> float:
        return float(np.trace(k @ h @ l_ @ h)) / (n - 1) ** 2

    k, l_ = x @ x.T, y @ y.T
    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.mark.parametrize(("n", "d1", "d2"), [(50, 5, 8), (12, 40, 30), (30, 1, 3)])
def test_linear_cka_matches_independent_hsic_form(n: int, d1: int, d2: int) -> None:
    # (50, 5, 8) takes the feature-space branch, (12, 40, 30) the Gram branch.
    rng = _rng(n + d1)
    x = rng.normal(size=(n, d1)) + 3.0  # an offset, so forgetting to centre would show
    y = x[:, :1] @ rng.normal(size=(1, d2)) + 0.5 * rng.normal(size=(n, d2))
    expected = _hsic_cka(x, y)
    assert 0.05 < expected < 0.99  # a non-trivial value
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-10)
    assert linear_cka(torch.tensor(x, dtype=torch.float32), torch.tensor(y)) == pytest.approx(expected, rel=1e-5)


def test_linear_cka_both_branches_agree() -> None:
    rng = _rng(3)
    x, y = rng.normal(size=(20, 6)), rng.normal(size=(20, 7))
    wide = np.concatenate([x, np.zeros((20, 40))], axis=1)  # same kernel, forces the Gram branch
    assert linear_cka(x, y) == pytest.approx(linear_cka(wide, y), rel=1e-12)


def test_linear_cka_of_one_dimensional_features_is_squared_correlation() -> None:
    rng = _rng(4)
    a, b = rng.normal(size=40), rng.normal(size=40)
    b = b + 0.7 * a
    assert linear_cka(a[:, None], b[:, None]) == pytest.approx(np.corrcoef(a, b)[0, 1] ** 2, rel=1e-10)


def test_linear_cka_invariances_and_range() -> None:
    rng = _rng(5)
    x = rng.normal(size=(60, 10))
    y = np.tanh(x @ rng.normal(size=(10, 12)))
    base = linear_cka(x, y)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)  # orthogonal transform
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, rel=1e-10)  # isotropic scaling
    assert linear_cka(x + 100.0, y) == pytest.approx(base, rel=1e-8)  # translation (centring)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)  # symmetric
    # Not invariant to non-isotropic scaling: stretching one axis changes the value.
    stretched = x * np.array([50.0] + [1.0] * 9)
    assert abs(linear_cka(stretched, y) - base) > 1e-3
    for seed in range(5):
        r = _rng(100 + seed)
        value = linear_cka(r.normal(size=(15, 4)), r.normal(size=(15, 9)))
        assert 0.0 <= value <= 1.0


def test_linear_cka_bad_input() -> None:
    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="rows"):
        linear_cka(x, x[:4])
    with pytest.raises(ValueError, match="2-D"):
        linear_cka(x[:, 0], x[:, 0])
    with pytest.raises(ValueError, match="at least 2"):
        linear_cka(x[:1], x[:1])
    with pytest.raises(ValueError, match="no variance"):
        linear_cka(torch.ones(5, 3), x)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        linear_cka(bad, x)


# --------------------------------------------------------------------------- k-NN


def test_knn_accuracy_hand_made_case_cosine_versus_euclidean() -> None:
    # Class 0 points along the x axis far out, class 1 near the origin but pointing along y.
    train = torch.tensor([[10.0, 0.0], [12.0, 1.0], [0.3, 0.6], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[0.5, 0.05]])  # direction of class 0, position next to class 1
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=1, metric="cosine") == 100.0
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=1, metric="euclidean") == 0.0


def test_knn_accuracy_majority_and_tie_breaking() -> None:
    train = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]])
    labels = torch.tensor([1, 0, 0, 1, 1])
    query = torch.tensor([[0.9]])
    # k=3: votes 1, 0, 0 -> majority 0 although the nearest is 1.
    assert knn_accuracy(train, labels, query, torch.tensor([0]), k=3, metric="euclidean") == 100.0
    # k=2: votes 1, 0 tie -> the nearest neighbour's class (1) wins, not the smaller label.
    assert knn_accuracy(train, labels, query, torch.tensor([1]), k=2, metric="euclidean") == 100.0
    # Equidistant training rows: the lower index counts as nearer, whatever its label.
    two, query = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0]])
    for first, second in ((1, 0), (0, 1)):
        pair = torch.tensor([first, second])
        assert knn_accuracy(two, pair, query, torch.tensor([first]), k=1, metric="euclidean") == 100.0
    # Cosine: two training rows in the query's direction at different norms are equidistant.
    same_dir = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[3.0, 0.0]])
    assert knn_accuracy(same_dir, torch.tensor([1, 0, 0]), query, torch.tensor([1]), k=1) == 100.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_accuracy_matches_sklearn_without_ties(metric: str) -> None:
    rng = _rng(7)
    train, query = rng.normal(size=(80, 6)), rng.normal(size=(40, 6))
    y_train = (train[:, 0] + 0.5 * rng.normal(size=80) > 0).astype(int)  # 2 classes, odd k: no vote ties
    y_query = (query[:, 0] > 0).astype(int)
    ref = KNeighborsClassifier(n_neighbors=5, metric=metric, algorithm="brute").fit(train, y_train)
    expected = 100.0 * float((ref.predict(query) == y_query).mean())
    got = knn_accuracy(torch.tensor(train), torch.tensor(y_train), torch.tensor(query), torch.tensor(y_query),
                       k=5, metric=metric, batch_size=7)
    assert got == pytest.approx(expected)


def test_knn_accuracy_bad_input() -> None:
    train, labels = torch.rand(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="k must"):
        knn_accuracy(train, labels, train, labels, k=5)
    with pytest.raises(ValueError, match="k must"):
        knn_accuracy(train, labels, train, labels, k=0)
    with pytest.raises(ValueError, match="unknown metric"):
        knn_accuracy(train, labels, train, labels, k=1, metric="manhattan")
    with pytest.raises(ValueError, match="dimensions"):
        knn_accuracy(train, labels, torch.rand(3, 5), labels[:3], k=1)
    with pytest.raises(ValueError, match="one label per row"):
        knn_accuracy(train, labels[:3], train, labels, k=1)
    with pytest.raises(ValueError, match="integer"):
        knn_accuracy(train, labels.float(), train, labels, k=1)


# --------------------------------------------------------------------------- feature extraction


def test_feature_layer_automatic_choice() -> None:
    assert feature_layer(SmallCNN(image_size=8)) == "head.2:input"
    assert feature_layer(_mlp()) == "3:input"
    assert feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))) == "1:input"
    assert feature_layer(_mlp(), "2") == "2"
    assert feature_layer(_mlp(), "1:input") == "1:input"


def test_feature_layer_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown layer 'head\.9'.*head\.2"):
        feature_layer(SmallCNN(image_size=8), "head.9")
    with pytest.raises(ValueError, match="no nn.Linear"):
        feature_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    with pytest.raises(ValueError, match="str"):
        feature_layer(_mlp(), 3)  # type: ignore[arg-type]


def test_extract_features_smallcnn_shapes_and_values(trained_cnn: SmallCNN, digits: DataSplit) -> None:
    x = digits.x_test[:37]
    auto = extract_features(trained_cnn, x, batch_size=16)  # several batches, last one short
    assert auto.shape == (37, 128)
    # The input of head.2 is the output of the ReLU before it: both specs give the same features.
    assert torch.equal(auto, extract_features(trained_cnn, x, "head.1"))
    with torch.no_grad(), eval_mode(trained_cnn):
        expected = trained_cnn.head[:2](trained_cnn.features(x))
    assert torch.allclose(auto, expected, atol=1e-6)
    assert extract_features(trained_cnn, x, "features").shape == (37, 64 * 2 * 2)
    assert extract_features(trained_cnn, x, "features.0").shape == (37, 32 * 8 * 8)  # flattened conv map
    assert extract_features(trained_cnn, x, "head.2").shape == (37, 10)  # logits


def test_extract_features_mlp_and_several_layers(digits: DataSplit) -> None:
    mlp, x = _mlp(), digits.x_test[:20]
    feats = extract_layer_features(mlp, x, ["1", None, "0"], batch_size=8)
    assert list(feats) == ["1", "3:input", "0"]
    assert [tuple(f.shape) for f in feats.values()] == [(20, 32), (20, 32), (20, 64)]
    with torch.no_grad():
        assert torch.allclose(feats["1"], mlp[:2](x), atol=1e-6)
        assert torch.allclose(feats["3:input"], mlp[:3](x), atol=1e-6)
    assert torch.equal(feats["0"], x.reshape(20, -1))
    assert torch.equal(feats["1"], extract_features(mlp, x, "1"))
    # A plain linear model: its penultimate representation is the flattened input.
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert torch.equal(extract_features(linear, x), x.reshape(20, -1))


def test_extract_features_eval_mode_and_restores_modes(cnn: SmallCNN, digits: DataSplit) -> None:
    cnn.train()
    cnn.head[1].eval()  # a per-submodule mode that must survive
    before = snapshot(cnn)
    feats_train_mode = extract_features(cnn, digits.x_test[:10])
    assert cnn.training and not cnn.head[1].training and cnn.features[1].training
    assert same_state(cnn, before)  # BatchNorm running statistics unchanged
    cnn.eval()
    assert torch.equal(feats_train_mode, extract_features(cnn, digits.x_test[:10]))


def test_extract_features_bad_input() -> None:
    mlp = _mlp()
    x = torch.rand(4, 64)
    with pytest.raises(ValueError, match="repeat"):
        extract_layer_features(mlp, x, ["1", "1"])
    with pytest.raises(ValueError, match="sequence"):
        extract_layer_features(mlp, x, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        extract_features(mlp, x[:0])
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(mlp, x, batch_size=0)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)
            self.out = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.out(self.block(self.block(x)))

    with pytest.raises(ValueError, match="ran 2 times"):
        extract_features(Twice(), torch.rand(3, 4), "block")
    with pytest.raises(ValueError, match="ran 0 times"):
        extract_features(Twice(), torch.rand(3, 4), "unused")


# --------------------------------------------------------------------------- report, weight change


def _scramble_head(model: SmallCNN, classes: list[int], seed: int = 0) -> SmallCNN:
    """A copy whose last layer's rows for ``classes`` are replaced by seeded random rows."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for c in classes:
            row = out.head[2].weight[c]
            out.head[2].weight[c] = torch.randn(row.shape, generator=g) * row.std()
            out.head[2].bias[c] = -5.0
    return out


def test_representation_report_sees_through_a_head_only_change(
    trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor]
) -> None:
    x = digits.x_test[:120]
    same = representation_report(trained_cnn, trained_cnn, x, layers=["features", "head.1", "head.2"])
    assert same == pytest.approx({"features": 1.0, "head.1": 1.0, "head.2": 1.0}, abs=1e-9)
    scrambled = _scramble_head(trained_cnn, sorted(set(forget[1].tolist())))
    report = representation_report(scrambled, trained_cnn, x, layers=["head.1", "head.2"])
    assert report["head.1"] == pytest.approx(1.0, abs=1e-9)  # penultimate untouched
    assert report["head.2"] < 0.999  # the logits moved
    assert representation_report(scrambled, trained_cnn, x) == pytest.approx({"head.2:input": 1.0}, abs=1e-9)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        fresh = SmallCNN(image_size=8)
    assert representation_report(fresh, trained_cnn, x)["head.2:input"] < 0.9
    with pytest.raises(ValueError, match="unknown layer"):
        representation_report(trained_cnn, nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x, layers=["head.1"])


def test_weight_change_by_layer(trained_cnn: SmallCNN) -> None:
    changes = weight_change_by_layer(trained_cnn, trained_cnn)
    assert list(changes) == [name for name, _ in trained_cnn.named_parameters()]
    assert set(changes.values()) == {0.0}
    scrambled = _scramble_head(trained_cnn, [3])
    changes = weight_change_by_layer(scrambled, trained_cnn)
    moved = {name for name, value in changes.items() if value > 0}
    assert moved == {"head.2.weight", "head.2.bias"}
    w, w0 = scrambled.head[2].weight.detach(), trained_cnn.head[2].weight.detach()
    assert changes["head.2.weight"] == pytest.approx(float((w - w0).norm() / w0.norm()), rel=1e-6)
    zero = nn.Linear(2, 2)
    with torch.no_grad():
        zero.bias.zero_()
    shifted = copy.deepcopy(zero)
    with torch.no_grad():
        shifted.bias.add_(1.0)
    assert weight_change_by_layer(shifted, zero)["bias"] == float("inf")
    assert weight_change_by_layer(zero, zero)["bias"] == 0.0
    with pytest.raises(ValueError, match="parameters differ"):
        weight_change_by_layer(trained_cnn, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="shape"):
        weight_change_by_layer(nn.Linear(2, 3), nn.Linear(2, 2))


# --------------------------------------------------------------------------- collateral damage


def test_collateral_identical_models_give_zero_change(
    trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor]
) -> None:
    result = collateral_damage(trained_cnn, trained_cnn, *forget, digits.x_test, digits.y_test, neighbours=10)
    assert result.layer == "head.2:input"
    assert len(result.neighbour_indices) == 4 and all(len(row) == 10 for row in result.neighbour_indices)
    assert result.accuracy_change == (0.0,) * 4 and result.confidence_change == (0.0,) * 4
    assert result.mean_accuracy_change == 0.0 and result.mean_confidence_change == 0.0
    assert result.forget_class_accuracy_change == 0.0
    assert result.forget_classes == tuple(sorted(set(forget[1].tolist())))
    assert all(value == 0.0 for value in result.class_accuracy_change)
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()
    # Neighbours agree with an independent cosine search in the original features.
    feats_test = extract_features(trained_cnn, digits.x_test).numpy()
    feats_forget = extract_features(trained_cnn, forget[0]).numpy()
    search = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(feats_test)
    expected = search.kneighbors(feats_forget, return_distance=False)
    for got, want in zip(result.neighbour_indices, expected):
        assert set(got) == set(want.tolist())


def test_collateral_head_damaged_for_one_class(
    trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor]
) -> None:
    labels = forget[1]
    hit = int(labels[0])
    damaged = copy.deepcopy(trained_cnn)
    with torch.no_grad():  # class ``hit`` can never win any more; every other class is as before
        damaged.head[2].weight[hit] = 0.0
        damaged.head[2].bias[hit] = -1e3
    result = collateral_damage(trained_cnn, damaged, *forget, digits.x_test, digits.y_test, neighbours=10)
    near_hit = result.neighbour_indices[0]
    share_hit = float((digits.y_test[list(near_hit)] == hit).float().mean())
    assert share_hit >= 0.8  # neighbours in the original features share the class
    # Exactly the neighbours of class ``hit`` that were right are now wrong.
    near_x, near_y = digits.x_test[list(near_hit)], digits.y_test[list(near_hit)]
    was_right = predict_logits(trained_cnn, near_x).argmax(1) == near_y
    lost = float((was_right & (near_y == hit)).float().mean())
    assert result.accuracy_change[0] == pytest.approx(-100.0 * lost)
    assert result.accuracy_change[0] <= -80.0
    assert result.confidence_change[0] < -0.5
    for i, label in enumerate(labels.tolist()):
        if label != hit:  # suppressing another class can only help or leave these alone
            assert result.accuracy_change[i] >= 0.0
    idx = result.forget_classes.index(hit)
    in_class = digits.y_test == hit
    original_class_acc = accuracy(trained_cnn, digits.x_test[in_class], digits.y_test[in_class])
    assert result.class_accuracy_change[idx] == pytest.approx(-original_class_acc)
    for c, change in zip(result.forget_classes, result.class_accuracy_change):
        if c != hit:
            assert change >= 0.0
    assert result.mean_accuracy_change == pytest.approx(float(np.mean(result.accuracy_change)))


def test_collateral_bad_input(trained_cnn: SmallCNN, digits: DataSplit, forget: tuple[Tensor, Tensor]) -> None:
    x, y = digits.x_test, digits.y_test
    with pytest.raises(ValueError, match="neighbours"):
        collateral_damage(trained_cnn, trained_cnn, *forget, x, y, neighbours=0)
    with pytest.raises(ValueError, match="neighbours"):
        collateral_damage(trained_cnn, trained_cnn, *forget, x[:5], y[:5], neighbours=6)
    with pytest.raises(ValueError, match="forget set"):
        collateral_damage(trained_cnn, trained_cnn, forget[0], forget[1][:2], x, y)
    with pytest.raises(ValueError, match="forget class"):
        keep = y != int(forget[1][0])
        collateral_damage(trained_cnn, trained_cnn, *forget, x[keep], y[keep])
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        collateral_damage(trained_cnn, trained_cnn, forget[0], forget[1] + 10, x, y)
    with pytest.raises(ValueError, match="number of classes"):
        other = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        collateral_damage(trained_cnn, other, forget[0], forget[1] % 3, x, y % 3)
    with pytest.raises(ValueError, match="unknown layer"):
        collateral_damage(trained_cnn, trained_cnn, *forget, x, y, layer="nope")


# --------------------------------------------------------------------------- relearn time


def test_relearn_zero_steps_when_already_known(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    result = relearn_steps(trained_cnn, *forget, target_accuracy=100.0)
    assert (result.steps, result.reached, result.accuracy_curve, result.losses) == (0, True, (100.0,), ())


def test_relearn_unlearned_head_needs_steps_and_reaches_target(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]
) -> None:
    scrambled = _scramble_head(trained_cnn, sorted(set(forget[1].tolist())))
    scrambled.train()  # the caller's modes must survive too
    before = snapshot(scrambled)
    target = accuracy(trained_cnn, *forget)
    start = accuracy(scrambled, *forget)
    assert start < target
    result = relearn_steps(scrambled, *forget, target_accuracy=target, lr=0.05, batch_size=4, max_steps=200, seed=0)
    assert result.reached and result.steps > 0
    assert len(result.accuracy_curve) == result.steps + 1 == len(result.losses) + 1
    assert result.accuracy_curve[0] == start
    assert result.accuracy_curve[-1] >= target
    assert all(value < target for value in result.accuracy_curve[:-1])  # stopped at the first hit
    assert same_state(scrambled, before) and scrambled.training  # caller's model untouched
    again = relearn_steps(scrambled, *forget, target_accuracy=target, lr=0.05, batch_size=4, max_steps=200, seed=0)
    assert again == result  # seeded
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()

    capped = relearn_steps(scrambled, *forget, target_accuracy=target, lr=1e-6, batch_size=4, max_steps=3)
    assert (capped.reached, capped.steps, len(capped.accuracy_curve)) == (False, 3, 4)
    assert capped.accuracy_curve[-1] < target


def test_relearn_bad_input(trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    x, y = forget
    with pytest.raises(ValueError, match="target_accuracy"):
        relearn_steps(trained_cnn, x, y, target_accuracy=150.0)
    with pytest.raises(ValueError, match="target_accuracy"):
        relearn_steps(trained_cnn, x, y, target_accuracy=float("nan"))
    with pytest.raises(ValueError, match="lr"):
        relearn_steps(trained_cnn, x, y, 100.0, lr=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        relearn_steps(trained_cnn, x, y, 100.0, batch_size=0)
    with pytest.raises(ValueError, match="max_steps"):
        relearn_steps(trained_cnn, x, y, 100.0, max_steps=-1)
    with pytest.raises(ValueError, match="labels"):
        relearn_steps(trained_cnn, x, y[:2], 100.0)
    with pytest.raises(ValueError, match="empty"):
        relearn_steps(trained_cnn, x[:0], y[:0], 100.0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        relearn_steps(trained_cnn, x, y + 10, 100.0)
