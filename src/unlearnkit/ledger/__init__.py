"""The durable ledger of deletion requests of a deployed model (a *workspace*).

:class:`Ledger` records requests and model versions in SQLite (WAL mode) and every version's
weights as a safetensors file written atomically; :func:`apply_pending` applies the pending
requests in order and :func:`verify` re-checks the applied ones on the current model.
"""

from unlearnkit.errors import LedgerBusyError, LedgerError, LedgerVersionError
from unlearnkit.ledger.apply import RowReader, apply_pending, verify
from unlearnkit.ledger.store import (
    CRASH_ENV,
    CRASH_POINTS,
    LEDGER_GOALS,
    SCHEMA_VERSION,
    Ledger,
    RequestRecord,
    VersionRecord,
)

__all__ = [
    "CRASH_ENV",
    "CRASH_POINTS",
    "LEDGER_GOALS",
    "SCHEMA_VERSION",
    "Ledger",
    "LedgerBusyError",
    "LedgerError",
    "LedgerVersionError",
    "RequestRecord",
    "RowReader",
    "VersionRecord",
    "apply_pending",
    "verify",
]
