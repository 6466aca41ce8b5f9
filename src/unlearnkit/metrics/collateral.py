"""Collateral damage: what unlearning did to the test instances that resemble the forgotten ones.

Aggregate test accuracy hides local harm: forgetting a "7" may break the few test "7"s that look
most like it while the other 99 % of the test set is untouched. This metric looks where the
harm is most likely: at each forget instance's nearest test instances in the *original* model's
feature space (the neighbourhood the instance influenced), and at the test instances of the
forget instances' classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unlearnkit.metrics.features import extract_features, feature_layer
from unlearnkit.utils.modules import model_dtype, predict_logits, resolve_device


@dataclass(frozen=True)
class CollateralDamage:
    """Change (unlearned minus original) on the test instances near each forget instance.

    Accuracies are in percent, so their changes are percentage points; confidences are the
    softmax probability of the true label, so their changes lie in [-1, 1]. Negative means the
    unlearned model is worse there.

    Attributes:
        layer: Layer spec of the original model's feature space the neighbours were found in.
        neighbours: Neighbours per forget instance.
        neighbour_indices: Per forget instance, its neighbours' indices into the test set,
            nearest (cosine) first.
        original_accuracy: Per forget instance, the original model's accuracy on its neighbours.
        accuracy_change: Per forget instance, the change in accuracy on its neighbours.
        original_confidence: Per forget instance, the original mean true-label confidence on
            its neighbours.
        confidence_change: Per forget instance, the change in mean true-label confidence.
        mean_accuracy_change: Mean of ``accuracy_change`` over forget instances.
        mean_confidence_change: Mean of ``confidence_change`` over forget instances.
        forget_classes: The distinct classes of the forget instances, ascending.
        class_accuracy_change: Per class of ``forget_classes``, the change in accuracy on that
            class's test instances.
        forget_class_accuracy_change: The change in accuracy on all test instances of the
            forget classes together.

    Example:
        >>> d = CollateralDamage("1:input", 1, ((0,),), (100.0,), (0.0,), (0.9,), (-0.1,),
        ...                      0.0, -0.1, (2,), (0.0,), 0.0)
        >>> d.to_dict()["neighbour_indices"]
        [[0]]
    """

    layer: str
    neighbours: int
    neighbour_indices: tuple[tuple[int, ...], ...]
    original_accuracy: tuple[float, ...]
    accuracy_change: tuple[float, ...]
    original_confidence: tuple[float, ...]
    confidence_change: tuple[float, ...]
    mean_accuracy_change: float
    mean_confidence_change: float
    forget_classes: tuple[int, ...]
    class_accuracy_change: tuple[float, ...]
    forget_class_accuracy_change: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists, so a JSON round trip gives the same value)."""

        def plain(value: Any) -> Any:
            return [plain(v) for v in value] if isinstance(value, tuple) else value

        return {name: plain(getattr(self, name)) for name in self.__dataclass_fields__}


def _checked_pair(inputs: Tensor, labels: Tensor, num_classes: int | None, what: str) -> tuple[Tensor, Tensor]:
    """``(inputs, labels)`` as tensors, checked non-empty, aligned and integer-labelled."""
    inputs, labels = torch.as_tensor(inputs), torch.as_tensor(labels)
    if labels.dim() != 1 or inputs.dim() == 0 or inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{what}: need inputs (N, ...) and labels (N,), got {tuple(inputs.shape)} and {tuple(labels.shape)}"
        )
    if labels.shape[0] == 0:
        raise ValueError(f"{what}: the set is empty")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be integer classes, got dtype {labels.dtype}")
    labels = labels.long()
    if num_classes is not None and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what}: labels must lie in [0, {num_classes}) for a model with {num_classes} outputs, "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return inputs, labels


