"""The durable ledger of deletion requests: one SQLite file plus one file per model version.

A workspace holds everything for one deployed model::

    WORKSPACE/
      ledger.sqlite                          # requests and versions (SQLite, WAL mode)
      models/<version>-<sha12>.safetensors   # every model version, written atomically
      source.json                            # how to rebuild the model and read the data
      lock                                   # the single writer's advisory lock (holder's pid)

Crash safety. :meth:`Ledger.commit` first writes the new model file (a temporary name in
``models/``, fsync, rename, fsync of the directory) and only then, in one SQLite transaction,
records the version and marks the request applied. A kill at any point therefore leaves either
the old committed state (the request still pending, perhaps an unreferenced model file) or the
new one (request applied, version recorded); :meth:`Ledger.open` removes unreferenced model
files and temporary files.

Concurrency. One writer at a time: :meth:`Ledger.open` takes an exclusive ``fcntl.flock`` on
``WORKSPACE/lock`` for as long as the ledger is open. Readers (:meth:`Ledger.open_readonly`)
take no lock: SQLite's WAL mode gives them a consistent snapshot while a writer works.

Testing hook: when the environment variable ``UNLEARNKIT_CRASH_AT`` names one of
:data:`CRASH_POINTS`, the process kills itself with SIGKILL as :meth:`Ledger.commit` reaches
that point. The crash tests use it to interrupt a real commit; without the variable the check
does nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import operator
import os
import re
import secrets
import signal
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from unlearnkit.errors import CheckpointError, LedgerBusyError, LedgerError, LedgerVersionError
from unlearnkit.request import InstanceId
from unlearnkit.utils.hashing import file_sha256
from unlearnkit.utils.io import default_file_mode, write_json_atomic

try:  # POSIX only; the writer lock refuses to work without it rather than run unlocked.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CRASH_ENV",
    "CRASH_POINTS",
    "LEDGER_GOALS",
    "SCHEMA_VERSION",
    "Ledger",
    "RequestRecord",
    "VersionRecord",
]

#: Version of the ledger's SQLite schema; a ledger with a newer one is refused.
SCHEMA_VERSION = 2
LEDGER_FILE = "ledger.sqlite"
MODELS_DIR = "models"
SOURCE_FILE = "source.json"
LOCK_FILE = "lock"
#: Environment variable of the crash-testing hook (see the module docstring).
CRASH_ENV = "UNLEARNKIT_CRASH_AT"
#: The named points inside :meth:`Ledger.commit`, in the order a commit passes them.
CRASH_POINTS: tuple[str, ...] = (
    "before_file_write",  # nothing written yet
    "before_file_rename",  # the temporary model file is written and fsynced, not yet renamed
    "after_file_write",  # the model file is in place (directory fsynced), the ledger not yet told
    "before_commit",  # the version row and the request update are in an open transaction
    "after_commit",  # the transaction is committed
)
#: The goals the ledger can apply and re-check on later versions.
LEDGER_GOALS: tuple[str, ...] = ("misclassify", "relabel")
STATUSES: tuple[str, ...] = ("pending", "applied", "failed")

_MODEL_NAME = re.compile(r"^(\d+)-([0-9a-f]{12})\.safetensors$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_POLL_SECONDS = 0.05
_SQL_CHUNK = 500  # stays below SQLite's limit on bound parameters in old builds (999)

_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL UNIQUE,
        goal TEXT NOT NULL,
        ids TEXT NOT NULL,
        content_hashes TEXT NOT NULL,
        labels TEXT NOT NULL,
        new_labels TEXT,
        method TEXT NOT NULL,
        hyperparams TEXT NOT NULL,
        seed INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'failed')),
        created_at TEXT NOT NULL,
        applied_at TEXT,
        error TEXT,
        metrics TEXT,
        receipt TEXT,
        version_id INTEGER REFERENCES versions(version_id),
        reapplies TEXT REFERENCES requests(request_id),
        CHECK ((status = 'applied') = (version_id IS NOT NULL))
    )""",
    """CREATE TABLE versions (
        version_id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        sha256 TEXT NOT NULL,
        parent_id INTEGER REFERENCES versions(version_id),
        request_id TEXT UNIQUE REFERENCES requests(request_id),
        created_at TEXT NOT NULL
    )""",
    # One row per requested instance: finds "already requested" ids without reading every
    # request's JSON. Keys are str(id), so 7 and "7" count as the same instance (the safe side).
    """CREATE TABLE instances (
        instance TEXT NOT NULL,
        request_id TEXT NOT NULL REFERENCES requests(request_id),
        PRIMARY KEY (instance, request_id)
    ) WITHOUT ROWID""",
)

