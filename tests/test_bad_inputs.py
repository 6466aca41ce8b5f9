"""Bad inputs to the workspace commands and the API under them: each one is refused clearly.

Every case asserts three things: the message names the problem (key words), the exit code is the
documented non-zero one (1 for an error, 2 for a usage error), and the workspace's files are
byte-for-byte unchanged afterwards (for ``init``: no workspace was created). A refused command
must leave nothing half-written.

The user's files (model module, weights, TorchScript archive, digits data) and a template
workspace with one pending request are built once per module; each case works on a copy.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import nn

from unlearnkit.cli import main
from unlearnkit.data import DataSplit
from unlearnkit.errors import CheckpointError, LedgerError, LedgerVersionError
from unlearnkit.ledger import Ledger, apply_pending, verify
from user_model import UserFiles, write_user_files
from unlearnkit.request import instance_sha256
from unlearnkit.sources import DataSourceError, load_model, model_builder, open_data_source
from unlearnkit.utils.hashing import file_sha256

# torch >= 2.10 deprecates TorchScript; user models saved with it must still load.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


FAST_SET = ["--set", "lr=0.05", "--set", "max_steps=300", "--method", "neggrad"]


# -- the "workspace unchanged" check ------------------------------------------------------------


def tree_digest(path: Path) -> dict[str, str] | None:
    """sha256 of every file under ``path`` (``"<dir>"`` for each directory); ``None`` if it
    does not exist, ``{".": sha}`` if it is a file.

    SQLite's ``-wal`` and ``-shm`` files are left out: SQLite creates, checkpoints and removes
    them as connections open and close, without changing the ledger's content (a write that
    reached the WAL is checkpointed into ``ledger.sqlite`` when the command's last connection
    closes, and :func:`assert_unchanged` checks no WAL content is left behind).
    """
    if not path.exists():
        return None
    if path.is_file():
        return {".": file_sha256(path)}
    digest: dict[str, str] = {}
    for item in sorted(path.rglob("*")):
        name = item.relative_to(path).as_posix()
        if name.endswith(("-wal", "-shm")):
            continue
        digest[name] = "<dir>" if item.is_dir() else file_sha256(item)
    return digest


def assert_unchanged(path: Path, before: dict[str, str] | None) -> None:
    """``path`` holds exactly what it held before, and no uncheckpointed WAL content."""
    after = tree_digest(path)
    if after != before:
        added = sorted(set(after or {}) - set(before or {}))
        removed = sorted(set(before or {}) - set(after or {}))
        changed = sorted(k for k in set(after or {}) & set(before or {}) if after[k] != before[k])  # type: ignore[index]
        pytest.fail(f"{path} changed: added {added}, removed {removed}, changed {changed}")
    wal = path / "ledger.sqlite-wal"
    if path.is_dir() and wal.exists():
        # A WAL left with frames would mean a write no connection checkpointed: content the
        # digest above cannot see.
        assert wal.stat().st_size == 0, f"{wal} holds {wal.stat().st_size} bytes after the command"


# -- the user's files and a template workspace --------------------------------------------------


def run(*args: object) -> tuple[int, str]:
    """Invokes the CLI in-process; returns the exit code and everything it printed."""
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def init_args(user: UserFiles, ws: Path, *, model: Path | None = None, cls: str | None = "DigitsNet",
              kwargs: str | None = '{"hidden": 32}', data: Path | None = None, extra: tuple = ()) -> list[object]:
    args: list[object] = ["init", ws, "--model", model or user.weights]
    if cls is not None:
        args += ["--class", f"{user.module}:{cls}", "--python-path", user.code]
    if kwargs is not None:
        args += ["--kwargs", kwargs]
    return [*args, "--data", data or user.data, *FAST_SET, *extra]


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory, digits: DataSplit) -> Iterator[UserFiles]:
    files = write_user_files(tmp_path_factory.mktemp("bad-inputs-user"), digits, prefix="digits_net_bad", rows=40)
    module, root, correct = files.module, files.root, files.correct
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "path", list(sys.path))  # --python-path appends to it in this process
        files.template = root / "template-ws"
        code_, out = run(*init_args(files, files.template))
        assert code_ == 0, out
        code_, out = run("request", files.template, "--ids", f"{correct[0]},{correct[1]}")
        assert code_ == 0, out
        yield files
    sys.modules.pop(module, None)


@dataclass
class Env:
    """One case's scratch directory, the user's files, and cleanups (run after the check)."""

    tmp: Path
    user: UserFiles
    stack: contextlib.ExitStack
    patterns: list[str] = field(default_factory=list)  # extra message patterns a setup adds

    def workspace(self) -> Path:
        """A private copy of the template workspace (one pending request, req-0001)."""
        ws = self.tmp / "ws"
        shutil.copytree(self.user.template, ws)
        return ws

    def new_workspace(self) -> Path:
        return self.tmp / "new-ws"

    def file(self, name: str) -> Path:
        return self.tmp / name


@pytest.fixture
def env(tmp_path: Path, user: UserFiles) -> Iterator[Env]:
    with contextlib.ExitStack() as stack:
        yield Env(tmp_path, user, stack)


# -- setups: each returns (the directory to watch, the command line) ----------------------------

Setup = Callable[[Env], tuple[Path, list[object]]]


def _init(**kw: object) -> Setup:
    return lambda env: (env.new_workspace(), init_args(env.user, env.new_workspace(), **kw))  # type: ignore[arg-type]


def missing_model(env: Env) -> tuple[Path, list[object]]:
    return env.new_workspace(), init_args(env.user, env.new_workspace(), model=env.file("nope.safetensors"))


def unimportable_class(env: Env) -> tuple[Path, list[object]]:
    ws = env.new_workspace()
    return ws, ["init", ws, "--model", env.user.weights, "--class", "no_such_module_xyz:Net", "--data", env.user.data]


def corrupt_safetensors(env: Env) -> tuple[Path, list[object]]:
    bad = env.file("corrupt.safetensors")
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json" + b"\x00" * 64)
    return env.new_workspace(), init_args(env.user, env.new_workspace(), model=bad)


def pickled_object(env: Env) -> tuple[Path, list[object]]:
    bad = env.file("whole_model.pt")
    # A whole module object, pickled (torch.save(model)): unpickling it could run code, so it is refused.
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), bad)
    return env.new_workspace(), init_args(env.user, env.new_workspace(), model=bad)


def nan_weights(env: Env) -> tuple[Path, list[object]]:
    state = {k: v.clone() for k, v in env.user.model.state_dict().items()}
    state["head.weight"][0, 0] = float("nan")
    bad = env.file("nan.safetensors")
    save_file(state, str(bad))
    return env.new_workspace(), init_args(env.user, env.new_workspace(), model=bad)


def _scripted(env: Env, model: nn.Module, name: str) -> Path:
    path = env.file(name)
    torch.jit.save(torch.jit.script(model), str(path))
    return path


def one_logit(env: Env) -> tuple[Path, list[object]]:
    path = _scripted(env, nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), "one_logit.pt")
    return env.new_workspace(), init_args(env.user, env.new_workspace(), model=path, cls=None, kwargs=None)


def wrong_input_shape(env: Env) -> tuple[Path, list[object]]:
    path = _scripted(env, nn.Linear(10, 3), "linear10.pt")  # 10 features; the data has 1x8x8 images
    return env.new_workspace(), init_args(env.user, env.new_workspace(), model=path, cls=None, kwargs=None)


def _npz(env: Env, x: np.ndarray, y: np.ndarray, name: str = "data.npz") -> Path:
    path = env.file(name)
    np.savez(path, x=x, y=y)
    return path


def _digits(env: Env) -> tuple[np.ndarray, np.ndarray]:
    with np.load(env.user.data) as archive:
        return archive["x"].copy(), archive["y"].copy()


def missing_data(env: Env) -> tuple[Path, list[object]]:
    return env.new_workspace(), init_args(env.user, env.new_workspace(), data=env.file("nope.npz"))


def nan_inputs(env: Env) -> tuple[Path, list[object]]:
    x, y = _digits(env)
    x[7, 0, 3, 3] = np.nan
    return env.new_workspace(), init_args(env.user, env.new_workspace(), data=_npz(env, x, y))


def labels_beyond_model(env: Env) -> tuple[Path, list[object]]:
    x, y = _digits(env)
    y[5] = 11  # the model has 10 outputs
    return env.new_workspace(), init_args(env.user, env.new_workspace(), data=_npz(env, x, y))


def inputs_outside_range(env: Env) -> tuple[Path, list[object]]:
    x, y = _digits(env)
    return env.new_workspace(), init_args(env.user, env.new_workspace(), data=_npz(env, x * 255.0, y))


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(path)


def non_image_file(env: Env) -> tuple[Path, list[object]]:
    pytest.importorskip("PIL")
    root = env.file("images")
    _png(root / "0" / "a.png")
    _png(root / "1" / "b.png")
    (root / "1" / "notes.txt").write_text("not an image")
    return env.new_workspace(), init_args(env.user, env.new_workspace(), data=root, extra=("--mode", "L"))


def csv_escaping(env: Env) -> tuple[Path, list[object]]:
    pytest.importorskip("PIL")
    _png(env.file("outside.png"))
    _png(env.file("csvroot/inside.png"))
    index = env.file("csvroot/index.csv")
    index.write_text("path,label\ninside.png,0\n../outside.png,1\n")
    return env.new_workspace(), init_args(env.user, env.new_workspace(), data=index, extra=("--mode", "L"))


def existing_workspace(env: Env) -> tuple[Path, list[object]]:
    ws = env.workspace()
    return ws, init_args(env.user, ws)


def workspace_is_a_file(env: Env) -> tuple[Path, list[object]]:
    path = env.file("a-file")
    path.write_text("x")
    return path, init_args(env.user, path)


def _request(*args: object) -> Setup:
    def setup(env: Env) -> tuple[Path, list[object]]:
        ws = env.workspace()
        u = env.user
        # Placeholders: A = a correctly classified id not yet requested; R = one in req-0001;
        # L = A's label; L+1 = another class.
        free, taken = u.correct[2], u.correct[0]
        swap = {"A": str(free), "R": str(taken), "L": str(u.labels[free]), "L+1": str((u.labels[free] + 1) % 10)}
        fill = lambda a: ",".join(swap.get(t, t) for t in a.split(",")) if isinstance(a, str) else a  # noqa: E731
        return ws, ["request", ws, *map(fill, args)]

    return setup


def empty_ids_file(env: Env) -> tuple[Path, list[object]]:
    ws = env.workspace()
    ids = env.file("ids.txt")
    ids.write_text("# nothing to forget yet\n\n")
    return ws, ["request", ws, "--ids-file", ids]


def newer_schema(command: str) -> Setup:
    def setup(env: Env) -> tuple[Path, list[object]]:
        ws = env.workspace()
        with contextlib.closing(sqlite3.connect(ws / "ledger.sqlite")) as conn, conn:
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        args: list[object] = [command, ws] + (["--ids", "1"] if command == "request" else [])
        return ws, args

    return setup


def corrupt_ledger(env: Env) -> tuple[Path, list[object]]:
    ws = env.workspace()
    (ws / "ledger.sqlite").write_bytes(b"this is not an SQLite database, " * 64)
    return ws, ["status", ws]


def no_workspace(env: Env) -> tuple[Path, list[object]]:
    return env.new_workspace(), ["apply", env.new_workspace()]


def corrupt_source_json(env: Env) -> tuple[Path, list[object]]:
    ws = env.workspace()
    (ws / "source.json").write_text('{"model": ')
    return ws, ["apply", ws]


def _hold_lock(env: Env, ws: Path) -> None:
    """A separate process takes the workspace's writer lock (as a running `apply` would) and
    holds it until the case's cleanup closes its stdin."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.ftruncate(fd, 0); os.pwrite(fd, f'{os.getpid()}\\n'.encode(), 0)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ws / "lock")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

    def stop() -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()

    env.stack.callback(stop)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    env.patterns.append(rf"\(pid {proc.pid}\)")


