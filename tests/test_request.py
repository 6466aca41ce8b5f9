"""Validation of forget requests: ForgetRequest itself and the checks unlearnkit.unlearn adds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import same_state, snapshot
from unlearnkit import ForgetRequest, InvalidHyperparameterError, InvalidRequestError
from unlearnkit.request import DEFAULT_INPUT_RANGE


def _x(n: int = 3) -> Tensor:
    """``n`` random 1x8x8 inputs in [0, 1)."""
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(n))


def _y(*labels: int) -> Tensor:
    """A label tensor."""
    return torch.tensor(labels, dtype=torch.long)


# -- the forget set and its labels -----------------------------------------------------------------


def test_valid_request_defaults() -> None:
    request = ForgetRequest(_x(3), _y(0, 4, 9))
    assert len(request) == 3
    assert request.ids == (0, 1, 2)
    assert request.goal == "misclassify"
    assert request.new_labels is None
    assert request.input_shape == (1, 8, 8)
    assert request.input_range == DEFAULT_INPUT_RANGE
    assert request.inputs.dtype == torch.float32
    assert request.labels.dtype == torch.long


def test_request_is_frozen() -> None:
    request = ForgetRequest(_x(2), _y(0, 1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.labels = _y(1, 2)  # type: ignore[misc]


@pytest.mark.parametrize(
    "inputs, labels",
    [
        (torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long)),
        (np.empty((0, 4), dtype=np.float32), []),
    ],
    ids=["tensor", "numpy"],
)
def test_empty_forget_set(inputs: object, labels: object) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        ForgetRequest(inputs, labels)  # type: ignore[arg-type]


@pytest.mark.parametrize("inputs", [torch.rand(64), torch.tensor(0.5)], ids=["1d", "0d"])
def test_inputs_without_batch_dimension(inputs: Tensor) -> None:
    with pytest.raises(InvalidRequestError, match="no batch dimension"):
        ForgetRequest(inputs, _y(1))


def test_inputs_labels_length_mismatch() -> None:
    with pytest.raises(InvalidRequestError, match="3 forget inputs but 2 labels"):
        ForgetRequest(_x(3), _y(0, 1))


def test_labels_must_be_one_dimensional() -> None:
    with pytest.raises(InvalidRequestError, match="labels must be one-dimensional"):
        ForgetRequest(_x(2), torch.tensor([[0], [1]]))


def test_negative_labels() -> None:
    with pytest.raises(InvalidRequestError, match="labels must be non-negative, got -1"):
        ForgetRequest(_x(2), _y(0, -1))


def test_float_labels_with_integer_values_are_accepted() -> None:
    request = ForgetRequest(_x(2), torch.tensor([3.0, 7.0]))
    assert request.labels.dtype == torch.long
    assert request.labels.tolist() == [3, 7]


@pytest.mark.parametrize("labels", [[0.5, 1.0], [float("nan"), 1.0], [float("inf"), 1.0]])
def test_float_labels_with_non_integer_values(labels: list[float]) -> None:
    with pytest.raises(InvalidRequestError, match="labels must be integer class indices"):
        ForgetRequest(_x(2), labels)


def test_bool_labels_are_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="integer class indices, got dtype torch.bool"):
        ForgetRequest(_x(2), torch.tensor([True, False]))


def test_non_numeric_labels_are_rejected() -> None:
    with pytest.raises(InvalidRequestError, match="labels cannot be read as a tensor"):
        ForgetRequest(_x(2), ["a", "b"])


# -- inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs(bad: float) -> None:
    inputs = _x(3)
    inputs[1, 0, 2, 3] = bad
    with pytest.raises(
        InvalidRequestError, match=r"1 forget input\(s\) contain NaN or infinite values"
    ):
        ForgetRequest(inputs, _y(0, 1, 2), input_range=None)


def test_inputs_outside_input_range() -> None:
    inputs = _x(2)
    inputs[0, 0, 0, 0] = 1.5
    with pytest.raises(InvalidRequestError, match=r"outside the declared input_range \(0, 1\)"):
        ForgetRequest(inputs, _y(0, 1))
    inputs[0, 0, 0, 0] = -0.25
    with pytest.raises(InvalidRequestError, match="outside the declared input_range"):
        ForgetRequest(inputs, _y(0, 1))


def test_input_range_none_accepts_unbounded_inputs() -> None:
    inputs = torch.randn(3, 4, generator=torch.Generator().manual_seed(0)) * 10
    request = ForgetRequest(inputs, _y(0, 1, 2), input_range=None)
    assert request.input_range is None
    assert torch.equal(request.inputs, inputs)


def test_custom_input_range() -> None:
    inputs = _x(2) * 2 - 1  # in [-1, 1)
    with pytest.raises(InvalidRequestError, match="outside the declared input_range"):
        ForgetRequest(inputs, _y(0, 1))
    request = ForgetRequest(inputs, _y(0, 1), input_range=(-1, 1))
    assert request.input_range == (-1.0, 1.0)


@pytest.mark.parametrize("input_range", [(1.0, 0.0), (0.5, 0.5)])
def test_input_range_must_be_increasing(input_range: tuple[float, float]) -> None:
    with pytest.raises(InvalidRequestError, match="low < high"):
        ForgetRequest(_x(2), _y(0, 1), input_range=input_range)


def test_numpy_and_list_inputs_are_accepted() -> None:
    x = _x(2)
    from_numpy = ForgetRequest(x.numpy(), np.array([1, 2]))
    from_list = ForgetRequest(x.tolist(), [1, 2])
    for request in (from_numpy, from_list):
        assert isinstance(request.inputs, Tensor) and request.inputs.is_floating_point()
        assert torch.allclose(request.inputs.float(), x)
        assert request.labels.dtype == torch.long and request.labels.tolist() == [1, 2]


def test_integer_inputs_become_float() -> None:
    pixels = torch.randint(
        0, 256, (2, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    request = ForgetRequest(pixels, _y(0, 1), input_range=(0, 255))
    assert request.inputs.dtype == torch.float32
    assert torch.equal(request.inputs, pixels.float())


@pytest.mark.parametrize(
    "inputs, match",
    [
        (np.array([["a"], ["b"]]), "cannot be read as a tensor"),
        ([[0.1, 0.2], [0.3]], "cannot be read as a tensor"),
        (torch.tensor([[True], [False]]), "must be numeric"),
    ],
    ids=["strings", "ragged", "bool"],
)
def test_unreadable_inputs(inputs: object, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        ForgetRequest(inputs, _y(0, 1))  # type: ignore[arg-type]


# -- relabeling ------------------------------------------------------------------------------------


def test_relabel_request() -> None:
    request = ForgetRequest(_x(2), _y(1, 2), new_labels=[5, 0])
    assert request.goal == "relabel"
    assert request.new_labels is not None and request.new_labels.dtype == torch.long
    assert request.new_labels.tolist() == [5, 0]


def test_new_label_equal_to_old_label_names_the_ids() -> None:
    with pytest.raises(
        InvalidRequestError,
        match=r"new label equals the training label for 1 instance\(s\) \(ids \['b'\]\)",
    ):
        ForgetRequest(_x(3), _y(1, 2, 3), new_labels=_y(0, 2, 4), ids=["a", "b", "c"])


def test_new_labels_length_mismatch() -> None:
    with pytest.raises(InvalidRequestError, match="3 forget inputs but 2 new labels"):
        ForgetRequest(_x(3), _y(1, 2, 3), new_labels=_y(0, 1))


def test_negative_new_labels() -> None:
    with pytest.raises(InvalidRequestError, match="new labels must be non-negative, got -2"):
        ForgetRequest(_x(2), _y(1, 2), new_labels=_y(0, -2))


def test_non_integer_new_labels() -> None:
    with pytest.raises(InvalidRequestError, match="new_labels must be integer class indices"):
        ForgetRequest(_x(2), _y(1, 2), new_labels=[0.5, 3.0])


# -- ids -------------------------------------------------------------------------------------------


def test_custom_ids_are_kept() -> None:
    request = ForgetRequest(_x(3), _y(0, 1, 2), ids=["img-7", 12, np.int64(40)])
    assert request.ids == ("img-7", 12, 40)
    assert type(request.ids[2]) is int


def test_ids_from_arrays() -> None:
    assert ForgetRequest(_x(2), _y(0, 1), ids=np.array([10, 20])).ids == (10, 20)
    assert ForgetRequest(_x(2), _y(0, 1), ids=torch.tensor([3, 4])).ids == (3, 4)


def test_duplicate_ids() -> None:
    with pytest.raises(InvalidRequestError, match=r"duplicate ids in the forget set: \['a'\]"):
        ForgetRequest(_x(3), _y(0, 1, 2), ids=["a", "b", "a"])


def test_ids_length_mismatch() -> None:
    with pytest.raises(InvalidRequestError, match="3 forget inputs but 2 ids"):
        ForgetRequest(_x(3), _y(0, 1, 2), ids=[1, 2])


@pytest.mark.parametrize("bad", [1.5, True, None, (1,)])
def test_ids_of_wrong_type(bad: object) -> None:
    with pytest.raises(InvalidRequestError, match="ids must be ints or strings"):
        ForgetRequest(_x(2), _y(0, 1), ids=[0, bad])  # type: ignore[list-item]


# -- check_classes and .to() -----------------------------------------------------------------------


def test_check_classes() -> None:
    request = ForgetRequest(_x(3), _y(0, 9, 12), ids=["a", "b", "c"])
    request.check_classes(13)
    with pytest.raises(
        InvalidRequestError,
        match=r"1 label\(s\) out of range for a model with 10 classes \(valid 0..9\): "
        r"ids \['c'\] have \[12\]",
    ):
        request.check_classes(10)


def test_check_classes_new_labels() -> None:
    request = ForgetRequest(_x(2), _y(0, 1), new_labels=_y(10, 3))
    with pytest.raises(InvalidRequestError, match=r"1 new label\(s\) out of range"):
        request.check_classes(10)


def test_to_returns_an_equal_copy() -> None:
    request = ForgetRequest(
        _x(2), _y(0, 1), new_labels=_y(2, 3), ids=["p", "q"], input_range=(0.0, 1.0)
    )
    moved = request.to("cpu")
    assert moved is not request
    assert torch.equal(moved.inputs, request.inputs)
    assert torch.equal(moved.labels, request.labels)
    assert moved.new_labels is not None and torch.equal(moved.new_labels, request.new_labels)
    assert moved.ids == ("p", "q")
    assert moved.input_range == (0.0, 1.0)
    assert moved.goal == "relabel"
    unbounded = ForgetRequest(_x(2) * 5, _y(0, 1), input_range=None).to(torch.device("cpu"))
    assert unbounded.input_range is None and unbounded.new_labels is None


# -- checks made by unlearnkit.unlearn -------------------------------------------------------------


def _linear() -> nn.Module:
    """A seeded untrained linear 10-class model on 1x8x8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_unlearn_rejects_labels_beyond_the_model_classes() -> None:
    model = _linear()
    before = snapshot(model)
    with pytest.raises(
        InvalidRequestError,
        match=r"label\(s\) out of range for a model with 10 classes \(valid 0..9\): "
        r"ids \[1\] have \[10\]",
    ):
        unlearnkit.unlearn(model, (_x(2), _y(3, 10)), method="neggrad", max_steps=5)
    assert same_state(model, before)


