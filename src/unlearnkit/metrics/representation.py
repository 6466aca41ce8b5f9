"""Representation-level evidence: linear CKA, k-NN accuracy on features, and weight change.

"Are We Truly Forgetting?" (Kim, Cha, Kim 2025) compares the unlearned model's penultimate
features with the original's and the retrained model's (linear CKA) and measures how well a k-NN
classifier (k 5, cosine) still separates the forget classes on them: a method that only moves
the last layer looks forgotten on logits yet keeps the original representation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from unlearnkit.metrics.features import extract_layer_features, feature_layer

#: Distances :func:`knn_accuracy` supports.
KNN_METRICS = ("cosine", "euclidean")


def _as_float64_matrix(value: Tensor | np.ndarray, what: str) -> Tensor:
    """``value`` as a float64 tensor ``(N, D)``, checked finite."""
    matrix = torch.as_tensor(value).detach().to(torch.float64)
    if matrix.dim() != 2:
        raise ValueError(f"{what} must be a 2-D (N, D) matrix of features, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return matrix


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Linear centred kernel alignment between two representations of the same ``N`` examples.

    Kornblith et al. 2019 (ICML, "Similarity of Neural Network Representations Revisited"),
    eq. 5: with column-centred ``X (N, D1)`` and ``Y (N, D2)``,
    ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``, computed in float64. It is 1 for
    identical representations, lies in [0, 1], and is invariant to orthogonal transforms and
    isotropic scaling of either side (not to arbitrary invertible linear maps).

    When ``N`` is small next to the widths, the equal Gram form
    ``<K_x, K_y>_F / (||K_x||_F ||K_y||_F)`` with ``K = X X^T`` is used instead, so that wide
    convolutional features never build a ``D x D`` matrix. Each side is first divided by its
    Frobenius norm (CKA is scale-invariant) to keep the products far from overflow, and the
    result is clipped to [0, 1] against rounding only.

    Args:
        x: ``(N, D1)`` features (tensor or array).
        y: ``(N, D2)`` features of the same examples, in the same order.

    Raises:
        ValueError: If either is not 2-D or not finite, the row counts differ, ``N < 2``, or a
            side has no variance (all rows equal), where CKA is undefined.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
        >>> linear_cka(x, x), linear_cka(x, -3.0 * x)
        (1.0, 1.0)
        >>> round(linear_cka(x[:, :1], x[:, 1:]), 4)  # 1-D features: the squared correlation
        0.1071
        >>> round(float(np.corrcoef(x[:, 0], x[:, 1])[0, 1] ** 2), 4)
        0.1071
    """
    a = _as_float64_matrix(x, "x")
    b = _as_float64_matrix(y, "y").to(a.device)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"x has {a.shape[0]} rows but y has {b.shape[0]}; CKA compares the same examples")
    if a.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 examples, got {a.shape[0]}")
    a, b = a - a.mean(dim=0), b - b.mean(dim=0)
    for what, m in (("x", a), ("y", b)):
        if float(torch.linalg.matrix_norm(m)) == 0.0:
            raise ValueError(f"{what} has no variance (all rows are equal); CKA is undefined")
    a, b = a / torch.linalg.matrix_norm(a), b / torch.linalg.matrix_norm(b)
    n, d1, d2 = a.shape[0], a.shape[1], b.shape[1]
    if n * n < d1 * d2 + d1 * d1 + d2 * d2:
        ka, kb = a @ a.T, b @ b.T
        cross, norm_a, norm_b = (ka * kb).sum(), torch.linalg.matrix_norm(ka), torch.linalg.matrix_norm(kb)
    else:
        cross = torch.linalg.matrix_norm(b.T @ a) ** 2
        norm_a, norm_b = torch.linalg.matrix_norm(a.T @ a), torch.linalg.matrix_norm(b.T @ b)
    return float((cross / (norm_a * norm_b)).clamp(0.0, 1.0))


def _as_labels(value: Tensor | np.ndarray, n: int, what: str) -> Tensor:
    """``value`` as a 1-D int64 tensor of length ``n``."""
    labels = torch.as_tensor(value).detach()
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{what} must be 1-D with one label per row ({n}), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{what} must hold integer class labels, got dtype {labels.dtype}")
    return labels.cpu().long()