def busy(command: str, wait: str) -> Setup:
    def setup(env: Env) -> tuple[Path, list[object]]:
        ws = env.workspace()
        _hold_lock(env, ws)
        extra: list[object] = ["--ids", env.user.correct[3]] if command == "request" else []
        return ws, [command, ws, *extra, "--wait", wait]

    return setup


def tampered_model_file(command: str) -> Setup:
    def setup(env: Env) -> tuple[Path, list[object]]:
        ws = env.workspace()
        (model,) = (ws / "models").iterdir()
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF  # a bit flip in the last weight: still a valid safetensors file
        model.write_bytes(bytes(data))
        out = env.file("export")
        return ws, [command, ws] + (["-o", out] if command == "export" else [])

    return setup


def data_changed(env: Env) -> tuple[Path, list[object]]:
    x, y = _digits(env)
    data = _npz(env, x, y, "own-data.npz")
    ws = env.new_workspace()
    assert run(*init_args(env.user, ws, data=data))[0] == 0
    assert run("request", ws, "--ids", env.user.correct[0])[0] == 0
    x[100] = 1.0 - x[100]  # one row edited after init: ids would now name other content
    np.savez(data, x=x, y=y)
    return ws, ["apply", ws]


def torchscript_replaced(env: Env) -> tuple[Path, list[object]]:
    archive = env.file("model.pt")
    shutil.copyfile(env.user.torchscript, archive)
    ws = env.new_workspace()
    assert run(*init_args(env.user, ws, model=archive, cls=None, kwargs=None))[0] == 0
    assert run("request", ws, "--ids", env.user.correct[0])[0] == 0
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), str(archive))
    return ws, ["apply", ws]


