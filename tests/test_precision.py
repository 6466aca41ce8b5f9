"""bf16 autocast only where it helps: CUDA by default, never the CPU."""

from __future__ import annotations

import pytest
import torch

from unlearnkit.utils.precision import autocast_context, resolve_precision


def test_auto_is_fp32_on_cpu_and_explicit_choices_are_kept() -> None:
    assert resolve_precision("cpu") == "fp32"
    assert resolve_precision(torch.device("cpu"), "bf16") == "bf16"
    assert resolve_precision("cpu", "fp32") == "fp32"


def test_auto_follows_the_gpu_when_there_is_one() -> None:
    expected = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    assert resolve_precision("cuda") == expected


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("cpu", "fp16")


def test_the_fp32_context_changes_nothing_and_bf16_autocasts() -> None:
    a = torch.randn(4, 4)
    with autocast_context("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
    with autocast_context("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
