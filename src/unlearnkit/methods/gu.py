"""GU: run any gradient-based method, executing only the part of each update that is orthogonal
to the span of retain gradients."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from unlearnkit.components.batching import shuffled_batches
from unlearnkit.components.constraints import constrained_updates, loss_gradients, orthogonal_to, orthonormal_basis
from unlearnkit.errors import InvalidHyperparameterError, InvalidRequestError
from unlearnkit.methods.base import (
    MethodRun,
    RetainData,
    UnlearnContext,
    UnlearningMethod,
    check_count,
    check_positive,
)
from unlearnkit.methods.registry import create_method, method_class, register_method
from unlearnkit.request import ForgetRequest


@register_method("gu")
class GeometricUnlearning(UnlearningMethod):
    """Geometric-disentanglement unlearning (GU): a plug-in for any gradient-based method.

    From "Geometric-Disentanglement Unlearning" (Zhou, Zhang, Wei, Qiu, Yang, Lin, Qian, He,
    Tong, Ji, Zhang; 2025, https://arxiv.org/abs/2511.17100): to first order the retain loss is
    unchanged by an update iff the update is orthogonal to the span of the retain gradients, so
    GU executes only the normal component ``g - P_R g`` of each forget update.

    How it runs here: ``retain_gradients`` batches of ``retain_batch_size`` retain rows (a
    seeded shuffle; fewer if the retain data runs out) give one cross-entropy gradient each at
    the original weights; their span gets an orthonormal basis ``B`` (thin SVD; dependent
    directions dropped, so the rank may be lower). The ``base`` method then runs unchanged,
    and every optimiser step it takes on the model is replaced by its projection: the change
    ``delta`` of all trainable parameters becomes ``delta - B B^T delta``
    (:func:`~unlearnkit.components.constraints.constrained_updates`). Projecting the *executed*
    change rather than the raw gradient keeps it orthogonal whatever the optimiser (Adam's
    per-coordinate scaling, momentum and weight decay would otherwise leak into the span). The
    paper recomputes the retain gradients at every step (on LLMs); here they are computed once,
    at the original weights, which is what the retain performance is measured against and costs
    one basis per request.

    Cost: ``retain_gradients`` forward+backward passes on retain batches per basis, a basis of
    ``d x r`` floats (``d`` trainable parameters, ``r <= retain_gradients``; 16 x 11.2 M x 4 B
    = 0.7 GB for a ResNet-18, about 0.2 MB for unlearnkit's digits CNN), and ``4 d r`` flops per
    step for the projection. ``result.details`` records the rank, the basis size in MB, the
    seconds spent on it and the number of projected steps.

    The base method keeps its own stopping rule and caps; its data contract is honoured (it
    receives the retain data only if it reads retain data itself). A base whose objective also
    trains on retain data (``neggrad_plus``, ``random_label``) has those updates projected too.
    Methods that take no optimiser steps (closed-form or one-shot ones) are refused.

    Data: the model, the forget set and retain data of any size
    (``data_access = "forget+retain"``); ``result.retain_used`` is its size.

    Args:
        base: Registry name of the gradient-based method to run, ``"neggrad"``.
        base_params: Hyperparameters of the base method, ``None`` (its defaults).
        retain_gradients: Retain gradients spanning the protected subspace, 16.
        retain_batch_size: Retain rows per gradient, 32.

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), model(torch.rand(2, 4)).argmax(1)
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="gu", retain=retain,
        ...                             base_params={"lr": 0.05}, retain_gradients=2, retain_batch_size=5)
        >>> result.converged, result.details["gu/basis_rank"], result.details["gu/projected_steps"] == result.steps
        (True, 2, True)
    """

    summary = "Execute any gradient method's updates orthogonal to retain gradients (Zhou et al., 2025)."
    data_access = "forget+retain"
    supports_relabel = True  # as far as the base method does: checked per request
    supports_unseen = True

    def __init__(
        self,
        *,
        base: str = "neggrad",
        base_params: dict[str, Any] | None = None,
        retain_gradients: int = 16,
        retain_batch_size: int = 32,
    ) -> None:
        if base == self.name or base == "gu":
            raise InvalidHyperparameterError("gu cannot wrap itself")
        if base_params is not None and not isinstance(base_params, dict):
            raise InvalidHyperparameterError(f"base_params must be a dict of hyperparameters, got {base_params!r}")
        # Validates the name and the base's hyperparameters now, not at the first request.
        self.base_method = create_method(base, **(base_params or {}))
        if not type(self.base_method).gradient_based:
            raise InvalidHyperparameterError(
                f"gu needs a gradient-based base method; {base!r} takes no optimiser steps"
            )
        check_positive(retain_gradients=retain_gradients, retain_batch_size=retain_batch_size)
        check_count(retain_gradients=retain_gradients, retain_batch_size=retain_batch_size)
        self.base, self.base_params = base, dict(base_params or {})
        self.retain_gradients, self.retain_batch_size = retain_gradients, retain_batch_size

    def _check_data_contract(self, request: ForgetRequest, retain: RetainData | None) -> None:
        super()._check_data_contract(request, retain)
        base = type(self.base_method)
        if request.goal == "relabel" and not base.supports_relabel:
            raise InvalidRequestError(f"gu's base method {self.base!r} does not support relabeling requests")
        if request.goal == "unseen" and not base.supports_unseen:
            raise InvalidRequestError(f"gu's base method {self.base!r} does not support goal 'unseen'")

    def resolved_params(self, context: UnlearnContext) -> dict[str, Any]:
        """GU's hyperparameters, with the base method's resolved ones under ``base_params``."""
        params = self.get_params()
        params["base_params"] = self.base_method.resolved_params(context)
        return params

    def _basis(self, context: UnlearnContext) -> torch.Tensor:
        assert context.retain is not None  # guaranteed by the data contract
        xr, yr = context.retain
        batches = shuffled_batches(xr.shape[0], self.retain_batch_size, context.generator)[: self.retain_gradients]
        return orthonormal_basis(loss_gradients(context.model, xr, yr, batches))

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        base_access = method_class(self.base).data_access
        base_context = dataclasses.replace(context, retain=None if base_access == "forget" else context.retain)
        params = [p for p in context.model.parameters() if p.requires_grad]
        timer = time.perf_counter()
        basis = self._basis(context)
        basis_seconds = time.perf_counter() - timer
        with constrained_updates(params, orthogonal_to(basis)) as projected:
            run = self.base_method._unlearn(base_context)
        if run.steps > 0 and projected[0] == 0:
            raise InvalidHyperparameterError(
                f"gu's base method {self.base!r} changed the model without an optimiser step; nothing was projected"
            )
        details = {
            **run.details,
            "gu/base": self.base,
            "gu/basis_rank": int(basis.shape[1]),
            "gu/basis_megabytes": basis.numel() * basis.element_size() / 2**20,
            "gu/basis_seconds": basis_seconds,
            "gu/projected_steps": projected[0],
            "gu/trainable_parameters": sum(p.numel() for p in params),
        }
        return MethodRun(run.steps, run.passes, run.converged, run.stop_reason, details)