def export_non_empty(env: Env) -> tuple[Path, list[object]]:
    ws = env.workspace()
    out = env.file("export")
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    env.stack.callback(lambda: assert_unchanged_text(out / "keep.txt", "someone's file"))
    return ws, ["export", ws, "-o", out]


def assert_unchanged_text(path: Path, text: str, *, alone: bool = True) -> None:
    """``path`` still holds ``text`` (and, if ``alone``, is still the only file in its folder)."""
    assert path.is_file() and path.read_text() == text
    if alone:
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def export_under_a_file(env: Env) -> tuple[Path, list[object]]:
    # chmod cannot stop root from writing; a path below a regular file fails for everyone.
    ws = env.workspace()
    blocker = env.file("blocker")
    blocker.write_text("a regular file")
    env.stack.callback(lambda: assert_unchanged_text(blocker, "a regular file", alone=False))
    return ws, ["export", ws, "-o", blocker / "export"]


def export_to_a_file(env: Env) -> tuple[Path, list[object]]:
    ws = env.workspace()
    target = env.file("export.json")
    target.write_text("{}")
    return ws, ["export", ws, "-o", target]


@dataclass(frozen=True)
class Case:
    name: str
    setup: Setup
    code: int
    patterns: tuple[str, ...]


CASES: tuple[Case, ...] = (
    # init: the model
    Case("missing model file", missing_model, 1, (r"model file not found", r"nope\.safetensors")),
    Case("corrupt safetensors", corrupt_safetensors, 1, (r"not a readable safetensors file",)),
    Case("pt holding a pickled object", pickled_object, 1, (r"pickled Python objects", r"will not be loaded")),
    Case("state dict not matching the class", _init(kwargs='{"hidden": 16}'), 1,
         (r"does not fit DigitsNet", r"shape mismatch")),
    Case("unimportable class", unimportable_class, 1, (r"cannot import module 'no_such_module_xyz'",)),
    Case("class missing from its module", _init(cls="Nope"), 1, (r"has no attribute 'Nope'",)),
    Case("kwargs not fitting the constructor", _init(kwargs='{"depth": 3}'), 1,
         (r"do not fit the constructor", r"depth")),
    Case("kwargs not JSON", _init(kwargs="{hidden: 32"), 2, (r"Invalid value for --kwargs", r"not valid JSON")),
    Case("safetensors without a class", _init(cls=None, kwargs=None), 1, (r"holds weights only", r"model class")),
    Case("NaN weights", nan_weights, 1, (r"NaN or infinite values", r"head\.weight")),
    Case("model with one output", one_logit, 1, (r"returns 1 output per row", r"C >= 2")),
    Case("model failing on the data's shape", wrong_input_shape, 1, (r"failed on inputs of shape \(1, 1, 8, 8\)",)),
    # init: the data
    Case("data npz missing", missing_data, 1, (r"data file not found", r"nope\.npz")),
    Case("npz with NaN inputs", nan_inputs, 1, (r"NaN or infinite", r"rows 7")),
    Case("labels out of range for the model", labels_beyond_model, 1, (r"has 10 outputs but the data has 12 classes",)),
    Case("inputs outside the input range", inputs_outside_range, 1, (r"outside the input range \(0, 1\)", r"--input-range")),
    Case("non-image file in an image folder", non_image_file, 1, (r"not images Pillow can read", r"notes\.txt")),
    Case("CSV path escaping its root", csv_escaping, 1, (r"\.\./outside\.png", r"outside the CSV's folder")),
    # init: options and the workspace
    Case("workspace already initialised", existing_workspace, 1, (r"already a workspace",)),
    Case("workspace path is a file", workspace_is_a_file, 1, (r"exists and is not a directory",)),
    Case("init with an unknown method", _init(extra=("--method", "no_such_method")), 2, (r"unknown method 'no_such_method'",)),
    Case("init with a bad --set value", _init(extra=("--set", "lr=-1")), 1, (r"lr must be > 0",)),
    Case("input range reversed", _init(extra=("--input-range", "1,0")), 2, (r"LOW < HIGH",)),
    # request
    Case("ids not in the data", _request("--ids", "5000,7"), 1, (r"out of range for a data source of 1437 rows", r"5000")),
    Case("duplicate ids in a request", _request("--ids", "A,A"), 1, (r"duplicate row id",)),
    Case("empty request", _request("--ids", " , "), 2, (r"names no instances",)),
    Case("empty ids file", empty_ids_file, 2, (r"names no instances",)),
    Case("non-integer id", _request("--ids", "1,two"), 2, (r"'two' is not an integer",)),
    Case("ids and ids file both", _request("--ids", "1", "--ids-file", __file__), 2, (r"exactly one of --ids and --ids-file",)),
    Case("an id already requested", _request("--ids", "A,R"), 1, (r"already in request 'req-0001' \(pending\)",)),
    Case("new label equal to old", _request("--ids", "A", "--new-labels", "L"), 1, (r"new label equals the training label",)),
    Case("new label out of range", _request("--ids", "A", "--new-labels", "10"), 1,
         (r"out of range for the model's 10 classes", r"-> 10")),
    Case("new labels not one per id", _request("--ids", "A", "--new-labels", "L+1,L+1"), 2, (r"2 new label\(s\) for 1 id",)),
    Case("relabel with a method that cannot", _request("--ids", "A", "--new-labels", "L+1", "--method", "retrain"), 1,
         (r"does not support relabeling",)),
    Case("unknown method", _request("--ids", "A", "--method", "no_such_method"), 2, (r"unknown method 'no_such_method'",)),
    Case("bad --set value", _request("--ids", "A", "--set", "lr=-1"), 1, (r"lr must be > 0",)),
    Case("--set naming no hyperparameter", _request("--ids", "A", "--set", "bogus=1"), 2, (r"Invalid value for --set: no chosen method has a hyperparameter 'bogus'",)),
    Case("--set without a value", _request("--ids", "A", "--set", "lr"), 2, (r"is not NAME=VALUE",)),
    Case("duplicate request id", _request("--ids", "A", "--id", "req-0001"), 1, (r"request id 'req-0001' is already in the ledger",)),
    Case("malformed request id", _request("--ids", "A", "--id", "../x"), 1, (r"request id '\.\./x' is not valid",)),
    # the ledger
    Case("ledger from a newer schema (status)", newer_schema("status"), 1, (r"schema version 99, newer than this unlearnkit supports",)),
    Case("ledger from a newer schema (request)", newer_schema("request"), 1, (r"schema version 99", r"upgrade unlearnkit")),
    Case("corrupt ledger file", corrupt_ledger, 1, (r"not a readable unlearnkit ledger",)),
    Case("no workspace", no_workspace, 1, (r"no ledger in", r"unlearnkit init")),
    Case("corrupt source.json", corrupt_source_json, 1, (r"cannot read .*source\.json",)),
    Case("busy ledger, --wait 0", busy("request", "0"), 1, (r"another process is applying requests in", r"retry or pass --wait")),
    Case("busy ledger, --wait 0.3", busy("apply", "0.3"), 1, (r"still was after waiting 0\.3 s", r"longer --wait")),
    Case("apply on a tampered model file", tampered_model_file("apply"), 1, (r"does not match the sha256 the ledger recorded",)),
    Case("verify on a tampered model file", tampered_model_file("verify"), 1, (r"does not match the sha256 the ledger recorded",)),
    Case("export of a tampered model file", tampered_model_file("export"), 1, (r"does not match the sha256", r"nothing was exported")),
    Case("apply after the data changed", data_changed, 1, (r"changed since it was described", r"fingerprint")),
    Case("apply after the TorchScript file was replaced", torchscript_replaced, 1, (r"does not match the sha256 recorded in the model source",)),
    # export
    Case("export into a non-empty directory", export_non_empty, 1, (r"is not empty", r"--force")),
    Case("export below a regular file", export_under_a_file, 1, (r"cannot write the export to", r"Not a directory")),
    Case("export onto a file", export_to_a_file, 1, (r"exists and is not a directory",)),
)