def collateral_damage(
    original: nn.Module,
    unlearned: nn.Module,
    forget_inputs: Tensor,
    forget_labels: Tensor,
    test_inputs: Tensor,
    test_labels: Tensor,
    neighbours: int = 10,
    layer: str | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> CollateralDamage:
    """Accuracy and confidence change on each forget instance's nearest test instances.

    For every forget instance, its ``neighbours`` nearest test instances are found by cosine
    distance in the ORIGINAL model's features (``layer``; default the input of its last
    ``nn.Linear``, see :func:`~unlearnkit.metrics.features.feature_layer`), so the neighbourhood
    does not depend on the method being judged. Ties in distance go to the lower test index.
    On those neighbours, both models' accuracy and mean true-label confidence are compared.
    Separately, accuracy is compared on the test instances of each forget class.

    Args:
        original: The model before unlearning.
        unlearned: The model after unlearning (same classes).
        forget_inputs: ``(F, ...)`` forget inputs.
        forget_labels: ``(F,)`` their labels.
        test_inputs: ``(M, ...)`` held-out inputs the neighbours are drawn from.
        test_labels: ``(M,)`` their labels.
        neighbours: Test instances per forget instance, ``1 <= neighbours <= M``.
        layer: Layer spec of the original model's feature space; ``None`` for the automatic one.
        batch_size: Inputs per forward pass.
        device: Where to run; defaults to each model's device.

    Raises:
        ValueError: On empty or misaligned sets, labels outside the models' classes, models with
            different numbers of classes, ``neighbours`` out of range, an unknown layer, or a
            forget class without test instances.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> x = torch.rand(6, 2, generator=torch.Generator().manual_seed(0))
        >>> y = torch.tensor([0, 1, 0, 1, 0, 1])
        >>> damage = collateral_damage(model, model, x[:2], y[:2], x, y, neighbours=3)
        >>> damage.mean_accuracy_change, damage.forget_class_accuracy_change, damage.forget_classes
        (0.0, 0.0, (0, 1))
    """
    test_inputs, test_labels = _checked_pair(test_inputs, test_labels, None, "test set")
    forget_inputs, forget_labels = _checked_pair(forget_inputs, forget_labels, None, "forget set")
    n_test = test_labels.shape[0]
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or not 1 <= neighbours <= n_test:
        raise ValueError(
            f"neighbours must be an integer in [1, {n_test}] (the test set's size), got {neighbours!r}"
        )
    spec = feature_layer(original, layer)

    logits_o = predict_logits(
        original,
        test_inputs.to(model_dtype(original)),
        batch_size=batch_size,
        device=resolve_device(device, original),
    ).cpu()
    logits_u = predict_logits(
        unlearned,
        test_inputs.to(model_dtype(unlearned)),
        batch_size=batch_size,
        device=resolve_device(device, unlearned),
    ).cpu()
    if logits_o.shape != logits_u.shape:
        raise ValueError(
            f"the models disagree on the number of classes: {logits_o.shape[1]} (original) "
            f"vs {logits_u.shape[1]} (unlearned)"
        )
    num_classes = logits_o.shape[1]
    _checked_pair(test_inputs, test_labels, num_classes, "test set")
    _checked_pair(forget_inputs, forget_labels, num_classes, "forget set")
    test_labels, forget_labels = test_labels.cpu(), forget_labels.cpu()
    classes = sorted(set(forget_labels.tolist()))
    absent = [c for c in classes if not (test_labels == c).any()]
    if absent:
        raise ValueError(f"no test instance has forget class(es) {absent}; their accuracy change is undefined")

    # Neighbourhoods in the original model's representation, cosine similarity, nearest first.
    feats_test = extract_features(original, test_inputs, spec, batch_size=batch_size, device=device)
    feats_forget = extract_features(original, forget_inputs, spec, batch_size=batch_size, device=device)
    unit_test = _unit_rows(feats_test.cpu().to(torch.float64))
    unit_forget = _unit_rows(feats_forget.cpu().to(torch.float64))
    distance = 1.0 - unit_forget @ unit_test.T
    nearest = torch.sort(distance, dim=1, stable=True).indices[:, :neighbours]  # (F, neighbours)

    correct_o = (logits_o.argmax(dim=1) == test_labels).to(torch.float64)
    correct_u = (logits_u.argmax(dim=1) == test_labels).to(torch.float64)
    conf_o = logits_o.to(torch.float64).softmax(dim=1).gather(1, test_labels[:, None]).squeeze(1)
    conf_u = logits_u.to(torch.float64).softmax(dim=1).gather(1, test_labels[:, None]).squeeze(1)

    acc_o = 100.0 * correct_o[nearest].mean(dim=1)
    acc_change = 100.0 * (correct_u[nearest] - correct_o[nearest]).mean(dim=1)
    conf_o_near = conf_o[nearest].mean(dim=1)
    conf_change = (conf_u[nearest] - conf_o[nearest]).mean(dim=1)
    class_change = [
        100.0 * float((correct_u[test_labels == c] - correct_o[test_labels == c]).mean()) for c in classes
    ]
    in_classes = torch.isin(test_labels, torch.tensor(classes))
    pooled = 100.0 * float((correct_u[in_classes] - correct_o[in_classes]).mean())

    return CollateralDamage(
        layer=spec,
        neighbours=neighbours,
        neighbour_indices=tuple(tuple(row) for row in nearest.tolist()),
        original_accuracy=tuple(acc_o.tolist()),
        accuracy_change=tuple(acc_change.tolist()),
        original_confidence=tuple(conf_o_near.tolist()),
        confidence_change=tuple(conf_change.tolist()),
        mean_accuracy_change=float(acc_change.mean()),
        mean_confidence_change=float(conf_change.mean()),
        forget_classes=tuple(classes),
        class_accuracy_change=tuple(class_change),
        forget_class_accuracy_change=pooled,
    )


def _unit_rows(matrix: Tensor) -> Tensor:
    """Rows scaled to unit norm; all-zero rows stay zero (cosine similarity 0 to everything)."""
    return matrix / matrix.norm(dim=1, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)
