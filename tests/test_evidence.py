"""The evidence of one run (scenarios.evidence) and the retrained reference cache."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor

import unlearnkit
from unlearnkit.data import DataSplit
from unlearnkit.metrics import average_gap, linear_cka
from unlearnkit.models import SmallCNN, load_pretrained, load_retrained
from unlearnkit.models import pretrained as pretrained_module
from unlearnkit.scenarios.evidence import VerdictThresholds, gather_evidence, model_figures, representation_layers, verdict


@pytest.fixture(scope="module")
def splits(digits: DataSplit, forget_indices: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    keep = torch.ones(len(digits.y_train), dtype=torch.bool)
    keep[forget_indices] = False
    return {
        "forget": (digits.x_train[forget_indices], digits.y_train[forget_indices]),
        "retain": (digits.x_train[keep][:600], digits.y_train[keep][:600]),
        "test": (digits.x_test, digits.y_test),
    }


def _figures(model: torch.nn.Module, splits: dict) -> dict:
    return model_figures(model, splits["forget"], splits["retain"], splits["test"], num_classes=10)


def _evidence(original, unlearned, splits, goal_met, retrained=None, **kwargs):
    return gather_evidence(
        original, unlearned, splits["forget"], splits["retain"], splits["test"], goal_met=goal_met,
        ids=list(range(len(goal_met))), original_figures=_figures(original, splits),
        retrained=retrained, retrained_figures=None if retrained is None else _figures(retrained, splits),
        num_classes=10, relearn_max_steps=200, **kwargs,
    )


def test_model_figures_match_their_definitions(trained_cnn: SmallCNN, splits: dict) -> None:
    figures = _figures(trained_cnn, splits)
    measured = unlearnkit.evaluate(trained_cnn, splits)
    for split in ("forget", "retain", "test"):
        assert figures[f"acc/{split}"] == pytest.approx(measured[f"acc/{split}"], abs=1e-4)
    assert figures["ua"] == 100.0 - figures["acc/forget"]
    x, y = splits["test"]
    for c in range(10):
        assert figures["per_class_test"][c] == pytest.approx(unlearnkit.evaluate(trained_cnn, {"c": (x[y == c], y[y == c])})["acc/c"])
    assert 0 <= figures["mia_efficacy"] <= 100 and 0 <= figures["entropy_mia"] <= 100
    assert 0 <= figures["loss_auc"] <= 1 and 0 <= figures["mia_attack_accuracy"] <= 100
    # One forward pass per split gives the same figures as the attacks run on the model.
    from unlearnkit.metrics import entropy_mia, loss_threshold_auc, mia_efficacy

    svc = mia_efficacy(trained_cnn, splits["retain"], splits["test"], splits["forget"], max_samples=2000)
    assert figures["mia_efficacy"] == svc.score and figures["mia_calls"] == list(svc.target_is_member)
    assert figures["mia_attack_accuracy"] == svc.attack_accuracy
    assert figures["entropy_mia"] == entropy_mia(trained_cnn, splits["retain"], splits["test"], splits["forget"], max_samples=2000).score
    assert figures["loss_auc"] == loss_threshold_auc(trained_cnn, splits["forget"], splits["test"])


def test_an_unchanged_model_is_the_original_in_every_figure(trained_cnn: SmallCNN, splits: dict) -> None:
    evidence = _evidence(trained_cnn, copy.deepcopy(trained_cnn), splits, [False] * 4, retrained=trained_cnn)
    assert evidence["cka"] == {"original": pytest.approx(1.0), "retrained": pytest.approx(1.0)}
    assert all(row["original"] == pytest.approx(1.0) for row in evidence["cka_layers"])
    assert evidence["gap"]["average"] == 0.0
    assert all(w["relative_change"] == 0.0 for w in evidence["weight_change"])
    assert evidence["collateral"] == {
        "neighbour_accuracy_change": 0.0, "neighbour_confidence_change": 0.0, "class_accuracy_change": 0.0
    }
    assert evidence["relearn"] == {"steps": 0, "reached": True, "max_steps": 200}
    assert evidence["ua"] == 0.0 and not evidence["logit_only"]
    checks = {c["name"]: c for c in evidence["verdict"]["checks"]}
    assert checks["forget instances meeting the goal (%)"]["value"] == 0.0
    assert not evidence["verdict"]["passed"]  # nothing was forgotten
    assert checks["drop of Acc(D_test) (points)"]["value"] == 0.0 and checks["drop of Acc(D_test) (points)"]["passed"]


def test_a_head_only_change_is_flagged_as_logit_only(trained_cnn: SmallCNN, splits: dict) -> None:
    """Moving only the head's rows of the forget classes misclassifies them while the features
    (CKA at the feature layer 1, 5-NN on them) still hold them: forgotten at the logit level only."""
    unlearned = copy.deepcopy(trained_cnn)
    forget_classes = splits["forget"][1].unique()
    with torch.no_grad():
        unlearned.head[2].bias[forget_classes] -= 100.0
    evidence = _evidence(trained_cnn, unlearned, splits, [True] * 4, retrained=trained_cnn)
    assert evidence["acc/forget"] == 0.0 and evidence["ua"] == 100.0
    assert evidence["cka"]["original"] == pytest.approx(1.0)  # the feature layer did not move
    assert evidence["knn_forget"] > 50
    assert evidence["logit_only"]
    changed = [w["parameter"] for w in evidence["weight_change"] if w["relative_change"] > 0]
    assert changed == ["head.2.bias"]
    assert evidence["relearn"]["reached"] and evidence["relearn"]["steps"] > 0
    assert evidence["collateral"]["class_accuracy_change"] < -50  # whole classes are gone
    assert not evidence["verdict"]["passed"]  # utility check fails: test accuracy collapsed on those classes


def test_a_layer_of_dead_units_leaves_its_cka_undefined_not_the_evidence(trained_cnn: SmallCNN, splits: dict) -> None:
    """A model whose feature layer went dead (every unit 0 on every input) has no CKA on that
    layer; the rest of the evidence is still measured and the reason is on record."""
    unlearned = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        unlearned.head[0].bias.fill_(-1e4)  # ReLU after it: the feature layer is all zeros
    evidence = _evidence(trained_cnn, unlearned, splits, [True] * 4, retrained=trained_cnn)
    last = evidence["cka_layers"][-1]
    assert evidence["cka"] == {"original": None, "retrained": None}
    assert last["original_forget"] is None and last["retrained_other"] is None
    assert any("no variance" in why and why.startswith("original on all rows") for why in last["undefined"])
    earlier = evidence["cka_layers"][0]  # the convolutions did not change
    assert earlier["original"] == pytest.approx(1.0) and "undefined" not in earlier
    assert evidence["verdict"]["checks"] and evidence["knn_forget"] is not None


def test_gap_is_salun_average_gap_to_the_retrained_figures(trained_cnn: SmallCNN, splits: dict, digits: DataSplit) -> None:
    result = unlearnkit.unlearn(trained_cnn, splits["forget"], method="neggrad", lr=0.05)
    torch.manual_seed(0)
    other = SmallCNN(1, 10, image_size=8)  # an untrained "retrained" model: a large, checkable gap
    evidence = _evidence(trained_cnn, result.model, splits, [o.goal_met for o in result.outcomes], retrained=other)
    mine, theirs = _figures(result.model, splits), _figures(other, splits)

    def terms(f: dict) -> dict:
        return {"ua": f["ua"], "mia_efficacy": f["mia_efficacy"], "ra": f["acc/retain"], "ta": f["acc/test"]}

    assert evidence["gap"]["average"] == pytest.approx(average_gap(terms(mine), terms(theirs)))
    assert evidence["gap"]["ra"] == pytest.approx(abs(mine["acc/retain"] - theirs["acc/retain"]))
    probe = torch.cat([splits["forget"][0], splits["test"][0]])
    from unlearnkit.metrics import extract_features

    expected = linear_cka(extract_features(result.model, probe), extract_features(other, probe))
    assert evidence["cka"]["retrained"] == pytest.approx(expected)
    assert [i["id"] for i in evidence["instances"]] == [0, 1, 2, 3]
    assert all(isinstance(i["predicted_member"], bool) and 0 <= i["member_score"] <= 1 for i in evidence["instances"])


def test_verdict_thresholds_decide_and_are_stated() -> None:
    evidence = {"acc/test": 97.0, "acc/retain": 99.0, "knn_forget": 10.0, "logit_only": False, "gap": None}
    original = {"acc/test": 99.5, "acc/retain": 100.0}
    strict = verdict(evidence, original, [True, True], VerdictThresholds(max_test_drop=2.0))
    assert not strict.get("passed")
    loose = verdict(evidence, original, [True, True], VerdictThresholds(max_test_drop=3.0))
    assert loose["passed"] and loose["thresholds"]["max_test_drop"] == 3.0
    assert any(c["threshold"] == "<= 3" for c in loose["checks"])
    partial = verdict(evidence, original, [True, False], VerdictThresholds(max_test_drop=3.0))
    assert not partial["passed"]
    informational = [c for c in loose["checks"] if not c["required"]]
    assert informational and all("threshold" in c for c in informational)


def test_representation_layers_end_at_the_feature_layer(trained_cnn: SmallCNN) -> None:
    layers = representation_layers(trained_cnn)
    assert layers[-1] == "head.2:input"
    assert "head.2" not in layers and "features.0" in layers


def test_retrained_reference_is_cached_and_never_sees_the_forget_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_train = pretrained_module.train_classifier

    def spy(model, inputs, labels, recipe, **options):
        seen.append(int(inputs.shape[0]))
        fast = type(recipe)(**{**recipe.__dict__, "epochs": 1})
        return real_train(model, inputs, labels, fast, **options)

    monkeypatch.setattr(pretrained_module, "train_classifier", spy)
    first = load_retrained("digits", [5, 3, 9], directory=tmp_path)
    again = load_retrained("digits", [9, 5, 3, 3], directory=tmp_path)  # order and repeats do not matter
    assert not first.from_cache and again.from_cache and first.sha256 == again.sha256
    assert seen == [1434]  # 1437 - 3, trained once
    other = load_retrained("digits", [5, 3], directory=tmp_path)
    assert other.sha256 != first.sha256 and seen == [1434, 1435]
    assert load_pretrained("digits", directory=tmp_path).sha256 not in {first.sha256, other.sha256}
    # A tampered cache file is retrained, never trusted.
    first.path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="cached digits model retrained without 3 rows is unusable"):
        fresh = load_retrained("digits", [3, 5, 9], directory=tmp_path)
    assert not fresh.from_cache


@pytest.mark.parametrize("ids, match", [([], "forget_ids is empty"), ([0, 5000], "must index the 1437"), ([-1], "must index")])
def test_retrained_reference_refuses_bad_ids(ids: list[int], match: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=match):
        load_retrained("digits", ids, directory=tmp_path)


def test_membership_attacks_report_their_call_on_each_target(trained_cnn: SmallCNN, splits: dict) -> None:
    from unlearnkit.metrics import entropy_mia, mia_efficacy

    for attack in (mia_efficacy, entropy_mia):
        result = attack(trained_cnn, splits["retain"], splits["test"], splits["test"])
        calls = result.target_is_member
        assert len(calls) == result.n_targets == len(splits["test"][1])
        assert result.predicted_member == pytest.approx(100.0 * sum(calls) / len(calls))


# -- receipts --------------------------------------------------------------------------------------


def test_a_receipt_names_content_models_and_verdict(trained_cnn: SmallCNN, splits: dict, tmp_path: Path) -> None:
    import json

    from unlearnkit.receipt import receipt_sha256
    from unlearnkit.request import instance_sha256

    x, y = splits["forget"]
    result = unlearnkit.unlearn(trained_cnn, (x, y), method="neggrad", lr=0.05, ids=["u1", "u2", "u3", "u4"], seed=3)
    evidence = _evidence(trained_cnn, result.model, splits, [o.goal_met for o in result.outcomes], retrained=trained_cnn)
    receipt = unlearnkit.build_receipt(result, request_id="REQ-1", evidence=evidence)
    instances = receipt["request"]["instances"]
    assert [i["id"] for i in instances] == ["u1", "u2", "u3", "u4"]
    assert [i["content_sha256"] for i in instances] == [instance_sha256(x[i], int(y[i])) for i in range(4)]
    assert instance_sha256(x[0].double(), int(y[0])) == instances[0]["content_sha256"]  # dtype-independent
    assert receipt["model"] == {"sha256_before": result.model_sha256_before, "sha256_after": result.model_sha256_after}
    assert receipt["method"] == "neggrad" and receipt["seed"] == 3 and receipt["hyperparams"] == result.hyperparams
    assert receipt["metrics"]["mia_efficacy"] == evidence["mia_efficacy"]
    assert receipt["verdict"] == evidence["verdict"] and "thresholds" in receipt["verdict"]
    assert {"torch", "unlearnkit"} <= set(receipt["versions"])
    path = unlearnkit.write_receipt(receipt, tmp_path / "r" / "receipt.json")
    loaded = json.loads(path.read_text())
    assert loaded["receipt_sha256"] == receipt_sha256(loaded)  # survives the round trip
    tampered = dict(loaded, seed=4)
    assert receipt_sha256(tampered) != tampered["receipt_sha256"]
    with pytest.raises(ValueError, match="does not match its content"):
        unlearnkit.write_receipt(tampered, tmp_path / "tampered.json")
    assert not (tmp_path / "tampered.json").exists()


def test_a_receipt_without_evidence_says_what_was_not_measured(trained_cnn: SmallCNN, splits: dict) -> None:
    result = unlearnkit.unlearn(trained_cnn, splits["forget"], method="neggrad", lr=1e-6, max_steps=2)
    receipt = unlearnkit.build_receipt(result)
    assert not receipt["verdict"]["passed"]
    assert receipt["verdict"]["checks"][0]["value"] == 0.0
    assert "not measured" in receipt["verdict"]["note"]
    assert receipt["run"]["converged"] is False and receipt["run"]["stop_reason"] == "max_steps"


def test_a_feature_cache_gives_the_same_evidence_and_extracts_the_references_once(
    trained_cnn: SmallCNN, splits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unlearnkit.scenarios.evidence as evidence_module

    result = unlearnkit.unlearn(trained_cnn, splits["forget"], method="neggrad", lr=0.05)
    met = [o.goal_met for o in result.outcomes]
    plain = _evidence(trained_cnn, result.model, splits, met, retrained=trained_cnn)
    calls: list[int] = []
    real = evidence_module.extract_layer_features

    def counting(model, inputs, layers, **kwargs):
        calls.append(id(model))
        return real(model, inputs, layers, **kwargs)

    monkeypatch.setattr(evidence_module, "extract_layer_features", counting)
    cache: dict = {}
    other = copy.deepcopy(trained_cnn)  # a distinct retrained reference
    first = _evidence(trained_cnn, result.model, splits, met, retrained=other, feature_cache=cache)
    second = _evidence(trained_cnn, result.model, splits, met, retrained=other, feature_cache=cache)
    assert calls.count(id(trained_cnn)) == 1 and calls.count(id(other)) == 1  # once per request
    assert first["cka_layers"] == second["cka_layers"]
    assert [r["original"] for r in first["cka_layers"]] == pytest.approx([r["original"] for r in plain["cka_layers"]])


def test_evidence_for_request_draws_views_only_when_asked_and_needs_labels() -> None:
    from unlearnkit.demo import draw_request, evidence_for_request
    from unlearnkit.request import ForgetRequest

    default = load_pretrained("digits")  # the session cache: trained once per test session
    data = default.data
    request, keep = draw_request(data, 4, 0, "misclassify")
    splits = {"retain": (data.x_train[keep], data.y_train[keep]), "test": (data.x_test, data.y_test)}
    result = unlearnkit.unlearn(copy.deepcopy(default.model), request, method="neggrad", lr=0.02, max_steps=20)
    with_views = evidence_for_request(default.model, data, request, splits, "digits", None, 0, False)
    without = evidence_for_request(default.model, data, request, splits, "digits", None, 0, False, views=False)
    assert "views" in with_views[1] and "original_views" in with_views[2] and "views" in with_views[0](result)
    evidence = without[0](result)
    assert "views" not in without[1] and "original_views" not in without[2] and "views" not in evidence
    # Every figure is still there, the same as with the views.
    assert {k: v for k, v in with_views[0](result).items() if k != "views"} == evidence
    unlabelled = ForgetRequest(request.inputs, None, ids=request.ids)
    with pytest.raises(unlearnkit.errors.InvalidRequestError, match="measured against its labels; this one has none"):
        evidence_for_request(default.model, data, unlabelled, splits, "digits", None, 0, False)
