"""Scenarios: how requests are drawn, applied and evaluated (single request, demo)."""

from unlearnkit.scenarios.single import RunRecord, run_request

__all__ = ["RunRecord", "run_request"]
