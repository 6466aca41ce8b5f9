"""The analyst's figures of one model on one request, compact and JSON-ready.

What the report's analyst views draw (the Unlearning Comparator's views, Lee et al., IEEE TVCG
2026): :func:`model_views` gives a model's prediction matrices (forget set and a seeded test
sample) and its embedding map (penultimate features of a seeded test sample and of the forget
instances, 2-D, with each forget instance's mark); :func:`privacy_evidence` gives the threshold
attacks against the retrained model and the privacy score PS; :func:`split_cka` gives linear
CKA on the forget inputs and on the other inputs separately. The same functions serve the
original, the retrained and every unlearned model. Everything here knows no method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unlearnkit.metrics.embedding import forget_marks, project_2d
from unlearnkit.metrics.features import extract_layer_features, feature_layer
from unlearnkit.metrics.prediction_matrix import prediction_matrix
from unlearnkit.metrics.privacy import attack_signals, privacy_attack
from unlearnkit.metrics.representation import linear_cka
from unlearnkit.utils.modules import predict_logits

Split = tuple[Tensor, Tensor]
#: Decimals kept for coordinates and rates in the JSON: enough for a picture, small files.
DIGITS = 3


def sample_indices(n: int, cap: int, seed: int) -> Tensor:
    """At most ``cap`` of ``range(n)``, drawn with ``seed``, in ascending order (all when
    ``n <= cap``).

    Example:
        >>> sample_indices(5, 10, 0).tolist(), len(sample_indices(100, 7, 0))
        ([0, 1, 2, 3, 4], 7)
        >>> bool((sample_indices(100, 7, 3) == sample_indices(100, 7, 3)).all())
        True
    """
    if n < 0 or cap < 1:
        raise ValueError(f"need n >= 0 and cap >= 1, got n={n}, cap={cap}")
    if n <= cap:
        return torch.arange(n)
    chosen = np.random.default_rng(seed).choice(n, cap, replace=False)
    return torch.from_numpy(np.sort(chosen))


def _rounded(values: np.ndarray | Tensor) -> list[float]:
    return [round(float(v), DIGITS) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def model_views(
    model: nn.Module,
    forget: Split,
    test: Split,
    *,
    num_classes: int,
    seed: int = 0,
    matrix_test_size: int = 1000,
    embedding_test_size: int = 300,
    projection: str = "pca",
    retrained_predictions: Sequence[int] | Tensor | None = None,
    new_labels: Tensor | None = None,
    layer: str | None = None,
) -> dict[str, Any]:
    """A model's prediction matrices and embedding map on one request.

    Args:
        model: The classifier (original, retrained or unlearned).
        forget: The forget set with its true labels.
        test: Test data; seeded samples of it stand for "other" data.
        num_classes: Number of classes.
        seed: Seed of the test samples (and of UMAP).
        matrix_test_size: Test rows of the prediction matrix (seeded sample).
        embedding_test_size: Test rows of the embedding map (seeded sample).
        projection: ``"pca"`` or ``"umap"`` (needs umap-learn), see
            :func:`~unlearnkit.metrics.embedding.project_2d`.
        retrained_predictions: The retrained model's predictions on the forget set, for the
            "over-forgotten" mark (see :func:`~unlearnkit.metrics.embedding.forget_marks`).
        new_labels: Relabel targets of the forget set (relabel goal).
        layer: Feature layer (default: the input of the last ``nn.Linear``).

    Returns:
        ``{"prediction_matrix": {"forget", "test", "test_size"}, "embedding": {...}}``; the
        embedding holds the projection, the layer, the test points (``x``, ``y``, ``label``)
        and the forget instances (``x``, ``y``, ``label``, ``pred``, ``mark``).
    """
    x_forget, y_forget = forget
    x_test, y_test = test
    matrix_rows = sample_indices(len(y_test), matrix_test_size, seed)
    forget_logits = predict_logits(model, x_forget)
    matrices = {
        "forget": prediction_matrix(forget_logits, y_forget, num_classes).to_dict(DIGITS),
        "test": prediction_matrix(predict_logits(model, x_test[matrix_rows]), y_test[matrix_rows], num_classes).to_dict(DIGITS),
        "test_size": len(matrix_rows),
    }
    spec = feature_layer(model, layer)
    map_rows = sample_indices(len(y_test), embedding_test_size, seed)
    features = extract_layer_features(model, torch.cat([x_test[map_rows], x_forget]), [spec])[spec]
    test_xy, forget_xy = project_2d(features[: len(map_rows)], features[len(map_rows):], projection=projection, seed=seed)
    predicted = forget_logits.argmax(dim=1)
    marks = forget_marks(predicted, y_forget, retrained_predictions=retrained_predictions, new_labels=new_labels)
    embedding = {
        "projection": projection, "layer": spec, "fit_on": f"{len(map_rows)} test points (seeded sample)",
        "test": {"x": _rounded(test_xy[:, 0]), "y": _rounded(test_xy[:, 1]), "label": y_test[map_rows].tolist()},
        "forget": {"x": _rounded(forget_xy[:, 0]), "y": _rounded(forget_xy[:, 1]), "label": y_forget.tolist(),
                   "pred": predicted.tolist(), "mark": marks},
        "reference": retrained_predictions is not None,
    }
    return {"prediction_matrix": matrices, "embedding": embedding}


def privacy_evidence(unlearned: nn.Module, retrained: nn.Module | None, forget: Split) -> dict[str, Any]:
    """The threshold attacks telling the unlearned model's forget-set outputs from the
    retrained model's, and PS (see :mod:`unlearnkit.metrics.privacy`).

    Returns:
        :meth:`~unlearnkit.metrics.privacy.PrivacyAttack.to_dict`, or ``{"score": None,
        "reason": ...}`` without a retrained model.
    """
    if retrained is None:
        return {"score": None, "reason": "no retrained reference: the attack compares against retraining"}
    x, y = forget
    return privacy_attack(
        attack_signals(predict_logits(unlearned, x), y), attack_signals(predict_logits(retrained, x), y)
    ).to_dict(digits=DIGITS + 1)


def _cka(a: Tensor, b: Tensor) -> tuple[float | None, str | None]:
    try:
        return linear_cka(a, b), None
    except ValueError as err:  # too few rows, or a layer without variance on this set
        return None, str(err)


def split_cka(
    mine: dict[str, Tensor], references: dict[str, dict[str, Tensor] | None], n_forget: int
) -> list[dict[str, Any]]:
    """Linear CKA per layer on all rows, on the forget rows (the first ``n_forget``) and on the
    other rows of the same features, against each reference.

    A value that is undefined (too few rows, or a layer whose features do not vary over those
    rows, such as a layer of dead units) is ``None`` and its reason is listed in ``undefined``:
    one such layer must not cost the run the rest of its evidence.

    Args:
        mine: Layer -> features of the model under study (forget rows first).
        references: Reference name (``original``, ``retrained``) -> its features on the same
            rows, or ``None`` when there is no such model.
        n_forget: Forget rows at the top of each matrix.

    Returns:
        Per layer: ``{"layer", "<ref>", "<ref>_forget", "<ref>_other", ...}`` (``<ref>`` alone:
        all rows), plus ``undefined`` (a list of reasons) when any value is ``None`` for a reason
        other than a missing reference.

    Example:
        >>> f = {"l": torch.tensor([[0.0], [1.0], [2.0], [4.0]])}
        >>> split_cka(f, {"original": f, "retrained": None}, 2)  # doctest: +NORMALIZE_WHITESPACE
        [{'layer': 'l', 'original': 1.0, 'original_forget': 1.0, 'original_other': 1.0,
          'retrained': None, 'retrained_forget': None, 'retrained_other': None}]
        >>> dead = {"l": torch.zeros(4, 3)}
        >>> split_cka(dead, {"original": f}, 2)[0]["undefined"][0]
        'original on all rows: x has no variance (all rows are equal); CKA is undefined'
    """
    parts = (("", "all rows", slice(None)), ("_forget", "forget", slice(0, n_forget)), ("_other", "other", slice(n_forget, None)))
    rows = []
    for layer, features in mine.items():
        entry: dict[str, Any] = {"layer": layer}
        reasons = []
        for name, reference in references.items():
            for suffix, part, rows_of in parts:
                if reference is None:
                    entry[f"{name}{suffix}"] = None
                    continue
                value, why = _cka(features[rows_of], reference[layer][rows_of])
                entry[f"{name}{suffix}"] = value
                if why:
                    reasons.append(f"{name} on {part}: {why}")
        if reasons:
            entry["undefined"] = reasons
        rows.append(entry)
    return rows


__all__ = ["model_views", "privacy_evidence", "sample_indices", "split_cka"]
