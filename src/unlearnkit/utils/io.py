"""Writing result files atomically, so that a crash never leaves half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (0o666 less the umask):
    ``mkstemp`` creates 0o600 files, which other users (an auditor, a CI job) could not read."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Creates ``path`` by ``write(temporary_path)``, flushed to disk, then an atomic rename.

    A crash leaves either the old file or the new one, never half of one; the temporary file is
    removed on any failure, and the new file gets the usual permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Writes ``data`` as indented JSON to ``path`` via a temporary file and a rename.

    Raises:
        OSError: If the directory cannot be created or written; no partial file is left.
    """
    # Serialise first: a value JSON cannot hold (NaN) fails before any file is touched.
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))
