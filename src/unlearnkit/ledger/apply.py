"""Applying a ledger's pending requests, and re-checking applied ones on the current model.

The ledger knows no data format. The caller passes ``rows``, a callable returning the inputs
and labels of the given instance ids, in the order asked (``rows(ids) -> (inputs, labels)``),
and, for methods that read retain data, ``all_ids``: every id the data source holds. The retain
data is ``rows`` of every id that no request (pending, applied or failed) names.

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from unlearnkit.ledger import Ledger, apply_pending, verify
    >>> from unlearnkit.request import instance_sha256
    >>> torch.manual_seed(0) and None
    >>> build = lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    >>> model = build()
    >>> x = torch.rand(10, 4)
    >>> y = model(x).argmax(1)  # labels the model predicts, so there is something to forget
    >>> rows = lambda ids: (x[list(ids)], y[list(ids)])
    >>> tmp = tempfile.TemporaryDirectory()
    >>> with Ledger.create(f"{tmp.name}/ws", initial_state=model.state_dict(), source={}) as ledger:
    ...     hashes = [instance_sha256(x[i], int(y[i])) for i in (2, 5)]
    ...     _ = ledger.add_request([2, 5], labels=y[[2, 5]], content_hashes=hashes, goal="misclassify",
    ...                            method="neggrad", hyperparams={"lr": 0.05})
    ...     [(r.request_id, r.status, r.version_id) for r in apply_pending(ledger, build, rows)]
    [('req-0001', 'applied', 1)]
    >>> with Ledger.open_readonly(f"{tmp.name}/ws") as ledger:
    ...     [(v["request_id"], v["goal_share"], v["status"]) for v in verify(ledger, build, rows)]
    [('req-0001', 100.0, 'ok')]
    >>> tmp.cleanup()
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from unlearnkit.api import unlearn
from unlearnkit.components.stopping import goal_met
from unlearnkit.errors import (
    CheckpointError,
    DataContractError,
    InvalidHyperparameterError,
    InvalidModelError,
    InvalidRequestError,
    LedgerError,
    NonFiniteError,
    UnknownMethodError,
    UnlearnkitError,
)
from unlearnkit.ledger.store import Ledger, RequestRecord
from unlearnkit.methods.registry import method_class
from unlearnkit.receipt import build_receipt
from unlearnkit.request import DEFAULT_INPUT_RANGE, ArrayLike, ForgetRequest, InstanceId, instance_sha256
from unlearnkit.utils.modules import model_dtype, predict_logits

__all__ = ["RowReader", "apply_pending", "verify"]

#: ``rows(ids) -> (inputs, labels)``: the data source's rows of ``ids``, in that order.
RowReader = Callable[[Sequence[InstanceId]], tuple[ArrayLike, ArrayLike]]

# Errors that belong to one request (its method, hyperparameters, data or run): the request is
# marked failed and the next one is applied. Anything else (a missing model file, a full disk)
# is the workspace's problem and stops the whole apply.
_REQUEST_ERRORS = (
    NonFiniteError,
    InvalidRequestError,
    InvalidModelError,
    InvalidHyperparameterError,
    UnknownMethodError,
    DataContractError,
)


class _Unreadable(Exception):
    """The data source could not hand over a request's rows."""


def _read_rows(rows: RowReader, ids: Sequence[InstanceId]) -> tuple[Tensor, Tensor]:
    """``rows(ids)`` as tensors, checked to hold one input and one label per id."""
    try:
        got = rows(list(ids))
        inputs, labels = got
    except (UnlearnkitError, LookupError, ValueError, TypeError) as err:
        raise _Unreadable(f"the data source could not provide the instances: {type(err).__name__}: {err}") from None
    try:
        inputs = inputs if isinstance(inputs, Tensor) else torch.as_tensor(np.asarray(inputs))
        labels = labels if isinstance(labels, Tensor) else torch.as_tensor(np.asarray(labels))
    except (TypeError, ValueError) as err:
        raise _Unreadable(f"the data source's rows cannot be read as tensors: {err}") from None
    if inputs.dim() < 1 or inputs.shape[0] != len(ids) or tuple(labels.shape) != (len(ids),):
        raise _Unreadable(
            f"the data source returned inputs of shape {tuple(inputs.shape)} and labels of shape "
            f"{tuple(labels.shape)} for {len(ids)} ids"
        )
    return inputs.detach().cpu(), labels.detach().cpu().long()


def _changed(record: RequestRecord, inputs: Tensor, labels: Tensor) -> list[int]:
    """Positions whose content no longer hashes to what the request recorded."""
    return [
        i for i, expected in enumerate(record.content_hashes)
        if instance_sha256(inputs[i], int(labels[i])) != expected
    ]


