"""The one-call entry points: :func:`unlearn` and :func:`evaluate`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unlearnkit.errors import InvalidHyperparameterError, InvalidRequestError
from unlearnkit.methods.base import RetainData, UnlearningMethod
from unlearnkit.methods.registry import create_method
from unlearnkit.metrics.accuracy import evaluate
from unlearnkit.request import DEFAULT_INPUT_RANGE, ArrayLike, ForgetRequest, Goal, InstanceId
from unlearnkit.result import UnlearnResult

__all__ = ["evaluate", "unlearn"]


def unlearn(
    model: nn.Module,
    forget: tuple[ArrayLike, ArrayLike | None] | ForgetRequest,
    method: str | UnlearningMethod = "l2ul",
    new_labels: ArrayLike | None = None,
    seed: int = 0,
    *,
    goal: Goal | None = None,
    heldout: RetainData | None = None,
    ids: Sequence[InstanceId] | None = None,
    input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE,
    retain: RetainData | None = None,
    device: torch.device | str | None = None,
    inplace: bool = False,
    progress: bool | None = None,
    memory_format: str = "auto",
    **hyperparams: Any,
) -> UnlearnResult:
    """Forgets training instances from a trained classifier.

    Args:
        model: Any ``nn.Module`` mapping a float batch ``(N, ...)`` to logits ``(N, C)``. It is
            not modified (unless ``inplace=True``).
        forget: ``(inputs, labels)`` of the instances to forget (tensors, arrays or lists), or a
            ready :class:`~unlearnkit.request.ForgetRequest`. ``(inputs, None)`` when the labels
            are unknown, for methods that need none (``laf``).
        method: A registered method name (see :func:`list_methods`) or a configured method.
        new_labels: Relabeling mode: the class each instance should be predicted as. ``None``
            (default): misclassification mode.
        seed: Seed of every random choice; the same seed gives the same weights.
        goal: ``"misclassify"`` (default), ``"relabel"`` (implied by ``new_labels``) or
            ``"unseen"``: raise each instance's loss to that of data the model never saw,
            calibrated on ``heldout`` (or, for images without it, on shifted copies).
        heldout: ``(inputs, labels)`` the model was never trained on, for ``goal="unseen"``.
        ids: Names of the forget instances in your records (default ``0..N-1``).
        input_range: ``(low, high)`` bounds of the inputs (default ``(0, 1)``); ``None`` if
            unbounded. With a ``ForgetRequest``, the request's own range applies.
        retain: ``(inputs, labels)`` of retained training data, for methods that use it.
        device: Where to run (default: the model's device).
        inplace: Update ``model`` itself. If the run then fails, ``model`` may be left changed.
        progress: Show progress bars (default: when standard error is a terminal).
        memory_format: Tensor layout of the run, ``"auto"`` (channels-last for convolutional
            models), ``"channels_last"`` or ``"contiguous"``; the model comes back contiguous.
        **hyperparams: The method's hyperparameters (see ``unlearnkit methods``).

    Returns:
        :class:`~unlearnkit.result.UnlearnResult` with ``.model``, ``.converged``, ``.steps``,
        ``.seconds``, per-instance ``.outcomes`` and summary ``.metrics``.

    Raises:
        InvalidRequestError: The forget set is malformed or does not fit the model.
        InvalidModelError: The model has non-finite weights or does not output logits.
        UnknownMethodError: No method has that name.
        InvalidHyperparameterError: A hyperparameter is unknown or out of range.
        DataContractError: Retain data given to a forget-only method, or missing.
        NonFiniteError: The run produced NaN or infinity; no model is returned.

    Example:
        >>> import torch, unlearnkit
        >>> from unlearnkit.models import load_default_model
        >>> default = load_default_model()
        >>> x, y = default.data.x_train[:8], default.data.y_train[:8]
        >>> result = unlearnkit.unlearn(default.model, forget=(x, y), method="l2ul", n_adv=5)
        >>> result.metrics["acc/forget/before"], result.converged
        (100.0, True)
    """
    if isinstance(forget, ForgetRequest):
        if new_labels is not None or ids is not None or goal is not None:
            raise InvalidRequestError("pass new_labels, ids and goal inside the ForgetRequest, not beside it")
        request = forget
    else:
        if not isinstance(forget, (tuple, list)) or len(forget) != 2:
            raise InvalidRequestError("forget must be a pair (inputs, labels), (inputs, None) or a ForgetRequest")
        request = ForgetRequest(
            forget[0], forget[1], new_labels, () if ids is None else ids, input_range, goal  # type: ignore[arg-type]
        )
    if isinstance(method, UnlearningMethod):
        if hyperparams:
            raise InvalidHyperparameterError(
                "hyperparameters go to create_method(); a configured method takes none here"
            )
        algorithm = method
    else:
        algorithm = create_method(method, **hyperparams)
    show = sys.stderr.isatty() if progress is None else progress
    return algorithm.unlearn(
        model, request, retain=retain, heldout=heldout, seed=seed, device=device, inplace=inplace, progress=show,
        memory_format=memory_format,
    )
