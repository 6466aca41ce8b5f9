"""The evidence that a forget request was honoured, gathered from models and data.

Accuracy on the forget set is the weakest evidence there is: a model can misclassify an
instance and still carry it in its representation or leak its membership. :func:`gather_evidence`
puts the field's other figures next to it for one unlearned model: membership attacks, the gap
to a model retrained without the forget set, representation similarity to the original and to
the retrained model, k-NN accuracy of the forget set on the model's own features, collateral
damage, relearn time, per-class accuracy and the weight change per layer, and a verdict whose
thresholds are stated in it. :func:`model_figures` gives the figures that are measured the same
way for the original and the retrained reference. Everything here knows no method: it takes
models and data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unlearnkit.errors import NonFiniteError
from unlearnkit.metrics.collateral import collateral_damage
from unlearnkit.metrics.features import extract_layer_features, feature_layer
from unlearnkit.metrics.gap import AVERAGE_GAP_KEYS, average_gap
from unlearnkit.metrics.membership import (
    entropy_mia_from_scores,
    loss_auc_from_losses,
    membership_signals,
    mia_efficacy_from_scores,
    true_label_probability,
)
from unlearnkit.metrics.relearn import relearn_steps
from unlearnkit.metrics.representation import knn_accuracy, weight_change_by_layer
from unlearnkit.scenarios.views import model_views, privacy_evidence, sample_indices, split_cka
from unlearnkit.utils.modules import predict_logits

Split = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class VerdictThresholds:
    """The thresholds of the verdict; each check in the verdict states the one it used.

    Attributes:
        goal_share: Percent of forget instances that must meet the request's goal.
        max_test_drop: Largest allowed drop of Acc(D_test), in points, against the original.
        max_retain_drop: Largest allowed drop of Acc(D_r), in points.
        logit_only_knn: A model whose forget instances all fail at the logit level
            (Acc(D_f) <= ``100 - logit_only_ua``) but whose own features still place more than
            this percent of them with their class (5-NN against the retain set) has forgotten
            "at the logit level only".
        logit_only_ua: See ``logit_only_knn``.
    """

    goal_share: float = 100.0
    max_test_drop: float = 2.0
    max_retain_drop: float = 2.0
    logit_only_knn: float = 50.0
    logit_only_ua: float = 50.0


def model_figures(
    model: nn.Module, forget: Split, retain: Split, test: Split, *, num_classes: int, seed: int = 0,
    attack_samples: int | None = 2000,
) -> dict[str, Any]:
    """Accuracies, membership attacks and per-class test accuracy of one model on one request:
    what is measured the same way for the original, the retrained reference and an unlearned
    model. The attacks train on at most ``attack_samples`` member and as many non-member rows
    (seeded subsample; ``None``: all, as SalUn does): an RBF SVC grows with the square of its
    training set, and on MNIST's 10,000 test rows it would dominate a benchmark's time.

    Returns:
        ``acc/forget``, ``acc/retain``, ``acc/test`` (percent), ``ua`` (100 - Acc(D_f)),
        ``mia_efficacy`` (percent of D_f an SVC on p_y calls non-member; SalUn),
        ``entropy_mia`` (percent of D_f a logistic regression on entropy calls member; SSD),
        ``mia_calls`` (the SVC's member call on each forget instance),
        ``mia_attack_accuracy`` (balanced accuracy of the SVC on retain vs test: near 50, the
        population attack tells nothing), ``loss_auc`` (AUC of D_f vs D_test by loss, lower
        loss = member; 0.5 = indistinguishable) and ``per_class_test`` (percent, one per class;
        ``None`` for a class without test instances).
    """
    # One forward pass per split; every figure below is read from its signals.
    signals = {
        name: membership_signals(model, x, y, name=name)
        for name, (x, y) in (("forget", forget), ("retain", retain), ("test", test))
    }
    figures: dict[str, Any] = {f"acc/{name}": 100.0 * float(sig["correct"].mean()) for name, sig in signals.items()}
    figures["ua"] = 100.0 - figures["acc/forget"]
    svc = mia_efficacy_from_scores(
        signals["retain"]["p_y"], signals["test"]["p_y"], signals["forget"]["p_y"], seed=seed, max_samples=attack_samples
    )
    figures["mia_efficacy"] = svc.score
    figures["mia_calls"] = list(svc.target_is_member)
    figures["mia_attack_accuracy"] = svc.attack_accuracy
    figures["entropy_mia"] = entropy_mia_from_scores(
        signals["retain"]["entropy"], signals["test"]["entropy"], signals["forget"]["entropy"],
        seed=seed, max_samples=attack_samples,
    ).score
    figures["loss_auc"] = loss_auc_from_losses(signals["forget"]["loss"], signals["test"]["loss"])
    test_labels = test[1].cpu().numpy()
    correct = signals["test"]["correct"]
    figures["per_class_test"] = [
        100.0 * float(correct[test_labels == c].mean()) if bool((test_labels == c).any()) else None
        for c in range(num_classes)
    ]
    return figures


def _gap_inputs(figures: dict[str, Any]) -> dict[str, float]:
    return {
        "ua": figures["ua"], "mia_efficacy": figures["mia_efficacy"],
        "ra": figures["acc/retain"], "ta": figures["acc/test"],
    }


def representation_layers(model: nn.Module) -> list[str]:
    """The layers compared layer by layer: the output of every ``nn.Conv*`` and ``nn.Linear``
    module except the last ``nn.Linear`` (its output is the logits), then the automatic feature
    layer (the input of the last ``nn.Linear``)."""
    weighted = [
        name for name, m in model.named_modules()
        if name and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    ]
    automatic = feature_layer(model)
    return [n for n in weighted[:-1]] + [automatic] if weighted else [automatic]


def _holds_layers(model: nn.Module, layers: Sequence[str]) -> bool:
    """Whether ``model`` has a module of every layer spec's name (``"name"`` or ``"name:input"``)."""
    names = {name for name, _ in model.named_modules()}
    return all(spec.split(":")[0] in names for spec in layers)


def gather_evidence(
    original: nn.Module,
    unlearned: nn.Module,
    forget: Split,
    retain: Split,
    test: Split,
    *,
    goal_met: Sequence[bool],
    ids: Sequence[Any],
    original_figures: dict[str, Any],
    retrained: nn.Module | None = None,
    retrained_figures: dict[str, Any] | None = None,
    num_classes: int,
    seed: int = 0,
    relearn_max_steps: int = 1000,
    knn_index_size: int = 2000,
    probe_size: int = 1000,
    thresholds: VerdictThresholds = VerdictThresholds(),
    feature_cache: dict[tuple[int, tuple[str, ...]], dict[str, Tensor]] | None = None,
    new_labels: Tensor | None = None,
    projection: str = "pca",
    views: bool = True,
) -> dict[str, Any]:
    """Every figure of the evidence for one unlearned model, JSON-ready.

    Args:
        original: The model before unlearning.
        unlearned: The model after.
        forget: The forget set ``(inputs, labels)`` with its true labels.
        retain: Retain data (members).
        test: Test data (non-members).
        goal_met: Whether each forget instance meets the request's goal (the result's outcomes).
        ids: The forget instances' ids, in order.
        original_figures: :func:`model_figures` of the original model on this request.
        retrained: The model retrained without the forget set, if there is one.
        retrained_figures: :func:`model_figures` of ``retrained``.
        num_classes: Number of classes.
        seed: Seed of the attacks and of the relearn run.
        relearn_max_steps: Cap of the relearn run.
        knn_index_size: Retain rows used as the k-NN index (the first ones).
        probe_size: Test rows (a sample seeded with ``seed``) beside the forget set on which CKA
            is measured: the "other" data of the split CKA.
        thresholds: The verdict's thresholds.
        feature_cache: A dict kept across the runs of one request (same forget and test data):
            the original's and the retrained model's layer features are then extracted once
            per request instead of once per run.
        new_labels: Relabel targets of the forget set (relabel goal), for the embedding marks.
        projection: Projection of the embedding map, ``"pca"`` or ``"umap"`` (umap-learn).
        views: Also draw the analyst views (prediction matrices, embedding map), which only
            the HTML report shows; benchmark grids keep figures only and skip them.

    Returns:
        The ``evidence`` object of the results JSON (see the README): the figures of
        :func:`model_figures`, ``gap`` (SalUn's average gap to the retrained model and its four
        terms, or ``None``), ``cka`` and ``cka_layers`` (linear CKA on the forget inputs and up
        to ``probe_size`` test inputs, to the original and the retrained model; each ``cka_layers`` entry also holds
        ``original_forget``, ``original_other``, ``retrained_forget`` and ``retrained_other``:
        CKA on the forget inputs and on the test sample alone; a value that is undefined on a
        layer, such as one whose features do not vary, is ``None`` with its reason in the entry's
        ``undefined``), ``knn_forget``, ``weight_change``,
        ``collateral``, ``relearn``, ``instances`` (per forget instance: the SVC's member call
        and ``p_y``), ``logit_only``, ``verdict``, ``views`` (with ``views``: prediction matrices and
        embedding map, :func:`~unlearnkit.scenarios.views.model_views`) and ``privacy`` (threshold
        attacks against the retrained model and the privacy score PS,
        :func:`~unlearnkit.scenarios.views.privacy_evidence`).
    """
    if retrained is not None and retrained_figures is None:
        raise ValueError("retrained_figures are needed with a retrained model")
    figures = model_figures(unlearned, forget, retain, test, num_classes=num_classes, seed=seed)
    evidence: dict[str, Any] = dict(figures)

    # Gap to retraining (SalUn): mean of |X - X_retrained| over UA, MIA-efficacy, RA, TA.
    if retrained_figures is not None:
        mine, theirs = _gap_inputs(figures), _gap_inputs(retrained_figures)
        evidence["gap"] = {"average": average_gap(mine, theirs), **{k: abs(mine[k] - theirs[k]) for k in AVERAGE_GAP_KEYS}}
    else:
        evidence["gap"] = None

    # Representation: CKA layer by layer on the forget inputs and (a seeded sample of
    # ``probe_size``) test inputs, together and each alone. Bounded because conv features are
    # wide: 10,000 MNIST test rows would take about 1 GB per conv layer and model, and CKA's
    # Gram matrices grow with the square of N.
    probe = torch.cat([forget[0], test[0][sample_indices(len(test[0]), probe_size, seed)]])
    layers = representation_layers(unlearned)
    mine_feats = extract_layer_features(unlearned, probe, layers)

    def reference_features(model: nn.Module) -> dict[str, Tensor]:
        # The original and the retrained model are the same for every run of a request.
        if feature_cache is None:
            return extract_layer_features(model, probe, layers)
        key = (id(model), tuple(layers))
        if key not in feature_cache:
            feature_cache[key] = extract_layer_features(model, probe, layers)
        return feature_cache[key]

    original_feats = reference_features(original)
    # Layer by layer only against a reference that has these layers: a method that trains its
    # own model (S3T) has another architecture than the retrained one, and its outputs are
    # still compared below (gap, privacy attack, embedding marks).
    retrained_feats = reference_features(retrained) if retrained is not None and _holds_layers(retrained, layers) else None
    n_forget = forget[0].shape[0]
    evidence["cka_layers"] = split_cka(mine_feats, {"original": original_feats, "retrained": retrained_feats}, n_forget)
    evidence["cka"] = {k: evidence["cka_layers"][-1][k] for k in ("original", "retrained")}

    # k-NN on the model's own features: do the forget instances still sit with their class?
    automatic = layers[-1]
    index_x, index_y = retain[0][:knn_index_size], retain[1][:knn_index_size]
    index_feats = extract_layer_features(unlearned, index_x, [automatic])[automatic]
    forget_feats = mine_feats[automatic][:n_forget]
    evidence["knn_forget"] = knn_accuracy(index_feats, index_y, forget_feats, forget[1], k=5)

    evidence["weight_change"] = [
        {"parameter": name, "relative_change": change}
        for name, change in weight_change_by_layer(unlearned, original, shared_only=True).items()
    ]
    damage = collateral_damage(original, unlearned, forget[0], forget[1], test[0], test[1])
    evidence["collateral"] = {
        "neighbour_accuracy_change": damage.mean_accuracy_change,
        "neighbour_confidence_change": damage.mean_confidence_change,
        "class_accuracy_change": damage.forget_class_accuracy_change,
    }
    try:
        relearn = relearn_steps(
            unlearned, forget[0], forget[1], original_figures["acc/forget"], max_steps=relearn_max_steps, seed=seed
        )
        evidence["relearn"] = {"steps": relearn.steps, "reached": relearn.reached, "max_steps": relearn_max_steps}
    except NonFiniteError as err:
        # A model with huge (finite) weights can overflow under plain SGD: say so, don't guess.
        evidence["relearn"] = {"steps": None, "reached": False, "max_steps": relearn_max_steps, "error": str(err)}

    svc_calls = figures["mia_calls"]
    p_y = true_label_probability(unlearned, forget[0], forget[1])
    evidence["instances"] = [
        {"id": ids[i], "predicted_member": svc_calls[i], "member_score": float(p_y[i])} for i in range(len(ids))
    ]
    evidence["logit_only"] = bool(
        figures["ua"] >= thresholds.logit_only_ua and evidence["knn_forget"] > thresholds.logit_only_knn
    )
    evidence["verdict"] = verdict(evidence, original_figures, goal_met, thresholds)

    # The analyst's views (prediction matrices, embedding map), and the privacy attack.
    if views:
        retrained_predictions = None if retrained is None else predict_logits(retrained, forget[0]).argmax(dim=1)
        evidence["views"] = model_views(
            unlearned, forget, test, num_classes=num_classes, seed=seed, projection=projection,
            retrained_predictions=retrained_predictions, new_labels=new_labels,
        )
    evidence["privacy"] = privacy_evidence(unlearned, retrained, forget)
    return evidence


def verdict(
    evidence: dict[str, Any],
    original_figures: dict[str, Any],
    goal_met: Sequence[bool],
    thresholds: VerdictThresholds = VerdictThresholds(),
) -> dict[str, Any]:
    """The verdict on one unlearned model: required checks (goal, utility) that decide
    ``passed``, and informational ones (representation, membership against the retrained model)
    that are reported with their thresholds but do not decide it.

    Returns:
        ``{"passed": bool, "thresholds": {...}, "checks": [{"name", "value", "threshold",
        "passed", "required"}, ...]}``.
    """
    share = 100.0 * sum(bool(g) for g in goal_met) / max(len(goal_met), 1)
    test_drop = original_figures["acc/test"] - evidence["acc/test"]
    retain_drop = original_figures["acc/retain"] - evidence["acc/retain"]
    checks = [
        {"name": "forget instances meeting the goal (%)", "value": share,
         "threshold": f">= {thresholds.goal_share:g}", "passed": share >= thresholds.goal_share, "required": True},
        {"name": "drop of Acc(D_test) (points)", "value": test_drop,
         "threshold": f"<= {thresholds.max_test_drop:g}", "passed": test_drop <= thresholds.max_test_drop, "required": True},
        {"name": "drop of Acc(D_r) (points)", "value": retain_drop,
         "threshold": f"<= {thresholds.max_retain_drop:g}", "passed": retain_drop <= thresholds.max_retain_drop, "required": True},
        {"name": "5-NN accuracy of D_f on the model's features (%)", "value": evidence["knn_forget"],
         "threshold": f"<= {thresholds.logit_only_knn:g} when Acc(D_f) <= {100 - thresholds.logit_only_ua:g}",
         "passed": not evidence["logit_only"], "required": False},
    ]
    if evidence.get("gap") is not None:
        checks.append({
            "name": "average gap to the retrained model (points)", "value": evidence["gap"]["average"],
            "threshold": "informational: 0 = indistinguishable from retraining by UA, MIA, RA, TA",
            "passed": None, "required": False,
        })
    return {
        "passed": all(c["passed"] for c in checks if c["required"]),
        "thresholds": asdict(thresholds),
        "checks": checks,
    }
