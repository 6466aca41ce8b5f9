"""A 2-D map of a model's penultimate features, and what became of each forget instance.

:func:`project_2d` fits a projection on one set of features (a sample of test points) and
places further points (the forget instances) with the same projection: PCA by default (SVD in
torch, no extra dependency), UMAP when asked for and ``umap-learn`` is installed.
:func:`forget_marks` says per forget instance whether it was forgotten, not forgotten or
over-forgotten. Everything here works on arrays; no model and no method is involved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: Projections :func:`project_2d` knows.
PROJECTIONS: tuple[str, ...] = ("pca", "umap")
#: The marks of :func:`forget_marks`.
MARKS: tuple[str, ...] = ("forgotten", "not forgotten", "over-forgotten")


def _matrix(value: Tensor | np.ndarray, what: str) -> Tensor:
    matrix = torch.as_tensor(value).detach().cpu().to(torch.float64)
    if matrix.dim() != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty (N, D) matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return matrix


def _pca(fit: Tensor, extra: Tensor) -> tuple[Tensor, Tensor]:
    mean = fit.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(fit - mean, full_matrices=False)
    components = vh[:2]
    if components.shape[0] < 2:  # one feature, or one point: the second axis is 0
        components = torch.cat([components, torch.zeros(2 - components.shape[0], fit.shape[1], dtype=fit.dtype)])
    # SVD fixes each axis only up to its sign; make the largest loading positive so that the
    # same features always give the same picture (the convention of scikit-learn's svd_flip).
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    return (fit - mean) @ components.T, (extra - mean) @ components.T


def _umap(fit: Tensor, extra: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    try:
        import umap  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError as err:
        raise ImportError(
            "projection='umap' needs umap-learn (pip install umap-learn); the default 'pca' needs nothing"
        ) from err
    reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, max(2, fit.shape[0] - 1)))
    coordinates = reducer.fit_transform(fit.numpy())
    placed = reducer.transform(extra.numpy()) if extra.shape[0] else np.zeros((0, 2))
    return torch.as_tensor(np.asarray(coordinates), dtype=torch.float64), torch.as_tensor(np.asarray(placed), dtype=torch.float64)


def project_2d(
    fit_features: Tensor | np.ndarray,
    extra_features: Tensor | np.ndarray | None = None,
    *,
    projection: str = "pca",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """2-D coordinates of ``fit_features`` and, by the same projection, ``extra_features``.

    The projection is fitted on ``fit_features`` only, so the points placed afterwards (the
    forget instances) do not shape the map. PCA: the two leading principal axes of the
    centred features, signs fixed so that each axis's largest loading is positive
    (deterministic). UMAP (``projection="umap"``): ``umap.UMAP(random_state=seed)``, needs
    ``umap-learn``.

    Args:
        fit_features: ``(N, D)`` features the projection is fitted on.
        extra_features: ``(M, D)`` features placed with it (``None``: none).
        projection: ``"pca"`` or ``"umap"``.
        seed: Seed of UMAP (PCA draws nothing at random).

    Returns:
        ``(N, 2)`` and ``(M, 2)`` float64 arrays.

    Raises:
        ValueError: On an unknown projection, bad shapes or non-finite features.
        ImportError: If ``projection="umap"`` and umap-learn is not installed.

    Example:
        >>> fit = torch.tensor([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
        >>> a, b = project_2d(fit, torch.tensor([[4.0, 0.5, 0.0]]))
        >>> a.round(3).tolist()[:2], b.round(3).tolist()  # first axis x (spread 4), second y
        ([[-2.0, 0.0], [2.0, 0.0]], [[4.0, 0.5]])
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    fit = _matrix(fit_features, "fit_features")
    extra = fit[:0] if extra_features is None else _matrix(extra_features, "extra_features")
    if extra.shape[0] and extra.shape[1] != fit.shape[1]:
        raise ValueError(f"extra_features have {extra.shape[1]} dimensions, fit_features {fit.shape[1]}")
    placed = _pca(fit, extra) if projection == "pca" else _umap(fit, extra, seed)
    return placed[0].numpy(), placed[1].numpy()


def _labels(value: Any, what: str) -> np.ndarray:
    array = np.asarray(value.detach().cpu().numpy() if isinstance(value, Tensor) else value)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{what} must be a 1-D array of integer classes, got {array.dtype} {array.shape}")
    return array


def forget_marks(
    unlearned_predictions: Sequence[int] | Tensor | np.ndarray,
    labels: Sequence[int] | Tensor | np.ndarray,
    *,
    retrained_predictions: Sequence[int] | Tensor | np.ndarray | None = None,
    new_labels: Sequence[int] | Tensor | np.ndarray | None = None,
) -> list[str]:
    """What became of each forget instance under the unlearned model.

    Misclassify goal (``new_labels`` is ``None``): "not forgotten" if the unlearned model still
    predicts the instance's label; otherwise, with a retrained reference, "forgotten" if the
    retrained model is wrong too and "over-forgotten" if the retrained model predicts the label
    (the unlearned model erased more than retraining would: retraining generalises to it);
    without a reference, "forgotten". Relabel goal: "forgotten" if the unlearned model predicts
    the new label, else "not forgotten" (retraining defines no new label, so there is no
    over-forgetting).

    Args:
        unlearned_predictions: The unlearned model's predicted class per forget instance.
        labels: True labels.
        retrained_predictions: The retrained model's predictions (optional).
        new_labels: Relabel targets (relabel goal only).

    Returns:
        One of :data:`MARKS` per instance.

    Raises:
        ValueError: If the arrays are not 1-D integer arrays of one length.

    Example:
        >>> forget_marks([1, 0, 0], [1, 1, 2], retrained_predictions=[0, 0, 2])
        ['not forgotten', 'forgotten', 'over-forgotten']
        >>> forget_marks([3, 0], [1, 1], new_labels=[3, 2])
        ['forgotten', 'not forgotten']
    """
    predicted = _labels(unlearned_predictions, "unlearned_predictions")
    true = _labels(labels, "labels")
    arrays = {"labels": true}
    if retrained_predictions is not None:
        arrays["retrained_predictions"] = _labels(retrained_predictions, "retrained_predictions")
    if new_labels is not None:
        arrays["new_labels"] = _labels(new_labels, "new_labels")
    for name, array in arrays.items():
        if array.shape != predicted.shape:
            raise ValueError(f"{name} has {array.size} entries, unlearned_predictions {predicted.size}")
    if new_labels is not None:
        return ["forgotten" if p == t else "not forgotten" for p, t in zip(predicted, arrays["new_labels"])]
    reference = arrays.get("retrained_predictions")
    marks = []
    for i, (p, y) in enumerate(zip(predicted, true)):
        if p == y:
            marks.append("not forgotten")
        elif reference is not None and reference[i] == y:
            marks.append("over-forgotten")
        else:
            marks.append("forgotten")
    return marks


__all__ = ["MARKS", "PROJECTIONS", "forget_marks", "project_2d"]