_REQUEST_COLUMNS = (
    "request_id, seq, goal, ids, content_hashes, labels, new_labels, method, hyperparams, seed, "
    "status, created_at, applied_at, error, metrics, receipt, version_id, reapplies"
)
#: What schema 1 (before re-applied requests) holds of them, read read-only as schema 2.
_REQUEST_COLUMNS_V1 = _REQUEST_COLUMNS.replace("version_id, reapplies", "version_id, NULL")
_VERSION_COLUMNS = "version_id, path, sha256, parent_id, request_id, created_at"


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One deletion request as the ledger holds it.

    Attributes:
        request_id: The caller's name for it (a ticket number, say) or a generated ``req-NNNN``.
        seq: Its position in the order requests are applied (1, 2, ...).
        goal: ``"misclassify"`` or ``"relabel"``.
        ids: The instances' ids in the data source.
        content_hashes: :func:`~unlearnkit.request.instance_sha256` of each instance: the ledger
            names content, it never stores it.
        labels: The instances' training labels.
        new_labels: Relabeling: the class each instance should be predicted as, else ``None``.
        method: Registered unlearning method.
        hyperparams: The method's hyperparameters.
        seed: The run's seed.
        status: ``"pending"``, ``"applied"`` or ``"failed"``.
        created_at: When it was added (UTC, ISO 8601).
        applied_at: When it was committed.
        error: Why it failed.
        metrics: The run's figures once applied (``metrics["converged"]`` among them).
        receipt: The receipt (:func:`~unlearnkit.receipt.build_receipt`) once applied.
        version_id: The model version the request produced.
        reapplies: The applied request whose relapsed instances this one forgets again
            (:meth:`Ledger.add_request`'s ``reapplies``), else ``None``.
    """

    request_id: str
    seq: int
    goal: str
    ids: tuple[InstanceId, ...]
    content_hashes: tuple[str, ...]
    labels: tuple[int, ...]
    new_labels: tuple[int, ...] | None
    method: str
    hyperparams: dict[str, Any]
    seed: int
    status: str
    created_at: str
    applied_at: str | None = None
    error: str | None = None
    metrics: dict[str, Any] | None = None
    receipt: dict[str, Any] | None = None
    version_id: int | None = None
    reapplies: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (tuples become lists)."""
        data = asdict(self)
        for key in ("ids", "content_hashes", "labels", "new_labels"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class VersionRecord:
    """One model version.

    Attributes:
        version_id: 0 for the initial model, then 1, 2, ... in commit order.
        path: Its safetensors file, relative to the workspace (``models/<version>-<sha12>.safetensors``).
        sha256: sha256 of that file.
        parent_id: The version it was computed from (``None`` for version 0).
        request_id: The request that produced it (``None`` for version 0).
        created_at: When it was committed (UTC, ISO 8601).
    """

    version_id: int
    path: str
    sha256: str
    parent_id: int | None
    request_id: str | None
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values."""
        return asdict(self)


# -- small helpers ------------------------------------------------------------------------------


def _crash_point(name: str) -> None:
    """Testing hook: SIGKILLs this process when ``UNLEARNKIT_CRASH_AT`` equals ``name``.

    A no-op unless the variable is set; read on every call so that a test can set it for one
    subprocess without any import-time state.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _fsync_dir(path: Path) -> None:
    """Flushes a directory entry (a rename or an unlink) to disk; POSIX only, where a renamed
    file's new name is otherwise not durable until the directory itself is synced."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise LedgerError(f"{what} cannot be stored as strict JSON: {err}") from None


def _finite(value: Any) -> Any:
    """Non-finite floats become ``None``, recursively: strict JSON has no NaN, and a metric
    that came out NaN must not stop a commit."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _int_list(values: Any, what: str, n: int) -> list[int]:
    if isinstance(values, (Tensor,)) or hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise LedgerError(f"{what} must be a sequence of {n} integer class indices")
    out = []
    for v in values:
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))
        except TypeError:
            raise LedgerError(f"{what} must be integer class indices, got {v!r}") from None
    if len(out) != n:
        raise LedgerError(f"{n} ids but {len(out)} {what}")
    if any(v < 0 for v in out):
        raise LedgerError(f"{what} must be >= 0, got {min(out)}")
    return out


def _clean_ids(ids: Any) -> list[InstanceId]:
    if isinstance(ids, Tensor) or hasattr(ids, "tolist"):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise LedgerError(f"ids must be a sequence of ints or strings, got {type(ids).__name__}")
    if len(ids) == 0:
        raise LedgerError("the request names no instances (empty ids)")
    clean: list[InstanceId] = []
    for i in ids:
        if isinstance(i, str) and i:
            clean.append(i)
            continue
        try:
            if isinstance(i, (bool, float)):
                raise TypeError
            clean.append(operator.index(i))
        except TypeError:
            raise LedgerError(f"ids must be ints or non-empty strings, got {type(i).__name__} {i!r}") from None
    seen: set[str] = set()
    dupes = sorted({str(i) for i in clean if str(i) in seen or seen.add(str(i))})  # type: ignore[func-returns-value]
    if dupes:
        raise LedgerError(f"duplicate ids within the request: {dupes[:10]} (ids are compared as strings)")
    return clean


def _tensors(state: Any, what: str) -> dict[str, Tensor]:
    """CPU, contiguous, finite tensors by name, ready for safetensors.

    Tensors sharing storage (tied weights) are cloned: safetensors refuses shared storage.
    """
    if not isinstance(state, Mapping) or not state:
        raise LedgerError(f"{what} must be a non-empty dict of tensors (a state dict)")
    out: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, Tensor):
            raise LedgerError(f"{what} must map names to tensors; entry {name!r} is a {type(value).__name__}")
        tensor = value.detach().to("cpu").contiguous()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LedgerError(f"{what} has NaN or infinite values in {name!r}; refusing to store it")
        ptr = tensor.untyped_storage().data_ptr()
        if tensor.numel() and ptr in storages:
            tensor = tensor.clone()
        storages.add(ptr)
        out[name] = tensor
    return out


