"""ACU: analytic continual unlearning, a frozen backbone and a ridge head that forgets in closed form."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.penultimate import resolve_head
from unlearnkit.components.ridge import ridge_fit, ridge_remove
from unlearnkit.errors import DataContractError, InvalidHyperparameterError, InvalidModelError, InvalidRequestError
from unlearnkit.methods.base import (
    MethodRun,
    UnlearnContext,
    UnlearningMethod,
    check_positive,
    optional,
)
from unlearnkit.methods.registry import register_method
from unlearnkit.utils.modules import eval_mode, model_device, model_dtype

#: Buffer on the head holding the ridge memory ``R`` (float64, ``(d + 1)``-square with a bias).
MEMORY_BUFFER = "acu_memory"
#: Buffer on the head holding ``[rows in the memory, gamma]`` (float64); gamma 0 = no memory yet.
META_BUFFER = "acu_memory_meta"
#: Ridge regularisation of a memory fitted without an explicit ``gamma``.
DEFAULT_GAMMA = 1.0
#: Inputs per forward pass when reading features.
_FEATURE_BATCH = 1024


def head_features(model: nn.Module, inputs: Tensor, *, head: str | None = None) -> Tensor:
    """The inputs of the head (its features) on ``inputs``, float64, the model in eval mode.

    Also checks that the head runs once per forward pass and that its output is the model's
    output, i.e. that the logits are a linear function of these features.

    Raises:
        InvalidModelError: If the head is not the layer that computes the logits.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> head_features(model, torch.ones(2, 1, 2, 2)).shape
        torch.Size([2, 4])
    """
    name, module = resolve_head(model, head)
    seen: list[tuple[Tensor, Tensor]] = []

    def record(_: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        seen.append((args[0].detach(), output.detach()))

    handle = module.register_forward_hook(record)
    device, dtype = model_device(model), model_dtype(model)
    chunks = []
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, inputs.shape[0], _FEATURE_BATCH):
                seen.clear()
                logits = model(inputs[start : start + _FEATURE_BATCH].to(device, dtype))
                if len(seen) != 1:
                    raise InvalidModelError(
                        f"head {name!r} ran {len(seen)} times in one forward pass; acu needs the "
                        "nn.Linear that computes the logits, once (pass head=<its name>)"
                    )
                features, output = seen[0]
                if not (isinstance(logits, Tensor) and output.shape == logits.shape and torch.equal(output, logits)):
                    raise InvalidModelError(
                        f"the output of head {name!r} is not the model's logits, so replacing it "
                        "cannot retrain the classifier: pass head=<name of the final nn.Linear>"
                    )
                if features.dim() != 2:
                    raise InvalidModelError(
                        f"head {name!r} reads inputs of shape {tuple(features.shape)}; acu needs "
                        "one feature vector per instance (N, d)"
                    )
                chunks.append(features.to(torch.float64))
    finally:
        handle.remove()
    return torch.cat(chunks)


def _one_hot(labels: Tensor, classes: int) -> Tensor:
    return F.one_hot(labels.long(), classes).to(torch.float64)


def _head_weights(module: nn.Linear) -> Tensor:
    """The head as ridge weights ``(d', C)``: weight transposed, bias as the last row."""
    weights = module.weight.detach().T.to(torch.float64)
    if module.bias is None:
        return weights
    return torch.cat([weights, module.bias.detach().to(torch.float64)[None]])


def _memory_dim(module: nn.Linear) -> int:
    return module.in_features + (module.bias is not None)


def read_memory(module: nn.Linear) -> tuple[Tensor, int, float] | None:
    """``(R, rows, gamma)`` of the head's analytic memory, or ``None`` if it holds none.

    Raises:
        InvalidModelError: If the stored memory does not fit the head's shape.
    """
    memory, meta = getattr(module, MEMORY_BUFFER, None), getattr(module, META_BUFFER, None)
    if not isinstance(memory, Tensor) or not isinstance(meta, Tensor) or float(meta[1]) <= 0:
        return None  # absent, or an empty placeholder from prepare_analytic_memory
    dim = _memory_dim(module)
    if memory.shape != (dim, dim):
        raise InvalidModelError(
            f"the head's analytic memory is {tuple(memory.shape)} but the head needs ({dim}, {dim})"
        )
    return memory.to(torch.float64), int(meta[0]), float(meta[1])


def _set_buffer(module: nn.Module, name: str, value: Tensor) -> None:
    if isinstance(getattr(module, name, None), Tensor):
        setattr(module, name, value)  # a registered buffer: stays registered and persistent
    else:
        module.register_buffer(name, value)


def _write(module: nn.Linear, memory: Tensor, weights: Tensor, rows: int, gamma: float) -> None:
    """Writes the ridge weights into the head (its dtype) and the memory into its buffers."""
    d = module.in_features
    with torch.no_grad():
        module.weight.copy_(weights[:d].T.to(module.weight.dtype))
        if module.bias is not None:
            module.bias.copy_(weights[d].to(module.bias.dtype))
    device = module.weight.device
    _set_buffer(module, MEMORY_BUFFER, memory.to(device=device, dtype=torch.float64).contiguous())
    _set_buffer(module, META_BUFFER, torch.tensor([float(rows), float(gamma)], dtype=torch.float64, device=device))


def fit_analytic_head(
    model: nn.Module, inputs: Tensor, labels: Tensor, *, gamma: float = DEFAULT_GAMMA, head: str | None = None
) -> nn.Module:
    """Fits the head as a ridge classifier on the training data and stores its memory (in place).

    Call it at training time, once the backbone is final: the head becomes
    ``W = R X^T Y`` on the head's features ``X`` of ``inputs`` (a bias column appended) and the
    one-hot ``labels`` ``Y``, and ``R = (X^T X + gamma I)^-1`` is registered as buffers on the
    head (``acu_memory``, ``acu_memory_meta``), so they are saved with the model's state dict.
    Later ``acu`` requests then need no training data. The backbone must stay as it is between
    this call and the requests, and the head must not be trained in between, or the removals are
    no longer exact.

    Args:
        model: The trained classifier; its head is replaced, nothing else changes.
        inputs: Training inputs (all the data the head should be fitted on).
        labels: Their labels.
        gamma: Ridge regularisation, > 0, 1.
        head: Name of the head module, ``None`` for the last ``nn.Linear``.

    Returns:
        ``model``.

    Raises:
        InvalidHyperparameterError: If ``gamma`` is not > 0 or ``head`` does not name an
            ``nn.Linear``.
        DataContractError: If the training data are malformed.
        InvalidModelError: If the head is not the layer that computes the logits.

    Example:
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> fit_analytic_head(model, torch.rand(20, 4), torch.randint(0, 3, (20,)))[1].acu_memory.shape
        torch.Size([5, 5])
    """
    check_positive(gamma=gamma)
    name, module = resolve_head(model, head)
    x, y = UnlearningMethod._check_retain((inputs, labels), module.out_features, model_device(model), what="training")
    features = head_features(model, x, head=name)
    memory, weights = ridge_fit(features, _one_hot(y, module.out_features), gamma, bias=module.bias is not None)
    _write(module, memory, weights, rows=features.shape[0], gamma=gamma)
    return model


def prepare_analytic_memory(model: nn.Module, *, head: str | None = None) -> nn.Module:
    """Registers empty memory buffers on the head, so that a checkpoint saved with a memory can
    be loaded (strictly) into a freshly built model; returns ``model``.

    Until a state dict fills them, the buffers hold an empty placeholder (gamma 0) that ``acu``
    treats as "no memory".

    Example:
        >>> fresh = prepare_analytic_memory(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
        >>> sorted(fresh.state_dict())
        ['1.acu_memory', '1.acu_memory_meta', '1.bias', '1.weight']
    """
    _, module = resolve_head(model, head)
    dim = _memory_dim(module)
    device = module.weight.device
    if not isinstance(getattr(module, MEMORY_BUFFER, None), Tensor):
        module.register_buffer(MEMORY_BUFFER, torch.zeros(dim, dim, dtype=torch.float64, device=device))
    if not isinstance(getattr(module, META_BUFFER, None), Tensor):
        module.register_buffer(META_BUFFER, torch.zeros(2, dtype=torch.float64, device=device))
    return model


@register_method("acu")
class ACU(UnlearningMethod):
    """Analytic continual unlearning (ACU): refit the ridge head without the forgotten rows, exactly.

    Tang, Zhuang, Fang, Li, Han, Huang, Fan, Wang, Zhu, Zhang, Song and Liu, "ACU: Analytic
    Continual Unlearning for Efficient and Exact Forgetting with Privacy Preservation", 2025,
    https://arxiv.org/abs/2505.12239 (preprint).

    The backbone is frozen; the classifier head (the model's last ``nn.Linear``, or the one
    named by ``head``) is a ridge regression of one-hot labels on its input features ``X``
    (a bias column appended): ``W = R X^T Y`` with ``R = (X^T X + gamma I)^-1``. ``R`` is the
    memory: a request removes the forget rows ``X_f`` in closed form by the Woodbury identity,
    ``R' = R + R X_f^T (I - X_f R X_f^T)^-1 X_f R`` and ``W' = W - R' X_f^T (Y_f - X_f W)``
    (:func:`~unlearnkit.components.ridge.ridge_remove`), which equals refitting the ridge head
    on the remaining rows, with no gradient step and no need for those rows. The new ``W`` is
    written into the head (model dtype), ``R`` is kept in float64 as buffers on the head
    (``acu_memory``, ``acu_memory_meta`` = rows and gamma), so a saved checkpoint carries it.
    Features are read in eval mode; the backbone's parameters and buffers are never changed.

    Data (``data_access = "forget+optional-retain"``), three cases:

    - no memory on the head, retain data given: the memory is fitted on the retain and forget
      features together (the training data as far as the caller holds it), then the forget rows
      are removed; the head then equals a ridge head fitted on the retain rows alone. The retain
      data is only read for features.
    - memory on the head (from :func:`fit_analytic_head` at training time, or from an earlier
      request), no retain data: the forget rows are removed from it (continual requests with no
      training data).
    - memory and retain data: refused (``DataContractError``): the retain data would be ignored.
      Without either, a ``DataContractError`` says to pass retain data or fit the memory first.

    A removal is exact only if the forget rows were in the fitted data with these labels, the
    backbone is unchanged since the fit, and the head was not trained in between. Removing more
    rows than the memory holds, or rows that leave the ridge problem indefinite (rows that were
    never fitted, or already removed), is refused with an ``InvalidRequestError``; other rows
    that were never fitted cannot be detected and give a head that is no refit.

    Fixed schedule: one closed-form update (``steps = passes = 1``,
    ``stop_reason="fixed_schedule"``); ``converged`` says whether every forget instance is
    misclassified at the end, which ACU does not promise (a head refitted without an instance
    often still classifies it correctly, as a retrained model does). Misclassification requests
    only. ``result.details``: ``gamma``, ``feature_dim``, ``rows_removed``, ``memory``
    (``"fitted_now"`` or ``"reused"``), ``rows_before`` / ``rows_remaining`` in the memory,
    ``head``.

    The new head regresses one-hot targets, so its logits lie near 0 and 1 instead of being
    trained with cross-entropy: predictions are those of a ridge classifier, but softmax
    confidences are low and the cross-entropy high for every instance, forgotten or not (on the
    digits demo model the forget loss rose from 0.0005 to 1.56 while every prediction stayed
    the same). Loss- or confidence-based measures (membership inference, ``goal="unseen"``)
    therefore compare heads of different kinds, not a forgotten head with a retained one.

    Differences from the paper: the features are the head's input as it is; the analytic-
    learning family often inserts a random expansion ("buffer layer") before the ridge head,
    not done here. The bias is a column of ones regularised like every weight. The paper's
    ``gamma`` for these models was not available to check; 1 is used.

    Args:
        gamma: Ridge regularisation of a memory fitted now, > 0; ``None`` (default) means 1 for
            a new memory and the memory's own for a stored one (an explicit value that differs
            from a stored memory's is refused: it cannot be changed without the data).
        head: Name of the head module (``dict(model.named_modules())`` key), ``None`` (default)
            for the last ``nn.Linear`` in module order. Its output must be the model's logits.

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 1])
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> first = unlearnkit.unlearn(model, forget=(x, y), method="acu", retain=retain)
        >>> first.details["memory"], first.details["rows_remaining"], first.steps
        ('fitted_now', 10, 1)
        >>> again = unlearnkit.unlearn(first.model, forget=(retain[0][:3], retain[1][:3]), method="acu")
        >>> again.details["memory"], again.details["rows_remaining"], again.retain_used
        ('reused', 7, 0)
    """

    summary = "Analytic continual unlearning: exact closed-form refit of a ridge head without the forget rows."
    data_access = "forget+optional-retain"
    supports_relabel = False
    supports_unseen = False
    goal_driven = False
    gradient_based = False  # one update outside any optimiser: wrappers of optimiser steps refuse it

    def __init__(self, *, gamma: float | None = None, head: str | None = None) -> None:
        check_positive(**optional(gamma=gamma))
        if head is not None and (not isinstance(head, str) or not head):
            raise InvalidHyperparameterError(f"head must be a module name or None, got {head!r}")
        self.gamma = gamma
        self.head = head

    def resolved_params(self, context: UnlearnContext) -> dict[str, Any]:
        """The hyperparameters, ``gamma`` filled in with the memory's own."""
        params = self.get_params()
        stored = read_memory(resolve_head(context.model, self.head)[1])
        if stored is not None:
            params["gamma"] = stored[2]
        return params

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        model, request = context.model, context.request
        name, module = resolve_head(model, self.head)
        stored = read_memory(module)
        if stored is not None and context.retain is not None:
            raise DataContractError(
                f"the head {name!r} already holds an analytic memory, so the retain data would be "
                "ignored: pass retain=None (the request is removed from the memory)"
            )
        if stored is None and context.retain is None:
            raise DataContractError(
                f"acu needs either retain data (pass retain=(inputs, labels)) or a head {name!r} "
                "whose memory was fitted first with unlearnkit.methods.acu.fit_analytic_head"
            )
        if stored is not None and self.gamma is not None and self.gamma != stored[2]:
            raise InvalidHyperparameterError(
                f"the head's memory was fitted with gamma={stored[2]}; a request cannot change "
                f"gamma (got {self.gamma}): pass gamma=None"
            )
        bias = module.bias is not None
        classes = module.out_features
        forget_x = head_features(model, request.inputs, head=name)
        forget_y = _one_hot(request.known_labels, classes)
        if stored is None:
            assert context.retain is not None
            gamma = DEFAULT_GAMMA if self.gamma is None else self.gamma
            retain_x = head_features(model, context.retain[0], head=name)
            memory, weights = ridge_fit(
                torch.cat([retain_x, forget_x]),
                torch.cat([_one_hot(context.retain[1], classes), forget_y]),
                gamma,
                bias=bias,
            )
            rows, source = retain_x.shape[0] + forget_x.shape[0], "fitted_now"
        else:
            memory, rows, gamma = stored
            weights, source = _head_weights(module), "reused"
        try:
            memory, weights = ridge_remove(memory, weights, forget_x, forget_y, bias=bias, rows=rows)
        except ValueError as err:
            raise InvalidRequestError(f"acu cannot remove the forget set from the head's memory: {err}") from None
        remaining = rows - forget_x.shape[0]
        _write(module, memory, weights, remaining, gamma)
        details = {
            "gamma": gamma,
            "feature_dim": module.in_features,
            "rows_removed": int(forget_x.shape[0]),
            "memory": source,
            "rows_before": rows,
            "rows_remaining": remaining,
            "head": name,
        }
        return MethodRun(1, 1, context.goal_holds(), "fixed_schedule", details)