def test_the_matrix_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c.name for c in CASES}) == len(CASES)


def test_the_digest_sees_what_a_command_writes(env: Env) -> None:
    """The unchanged-workspace check is not blind: a successful request changes the digest
    (committed to ledger.sqlite itself, not left in the WAL the digest skips)."""
    ws = env.workspace()
    before = tree_digest(ws)
    code, out = run("request", ws, "--ids", env.user.correct[5])
    assert code == 0, out
    after = tree_digest(ws)
    assert after is not None and before is not None and after["ledger.sqlite"] != before["ledger.sqlite"]
    assert set(after) == set(before)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Case, env: Env) -> None:
    watched, args = case.setup(env)
    before = tree_digest(watched)
    outside = tree_digest(env.tmp / "export")  # export cases: nothing written there either
    code, out = run(*args)
    assert code == case.code, out
    assert not re.search(r"^Traceback \(most recent call last\)", out, re.M), out  # no Python traceback
    assert out.startswith(("Error:", "Usage:")) or "\nError:" in out, out
    for pattern in (*case.patterns, *env.patterns):
        assert re.search(pattern, out), f"{pattern!r} not in:\n{out}"
    assert_unchanged(watched, before)
    assert tree_digest(env.tmp / "export") == outside


# -- the API under the commands -----------------------------------------------------------------