def knn_accuracy(
    train_feats: Tensor | np.ndarray,
    train_labels: Tensor | np.ndarray,
    query_feats: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    k: int = 5,
    metric: str = "cosine",
    *,
    batch_size: int = 1024,
) -> float:
    """Accuracy in percent of a k-nearest-neighbour majority vote on features.

    Each query takes the labels of its ``k`` nearest training rows and predicts the most
    frequent one. Ties are broken deterministically: among training rows at equal distance the
    lower index counts as nearer, and among classes with equal votes the class of the nearest
    neighbour wins (so ``k = 2`` with two different labels predicts the nearer one).

    Args:
        train_feats: ``(N, D)`` features of the labelled examples (e.g. the retain set).
        train_labels: ``(N,)`` their integer labels (non-negative).
        query_feats: ``(M, D)`` features to classify (e.g. the forget or the test set).
        query_labels: ``(M,)`` their true labels.
        k: Neighbours per query, ``1 <= k <= N``.
        metric: ``"cosine"`` (1 - cosine similarity; an all-zero row has similarity 0 with
            everything, as in ``sklearn.metrics.pairwise.cosine_distances``) or
            ``"euclidean"``.
        batch_size: Queries per distance block (bounds memory at ``batch_size x N``).

    Raises:
        ValueError: On mismatched shapes, non-integer or negative labels, an unknown metric,
            ``k`` out of range, or empty sets.

    Example:
        >>> train = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [0.1, 3.0]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> query = torch.tensor([[5.0, 0.5], [0.2, 4.0]])
        >>> knn_accuracy(train, labels, query, torch.tensor([0, 1]), k=1)
        100.0
        >>> knn_accuracy(train, labels, query, torch.tensor([1, 1]), k=3)
        50.0
    """
    train = _as_float64_matrix(train_feats, "train_feats").cpu()
    query = _as_float64_matrix(query_feats, "query_feats").cpu()
    if train.shape[0] == 0 or query.shape[0] == 0:
        raise ValueError("knn_accuracy needs non-empty training and query sets")
    if train.shape[1] != query.shape[1]:
        raise ValueError(f"train_feats have {train.shape[1]} dimensions but query_feats have {query.shape[1]}")
    y_train = _as_labels(train_labels, train.shape[0], "train_labels")
    y_query = _as_labels(query_labels, query.shape[0], "query_labels")
    if (y_train < 0).any():
        raise ValueError("train_labels must be non-negative class indices")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= train.shape[0]:
        raise ValueError(f"k must be an integer in [1, {train.shape[0]}] (the training rows), got {k!r}")
    if metric not in KNN_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {list(KNN_METRICS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

    if metric == "cosine":
        # Zero rows keep norm 1 in the division, so they stay zero and sit at distance 1.
        train = train / train.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        query = query / query.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    num_classes = int(y_train.max()) + 1
    ranks = torch.arange(k).expand(min(batch_size, query.shape[0]), k)
    correct = 0
    for start in range(0, query.shape[0], batch_size):
        block = query[start : start + batch_size]
        if metric == "cosine":
            dist = 1.0 - block @ train.T
        else:
            # The direct difference form, not the matmul shortcut, so equal distances stay equal
            # and the documented tie rule holds.
            dist = torch.cdist(block, train, compute_mode="donot_use_mm_for_euclid_dist")
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        votes_for = y_train[order]  # (B, k), nearest first
        counts = torch.zeros(block.shape[0], num_classes, dtype=torch.long).scatter_add_(
            1, votes_for, torch.ones_like(votes_for)
        )
        first_rank = torch.full((block.shape[0], num_classes), k, dtype=torch.long).scatter_reduce_(
            1, votes_for, ranks[: block.shape[0]], reduce="amin"
        )
        tied = counts == counts.max(dim=1, keepdim=True).values
        predicted = torch.where(tied, first_rank, k + 1).argmin(dim=1)
        correct += int((predicted == y_query[start : start + batch_size]).sum())
    return 100.0 * correct / query.shape[0]


def representation_report(
    model: nn.Module,
    reference: nn.Module,
    inputs: Tensor,
    layers: Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Linear CKA per layer between ``model``'s and ``reference``'s features on the same inputs.

    Use it with the original model as reference ("how much did the representation move?") and
    with the retrained model ("how close is it to never having seen the data?").

    Args:
        model: The model under study (e.g. the unlearned one).
        reference: The model to compare with (e.g. the original or the retrained one).
        inputs: ``(N, ...)`` inputs both models accept, ``N >= 2``.
        layers: Layer specs (see :func:`~unlearnkit.metrics.features.feature_layer`) present in
            both models; ``None`` compares each model's automatic feature layer only.
        batch_size: Inputs per forward pass.
        device: Where to run; defaults to each model's device.

    Returns:
        Layer spec -> CKA in [0, 1], in the order of ``layers`` (for ``layers=None``: the one key
        is ``model``'s automatic spec).

    Raises:
        ValueError: If a layer is unknown to either model, or as :func:`linear_cka`.

    Example:
        >>> mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> representation_report(mlp, mlp, torch.rand(6, 4), layers=["1", "3"])
        {'1': 1.0, '3': 1.0}
    """
    if layers is None:
        specs, reference_specs = [feature_layer(model)], [feature_layer(reference)]
    else:
        if isinstance(layers, str) or not isinstance(layers, Sequence) or len(layers) == 0:
            raise ValueError(f"layers must be a non-empty sequence of layer specs or None, got {layers!r}")
        specs = [feature_layer(model, layer) for layer in layers]
        reference_specs = [feature_layer(reference, layer) for layer in layers]
    ours = extract_layer_features(model, inputs, specs, batch_size=batch_size, device=device)
    theirs = extract_layer_features(reference, inputs, reference_specs, batch_size=batch_size, device=device)
    return {spec: linear_cka(ours[spec], theirs[ref]) for spec, ref in zip(specs, reference_specs)}


def weight_change_by_layer(model: nn.Module, reference: nn.Module, *, shared_only: bool = False) -> dict[str, float]:
    """Relative L2 change ``||w - w0|| / ||w0||`` of every parameter tensor, in registration order.

    ``w`` is the tensor in ``model``, ``w0`` the same-named one in ``reference`` (e.g. the
    original model). Buffers (BatchNorm running statistics) are not parameters and are left out.
    A reference tensor of norm 0 gives ``inf`` if it changed and ``0.0`` if it did not (the
    ratio is undefined there, and either value says what happened).

    Args:
        model: The changed model.
        reference: The model it is compared with.
        shared_only: Compare only the parameters both models hold with the same shape, for
            models whose layout may change (an S3T deletion serves shorter prefixes);
            otherwise any difference in names or shapes is an error.

    Raises:
        ValueError: If the two models' parameter names or shapes differ (without
            ``shared_only``).

    Example:
        >>> ref = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = ref.weight.fill_(1.0); _ = ref.bias.fill_(2.0)
        >>> moved = nn.Linear(2, 2)
        >>> moved.load_state_dict(ref.state_dict())
        <All keys matched successfully>
        >>> with torch.no_grad():
        ...     _ = moved.weight[0, 0].add_(1.0)
        >>> weight_change_by_layer(moved, ref)
        {'weight': 0.5, 'bias': 0.0}
    """
    ours, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
    if shared_only:
        ours = {k: v for k, v in ours.items() if k in theirs and theirs[k].shape == v.shape}
        theirs = {k: theirs[k] for k in ours}
    if list(ours) != list(theirs):
        missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        raise ValueError(
            "the models' parameters differ: "
            f"missing from model {missing[:5]}, not in reference {extra[:5]}"
            + ("" if missing or extra else " (same names in a different order)")
        )
    changes: dict[str, float] = {}
    for name, weight in ours.items():
        base = theirs[name]
        if weight.shape != base.shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(weight.shape)} but {tuple(base.shape)} in reference"
            )
        w, w0 = weight.detach().to(torch.float64).cpu(), base.detach().to(torch.float64).cpu()
        diff, norm = float((w - w0).norm()), float(w0.norm())
        changes[name] = diff / norm if norm > 0 else (float("inf") if diff > 0 else 0.0)
    return changes
