"""Requests without labels: accepted only by methods that need none, checked by the original
model's predictions, refused everywhere else with a clear error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import same_state, snapshot
from unlearnkit.errors import DataContractError, InvalidRequestError
from unlearnkit.methods.base import MethodRun, UnlearnContext, UnlearningMethod
from unlearnkit.methods.registry import METHODS, register_method
from unlearnkit.request import ForgetRequest
from unlearnkit.utils.modules import predict_logits


class _LabelFreeShrink(UnlearningMethod):
    """A toy label-free method: shrinks the last layer, and records the labels it was shown."""

    summary = "toy"
    needs_labels = False
    goal_driven = False

    def __init__(self, *, factor: float = 0.0) -> None:
        self.factor = factor

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        last = [m for m in context.model.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(self.factor)
        return MethodRun(1, 1, context.goal_holds(), "fixed_schedule", {"seen_labels": context.request.labels.tolist()})


@pytest.fixture
def label_free() -> Iterator[None]:
    saved = dict(METHODS._entries)
    register_method("test_label_free")(_LabelFreeShrink)
    try:
        yield
    finally:
        METHODS._entries.clear()
        METHODS._entries.update(saved)


def test_a_request_may_come_without_labels_for_misclassification_only() -> None:
    x = torch.rand(3, 1, 8, 8)
    request = ForgetRequest(x, None)
    assert not request.has_labels and request.goal == "misclassify" and request.labels is None
    assert request.to("cpu").labels is None
    with pytest.raises(InvalidRequestError, match="without labels can only ask for misclassification"):
        ForgetRequest(x, None, new_labels=torch.tensor([1, 2, 3]))
    with pytest.raises(InvalidRequestError, match="without labels can only ask for misclassification"):
        ForgetRequest(x, None, goal="unseen")
    with pytest.raises(InvalidRequestError, match="this request has no labels"):
        request.known_labels  # noqa: B018 - the property raises
    assert request.with_labels(torch.tensor([0, 1, 2])).known_labels.tolist() == [0, 1, 2]


def test_run_request_refuses_an_unlabelled_request_before_running(label_free: None, cnn: nn.Module, forget) -> None:
    from unlearnkit.scenarios.single import run_request

    before = snapshot(cnn)
    with pytest.raises(InvalidRequestError, match="a run is measured against the forget set's labels"):
        run_request(cnn, ForgetRequest(forget[0], None), "test_label_free", splits={})
    assert same_state(cnn, before)


def test_methods_that_need_labels_refuse_an_unlabelled_request_by_name(cnn: nn.Module, forget) -> None:
    with pytest.raises(InvalidRequestError, match=r"method 'neggrad' needs the forget set's labels.*without labels"):
        unlearnkit.unlearn(cnn, (forget[0], None), method="neggrad")


def test_a_label_free_method_is_checked_against_the_original_predictions(
    label_free: None, cnn: nn.Module, forget: tuple[Tensor, Tensor]
) -> None:
    x, _ = forget
    predicted = predict_logits(cnn, x).argmax(dim=1)
    result = unlearnkit.unlearn(cnn, (x, None), method="test_label_free")
    assert result.details["labels"] == "predicted_by_original"
    assert result.details["seen_labels"] == predicted.tolist()
    assert [o.label for o in result.outcomes] == predicted.tolist()
    assert result.metrics["acc/forget/before"] == 100.0  # agreement with the original, by construction
    labelled = unlearnkit.unlearn(cnn, forget, method="test_label_free")
    assert "labels" not in labelled.details
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(), labelled.model.state_dict().values()))


def test_retain_data_still_needs_labels(cnn: nn.Module, forget, digits) -> None:
    with pytest.raises(DataContractError, match="retain data needs labels"):
        unlearnkit.unlearn(cnn, forget, method="neggrad_plus", retain=(digits.x_train[:50], None))
