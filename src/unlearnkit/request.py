"""The forget request: which instances to forget, and what they should become.

A request holds the forget inputs, their training labels, optionally the new labels they should
be predicted as (relabeling mode) and ids naming them in the caller's records. Everything that
can be checked without the model is checked on construction; :meth:`ForgetRequest.check_classes`
checks labels against the model's number of classes once it is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from unlearnkit.errors import InvalidRequestError
from unlearnkit.utils.hashing import tensor_sha256

Goal = Literal["misclassify", "relabel", "unseen"]
GOALS: tuple[str, ...] = ("misclassify", "relabel", "unseen")
InstanceId = int | str
ArrayLike = Tensor | np.ndarray | Sequence

DEFAULT_INPUT_RANGE: tuple[float, float] = (0.0, 1.0)


def _as_float_tensor(inputs: ArrayLike) -> Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, Tensor) else inputs)
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(f"forget inputs cannot be read as a tensor: {err}") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise InvalidRequestError(f"forget inputs must be numeric (real numbers), got dtype {tensor.dtype}")
    return tensor if tensor.is_floating_point() else tensor.float()


def _as_label_tensor(labels: ArrayLike, what: str) -> Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    except (TypeError, ValueError) as err:
        raise InvalidRequestError(f"{what} cannot be read as a tensor: {err}") from None
    if tensor.dim() != 1:
        raise InvalidRequestError(f"{what} must be one-dimensional, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all() or not torch.equal(tensor, tensor.round()):
            raise InvalidRequestError(f"{what} must be integer class indices, got {tensor.dtype} values")
    elif tensor.dtype == torch.bool or tensor.is_complex():
        raise InvalidRequestError(f"{what} must be integer class indices, got dtype {tensor.dtype}")
    return tensor.long()


def instance_sha256(inputs: Tensor, label: int) -> str:
    """sha256 naming one forget instance's content: its input's values as float32, flattened,
    followed by its label. The same input and label give the same hash whatever dtype or device
    the model ran in.

    Example:
        >>> a = instance_sha256(torch.zeros(1, 2, 2), 3)
        >>> a == instance_sha256(torch.zeros(1, 2, 2, dtype=torch.float64), 3), a == instance_sha256(torch.zeros(1, 2, 2), 4)
        (True, False)
    """
    return tensor_sha256(torch.cat([inputs.detach().to("cpu", torch.float32).reshape(-1), torch.tensor([float(label)])]))


@dataclass(frozen=True)
class ForgetRequest:
    """Instances to forget, validated.

    Args:
        inputs: Forget inputs, shape ``(N, *input_shape)``, floats in ``input_range``.
        labels: Their training labels, shape ``(N,)``, integer class indices; ``None`` when
            nobody knows them (a user asks to delete their photos): only methods that declare
            ``needs_labels = False`` (``laf``) accept such a request, misclassification only.
        new_labels: Relabeling mode: the class each instance should be predicted as, shape
            ``(N,)``, each different from its label. ``None`` (default) means misclassification
            mode: each instance should be predicted as anything but its label.
        ids: Names of the instances in the caller's records (ints or strings), unique.
            Defaults to ``0 .. N-1``.
        input_range: ``(low, high)`` bounds every input value lies in, and that attacks clamp to;
            ``None`` when inputs are unbounded (e.g. already standardised).
        goal: ``"misclassify"`` (default without new labels), ``"relabel"`` (implied by new
            labels) or ``"unseen"``: raise each instance's loss until it looks like the loss of
            data the model never saw (see :func:`~unlearnkit.components.unseen.unseen_loss_targets`).

    Raises:
        InvalidRequestError: On an empty set, mismatched lengths, non-finite inputs, inputs
            outside ``input_range``, new labels equal to the old ones, duplicate ids, or a
            relabeling or ``unseen`` request without labels.

    Example:
        >>> import torch
        >>> request = ForgetRequest(torch.rand(3, 1, 8, 8), torch.tensor([0, 4, 9]))
        >>> request.goal, len(request), request.ids
        ('misclassify', 3, (0, 1, 2))
        >>> ForgetRequest(torch.rand(2, 4), torch.tensor([1, 2]), new_labels=torch.tensor([1, 0]))
        Traceback (most recent call last):
        ...
        unlearnkit.errors.InvalidRequestError: new label equals the training label for 1 instance(s) (ids [0]); a relabeling request must change every label
    """

    inputs: Tensor
    labels: Tensor | None
    new_labels: Tensor | None = None
    ids: tuple[InstanceId, ...] = field(default=())
    input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE
    # None is resolved in __post_init__ (misclassify, or relabel when new labels are given), so a
    # built request always has a goal.
    goal: Goal = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        inputs = _as_float_tensor(self.inputs)
        n = inputs.shape[0] if inputs.dim() > 0 else 0
        if inputs.dim() < 2 or n == 0:
            raise InvalidRequestError(
                f"the forget set is empty or has no batch dimension (inputs shape {tuple(inputs.shape)});"
                " pass inputs shaped (N, ...) with N >= 1"
            )
        labels = None
        if self.labels is None:
            if self.new_labels is not None or self.goal in ("relabel", "unseen"):
                raise InvalidRequestError(
                    "a request without labels can only ask for misclassification (relabeling and the "
                    "'unseen' goal are defined by the training labels)"
                )
        else:
            labels = _as_label_tensor(self.labels, "labels")
            if labels.shape[0] != n:
                raise InvalidRequestError(f"{n} forget inputs but {labels.shape[0]} labels")
            if (labels < 0).any():
                raise InvalidRequestError(f"labels must be non-negative, got {labels.min().item()}")
        if not torch.isfinite(inputs).all():
            bad = int((~torch.isfinite(inputs.reshape(n, -1))).any(dim=1).sum())
            raise InvalidRequestError(f"{bad} forget input(s) contain NaN or infinite values")
        ids = self._check_ids(self.ids, n)
        input_range = self._check_range(inputs, self.input_range)
        new_labels = None
        if self.new_labels is not None:
            new_labels = _as_label_tensor(self.new_labels, "new_labels")
            if new_labels.shape[0] != n:
                raise InvalidRequestError(f"{n} forget inputs but {new_labels.shape[0]} new labels")
            if (new_labels < 0).any():
                raise InvalidRequestError(f"new labels must be non-negative, got {new_labels.min().item()}")
            assert labels is not None  # checked above: new labels need labels
            same = (new_labels == labels).nonzero().flatten().tolist()
            if same:
                raise InvalidRequestError(
                    f"new label equals the training label for {len(same)} instance(s) "
                    f"(ids {[ids[i] for i in same][:10]}); a relabeling request must change every label"
                )
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "new_labels", new_labels)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "input_range", input_range)
        object.__setattr__(self, "goal", self._check_goal(self.goal, new_labels))

    @staticmethod
    def _check_ids(ids: Sequence[InstanceId] | Tensor | np.ndarray, n: int) -> tuple[InstanceId, ...]:
        if isinstance(ids, (Tensor, np.ndarray)):
            ids = ids.tolist()
        if ids is None or len(ids) == 0:
            return tuple(range(n))
        if len(ids) != n:
            raise InvalidRequestError(f"{n} forget inputs but {len(ids)} ids")
        clean: list[InstanceId] = []
        for i in ids:
            if isinstance(i, (bool, float)) or not isinstance(i, (int, str, np.integer)):
                raise InvalidRequestError(f"ids must be ints or strings, got {type(i).__name__} {i!r}")
            clean.append(int(i) if isinstance(i, np.integer) else i)
        seen: set[InstanceId] = set()
        dupes = [i for i in clean if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        if dupes:
            raise InvalidRequestError(f"duplicate ids in the forget set: {sorted(set(map(str, dupes)))[:10]}")
        return tuple(clean)

    @staticmethod
    def _check_range(inputs: Tensor, input_range: tuple[float, float] | None) -> tuple[float, float] | None:
        if input_range is None:
            return None
        low, high = (float(v) for v in input_range)
        if not low < high:
            raise InvalidRequestError(f"input_range must be (low, high) with low < high, got {input_range}")
        lo, hi = inputs.min().item(), inputs.max().item()
        if lo < low or hi > high:
            raise InvalidRequestError(
                f"forget inputs lie in [{lo:.4g}, {hi:.4g}], outside the declared input_range "
                f"({low:g}, {high:g}); scale them into the range the model was trained on, or pass "
                "input_range=(low, high) (None if the inputs are unbounded)"
            )
        return (low, high)

    @staticmethod
    def _check_goal(goal: str | None, new_labels: Tensor | None) -> Goal:
        if goal is not None and goal not in GOALS:
            raise InvalidRequestError(f"goal must be one of {GOALS}, got {goal!r}")
        if new_labels is not None:
            if goal not in (None, "relabel"):
                raise InvalidRequestError(f"new labels make this a relabeling request; goal {goal!r} contradicts them")
            return "relabel"
        if goal == "relabel":
            raise InvalidRequestError("goal 'relabel' needs new_labels")
        return goal or "misclassify"  # type: ignore[return-value]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.inputs.shape[1:])

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def has_labels(self) -> bool:
        """Whether the caller gave the training labels."""
        return self.labels is not None

    def require_labels(self, message: str = "this request has no labels; pass the forget set's training labels") -> Tensor:
        """The labels, or :class:`~unlearnkit.errors.InvalidRequestError` with ``message`` when
        the request has none: for code that measures or trains against them.

        Raises:
            InvalidRequestError: If the request has no labels.

        Example:
            >>> ForgetRequest(torch.rand(2, 4), None).require_labels("a report needs labels")
            Traceback (most recent call last):
            ...
            unlearnkit.errors.InvalidRequestError: a report needs labels
        """
        if self.labels is None:
            raise InvalidRequestError(message)
        return self.labels

    @property
    def known_labels(self) -> Tensor:
        """The labels (:meth:`require_labels` with its default message): inside a method's run
        they are always set (given, or the original model's predictions for a label-free method).

        Example:
            >>> ForgetRequest(torch.rand(2, 4), torch.tensor([3, 1])).known_labels.tolist()
            [3, 1]
        """
        return self.require_labels()

    def with_labels(self, labels: Tensor) -> ForgetRequest:
        """A copy of this request with ``labels`` filled in (e.g. the original model's
        predictions for an unlabelled request, to measure and check the goal by).

        Example:
            >>> request = ForgetRequest(torch.rand(2, 4), None)
            >>> request.has_labels, request.with_labels(torch.tensor([3, 1])).labels.tolist()
            (False, [3, 1])
        """
        return ForgetRequest(self.inputs, labels, self.new_labels, self.ids, self.input_range, self.goal)

    def check_classes(self, num_classes: int) -> None:
        """Checks that every label (and new label) is a valid class of a ``num_classes`` model.

        Raises:
            InvalidRequestError: Naming the offending ids and the valid range.
        """
        for name, tensor in (("label", self.labels), ("new label", self.new_labels)):
            if tensor is None:
                continue
            bad = (tensor >= num_classes).nonzero().flatten().tolist()
            if bad:
                raise InvalidRequestError(
                    f"{len(bad)} {name}(s) out of range for a model with {num_classes} classes "
                    f"(valid 0..{num_classes - 1}): ids {[self.ids[i] for i in bad][:10]} have "
                    f"{[int(tensor[i]) for i in bad][:10]}"
                )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ForgetRequest:
        """A copy of this request with its tensors on ``device`` (inputs cast to ``dtype`` if given)."""
        return ForgetRequest(
            self.inputs.to(device, dtype=dtype),
            None if self.labels is None else self.labels.to(device),
            None if self.new_labels is None else self.new_labels.to(device),
            self.ids,
            self.input_range,
            self.goal,
        )