def _write_model_file(models: Path, version_id: int, tensors: dict[str, Tensor]) -> tuple[Path, str]:
    """Writes ``tensors`` as ``models/<version>-<sha12>.safetensors`` atomically; returns the
    path and the file's sha256.

    The file is written under a temporary name, fsynced, hashed, renamed to its final name and
    the directory fsynced, so that the name never points at half a file and survives a power cut.
    """
    fd, name = tempfile.mkstemp(dir=models, prefix=f".{version_id}-", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        except (SafetensorError, ValueError, TypeError) as err:
            raise LedgerError(f"the state cannot be stored as safetensors: {err}") from None
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        sha = file_sha256(tmp)
        _crash_point("before_file_rename")
        final = models / f"{version_id}-{sha[:12]}.safetensors"
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(models)
    return final, sha


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _chunks(items: Sequence[Any], size: int = _SQL_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- the writer lock ----------------------------------------------------------------------------


class _WriterLock:
    """An exclusive ``fcntl.flock`` on ``WORKSPACE/lock``, holding the holder's pid.

    flock locks belong to the open file and the kernel drops them when the process dies, so a
    killed writer never leaves a stale lock behind (unlike a lock *file* that must be deleted).
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.path = workspace / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, wait: float | None) -> None:
        if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0):
            raise LedgerError(f"wait must be None (wait forever) or a number of seconds >= 0, got {wait!r}")
        if fcntl is None:  # pragma: no cover - Windows
            raise LedgerError("the ledger's writer lock needs POSIX file locking (fcntl), which this platform lacks")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, default_file_mode())
        except OSError as err:
            raise LedgerError(f"cannot open the lock file {self.path}: {err}") from None
        deadline = None if wait is None else time.monotonic() + float(wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise LedgerError(f"cannot lock {self.path}: {err}") from None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                holder = self._holder(fd)
                os.close(fd)
                pid = f"pid {holder}" if holder is not None else "pid unknown"
                if wait:
                    raise LedgerBusyError(
                        f"another process is applying requests in {self.workspace} ({pid}) and still "
                        f"was after waiting {float(wait):g} s; retry or pass a longer --wait"
                    )
                raise LedgerBusyError(
                    f"another process is applying requests in {self.workspace} ({pid}); retry or pass --wait"
                )
            time.sleep(_POLL_SECONDS if remaining is None else min(_POLL_SECONDS, remaining))
        # Record who holds it, so that a refused process can name the holder.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is a courtesy for error messages; the lock itself is held
        self._fd = fd

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            text = os.pread(fd, 64, 0).decode(errors="replace").strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- the ledger ---------------------------------------------------------------------------------


def _connect(db: Path, *, readonly: bool) -> tuple[sqlite3.Connection, int]:
    """Opens ``db`` and checks it is an unlearnkit ledger this code can read; returns the
    connection (autocommit mode: transactions are explicit) and its schema version."""
    uri = db.resolve().as_uri()
    conn: sqlite3.Connection | None = None
    try:
        if readonly:
            try:
                conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, isolation_level=None, timeout=30)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                # A read-only directory without a -shm file: WAL readers cannot start. With no
                # -wal file either, every commit is in the main file and it can be read as is.
                if conn is not None:
                    conn.close()
                    conn = None
                if Path(f"{db}-wal").exists():
                    raise
                conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(f"{uri}?mode=rw", uri=True, isolation_level=None, timeout=30)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise LedgerError(
                    f"{db}: SQLite could not use WAL mode (journal mode {mode!r}); is the workspace on a "
                    "network file system? Put it on a local disk"
                )
            # FULL: every COMMIT is on disk before it returns (NORMAL could lose the last one on
            # a power cut, after the model file it names was already written).
            conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError as err:
            raise LedgerError(f"{db} is an SQLite file but not an unlearnkit ledger ({err})") from None
        if row is None:
            raise LedgerError(f"{db} is not an unlearnkit ledger: it records no schema_version")
        try:
            version = int(row[0])
        except ValueError:
            raise LedgerError(f"{db} has an unreadable schema_version {row[0]!r}") from None
        if version > SCHEMA_VERSION:
            raise LedgerVersionError(
                f"{db} has schema version {version}, newer than this unlearnkit supports "
                f"(schema version {SCHEMA_VERSION}); upgrade unlearnkit to open it"
            )
        if version < 1:
            raise LedgerError(f"{db} has an invalid schema_version {version}")
        if not readonly and version == 1:
            # Schema 2 added requests.reapplies (nullable): one statement, in a transaction.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("ALTER TABLE requests ADD COLUMN reapplies TEXT REFERENCES requests(request_id)")
                conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            version = 2
        if not readonly:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise LedgerError(f"{db} is corrupt (SQLite quick_check: {check}); restore it from a backup")
        return conn, version
    except sqlite3.Error as err:
        if conn is not None:
            conn.close()
        raise LedgerError(f"{db} is not a readable unlearnkit ledger (corrupt, or not SQLite): {err}") from None
    except BaseException:
        if conn is not None:
            conn.close()
        raise


class Ledger:
    """The ledger of deletion requests of one workspace, and its model versions.

    Open it with :meth:`create`, :meth:`open` (for writing: takes the workspace's exclusive lock)
    or :meth:`open_readonly`; use it as a context manager so that the lock is released.

    Example:
        >>> import tempfile, torch
        >>> tmp = tempfile.TemporaryDirectory()
        >>> state = torch.nn.Linear(4, 3).state_dict()
        >>> with Ledger.create(f"{tmp.name}/ws", initial_state=state, source={"kind": "demo"}) as ledger:
        ...     record = ledger.add_request(
        ...         [7, 9], labels=[1, 2], content_hashes=["0" * 64] * 2, goal="misclassify",
        ...         method="neggrad", hyperparams={"lr": 0.05}, request_id="ticket-1")
        ...     version = ledger.commit("ticket-1", state, metrics={"converged": True}, receipt={})
        >>> with Ledger.open_readonly(f"{tmp.name}/ws") as ledger:
        ...     [(v.version_id, v.parent_id, v.request_id) for v in ledger.versions()], ledger.get("ticket-1").status
        ([(0, None, None), (1, 0, 'ticket-1')], 'applied')
        >>> tmp.cleanup()
    """

    def __init__(self, workspace: Path, conn: sqlite3.Connection, schema_version: int, lock: _WriterLock | None) -> None:
        """Private: use :meth:`create`, :meth:`open` or :meth:`open_readonly`."""
        self._workspace = workspace
        self._conn: sqlite3.Connection | None = conn
        self._lock = lock
        self._schema_version = schema_version
        # A schema-1 ledger opened read-only is not migrated: its requests read as re-applying nothing.
        self._request_columns = _REQUEST_COLUMNS if schema_version >= 2 else _REQUEST_COLUMNS_V1
        #: Leftovers of an interrupted commit that :meth:`open` removed (names relative to the workspace).
        self.cleaned: tuple[str, ...] = ()

    # -- opening and closing -----------------------------------------------------------------

    @classmethod
    def create(
        cls,
        workspace: str | Path,
        *,
        initial_state: Mapping[str, Tensor],
        source: Mapping[str, Any],
        metadata: Mapping[str, Any] | None = None,
    ) -> Ledger:
        """Creates a workspace with a new ledger whose version 0 is ``initial_state``; returns it
        open for writing.

        Args:
            workspace: The directory (created if missing; it may exist without a ledger).
            initial_state: The deployed model's state dict.
            source: How to rebuild the model and read the data; written to ``source.json``.
            metadata: Anything else to keep with the ledger (strict JSON).

        Raises:
            LedgerError: If the directory already holds a ledger, or it cannot be written (then
                nothing is left behind but the directory and its lock file).
        """
        workspace = Path(workspace)
        tensors = _tensors(initial_state, "initial_state")
        if not isinstance(source, Mapping) or (metadata is not None and not isinstance(metadata, Mapping)):
            raise LedgerError("source and metadata must be dicts (strict JSON)")
        _dumps(dict(source), "source")  # refuse what JSON cannot hold before touching the disk
        metadata_text = _dumps(dict(metadata or {}), "metadata")
        try:
            workspace.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise LedgerError(f"cannot create the workspace {workspace}: {err}") from None
        lock = _WriterLock(workspace)
        lock.acquire(0.0)
        db = workspace / LEDGER_FILE
        source_path = workspace / SOURCE_FILE
        created: list[Path] = []
        tmp_db: Path | None = None
        try:
            if db.exists():
                raise LedgerError(
                    f"{workspace} already holds a ledger ({LEDGER_FILE}); open it instead, or choose another directory"
                )
            models = workspace / MODELS_DIR
            models.mkdir(exist_ok=True)
            _remove_leftovers(workspace, referenced=set())  # of an earlier, interrupted create
            model_path, sha = _write_model_file(models, 0, tensors)
            created.append(model_path)
            if not source_path.exists():
                created.append(source_path)
            write_json_atomic(source_path, dict(source))
            # Build the database under a temporary name and rename it into place: a crash
            # mid-way must not leave a half-made ledger that blocks the next create.
            fd, name = tempfile.mkstemp(dir=workspace, prefix=f".{LEDGER_FILE}.", suffix=".tmp")
            os.close(fd)
            tmp_db = Path(name)
            conn = sqlite3.connect(str(tmp_db), isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    conn.execute(statement)
                from unlearnkit import __version__

                now = _now()
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", str(SCHEMA_VERSION)), ("created_at", now),
                     ("unlearnkit_version", __version__), ("metadata", metadata_text)],
                )
                conn.execute(
                    f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES (0, ?, ?, NULL, NULL, ?)",
                    (f"{MODELS_DIR}/{model_path.name}", sha, now),
                )
                conn.execute("COMMIT")
            finally:
                conn.close()  # the last connection's close checkpoints the WAL into the file
            for suffix in ("-wal", "-shm"):
                Path(f"{tmp_db}{suffix}").unlink(missing_ok=True)
            with open(tmp_db, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp_db, default_file_mode())
            os.replace(tmp_db, db)
            tmp_db = None
            _fsync_dir(workspace)
        except BaseException as err:
            for path in created:
                path.unlink(missing_ok=True)
            if tmp_db is not None:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{tmp_db}{suffix}").unlink(missing_ok=True)
            lock.release()
            if isinstance(err, (OSError, sqlite3.Error)):
                raise LedgerError(f"cannot create a ledger in {workspace}: {err}") from None
            raise
        try:
            conn, version = _connect(db, readonly=False)
        except BaseException:
            lock.release()
            raise
        return cls(workspace, conn, version, lock)

    @classmethod
    def open(cls, workspace: str | Path, *, wait: float | None = 0.0) -> Ledger:
        """Opens the workspace's ledger for writing, taking its exclusive lock.

        Also removes what an interrupted commit left behind: model files no version references
        and temporary files (listed in :attr:`cleaned`).

        Args:
            workspace: The workspace directory.
            wait: Seconds to wait for another writer to finish: ``0`` refuses at once, ``None``
                waits as long as it takes.

        Raises:
            LedgerBusyError: If another process holds the lock (after ``wait`` seconds).
            LedgerVersionError: If a newer unlearnkit wrote the ledger.
            LedgerError: If there is no ledger, or it is corrupt.
        """
        workspace = Path(workspace)
        db = workspace / LEDGER_FILE
        if not db.is_file():
            raise LedgerError(f"no ledger in {workspace} (no {LEDGER_FILE}); create one first (unlearnkit init)")
        lock = _WriterLock(workspace)
        lock.acquire(wait)
        try:
            conn, version = _connect(db, readonly=False)
        except BaseException:
            lock.release()
            raise
        ledger = cls(workspace, conn, version, lock)
        try:
            ledger.cleaned = ledger._clean()
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def open_readonly(cls, workspace: str | Path) -> Ledger:
        """Opens the workspace's ledger for reading only (status, verify, export).

        Takes no lock: SQLite's WAL mode gives readers a consistent snapshot while a writer works.

        Raises:
            LedgerVersionError: If a newer unlearnkit wrote the ledger.
            LedgerError: If there is no ledger, or it is corrupt.
        """
        workspace = Path(workspace)
        db = workspace / LEDGER_FILE
        if not db.is_file():
            raise LedgerError(f"no ledger in {workspace} (no {LEDGER_FILE}); create one first (unlearnkit init)")
        conn, version = _connect(db, readonly=True)
        return cls(workspace, conn, version, None)

    def close(self) -> None:
        """Closes the database and releases the lock (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else ("writable" if self.writable else "read-only")
        return f"Ledger({str(self._workspace)!r}, {state})"

    # -- properties --------------------------------------------------------------------------

    @property
    def workspace(self) -> Path:
        """The workspace directory."""
        return self._workspace

    @property
    def writable(self) -> bool:
        """Whether this ledger was opened for writing (and holds the lock)."""
        return self._lock is not None and self._lock.held and self._conn is not None

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the ledger."""
        return self._schema_version

    @property
    def metadata(self) -> dict[str, Any]:
        """The ``metadata`` given to :meth:`create`."""
        row = self._query("SELECT value FROM meta WHERE key = 'metadata'").fetchone()
        return json.loads(row[0]) if row else {}

    @property
    def source(self) -> dict[str, Any]:
        """The contents of ``source.json``.

        Raises:
            LedgerError: If the file is missing or not JSON.
        """
        path = self._workspace / SOURCE_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise LedgerError(f"cannot read {path}: {err}") from None

    # -- database access ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"the ledger of {self._workspace} is closed")
        return self._conn

    def _query(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._connection().execute(sql, params)
        except sqlite3.Error as err:
            raise LedgerError(f"reading the ledger of {self._workspace} failed: {err}") from None

    def _require_writable(self, action: str) -> sqlite3.Connection:
        conn = self._connection()
        if not self.writable:
            raise LedgerError(f"cannot {action}: the ledger was opened read-only (use Ledger.open)")
        return conn

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error (BEGIN IMMEDIATE: the write lock is
        taken up front, so the transaction cannot fail half-way on a lock upgrade)."""
        conn = self._require_writable(action)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as err:
            _rollback(conn)
            if isinstance(err, sqlite3.Error):
                raise LedgerError(f"cannot {action}: {err}; the ledger is unchanged") from None
            raise

    # -- reading -----------------------------------------------------------------------------

    @staticmethod
    def _request(row: Sequence[Any]) -> RequestRecord:
        new_labels = json.loads(row[6]) if row[6] is not None else None
        return RequestRecord(
            request_id=row[0], seq=row[1], goal=row[2], ids=tuple(json.loads(row[3])),
            content_hashes=tuple(json.loads(row[4])), labels=tuple(json.loads(row[5])),
            new_labels=None if new_labels is None else tuple(new_labels), method=row[7],
            hyperparams=json.loads(row[8]), seed=row[9], status=row[10], created_at=row[11],
            applied_at=row[12], error=row[13], metrics=None if row[14] is None else json.loads(row[14]),
            receipt=None if row[15] is None else json.loads(row[15]), version_id=row[16], reapplies=row[17],
        )

    def get(self, request_id: str) -> RequestRecord:
        """The request named ``request_id``.

        Raises:
            LedgerError: If there is none.
        """
        row = self._query(f"SELECT {self._request_columns} FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no request {request_id!r} in the ledger of {self._workspace}")
        return self._request(row)

    def requests(self, status: str | None = None) -> list[RequestRecord]:
        """Every request (or those with ``status``), in order."""
        if status is None:
            rows = self._query(f"SELECT {self._request_columns} FROM requests ORDER BY seq")
        else:
            if status not in STATUSES:
                raise LedgerError(f"status must be one of {STATUSES}, got {status!r}")
            rows = self._query(f"SELECT {self._request_columns} FROM requests WHERE status = ? ORDER BY seq", (status,))
        return [self._request(row) for row in rows.fetchall()]

    def pending(self) -> list[RequestRecord]:
        """The pending requests, in the order they are to be applied."""
        return self.requests("pending")

    def versions(self) -> list[VersionRecord]:
        """Every model version, oldest first."""
        rows = self._query(f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY version_id").fetchall()
        return [VersionRecord(*row) for row in rows]

    def version(self, version_id: int) -> VersionRecord:
        """Model version ``version_id``.

        Raises:
            LedgerError: If there is none.
        """
        row = self._query(f"SELECT {_VERSION_COLUMNS} FROM versions WHERE version_id = ?", (version_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no model version {version_id!r} in the ledger of {self._workspace}")
        return VersionRecord(*row)

    def current_version(self) -> VersionRecord:
        """The newest model version: the one deployed, and the parent of the next commit."""
        row = self._query(f"SELECT {_VERSION_COLUMNS} FROM versions ORDER BY version_id DESC LIMIT 1").fetchone()
        if row is None:
            raise LedgerError(f"the ledger of {self._workspace} has no model version (corrupt)")
        return VersionRecord(*row)

    def model_path(self, version: int | None = None) -> Path:
        """Absolute path of the current (or the given) version's model file."""
        record = self.current_version() if version is None else self.version(version)
        return self._workspace / record.path

    def load_state(self, version: int | None = None) -> dict[str, Tensor]:
        """The current (or the given) version's state dict, read from its file after checking
        the file's sha256 against the ledger.

        Raises:
            CheckpointError: If the file is missing, unreadable or does not match its sha256.
            LedgerError: If there is no such version.
        """
        record = self.current_version() if version is None else self.version(version)
        path = self._workspace / record.path
        if not path.is_file():
            raise CheckpointError(f"the model file of version {record.version_id} is missing: {path}")
        try:
            sha = file_sha256(path)
        except OSError as err:
            raise CheckpointError(f"cannot read the model file of version {record.version_id} ({path}): {err}") from None
        if sha != record.sha256:
            raise CheckpointError(
                f"the model file of version {record.version_id} ({path}) does not match the sha256 the "
                "ledger recorded: it was changed or corrupted"
            )
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None

    # -- writing -----------------------------------------------------------------------------

    def _conflicts(
        self, conn: sqlite3.Connection, keys: Sequence[str], exclude: str | None = None, *, reapplies: str | None = None
    ) -> list[tuple[str, str, str]]:
        """``(instance, request_id, status)`` of pending or applied requests naming any of ``keys``
        (other than ``exclude``). For a re-application of ``reapplies``, that request and its
        applied re-applications hold these instances by design and are not conflicts."""
        found: list[tuple[str, str, str]] = []
        for chunk in _chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            found += conn.execute(
                "SELECT i.instance, r.request_id, r.status FROM instances i JOIN requests r USING (request_id) "
                f"WHERE r.status IN ('pending', 'applied') AND r.request_id IS NOT ? AND i.instance IN ({marks}) "
                "ORDER BY r.seq",
                (exclude, *chunk),
            ).fetchall()
        if reapplies is not None:
            chain = {reapplies} | {r for (r,) in conn.execute(
                "SELECT request_id FROM requests WHERE reapplies = ? AND status = 'applied'", (reapplies,))}
            found = [c for c in found if c[1] not in chain]
        return found

    @staticmethod
    def _conflict_error(found: list[tuple[str, str, str]], what: str) -> LedgerError:
        first_request, first_status = found[0][1], found[0][2]
        ids = sorted({inst for inst, rid, _ in found if rid == first_request})
        others = sorted({rid for _, rid, _ in found} - {first_request})
        more = f" (and in {others[:5]})" if others else ""
        return LedgerError(
            f"{what}: instance(s) {ids[:10]} are already in request {first_request!r} ({first_status}){more}; "
            "an instance can be in only one pending or applied request"
        )

    @staticmethod
    def _reapply_root(conn: sqlite3.Connection, request_id: str, keys: Sequence[str]) -> str:
        """The applied request a re-application names (followed to the one first re-applied),
        after checking that ``keys`` are among its instances."""
        if not isinstance(request_id, str):
            raise LedgerError(f"reapplies must be a request id, got {request_id!r}")
        row = conn.execute("SELECT status, reapplies FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise LedgerError(f"cannot re-apply {request_id!r}: no such request in the ledger")
        if row[0] != "applied":
            raise LedgerError(f"cannot re-apply {request_id!r}: it is {row[0]}, not applied")
        root = row[1] or request_id
        held = {i for (i,) in conn.execute("SELECT instance FROM instances WHERE request_id = ?", (root,))}
        foreign = [k for k in keys if k not in held]
        if foreign:
            raise LedgerError(f"cannot re-apply {root!r} with instance(s) {foreign[:10]}: they are not in that request")
        return root

    def add_request(
        self,
        ids: Sequence[InstanceId],
        *,
        labels: Sequence[int],
        content_hashes: Sequence[str],
        goal: str,
        new_labels: Sequence[int] | None = None,
        method: str,
        hyperparams: Mapping[str, Any],
        seed: int = 0,
        request_id: str | None = None,
        reapplies: str | None = None,
    ) -> RequestRecord:
        """Adds a pending deletion request, in one transaction.

        Args:
            ids: The instances' ids in the data source (ints or strings; compared as strings).
            labels: Their training labels.
            content_hashes: :func:`~unlearnkit.request.instance_sha256` of each instance.
            goal: ``"misclassify"`` or ``"relabel"`` (which needs ``new_labels``).
            new_labels: Relabeling: the class each instance should be predicted as.
            method: A registered unlearning method.
            hyperparams: Its hyperparameters (checked now, so that a typo fails here, not later).
            seed: The run's seed.
            request_id: The caller's name (letters, digits, ``.``, ``_``, ``-``; at most 128);
                default ``req-NNNN``.
            reapplies: An applied request whose instances relapsed (met their goal when it was
                applied, no longer do: :func:`~unlearnkit.ledger.apply.verify` says which).
                The new request forgets them again: its ids must be among that request's, and
                they may be in it and in its earlier applied re-applications, which an
                instance otherwise cannot be. Re-applying a re-application re-applies the
                request it re-applied.

        Returns:
            The new pending request.

        Raises:
            LedgerError: On empty or duplicate ids, ids already in a pending or applied request
                (naming them and that request), a duplicate request id, or malformed fields;
                with ``reapplies``, if that request is not applied or the ids are not among
                its own.
            UnknownMethodError: If no method has that name.
            InvalidHyperparameterError: If a hyperparameter is unknown or out of range.
        """
        from unlearnkit.methods.registry import create_method, method_class

        self._require_writable("add a request")
        clean_ids = _clean_ids(ids)
        n = len(clean_ids)
        label_list = _int_list(labels, "labels", n)
        if isinstance(content_hashes, (str, bytes)) or not isinstance(content_hashes, Sequence):
            raise LedgerError("content_hashes must be a sequence of sha256 hex strings")
        hashes = list(content_hashes)
        if len(hashes) != n:
            raise LedgerError(f"{n} ids but {len(hashes)} content_hashes")
        bad = [h for h in hashes if not isinstance(h, str) or not _SHA256.match(h)]
        if bad:
            raise LedgerError(f"content_hashes must be 64 lowercase hex digits (sha256), got {bad[0]!r}")
        if goal not in LEDGER_GOALS:
            raise LedgerError(f"goal must be one of {LEDGER_GOALS}, got {goal!r}")
        new_list = None if new_labels is None else _int_list(new_labels, "new_labels", n)
        if (goal == "relabel") != (new_list is not None):
            raise LedgerError("goal 'relabel' needs new_labels, and only it takes them")
        if new_list is not None:
            same = [clean_ids[i] for i in range(n) if new_list[i] == label_list[i]]
            if same:
                raise LedgerError(f"new label equals the training label for ids {same[:10]}; a relabeling request must change every label")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LedgerError(f"seed must be an integer, got {seed!r}")
        if not isinstance(hyperparams, Mapping):
            raise LedgerError(f"hyperparams must be a mapping, got {type(hyperparams).__name__}")
        if not all(isinstance(k, str) for k in hyperparams):
            raise LedgerError(f"hyperparameter names must be strings, got {sorted(map(repr, hyperparams))}")
        params_text = _dumps(dict(hyperparams), "hyperparams")
        if not isinstance(method, str):
            raise LedgerError(f"method must be a registered method name, got {method!r}")
        # Check the values as apply_pending will see them (after the JSON round trip: tuples
        # become lists), so that a typo or a bad value fails now rather than at apply time.
        create_method(method, **json.loads(params_text))
        if goal == "relabel" and not method_class(method).supports_relabel:
            raise LedgerError(f"method {method!r} does not support relabeling requests")
        if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID.match(request_id)):
            raise LedgerError(
                f"request id {request_id!r} is not valid: use 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        keys = [str(i) for i in clean_ids]
        with self._write("add the request") as conn:
            if request_id is not None:
                row = conn.execute("SELECT status FROM requests WHERE request_id = ?", (request_id,)).fetchone()
                if row is not None:
                    raise LedgerError(f"request id {request_id!r} is already in the ledger (status {row[0]}); choose another")
            root = None if reapplies is None else self._reapply_root(conn, reapplies, keys)
            found = self._conflicts(conn, keys, reapplies=root)
            if found:
                raise self._conflict_error(found, "refused")
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests").fetchone()[0]
            if request_id is None:
                request_id = f"req-{seq:04d}"
                while conn.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone():
                    request_id = f"req-{seq:04d}-{secrets.token_hex(3)}"
            record = RequestRecord(
                request_id=request_id, seq=seq, goal=goal, ids=tuple(clean_ids), content_hashes=tuple(hashes),
                labels=tuple(label_list), new_labels=None if new_list is None else tuple(new_list), method=method,
                hyperparams=json.loads(params_text), seed=seed, status="pending", created_at=_now(), reapplies=root,
            )
            conn.execute(
                f"INSERT INTO requests ({_REQUEST_COLUMNS}) VALUES ({','.join('?' * 18)})",
                (record.request_id, seq, goal, json.dumps(clean_ids), json.dumps(hashes), json.dumps(label_list),
                 None if new_list is None else json.dumps(new_list), method, params_text, seed, "pending",
                 record.created_at, None, None, None, None, None, root),
            )
            conn.executemany("INSERT INTO instances (instance, request_id) VALUES (?, ?)", [(k, request_id) for k in keys])
        return record

    def _check_fits(self, parent: VersionRecord, tensors: Mapping[str, Tensor], *, layout_may_change: bool = False) -> None:
        """Refuses a state whose names or shapes differ from the current version's: committing
        another model's weights into this chain is a mistake, not an unlearning step.

        With ``layout_may_change`` (the request's method deletes exactly by switching to
        checkpoints trained without the rows, e.g. S3T serving shorter prefixes), tensors may
        appear or disappear, but those present in both must keep their shapes, and at least
        one name must be shared."""
        path = self._workspace / parent.path
        try:
            with safe_open(str(path), framework="pt") as handle:
                shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"cannot read the current model version {parent.version_id} ({path}): {err}") from None
        given = {k: tuple(v.shape) for k, v in tensors.items()}
        if layout_may_change:
            shared = set(given) & set(shapes)
            given = {k: given[k] for k in shared}
            shapes = {k: shapes[k] for k in shared} if shared else shapes
        if given != shapes:
            missing = sorted(set(shapes) - set(given))[:5]
            extra = sorted(set(given) - set(shapes))[:5]
            reshaped = sorted(k for k in set(given) & set(shapes) if given[k] != shapes[k])[:5]
            raise LedgerError(
                f"the state does not fit the current model version {parent.version_id}: missing {missing}, "
                f"unexpected {extra}, different shapes {reshaped}"
            )

    def commit(
        self,
        request_id: str,
        state: Mapping[str, Tensor],
        *,
        metrics: Mapping[str, Any],
        receipt: Mapping[str, Any],
    ) -> VersionRecord:
        """Records ``state`` as the model version produced by the pending request ``request_id``.

        The model file is written atomically first (temporary file in ``models/``, fsync,
        rename, fsync of the directory); then one transaction inserts the version (its parent is
        the current version) and marks the request applied with its metrics, receipt and
        version. A failure at any step removes the new file and leaves the ledger unchanged.

        Args:
            request_id: A pending request.
            state: The new model's state dict (same names and shapes as the current version's).
            metrics: The run's figures (non-finite numbers are stored as ``null``).
            receipt: The request's receipt (strict JSON).

        Returns:
            The new version.

        Raises:
            LedgerError: If the request is not pending, the state does not fit, or the file or
                the transaction could not be written (the message names the problem).
            CheckpointError: If the current version's file cannot be read.
        """
        conn = self._require_writable("commit a model version")
        tensors = _tensors(state, "the state to commit")
        metrics_text = _dumps(_finite(dict(metrics)), "metrics")
        receipt_text = _dumps(dict(receipt), "the receipt")
        record = self.get(request_id)
        if record.status != "pending":
            hint = " (retry it first)" if record.status == "failed" else ""
            raise LedgerError(f"request {request_id!r} is {record.status}, not pending; only a pending request can be committed{hint}")
        parent = self.current_version()
        from unlearnkit.methods.registry import method_class

        self._check_fits(parent, tensors, layout_may_change=method_class(record.method).exact)
        version_id = parent.version_id + 1
        models = self._workspace / MODELS_DIR
        _crash_point("before_file_write")
        try:
            path, sha = _write_model_file(models, version_id, tensors)
        except OSError as err:
            raise LedgerError(
                f"cannot write model version {version_id} to {models}: {err}; the ledger is unchanged"
            ) from None
        _crash_point("after_file_write")
        relative = f"{MODELS_DIR}/{path.name}"
        now = _now()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"INSERT INTO versions ({_VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (version_id, relative, sha, parent.version_id, request_id, now),
            )
            updated = conn.execute(
                "UPDATE requests SET status = 'applied', applied_at = ?, metrics = ?, receipt = ?, version_id = ?, "
                "error = NULL WHERE request_id = ? AND status = 'pending'",
                (now, metrics_text, receipt_text, version_id, request_id),
            ).rowcount
            if updated != 1:
                raise LedgerError(f"request {request_id!r} stopped being pending during the commit")
            _crash_point("before_commit")
            conn.execute("COMMIT")
        except BaseException as err:
            _rollback(conn)
            if not self._recorded(version_id):
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    _fsync_dir(models)
            if isinstance(err, (sqlite3.Error, OSError)):
                raise LedgerError(
                    f"cannot record model version {version_id} for request {request_id!r}: {err}; "
                    "the ledger is unchanged"
                ) from None
            raise
        _crash_point("after_commit")
        return VersionRecord(version_id, relative, sha, parent.version_id, request_id, now)

    def _recorded(self, version_id: int) -> bool:
        """Whether ``version_id`` is in the database, after a failed COMMIT. When that cannot be
        told, say yes: a leftover file is removed by the next open, a missing one is lost."""
        try:
            conn = self._connection()
            return conn.execute("SELECT 1 FROM versions WHERE version_id = ?", (version_id,)).fetchone() is not None
        except (sqlite3.Error, LedgerError):
            return True

    def fail(self, request_id: str, error: str) -> RequestRecord:
        """Marks a pending request failed with ``error``; it stays in the ledger (see :meth:`retry`).

        Raises:
            LedgerError: If there is no such request, or it is not pending.
        """
        if not isinstance(error, str) or not error.strip():
            raise LedgerError("fail() needs the error that made the request fail")
        with self._write("mark the request failed") as conn:
            updated = conn.execute(
                "UPDATE requests SET status = 'failed', error = ? WHERE request_id = ? AND status = 'pending'",
                (error, request_id),
            ).rowcount
            if updated != 1:
                status = self._status(conn, request_id)
                raise LedgerError(f"request {request_id!r} is {status}, not pending; only a pending request can fail")
        return self.get(request_id)

    def retry(self, request_id: str) -> RequestRecord:
        """Sets a failed request pending again (it keeps its place in the order).

        Raises:
            LedgerError: If it is not failed, or another pending or applied request has since
                taken any of its instances.
        """
        with self._write("retry the request") as conn:
            status = self._status(conn, request_id)
            if status != "failed":
                raise LedgerError(f"request {request_id!r} is {status}, not failed; only a failed request can be retried")
            keys = [r[0] for r in conn.execute("SELECT instance FROM instances WHERE request_id = ?", (request_id,))]
            root = conn.execute("SELECT reapplies FROM requests WHERE request_id = ?", (request_id,)).fetchone()[0]
            found = self._conflicts(conn, keys, exclude=request_id, reapplies=root)
            if found:
                raise self._conflict_error(found, f"cannot retry {request_id!r}")
            conn.execute(
                "UPDATE requests SET status = 'pending', error = NULL, metrics = NULL, receipt = NULL, "
                "applied_at = NULL WHERE request_id = ?",
                (request_id,),
            )
        return self.get(request_id)

    @staticmethod
    def _status(conn: sqlite3.Connection, request_id: str) -> str:
        row = conn.execute("SELECT status FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no request {request_id!r} in the ledger")
        return str(row[0])

    # -- recovery ----------------------------------------------------------------------------

    def _clean(self) -> tuple[str, ...]:
        """Removes model files no version references and temporary files: what a commit killed
        before its transaction committed leaves behind. Runs only under the writer lock, so no
        other process can be half-way through writing one of them."""
        referenced = {row[0] for row in self._query("SELECT path FROM versions").fetchall()}
        try:
            return tuple(_remove_leftovers(self._workspace, referenced))
        except OSError as err:
            raise LedgerError(f"cannot clean up the leftovers of an interrupted commit in {self._workspace}: {err}") from None


def _remove_leftovers(workspace: Path, referenced: set[str]) -> list[str]:
    """Deletes unreferenced ``models/<version>-<sha12>.safetensors`` files and the temporary
    files of atomic writes (``.<name>.<random>.tmp``); returns their workspace-relative names.

    Files of other names are left alone: the ledger deletes only what it could have written.
    """
    removed: list[str] = []
    for folder, prefix in ((workspace / MODELS_DIR, f"{MODELS_DIR}/"), (workspace, "")):
        if not folder.is_dir():
            continue
        changed = False
        for entry in sorted(folder.iterdir()):
            if not entry.is_file():
                continue
            name = entry.name
            relative = prefix + name
            temporary = name.startswith(".") and (name.endswith(".tmp") or re.search(r"\.tmp-(wal|shm|journal)$", name))
            orphan = bool(prefix) and bool(_MODEL_NAME.match(name)) and relative not in referenced
            if temporary or orphan:
                entry.unlink(missing_ok=True)
                removed.append(relative)
                changed = True
        if changed:
            _fsync_dir(folder)
    return removed