def test_unlearn_rejects_new_labels_beyond_the_model_classes() -> None:
    with pytest.raises(
        InvalidRequestError, match=r"1 new label\(s\) out of range for a model with 10 classes"
    ):
        unlearnkit.unlearn(
            _linear(), (_x(2), _y(3, 4)), method="neggrad", new_labels=_y(11, 0), max_steps=5
        )


def test_unlearn_validates_through_forget_request() -> None:
    with pytest.raises(InvalidRequestError, match="duplicate ids"):
        unlearnkit.unlearn(_linear(), (_x(2), _y(3, 4)), method="neggrad", ids=[7, 7])
    with pytest.raises(InvalidRequestError, match="outside the declared input_range"):
        unlearnkit.unlearn(_linear(), (_x(2) + 1, _y(3, 4)), method="neggrad")
    with pytest.raises(InvalidRequestError, match="new label equals the training label"):
        unlearnkit.unlearn(_linear(), (_x(2), _y(3, 4)), method="neggrad", new_labels=_y(3, 5))


@pytest.mark.parametrize(
    "forget", [_x(2), (_x(2),), (_x(2), _y(0, 1), None), "x"], ids=["bare", "one", "three", "str"]
)
def test_unlearn_forget_must_be_a_pair(forget: object) -> None:
    with pytest.raises(
        InvalidRequestError, match=r"forget must be a pair \(inputs, labels\), \(inputs, None\) or a ForgetRequest"
    ):
        unlearnkit.unlearn(_linear(), forget, method="neggrad")  # type: ignore[arg-type]


