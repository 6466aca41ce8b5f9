"""The run's tensor layout: chosen per model, changes no result, and never leaks out."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import unlearnkit
from unlearnkit.models import SmallCNN
from unlearnkit.utils.memory_format import memory_format_name, preferred_memory_format, running_in
from unlearnkit.utils.modules import predict_logits


def test_auto_picks_channels_last_for_convolutional_models_only(cnn: SmallCNN) -> None:
    assert preferred_memory_format(cnn) == torch.channels_last
    assert preferred_memory_format(nn.Sequential(nn.Flatten(), nn.Linear(4, 2))) == torch.contiguous_format
    assert preferred_memory_format(cnn, "contiguous") == torch.contiguous_format
    assert preferred_memory_format(nn.Linear(2, 2), "channels_last") == torch.channels_last
    scripted = torch.jit.script(nn.Sequential(nn.Conv2d(1, 2, 3)))
    assert preferred_memory_format(scripted) == torch.contiguous_format
    assert memory_format_name(torch.channels_last) == "channels_last"


def test_an_unknown_layout_is_refused_by_name(cnn: SmallCNN, forget: tuple[Tensor, Tensor]) -> None:
    with pytest.raises(ValueError, match="memory_format must be one of"):
        unlearnkit.unlearn(cnn, forget, method="neggrad", memory_format="nhwc")


def test_running_in_converts_back_even_when_the_body_raises() -> None:
    conv = nn.Conv2d(2, 3, 3)
    weight = conv.weight
    with pytest.raises(RuntimeError, match="boom"):
        with running_in(conv, torch.channels_last):
            assert conv.weight.is_contiguous(memory_format=torch.channels_last)
            raise RuntimeError("boom")
    assert conv.weight.is_contiguous()
    assert conv.weight is weight  # the same Parameter object: optimisers and hooks still hold it


@pytest.mark.parametrize("method", ["l2ul", "neggrad_plus"])
def test_channels_last_changes_no_result_and_hands_back_a_contiguous_model(
    method: str, cnn: SmallCNN, forget: tuple[Tensor, Tensor], digits
) -> None:
    retain = (digits.x_train[:256], digits.y_train[:256]) if method == "neggrad_plus" else None
    settings = {"max_steps": 6, "n_adv": 2, "pgd_steps": 5} if method == "l2ul" else {"max_steps": 6}
    runs = {
        layout: unlearnkit.unlearn(cnn, forget, method=method, retain=retain, memory_format=layout, **settings)
        for layout in ("channels_last", "contiguous")
    }
    fast, plain = runs["channels_last"], runs["contiguous"]
    assert fast.details["memory_format"] == "channels_last" and plain.details["memory_format"] == "contiguous"
    assert fast.steps == plain.steps == 6
    # Summation order differs between layouts (about 1e-7 per op); Adam's normalised steps can
    # turn that into up to ~2 learning rates (1e-4) on near-zero gradients, never into a
    # different model.
    for (name, a), (_, b) in zip(fast.model.state_dict().items(), plain.model.state_dict().items()):
        assert a.is_contiguous(), name
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=name)
    logits_fast, logits_plain = predict_logits(fast.model, digits.x_test), predict_logits(plain.model, digits.x_test)
    torch.testing.assert_close(logits_fast, logits_plain, rtol=0.0, atol=0.05)
    assert float((logits_fast.argmax(1) == logits_plain.argmax(1)).float().mean()) >= 0.99
    assert all(p.is_contiguous() for p in cnn.parameters())  # the caller's model was never converted
