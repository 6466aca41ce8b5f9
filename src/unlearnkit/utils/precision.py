"""Reduced precision where it helps: bf16 autocast on GPUs, never by default on CPUs.

On a GPU with bf16 support, autocast roughly doubles the throughput of convolutions and matrix
products. On the CPUs this project is measured on, bf16 autocast is 10-20x *slower* than fp32,
so ``"auto"`` only turns it on for CUDA devices. Callers use it for work whose result is checked
again in full precision afterwards (an attack's candidate inputs), never for the weight updates
themselves.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager, Literal

import torch

PrecisionChoice = Literal["auto", "fp32", "bf16"]
PRECISION_CHOICES: tuple[str, ...] = ("auto", "fp32", "bf16")


def resolve_precision(device: torch.device | str, choice: str = "auto") -> str:
    """``"bf16"`` or ``"fp32"``: what ``choice`` means on ``device``.

    ``"auto"`` is ``"bf16"`` on a CUDA device that supports it and ``"fp32"`` everywhere else.

    Raises:
        ValueError: If ``choice`` is not ``"auto"``, ``"fp32"`` or ``"bf16"``.

    Example:
        >>> resolve_precision("cpu"), resolve_precision("cpu", "bf16")
        ('fp32', 'bf16')
    """
    if choice not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def autocast_context(device: torch.device | str, precision: str) -> ContextManager[object]:
    """An autocast context for a resolved ``precision`` (a no-op for ``"fp32"``).

    Example:
        >>> with autocast_context("cpu", "bf16"):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