def _hash(digits: DataSplit, i: int) -> str:
    return instance_sha256(digits.x_train[i], int(digits.y_train[i]))


# Each API case prepares its inputs (which may corrupt the workspace: that is the bad input) and
# returns the call that must be refused; the workspace is hashed between the two.
ApiCall = Callable[[], object]


def api_newer_schema(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    with contextlib.closing(sqlite3.connect(ws / "ledger.sqlite")) as conn, conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    return lambda: Ledger.open(ws)


def api_duplicate_ids(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    i = user.correct[2]

    def call() -> None:
        with Ledger.open(ws) as ledger:
            ledger.add_request([i, i], labels=[user.labels[i]] * 2, content_hashes=[_hash(digits, i)] * 2,
                               goal="misclassify", method="neggrad", hyperparams={})

    return call


def api_already_requested(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    i = user.correct[0]

    def call() -> None:
        with Ledger.open(ws) as ledger:
            ledger.add_request([i], labels=[user.labels[i]], content_hashes=[_hash(digits, i)],
                               goal="misclassify", method="neggrad", hyperparams={})

    return call


def api_commit_not_fitting(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    def call() -> None:
        with Ledger.open(ws) as ledger:
            ledger.commit("req-0001", nn.Linear(64, 10).state_dict(), metrics={}, receipt={})

    return call


def api_apply_read_only(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    def call() -> None:
        with Ledger.open_readonly(ws) as ledger:
            data = open_data_source(ledger.source["data"], ws)
            apply_pending(ledger, model_builder(ledger.source["model"], ws), data.rows)

    return call


def api_apply_tampered(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    (model,) = (ws / "models").iterdir()
    model.write_bytes(model.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # the last weight becomes inf

    def call() -> None:
        with Ledger.open(ws) as ledger:
            data = open_data_source(ledger.source["data"], ws)
            apply_pending(ledger, model_builder(ledger.source["model"], ws), data.rows)

    return call


def api_verify_unreadable_source(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    (ws / "source.json").unlink()

    def call() -> None:
        with Ledger.open_readonly(ws) as ledger:
            verify(ledger, model_builder(ledger.source["model"], ws), lambda ids: ([], []))

    return call


def api_load_pickled(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), ws.parent / "whole.pt")
    return lambda: load_model({"kind": "state_dict", "path": str(ws.parent / "whole.pt"),
                               "class": f"{user.module}:DigitsNet", "python_path": str(user.code)})


def api_open_nan_data(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    x = digits.x_train.numpy().copy()
    x[3] = np.inf
    np.savez(ws.parent / "inf.npz", x=x, y=digits.y_train.numpy())
    return lambda: open_data_source({"kind": "npz", "path": str(ws.parent / "inf.npz")})


def api_create_existing(ws: Path, user: UserFiles, digits: DataSplit) -> ApiCall:
    return lambda: Ledger.create(ws, initial_state=user.model.state_dict(), source={})


API_CASES = (
    ("newer schema", api_newer_schema, LedgerVersionError, r"schema version 7, newer than this unlearnkit supports"),
    ("duplicate ids", api_duplicate_ids, LedgerError, r"duplicate ids within the request"),
    ("id already requested", api_already_requested, LedgerError, r"already in request 'req-0001'"),
    ("commit of a state that does not fit", api_commit_not_fitting, LedgerError, r"does not fit the current model version 0"),
    ("apply on a read-only ledger", api_apply_read_only, LedgerError, r"needs a ledger opened for writing"),
    ("apply on a tampered model", api_apply_tampered, CheckpointError, r"does not match the sha256"),
    ("verify without source.json", api_verify_unreadable_source, LedgerError, r"cannot read .*source\.json"),
    ("pickled weights", api_load_pickled, CheckpointError, r"pickled Python objects"),
    ("non-finite data", api_open_nan_data, DataSourceError, r"NaN or infinite values"),
    ("create on an existing ledger", api_create_existing, LedgerError, r"already holds a ledger"),
)


@pytest.mark.parametrize(("name", "prepare", "error", "pattern"), API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_and_changes_nothing(
    name: str, prepare: Callable[[Path, UserFiles, DataSplit], ApiCall], error: type[Exception], pattern: str,
    env: Env, digits: DataSplit,
) -> None:
    ws = env.workspace()
    call = prepare(ws, env.user, digits)
    before = tree_digest(ws)
    with pytest.raises(error, match=pattern):
        call()
    assert_unchanged(ws, before)
