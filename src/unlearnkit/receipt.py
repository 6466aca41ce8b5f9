"""Receipts: the per-request record an engineer can hand to an auditor.

A receipt names what was forgotten (ids and content hashes, never the content), from which
model (sha256 before and after), how (method, every resolved hyperparameter, seed, library
versions), what was measured (the result's figures, plus the evidence when it was gathered) and
the verdict with the thresholds it used. Its ``receipt_sha256`` is the hash of everything else
in it, so an edited receipt no longer matches its own hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unlearnkit.methods.registry import method_class
from unlearnkit.result import UnlearnResult
from unlearnkit.scenarios.evidence import VerdictThresholds
from unlearnkit.utils.io import write_json_atomic

#: Version of the receipt's JSON layout.
RECEIPT_SCHEMA_VERSION = 2


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``None`` (strict JSON has no NaN), recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def receipt_sha256(receipt: Mapping[str, Any]) -> str:
    """sha256 of a receipt's canonical JSON without its ``receipt_sha256`` field."""
    body = {k: v for k, v in receipt.items() if k != "receipt_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: Details of an exact deletion copied into its receipt (see :class:`~unlearnkit.methods.s3t.S3T`).
EXACT_DETAIL_KEYS = ("rows", "slices", "dropped_prefixes", "served_before", "served_after", "needs_retraining",
                     "remaining_capacity")


def deletion_kind(result: UnlearnResult) -> dict[str, Any]:
    """How the result removed the instances, for its receipt.

    ``{"exact": True, "optimizer_steps": 0, ...}`` when the method deleted exactly (its class
    declares ``exact`` and the run says ``details["exact"]``), with what the deletion did (the
    training rows deleted, the checkpoints dropped, the shards that now need retraining);
    ``{"exact": False, "optimizer_steps": steps}`` for an approximate method, whose evidence is
    its verdict.

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x = torch.rand(2, 4)
        >>> result = unlearnkit.unlearn(model, forget=(x, model(x).argmax(1)), method="neggrad", lr=0.05)
        >>> deletion_kind(result) == {"exact": False, "optimizer_steps": result.steps}
        True
    """
    details = result.details or {}
    if method_class(result.method).exact and details.get("exact") is True:
        return {"exact": True, "optimizer_steps": int(details.get("optimizer_steps", 0)),
                **{key: details[key] for key in EXACT_DETAIL_KEYS if key in details}}
    return {"exact": False, "optimizer_steps": result.steps}


def build_receipt(
    result: UnlearnResult,
    *,
    request_id: str | None = None,
    evidence: Mapping[str, Any] | None = None,
    thresholds: VerdictThresholds = VerdictThresholds(),
) -> dict[str, Any]:
    """The receipt of one unlearning call.

    Args:
        result: What :func:`unlearnkit.unlearn` returned.
        request_id: The caller's name for the deletion request (a ticket number, say).
        evidence: :func:`~unlearnkit.scenarios.evidence.gather_evidence` of the result, when it
            was gathered; its verdict (goal, utility, representation) is the receipt's. Without
            it the verdict checks only the goal and says that utility was not measured.
        thresholds: The verdict's thresholds when there is no evidence.

    Returns:
        A JSON-ready dict (strict JSON: non-finite numbers become ``null``).

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), model(torch.rand(2, 4)).argmax(1)
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="neggrad", lr=0.05, ids=["a", "b"])
        >>> receipt = build_receipt(result, request_id="ticket-7")
        >>> receipt["request"]["id"], [i["id"] for i in receipt["request"]["instances"]], receipt["verdict"]["passed"]
        ('ticket-7', ['a', 'b'], True)
        >>> receipt["receipt_sha256"] == receipt_sha256(receipt)
        True
    """
    goal_met = [o.goal_met for o in result.outcomes]
    if evidence is not None:
        verdict = dict(evidence["verdict"])
        figures = {k: v for k, v in evidence.items() if k not in ("verdict", "instances")}
    else:
        share = 100.0 * sum(goal_met) / max(len(goal_met), 1)
        verdict = {
            "passed": share >= thresholds.goal_share,
            "thresholds": {"goal_share": thresholds.goal_share},
            "checks": [{
                "name": "forget instances meeting the goal (%)", "value": share,
                "threshold": f">= {thresholds.goal_share:g}", "passed": share >= thresholds.goal_share,
                "required": True,
            }],
            "note": "utility, membership and representation were not measured (no evidence was gathered)",
        }
        figures = {}
    receipt: dict[str, Any] = {
        "schema_version": RECEIPT_SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "request": {
            "id": request_id,
            "goal": result.goal,
            "instances": [
                {"id": o.id, "content_sha256": o.content_sha256, "label": o.label, "new_label": o.new_label}
                for o in result.outcomes
            ],
        },
        "model": {"sha256_before": result.model_sha256_before, "sha256_after": result.model_sha256_after},
        "method": result.method,
        "deletion": deletion_kind(result),
        "hyperparams": result.hyperparams,
        "seed": result.seed,
        "run": {
            "converged": result.converged, "stop_reason": result.stop_reason, "steps": result.steps,
            "passes": result.passes, "seconds": result.seconds, "retain_used": result.retain_used,
            "device": result.device,
        },
        "versions": result.versions,
        "metrics": {**result.metrics, **figures},
        "outcomes": [
            {"id": o.id, "pred_before": o.pred_before, "pred_after": o.pred_after, "margin_after": o.margin_after,
             "goal_met": o.goal_met, "loss_after": o.loss_after}
            for o in result.outcomes
        ],
        "verdict": verdict,
    }
    receipt = _json_safe(receipt)
    receipt["receipt_sha256"] = receipt_sha256(receipt)
    return receipt


def write_receipt(receipt: Mapping[str, Any], path: str | Path) -> Path:
    """Writes ``receipt`` as JSON, atomically (no half-written file is ever left behind).

    Raises:
        ValueError: If the receipt's ``receipt_sha256`` does not match its content.
    """
    if receipt.get("receipt_sha256") != receipt_sha256(receipt):
        raise ValueError("the receipt's receipt_sha256 does not match its content; it was changed after it was built")
    return write_json_atomic(path, dict(receipt))