def test_unlearn_request_with_extra_new_labels_or_ids() -> None:
    request = ForgetRequest(_x(2), _y(0, 1))
    with pytest.raises(InvalidRequestError, match="inside the ForgetRequest"):
        unlearnkit.unlearn(_linear(), request, method="neggrad", new_labels=_y(2, 3))
    with pytest.raises(InvalidRequestError, match="inside the ForgetRequest"):
        unlearnkit.unlearn(_linear(), request, method="neggrad", ids=["a", "b"])


def test_unlearn_configured_method_takes_no_hyperparameters() -> None:
    method = unlearnkit.create_method("neggrad", lr=0.1)
    with pytest.raises(InvalidHyperparameterError, match="configured method takes none"):
        unlearnkit.unlearn(_linear(), (_x(2), _y(0, 1)), method=method, lr=0.2)


def test_method_unlearn_requires_a_forget_request() -> None:
    method = unlearnkit.create_method("neggrad")
    with pytest.raises(InvalidRequestError, match="request must be a ForgetRequest, got tuple"):
        method.unlearn(_linear(), (_x(2), _y(0, 1)))  # type: ignore[arg-type]


def test_unlearn_accepts_list_labels_and_string_ids() -> None:
    model = _linear()
    x = _x(3)
    labels = model(x).argmax(dim=1).tolist()
    result = unlearnkit.unlearn(
        model, (x, labels), method="neggrad", ids=["u", "v", "w"], lr=0.5, max_steps=50
    )
    assert [o.id for o in result.outcomes] == ["u", "v", "w"]
    assert [o.label for o in result.outcomes] == labels


@pytest.mark.parametrize("kind", ["numpy", "list"])
def test_unlearn_accepts_float64_numpy_and_list_inputs(kind: str) -> None:
    model = _linear()
    x = _x(3)
    labels = model(x).argmax(dim=1)
    inputs = x.numpy().astype(np.float64) if kind == "numpy" else x.tolist()
    result = unlearnkit.unlearn(
        model, (inputs, labels.numpy()), method="neggrad", lr=0.5, max_steps=50
    )
    assert result.metrics["acc/forget/before"] == 100.0


@pytest.mark.parametrize("ids", [np.array([5, 6]), torch.tensor([5, 6])], ids=["numpy", "tensor"])
def test_unlearn_accepts_array_ids(ids: object) -> None:
    model = _linear()
    x = _x(2)
    labels = model(x).argmax(1)
    result = unlearnkit.unlearn(model, (x, labels), method="neggrad", ids=ids, max_steps=0)  # type: ignore[arg-type]
    assert [o.id for o in result.outcomes] == [5, 6]
