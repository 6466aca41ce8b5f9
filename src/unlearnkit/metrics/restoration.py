"""Restoration after unlearning corrupted training data, and a backdoor's attack success rate.

The restoration score follows the idea of RESTOR (Rezaei et al., "RESTOR: Knowledge Recovery in
Machine Unlearning", TMLR 2025, https://arxiv.org/abs/2411.00204), there for language models:
train ``M_clean`` on clean data ``D`` and ``M_corrupt`` on ``D`` plus corrupted instances ``D_c``,
unlearn ``D_c`` from ``M_corrupt`` to get ``M_u``, and measure on the *affected* set

    A = {x : M_clean classifies x correctly and M_corrupt does not}

how much of the lost accuracy came back:

    R = (acc_A(M_u) - acc_A(M_corrupt)) / (acc_A(M_clean) - acc_A(M_corrupt)).

By construction ``acc_A(M_clean) = 100 %`` and ``acc_A(M_corrupt) = 0 %``, so ``R`` is simply
``M_u``'s accuracy on ``A`` as a fraction: 1 when the unlearned model recovers everything the
corruption broke, 0 when it recovers nothing. ``R`` is undefined when ``A`` is empty (the
corruption broke nothing measurable); it is then reported as ``None``, never as 0 or 1.

Metrics know no method: these functions take models and data only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unlearnkit.errors import InvalidRequestError
from unlearnkit.utils.modules import model_dtype, predict_logits


@dataclass(frozen=True)
class RestorationScore:
    """The restoration of one unlearned model on the affected set.

    Attributes:
        restoration: ``R`` as a fraction (1: fully restored, 0: as corrupt as before; it can fall
            outside ``[0, 1]`` only if the definition's two reference accuracies were not 100 and
            0, which they are by construction of ``A``). ``None`` when ``A`` is empty.
        affected: ``|A|``, the number of evaluation inputs the clean model gets right and the
            corrupt one wrong.
        total: Number of evaluation inputs.
        acc_clean: Accuracy in percent of the clean model on ``A`` (100 by construction), or
            ``None`` when ``A`` is empty.
        acc_corrupt: Accuracy in percent of the corrupt model on ``A`` (0 by construction), or
            ``None``.
        acc_unlearned: Accuracy in percent of the unlearned model on ``A``, or ``None``.
    """

    restoration: float | None
    affected: int
    total: int
    acc_clean: float | None
    acc_corrupt: float | None
    acc_unlearned: float | None

    @property
    def defined(self) -> bool:
        """Whether ``A`` is non-empty, so that ``R`` means something."""
        return self.restoration is not None

    def to_dict(self) -> dict[str, Any]:
        """The score as a JSON-ready dict (``None`` stays ``None``: JSON ``null``)."""
        return asdict(self)


def _predictions(model: nn.Module, inputs: Tensor) -> Tensor:
    """Top-1 predictions of ``model`` in eval mode, on the CPU."""
    return predict_logits(model, inputs.to(model_dtype(model))).argmax(dim=1).cpu()


def restoration_score(
    clean: nn.Module, corrupt: nn.Module, unlearned: nn.Module, inputs: Tensor, labels: Tensor
) -> RestorationScore:
    """How much of the accuracy the corruption destroyed the unlearned model gets back.

    Args:
        clean: ``M_clean``, trained without the corrupted instances.
        corrupt: ``M_corrupt``, trained with them.
        unlearned: ``M_u``, the corrupt model after unlearning them.
        inputs: Evaluation inputs (e.g. the test set; for a backdoor, triggered test images).
        labels: Their true labels.

    Returns:
        :class:`RestorationScore`. When no input is affected (``A`` empty), ``restoration`` and
        the accuracies on ``A`` are ``None`` and ``affected`` is 0: the score is undefined, not 0.

    Raises:
        InvalidRequestError: If ``inputs`` and ``labels`` differ in length or are empty.

    Example:
        >>> model = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2))
        >>> swapped = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = swapped.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        >>> x, y = torch.eye(2), torch.tensor([0, 1])
        >>> restoration_score(model, swapped, model, x, y).restoration
        1.0
        >>> restoration_score(model, swapped, swapped, x, y).restoration
        0.0
        >>> restoration_score(model, model, swapped, x, y).restoration is None  # nothing broken
        True
    """
    inputs, labels = torch.as_tensor(inputs), torch.as_tensor(labels).long().cpu()
    if inputs.shape[0] != labels.shape[0]:
        raise InvalidRequestError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels")
    if inputs.shape[0] == 0:
        raise InvalidRequestError("cannot measure restoration on an empty evaluation set")
    right_clean = _predictions(clean, inputs) == labels
    right_corrupt = _predictions(corrupt, inputs) == labels
    affected = right_clean & ~right_corrupt
    count = int(affected.sum())
    if count == 0:
        return RestorationScore(None, 0, int(labels.shape[0]), None, None, None)
    right_unlearned = _predictions(unlearned, inputs[affected]) == labels[affected]
    acc_clean = 100.0 * float(right_clean[affected].float().mean())
    acc_corrupt = 100.0 * float(right_corrupt[affected].float().mean())
    acc_unlearned = 100.0 * float(right_unlearned.float().mean())
    # The general formula, not just acc_unlearned / 100: it documents the definition and stays
    # right if A is ever built differently (the denominator is 100 by construction here).
    restoration = (acc_unlearned - acc_corrupt) / (acc_clean - acc_corrupt)
    return RestorationScore(restoration, count, int(labels.shape[0]), acc_clean, acc_corrupt, acc_unlearned)


def attack_success_rate(model: nn.Module, inputs: Tensor, target: int) -> float:
    """Share in percent of ``inputs`` that ``model`` predicts as the backdoor's ``target`` class.

    Pass *triggered* test images whose true class is not ``target`` (those of the target class
    would count as successes without any backdoor): the result is the backdoor's attack success
    rate. On the same images without the trigger it measures the base rate.

    Args:
        model: The classifier (put in eval mode for the prediction, then restored).
        inputs: Triggered inputs of classes other than ``target``.
        target: The class the backdoor maps triggered inputs to.

    Raises:
        InvalidRequestError: If ``inputs`` is empty.

    Example:
        >>> model = nn.Linear(2, 3, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        >>> attack_success_rate(model, torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]), 0)
        66.66666865348816
    """
    inputs = torch.as_tensor(inputs)
    if inputs.shape[0] == 0:
        raise InvalidRequestError("cannot measure an attack success rate on an empty set")
    return 100.0 * float((_predictions(model, inputs) == int(target)).float().mean())