def _current_model(ledger: Ledger, build_model: Callable[[], nn.Module], version: int | None = None) -> nn.Module:
    model = build_model()
    if not isinstance(model, nn.Module):
        raise LedgerError(f"build_model() must return an nn.Module, got {type(model).__name__}")
    record = ledger.current_version() if version is None else ledger.version(version)
    try:
        model.load_state_dict(ledger.load_state(record.version_id), strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"model version {record.version_id} does not fit the model build_model() returns: {err}"
        ) from None
    return model


def apply_pending(
    ledger: Ledger,
    build_model: Callable[[], nn.Module],
    rows: RowReader,
    *,
    all_ids: Iterable[InstanceId] | None = None,
    input_range: tuple[float, float] | None = DEFAULT_INPUT_RANGE,
    device: torch.device | str | None = None,
    progress: bool = False,
    on_request: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Applies every pending request, in order, each to the model the previous one produced.

    For each request: a fresh model from ``build_model()`` gets the current version's weights;
    its instances are read with ``rows`` and checked against the content hashes the request
    recorded; :func:`unlearnkit.unlearn` runs with the request's method, hyperparameters and
    seed; the receipt is built and the new version committed. Outcomes:

    * converged: ``applied``, ``metrics["converged"] = True``;
    * not converged: still committed and ``applied``, with ``metrics["converged"] = False`` and
      the receipt saying so (``run.converged``; its verdict fails when instances miss their goal);
    * diverged (NaN), or refused by the method (bad hyperparameters, unsupported goal, data it
      cannot use), or content that no longer matches its hashes, or rows the data source cannot
      provide: ``failed`` with the error, model unchanged; the next request is applied.

    Args:
        ledger: A ledger opened for writing.
        build_model: Returns a fresh model object of the workspace's architecture.
        rows: ``rows(ids) -> (inputs, labels)``.
        all_ids: Every id of the data source; needed when a pending request's method reads
            retain data (the retain set is every id no request names).
        input_range: Bounds of the inputs (see :func:`unlearnkit.unlearn`); ``None`` if unbounded.
        device: Where to run (default: where ``build_model`` puts the model).
        progress: Show a progress bar over the requests.
        on_request: Called with each request's record once it is applied or failed.

    Returns:
        The records of the requests handled, in order.

    Raises:
        LedgerError: If the ledger is read-only, a method needs retain data and ``all_ids`` is
            missing, or a commit fails (that request stays pending; earlier ones stay applied).
        CheckpointError: If the current version's file is missing, corrupt or does not fit.
    """
    if not ledger.writable:
        raise LedgerError("apply_pending needs a ledger opened for writing (Ledger.open)")
    pending = ledger.pending()
    # Refuse before the first run rather than half-way through the queue.
    for record in pending:
        try:
            access = method_class(record.method).data_access
        except UnknownMethodError:
            continue  # recorded as failed when its turn comes
        if access == "forget+retain" and all_ids is None:
            raise LedgerError(
                f"request {record.request_id!r} uses method {record.method!r}, which needs retain data: "
                "pass all_ids (every id of the data source)"
            )
    universe = None if all_ids is None else list(all_ids)
    retain_cache: list[tuple[Tensor, Tensor] | None] = []

    def retain() -> tuple[Tensor, Tensor] | None:
        # Read once per call: no request can be added meanwhile (this process holds the lock).
        if not retain_cache:
            requested = {str(i) for r in ledger.requests() for i in r.ids}
            keep = [i for i in universe or () if str(i) not in requested]
            if not keep:
                retain_cache.append(None)
            else:
                try:
                    retain_cache.append(_read_rows(rows, keep))
                except _Unreadable as err:
                    raise LedgerError(f"cannot read the retain rows: {err}") from None
        return retain_cache[0]

    handled: list[RequestRecord] = []
    for record in tqdm(pending, desc="applying requests", unit="request", disable=not progress):
        done = _apply_one(ledger, build_model, rows, record, retain, input_range, device, universe is not None)
        handled.append(done)
        if on_request is not None:
            on_request(done)
    return handled


def _apply_one(
    ledger: Ledger,
    build_model: Callable[[], nn.Module],
    rows: RowReader,
    record: RequestRecord,
    retain: Callable[[], tuple[Tensor, Tensor] | None],
    input_range: tuple[float, float] | None,
    device: torch.device | str | None,
    have_ids: bool,
) -> RequestRecord:
    model = _current_model(ledger, build_model)
    try:
        inputs, labels = _read_rows(rows, record.ids)
    except _Unreadable as err:
        return ledger.fail(record.request_id, str(err))
    changed = _changed(record, inputs, labels)
    if changed:
        ids = [record.ids[i] for i in changed]
        return ledger.fail(
            record.request_id,
            f"content changed for {len(ids)} instance(s) (ids {ids[:10]}): the data source's rows no longer "
            "match the content hashes recorded with the request",
        )
    try:
        uses_retain = method_class(record.method).data_access != "forget"
        request = ForgetRequest(
            inputs, torch.tensor(record.labels),
            None if record.new_labels is None else torch.tensor(record.new_labels),
            ids=record.ids, input_range=input_range, goal=record.goal,  # type: ignore[arg-type]
        )
        result = unlearn(
            model, request, method=record.method, seed=record.seed,
            retain=retain() if uses_retain and have_ids else None, device=device, progress=False,
            **record.hyperparams,
        )
    except _REQUEST_ERRORS as err:
        return ledger.fail(record.request_id, f"{type(err).__name__}: {err}")
    receipt = build_receipt(result, request_id=record.request_id)
    metrics: dict[str, Any] = {
        **result.metrics,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "passes": result.passes,
        "seconds": result.seconds,
        "retain_used": result.retain_used,
    }
    ledger.commit(record.request_id, result.model.state_dict(), metrics=metrics, receipt=receipt)
    return ledger.get(record.request_id)


def verify(
    ledger: Ledger,
    build_model: Callable[[], nn.Module],
    rows: RowReader,
    *,
    version: int | None = None,
) -> list[dict[str, Any]]:
    """Re-checks every applied request's goal on the current (or the given) model version.

    Misclassification: every instance predicted as anything but its label; relabeling: as its
    new label. An instance *relapsed* when it met its goal when its request was applied (per the
    receipt) and no longer does. Instances whose content no longer matches the recorded hash are
    not checked (the model cannot be judged on content that is not the one forgotten).

    Args:
        ledger: The ledger (read-only is enough).
        build_model: Returns a fresh model object of the workspace's architecture.
        rows: ``rows(ids) -> (inputs, labels)``.
        version: The model version to check (default: the current one).

    Returns:
        One dict per applied request, in order: ``request_id``, ``seq``, ``goal``, ``method``,
        ``version_id`` (the version it produced), ``instances``, ``checked``, ``goal_share``
        (percent of the checked instances meeting the goal now, ``None`` if none was checked),
        ``goal_share_at_apply``, ``relapsed`` (bool), ``relapsed_ids``, ``content_changed``
        (ids), ``converged`` (as applied), ``status`` (``ok``, ``relapsed``, ``content_changed``,
        ``not_converged`` or ``unavailable``) and a human-readable ``message``.

    Raises:
        CheckpointError: If the model version's file is missing, corrupt or does not fit.
    """
    model = _current_model(ledger, build_model, version)
    return [_verify_one(model, record, rows) for record in ledger.requests("applied")]


def _verify_one(model: nn.Module, record: RequestRecord, rows: RowReader) -> dict[str, Any]:
    outcomes = (record.receipt or {}).get("outcomes") or []
    at_apply = {str(o.get("id")): bool(o.get("goal_met")) for o in outcomes if isinstance(o, dict)}
    entry: dict[str, Any] = {
        "request_id": record.request_id,
        "seq": record.seq,
        "goal": record.goal,
        "method": record.method,
        "version_id": record.version_id,
        "instances": len(record.ids),
        "checked": 0,
        "goal_share": None,
        "goal_share_at_apply": 100.0 * sum(at_apply.values()) / len(at_apply) if at_apply else None,
        "relapsed": False,
        "relapsed_ids": [],
        "content_changed": [],
        "converged": (record.metrics or {}).get("converged"),
        "status": "ok",
        "message": "",
    }
    try:
        inputs, labels = _read_rows(rows, record.ids)
    except _Unreadable as err:
        entry.update(status="unavailable", message=str(err))
        return entry
    changed = set(_changed(record, inputs, labels))
    entry["content_changed"] = [record.ids[i] for i in sorted(changed)]
    keep = [i for i in range(len(record.ids)) if i not in changed]
    if keep:
        index = torch.tensor(keep)
        logits = predict_logits(model, inputs[index].to(model_dtype(model)))
        stored = torch.tensor(record.labels)[index]
        new = None if record.new_labels is None else torch.tensor(record.new_labels)[index]
        met = goal_met(logits, stored, new).tolist()
        relapsed = [record.ids[i] for i, ok in zip(keep, met) if not ok and at_apply.get(str(record.ids[i]), True)]
        entry.update(checked=len(keep), goal_share=100.0 * sum(met) / len(keep), relapsed=bool(relapsed), relapsed_ids=relapsed)
    if entry["relapsed"]:
        entry.update(status="relapsed", message=(
            f"{len(entry['relapsed_ids'])} instance(s) no longer meet the goal they met when applied "
            f"(ids {entry['relapsed_ids'][:10]})"
        ))
    elif changed:
        entry.update(status="content_changed", message=(
            f"content changed for {len(changed)} instance(s) (ids {entry['content_changed'][:10]}): the data "
            "source's rows no longer match the recorded content hashes; they were not checked"
        ))
    elif entry["converged"] is False and (entry["goal_share"] or 0.0) < 100.0:
        entry.update(status="not_converged", message=(
            f"the run did not converge: {entry['goal_share']:.1f}% of the instances meet the goal"
        ))
    return entry
