"""The ``unseen`` goal: loss targets from data the model never saw, and methods reaching them."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from helpers import fast_params
from unlearnkit import ForgetRequest, InvalidRequestError
from unlearnkit.components.losses import unseen_hinge_loss
from unlearnkit.components.stopping import goal_met
from unlearnkit.components.unseen import per_example_loss, rank_matched_targets, unseen_loss_targets
from unlearnkit.data import DataSplit
from unlearnkit.models import SmallCNN
from unlearnkit.utils.modules import predict_logits


def test_request_goal_is_resolved_and_checked() -> None:
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([1, 2])
    assert ForgetRequest(x, y).goal == "misclassify"
    assert ForgetRequest(x, y, goal="unseen").goal == "unseen"
    assert ForgetRequest(x, y, new_labels=torch.tensor([0, 0])).goal == "relabel"
    assert ForgetRequest(x, y, goal="unseen").to("cpu").goal == "unseen"
    with pytest.raises(InvalidRequestError, match="goal must be one of"):
        ForgetRequest(x, y, goal="vanish")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="needs new_labels"):
        ForgetRequest(x, y, goal="relabel")
    with pytest.raises(InvalidRequestError, match="contradicts"):
        ForgetRequest(x, y, new_labels=torch.tensor([0, 0]), goal="unseen")


def test_rank_matched_targets_copy_the_reference_distribution_in_order() -> None:
    forget = torch.tensor([0.5, 0.01, 0.02, 0.03])
    reference = torch.linspace(0.0, 1.0, 101)
    targets = rank_matched_targets(forget, reference)
    # Order is kept: the instance with the largest loss gets the largest target.
    assert targets.argsort().tolist() == forget.argsort().tolist()
    expected = torch.quantile(reference, (torch.arange(4.0) + 0.5) / 4)
    assert torch.allclose(targets.sort().values[:3], expected[:3])
    assert targets[0] == torch.maximum(expected[3], forget[0])  # never below its own loss
    with pytest.raises(ValueError):
        rank_matched_targets(forget, torch.tensor([]))


def test_unseen_targets_from_heldout_and_from_shifted_copies(
    trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    x, y = forget
    own = per_example_loss(predict_logits(trained_cnn, x), y)
    heldout = (digits.x_test, digits.y_test)
    targets, source = unseen_loss_targets(trained_cnn, x, y, heldout=heldout)
    reference = per_example_loss(predict_logits(trained_cnn, digits.x_test), digits.y_test)
    assert source == "heldout"
    assert torch.equal(targets, rank_matched_targets(own, reference))
    shifted, source = unseen_loss_targets(trained_cnn, x, y)
    assert source == "shifted_copies" and bool((shifted >= own).all())
    with pytest.raises(ValueError, match="needs held-out data"):
        unseen_loss_targets(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), x.flatten(1), y)


def test_goal_met_and_hinge_for_loss_targets() -> None:
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0])
    targets = torch.tensor([0.1, 0.1])
    assert goal_met(logits, labels, loss_targets=targets).tolist() == [False, True]
    loss = unseen_hinge_loss(logits, labels, targets)
    expected = (torch.tensor(0.1).log() - per_example_loss(logits[:1], labels[:1]).log()).item() / 2
    assert loss.item() == pytest.approx(expected)


@pytest.mark.parametrize("name", ["neggrad", "l2ul_adv", "l2ul"])
@pytest.mark.parametrize("calibration", ["heldout", "shifted_copies"])
def test_methods_reach_the_unseen_targets(
    name: str, calibration: str, trained_cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits: DataSplit
) -> None:
    heldout = (digits.x_test, digits.y_test) if calibration == "heldout" else None
    result = unlearnkit.unlearn(
        trained_cnn, forget, method=name, goal="unseen", heldout=heldout,
        **fast_params(name, lr=1e-3, max_steps=400),
    )
    assert result.goal == "unseen" and result.converged
    assert result.details["unseen/target_source"] == calibration
    assert result.metrics["unseen/after"] == 100.0
    for outcome in result.outcomes:
        assert outcome.loss_target is not None and outcome.loss_after >= outcome.loss_target
        assert outcome.loss_after >= outcome.loss_before
    assert result.metrics["loss/forget/after"] > result.metrics["loss/forget/before"]


def test_unseen_without_heldout_on_flat_inputs_is_a_request_error(forget: tuple[Tensor, Tensor]) -> None:
    model = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(InvalidRequestError, match="needs held-out data"):
        unlearnkit.unlearn(model, (forget[0].flatten(1), forget[1]), method="neggrad", goal="unseen")


def test_goal_cannot_be_given_beside_a_request(forget: tuple[Tensor, Tensor], trained_cnn: SmallCNN) -> None:
    with pytest.raises(InvalidRequestError, match="inside the ForgetRequest"):
        unlearnkit.unlearn(trained_cnn, ForgetRequest(*forget), method="neggrad", goal="unseen")


def test_heldout_is_refused_for_other_goals(forget: tuple[Tensor, Tensor], trained_cnn: SmallCNN, digits: DataSplit) -> None:
    with pytest.raises(unlearnkit.DataContractError, match="only to calibrate"):
        unlearnkit.unlearn(trained_cnn, forget, method="neggrad", heldout=(digits.x_test, digits.y_test))
