"""The workspace commands of the ``unlearnkit`` command line: a user's own deployed model.

A *workspace* (see :mod:`unlearnkit.ledger.store`) keeps everything for one deployed model: the
ledger of deletion requests, every model version and ``source.json``, which says how to rebuild
the model object and read the training data. The commands::

    unlearnkit init    WORKSPACE --model PATH [--class pkg.mod:Name] --data PATH ...
    unlearnkit request WORKSPACE (--ids 1,2,3 | --ids-file F) [--new-labels 4,5,6] ...
    unlearnkit apply   WORKSPACE [--wait S]        # exit 3: a request failed or did not converge
    unlearnkit status  WORKSPACE
    unlearnkit verify  WORKSPACE                   # exit 1: a request relapsed or its data changed
    unlearnkit reapply WORKSPACE REQUEST [--id R]  # a pending request for REQUEST's relapsed instances
    unlearnkit export  WORKSPACE -o DIR [--force]

Exit codes: 0 success; 1 an error (the message names the problem; nothing is left half-written);
2 a usage error (a malformed option); 3 ``apply`` ran but some request failed or did not converge.
``verify`` exits 1 when an applied request relapsed, its content changed, or its rows could not be
read (the goal cannot be confirmed).

The commands are plain :mod:`click` commands; :func:`register_workspace_commands` attaches them to
the ``unlearnkit`` group (``unlearnkit.cli`` calls it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from unlearnkit import __version__
from unlearnkit.errors import CheckpointError, LedgerBusyError, LedgerError, UnlearnkitError
from unlearnkit.ledger import Ledger, RequestRecord, VersionRecord, apply_pending, verify
from unlearnkit.ledger.store import LEDGER_FILE, STATUSES
from unlearnkit.methods.registry import create_method, list_methods
from unlearnkit.receipt import receipt_sha256
from unlearnkit.report.table import format_table
from unlearnkit.request import DEFAULT_INPUT_RANGE, instance_sha256
from unlearnkit.sources import (
    DATA_KINDS,
    DataSource,
    check_model,
    describe_data_source,
    describe_model_source,
    load_model,
    model_builder,
    open_data_source,
    validate_ids,
)
from unlearnkit.utils.hashing import file_sha256
from unlearnkit.utils.io import write_atomic, write_json_atomic

__all__ = [
    "EXIT_APPLY_INCOMPLETE",
    "EXIT_VERIFY_FAILED",
    "WORKSPACE_COMMANDS",
    "register_workspace_commands",
]

#: ``unlearnkit apply``: some request failed or did not converge (the others were applied).
EXIT_APPLY_INCOMPLETE = 3
#: ``unlearnkit verify``: some applied request relapsed, its content changed, or it could not be checked.
EXIT_VERIFY_FAILED = 1
#: ``verify`` statuses that fail the check (``not_converged`` is reported but was known at apply time).
VERIFY_FAILING = ("relapsed", "content_changed", "unavailable")
#: Format of the ``ledger.json`` summary ``export`` writes.
EXPORT_SCHEMA_VERSION = 1

_WORKSPACE = click.argument("workspace", type=click.Path(path_type=Path))
_WAIT = click.option(
    "--wait", default=0.0, show_default=True, type=click.FloatRange(min=0), metavar="SECONDS",
    help="Wait up to SECONDS for another process applying requests in the workspace (0: refuse at once).",
)
_SEPARATORS = re.compile(r"[,\s]+")


# -- errors -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _errors(action: str | None = None) -> Iterator[None]:
    """Turns every error a user can cause into a one-line ``Error: ...`` (exit code 1).

    Click's own exceptions (usage errors: exit code 2) pass unchanged. ``action`` prefixes the
    messages of ``OSError``, whose text ("[Errno 20] Not a directory: 'x'") does not say what was
    being done.
    """
    try:
        yield
    except click.ClickException:
        raise
    except (UnlearnkitError, ValueError) as err:  # LedgerBusyError keeps its message ("... pass --wait")
        raise click.ClickException(str(err) or type(err).__name__) from err
    except OSError as err:
        raise click.ClickException(f"{action}: {err}" if action else str(err)) from err


# -- option parsing -----------------------------------------------------------------------------


def parse_int_list(text: str, option: str) -> list[int]:
    """``"1,2, 3"`` or ``"1 2\\n3"`` -> ``[1, 2, 3]`` (commas and whitespace separate).

    Raises:
        click.BadParameter: Naming the first token that is not an integer.

    Example:
        >>> parse_int_list("4, 5 6", "--ids")
        [4, 5, 6]
    """
    values: list[int] = []
    for token in _SEPARATORS.split(text.strip()):
        if not token:
            continue
        try:
            values.append(int(token))
        except ValueError:
            raise click.BadParameter(f"{token!r} is not an integer", param_hint=option) from None
    return values


def _read_ids_file(path: Path) -> list[int]:
    """Ids from a text file: integers separated by commas, spaces or newlines; ``#`` starts a comment."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise click.ClickException(f"cannot read the ids file {path}: {err}") from None
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return parse_int_list(body, f"--ids-file ({path})")


def _pair(text: str, option: str, kind: type) -> tuple[Any, Any]:
    parts = [p.strip() for p in text.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        first, second = kind(parts[0]), kind(parts[1])
    except ValueError:
        raise click.BadParameter(f"{text!r} is not two {kind.__name__} values separated by a comma", param_hint=option) from None
    return first, second


def parse_input_range(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` -> ``(low, high)``, finite, ``low < high``.

    Example:
        >>> parse_input_range("-1, 1")
        (-1.0, 1.0)
    """
    low, high = _pair(text, "--input-range", float)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise click.BadParameter(f"{text!r} must be two finite numbers LOW,HIGH with LOW < HIGH", param_hint="--input-range")
    return low, high


def _parse_size(text: str) -> list[int]:
    height, width = _pair(text, "--size", int)
    if height < 1 or width < 1:
        raise click.BadParameter(f"{text!r} must be a positive height and width in pixels", param_hint="--size")
    return [height, width]


def _parse_kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise click.BadParameter(f"not valid JSON ({err}): {text!r}", param_hint="--kwargs") from None
    if not isinstance(value, dict):
        raise click.BadParameter(f"must be a JSON object like '{{\"hidden\": 32}}', got {text!r}", param_hint="--kwargs")
    return value


def _hyperparams(method: str, settings: Sequence[str], base: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` overridden by ``--set NAME=VALUE`` (or ``METHOD.NAME=VALUE``), checked by the method.

    Raises:
        click.BadParameter: For an unknown method, a malformed setting or a name the method lacks.
        InvalidHyperparameterError: For a value out of range (reported by the caller's handler).
    """
    if method not in list_methods():
        raise click.BadParameter(f"unknown method {method!r}; known: {', '.join(list_methods())}", param_hint="--method")
    # Imported here, not at the top: unlearnkit.cli imports this module, and under
    # `python -m unlearnkit.cli` a top-level import would load a second copy half-way.
    from unlearnkit.cli import parse_settings

    try:
        params = {**base, **parse_settings(tuple(settings), [method]).get(method, {})}
    except click.BadParameter as err:
        err.param_hint = "--set"  # parse_settings names no option: say which one is wrong
        raise
    create_method(method, **json.loads(json.dumps(params)))  # values as the ledger will store them
    return params


# -- the workspace's source ---------------------------------------------------------------------


def _source(ledger: Ledger) -> dict[str, Any]:
    """``source.json``, checked to be what ``unlearnkit init`` writes.

    Raises:
        LedgerError: If it is missing, not JSON, or lacks the model or data description.
    """
    source = ledger.source
    path = ledger.workspace / "source.json"
    if not isinstance(source, dict) or not isinstance(source.get("model"), dict) or not isinstance(source.get("data"), dict):
        raise LedgerError(
            f"{path} does not describe a model and its data ({{'model': ..., 'data': ...}}); "
            "was the workspace made by `unlearnkit init`?"
        )
    input_range = source.get("input_range", list(DEFAULT_INPUT_RANGE))
    if input_range is not None and not (
        isinstance(input_range, list) and len(input_range) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in input_range)
        and input_range[0] < input_range[1]
    ):
        raise LedgerError(f"{path}: 'input_range' must be [low, high] or null, got {input_range!r}")
    defaults = source.get("defaults", {})
    if not isinstance(defaults, dict) or not isinstance(defaults.get("method", "l2ul"), str) or not isinstance(
        defaults.get("hyperparams", {}), dict
    ):
        raise LedgerError(f"{path}: 'defaults' must be {{'method': NAME, 'hyperparams': {{...}}}}, got {defaults!r}")
    return source


def _input_range(source: Mapping[str, Any]) -> tuple[float, float] | None:
    value = source.get("input_range", list(DEFAULT_INPUT_RANGE))
    return None if value is None else (float(value[0]), float(value[1]))


def _check_input_range(data: DataSource, input_range: tuple[float, float] | None, kind: str) -> None:
    """Refuses data outside the declared input range now: otherwise every request would fail at
    apply time (the methods clamp their attacks to the range and check the inputs lie in it)."""
    if input_range is None:
        return
    # npz rows are in memory: check them all, in chunks. Images are scaled to [0, 1] and read from
    # disk: the first row stands for them (reading every file at init could take minutes).
    n = len(data) if kind == "npz" else 1
    low, high = math.inf, -math.inf
    for start in range(0, n, 8192):
        inputs, _ = data.rows(range(start, min(n, start + 8192)))
        low, high = min(low, float(inputs.min())), max(high, float(inputs.max()))
    if low < input_range[0] or high > input_range[1]:
        raise click.ClickException(
            f"the data's inputs lie in [{low:.4g}, {high:.4g}], outside the input range "
            f"({input_range[0]:g}, {input_range[1]:g}); pass --input-range LOW,HIGH (the range the model was "
            "trained on), or --no-input-range if the inputs are unbounded"
        )


def _short_time(stamp: str | None) -> str | None:
    """``2024-05-01T12:34:56.789+00:00`` -> ``2024-05-01 12:34:56`` (UTC)."""
    if not stamp:
        return None
    return stamp.replace("T", " ")[:19]


def _status_of(record: RequestRecord) -> str:
    status = record.status
    if record.status == "applied" and (record.metrics or {}).get("converged") is False:
        status = "applied, NOT converged"
    return status if record.reapplies is None else f"{status} (re-applies {record.reapplies})"


# -- init ---------------------------------------------------------------------------------------


@click.command()
@_WORKSPACE
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="TorchScript archive, or weights (.safetensors, or .pt/.pth read weights-only) with --class.")
@click.option("--class", "class_path", default=None, metavar="pkg.module:Name",
              help="The nn.Module class (or factory function) that builds the architecture of a weights file.")
@click.option("--kwargs", "kwargs_json", default=None, metavar="JSON", help="Constructor keyword arguments, a JSON object.")
@click.option("--python-path", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Folder holding the class's module file (appended to sys.path when the class is imported).")
@click.option("--key", default=None, help="Entry of a .pt training checkpoint dict holding the state dict.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="The training data: .npz (arrays x, y), a folder of class sub-folders of images, or a CSV of path,label.")
@click.option("--data-kind", type=click.Choice(DATA_KINDS), default=None, help="Default: from the path.")
@click.option("--mode", type=click.Choice(["L", "RGB"]), default=None, help="Images: one channel (L) or three (RGB, default).")
@click.option("--size", default=None, metavar="H,W", help="Images: resize every image to H x W pixels.")
@click.option("--input-range", "input_range_text", default=None, metavar="LOW,HIGH",
              help="Bounds of the model's inputs  [default: 0,1]")
@click.option("--no-input-range", is_flag=True, help="The inputs are unbounded.")
@click.option("--method", default="l2ul", show_default=True, help="Default unlearning method of the requests.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Default hyperparameter of the method (repeatable); values are read as JSON.")
def init(
    workspace: Path, model_path: Path, class_path: str | None, kwargs_json: str | None, python_path: Path | None,
    key: str | None, data_path: Path, data_kind: str | None, mode: str | None, size: str | None,
    input_range_text: str | None, no_input_range: bool, method: str, settings: tuple[str, ...],
) -> None:
    """Create WORKSPACE for a deployed model and its training data.

    Loads the model (TorchScript, or weights plus the class that builds them; never unpickling
    objects), runs it on one data row, and records version 0 of the model, how to rebuild it and
    read the data (with their sha256 and fingerprint), and the default method. Relative paths are
    stored relative to WORKSPACE when the files lie inside it, absolute otherwise; the model and
    data files must stay where they are. Refuses a directory that already holds a workspace.
    """
    if input_range_text is not None and no_input_range:
        raise click.UsageError("--input-range and --no-input-range exclude each other")
    input_range = None if no_input_range else (
        parse_input_range(input_range_text) if input_range_text is not None else DEFAULT_INPUT_RANGE
    )
    kwargs = _parse_kwargs(kwargs_json) if kwargs_json is not None else None
    options: dict[str, Any] = {}
    if mode is not None:
        options["mode"] = mode
    if size is not None:
        options["size"] = _parse_size(size)
    with _errors(f"cannot create the workspace {workspace}"):
        hyperparams = _hyperparams(method, settings, {})
        if (workspace / LEDGER_FILE).exists():
            raise click.ClickException(
                f"{workspace} is already a workspace (it holds {LEDGER_FILE}); use `unlearnkit request` and "
                "`unlearnkit apply` on it, or choose another directory"
            )
        if workspace.exists() and not workspace.is_dir():
            raise click.ClickException(f"{workspace} exists and is not a directory")
        # Everything is checked before anything is written: a refused init leaves no directory.
        # Paths the user typed are relative to the current directory; the source stores them
        # relative to the workspace (or absolute), so resolve them first.
        model_source = describe_model_source(
            model_path.resolve(), class_path=class_path, kwargs=kwargs,
            python_path=None if python_path is None else python_path.resolve(), key=key, base_dir=workspace,
        )
        model = load_model(model_source, workspace)
        data_source = describe_data_source(data_path.resolve(), kind=data_kind, base_dir=workspace, **options)
        data = open_data_source(data_source, workspace)
        sample, _ = data.rows([0])
        classes = check_model(model, sample, num_classes=data.num_classes, what=f"the model {model_path}")
        _check_input_range(data, input_range, data_source["kind"])
        source = {
            "model": model_source,
            "data": data_source,
            "input_range": None if input_range is None else [float(v) for v in input_range],
            "defaults": {"method": method, "hyperparams": hyperparams},
        }
        metadata = {"created_by": "unlearnkit init", "unlearnkit_version": __version__, "model_classes": classes}
        existed = workspace.exists()
        try:
            with Ledger.create(workspace, initial_state=model.state_dict(), source=source, metadata=metadata) as ledger:
                version = ledger.current_version()
        except LedgerBusyError:
            raise  # another process is creating it: its files are not ours to remove
        except BaseException:
            if not existed:
                _remove_empty_workspace(workspace)
            raise
    where = model_source["path"]
    what = "TorchScript" if model_source["kind"] == "torchscript" else f"weights of {model_source['class']}"
    click.echo(f"initialised workspace {workspace}")
    click.echo(f"  model:   {where} ({what}), sha256 {model_source['sha256']}, {classes} outputs")
    click.echo(
        f"  data:    {data_source.get('path', data_source.get('root'))} ({data_source['kind']}), "
        f"{data_source['num_rows']} rows, {data_source['num_classes']} classes, fingerprint {data_source['fingerprint'][:12]}"
    )
    click.echo(f"  version: 0 = {version.path}, sha256 {version.sha256}")
    bounds = "unbounded" if input_range is None else f"[{input_range[0]:g}, {input_range[1]:g}]"
    params = " ".join(f"{k}={v}" for k, v in hyperparams.items()) or "its defaults"
    click.echo(f"  inputs:  {bounds}; default method {method} ({params})")


def _remove_empty_workspace(workspace: Path) -> None:
    """After a failed ``Ledger.create`` in a directory this command made: removes what create
    leaves behind (the lock file, an empty ``models/``) and the directory, if nothing else is in
    it. Never removes anything else: another process may have started using the directory."""
    with contextlib.suppress(OSError):
        if (workspace / LEDGER_FILE).exists():
            return
        (workspace / "lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (workspace / "models").rmdir()
        workspace.rmdir()


# -- request ------------------------------------------------------------------------------------


@click.command()
@_WORKSPACE
@click.option("--ids", "ids_text", default=None, metavar="1,2,3", help="Row ids of the instances to forget.")
@click.option("--ids-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file of row ids (commas, spaces or newlines; '#' starts a comment).")
@click.option("--new-labels", "new_labels_text", default=None, metavar="4,5,6",
              help="Relabel: the class each instance should be predicted as (one per id, each different from its label).")
@click.option("--method", default=None, help="Unlearning method  [default: the workspace's, from init]")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="Hyperparameter (repeatable), on top of the workspace's defaults for that method.")
@click.option("--id", "request_id", default=None, metavar="REQ", help="Name of the request (e.g. a ticket number)  [default: req-NNNN]")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the run.")
@_WAIT
def request(
    workspace: Path, ids_text: str | None, ids_file: Path | None, new_labels_text: str | None, method: str | None,
    settings: tuple[str, ...], request_id: str | None, seed: int, wait: float,
) -> None:
    """Add a pending deletion request to WORKSPACE; prints its id (on standard output, alone).

    The ids name rows of the workspace's data source; their labels and content hashes are read
    from it and recorded (never the content). Without --new-labels the goal is misclassification
    (every instance predicted as anything but its label); with it, relabeling. Nothing is
    unlearned until `unlearnkit apply`.
    """
    if (ids_text is None) == (ids_file is None):
        raise click.UsageError("name the instances with exactly one of --ids and --ids-file")
    ids = parse_int_list(ids_text, "--ids") if ids_text is not None else _read_ids_file(ids_file)  # type: ignore[arg-type]
    if not ids:
        raise click.BadParameter("the request names no instances", param_hint="--ids-file" if ids_file else "--ids")
    new_labels = None if new_labels_text is None else parse_int_list(new_labels_text, "--new-labels")
    if new_labels is not None and len(new_labels) != len(ids):
        raise click.BadParameter(f"{len(new_labels)} new label(s) for {len(ids)} id(s); give one per id", param_hint="--new-labels")
    with _errors(f"cannot add the request to {workspace}"), Ledger.open(workspace, wait=wait) as ledger:
        source = _source(ledger)
        defaults = source.get("defaults", {})
        chosen = method or defaults.get("method", "l2ul")
        # The workspace's default hyperparameters belong to its default method only.
        base = defaults.get("hyperparams", {}) if chosen == defaults.get("method", "l2ul") else {}
        hyperparams = _hyperparams(chosen, settings, base)
        data = open_data_source(source["data"], workspace)
        clean = validate_ids(ids, len(data))
        inputs, labels = data.rows(clean)
        hashes = [instance_sha256(x, int(y)) for x, y in zip(inputs, labels)]
        if new_labels is not None:
            classes = int(ledger.metadata.get("model_classes") or data.num_classes)
            bad = [(i, n) for i, n in zip(clean, new_labels) if not 0 <= n < classes]
            if bad:
                shown = ", ".join(f"id {i} -> {n}" for i, n in bad[:10])
                raise click.ClickException(
                    f"{len(bad)} new label(s) out of range for the model's {classes} classes (valid 0..{classes - 1}): {shown}"
                )
        record = ledger.add_request(
            clean, labels=labels.tolist(), content_hashes=hashes,
            goal="misclassify" if new_labels is None else "relabel", new_labels=new_labels,
            method=chosen, hyperparams=hyperparams, seed=seed, request_id=request_id,
        )
        waiting = len(ledger.pending())
    click.echo(record.request_id)
    params = " ".join(f"{k}={v}" for k, v in record.hyperparams.items()) or "defaults"
    click.echo(
        f"pending: {record.request_id}, {len(record.ids)} instance(s), goal {record.goal}, {record.method} ({params}), "
        f"seed {record.seed}; {waiting} request(s) wait for `unlearnkit apply {workspace}`",
        err=True,
    )


# -- apply --------------------------------------------------------------------------------------


def _apply_row(record: RequestRecord) -> list[Any]:
    metrics = record.metrics or {}
    verdict = ((record.receipt or {}).get("verdict") or {}).get("passed")
    return [
        record.request_id, record.goal, len(record.ids), record.method, _status_of(record), record.version_id,
        metrics.get("converged"), metrics.get("acc/forget/after"), metrics.get("steps"), metrics.get("seconds"),
        None if verdict is None else ("passed" if verdict else "FAILED"),
    ]


_APPLY_HEADERS = ["request", "goal", "n", "method", "status", "version", "converged", "Acc(D_f) after", "steps", "seconds", "verdict"]


@click.command("apply")
@_WORKSPACE
@_WAIT
@click.option("--progress/--no-progress", default=None, help="Progress bar over the requests (default: on a terminal).")
def apply_command(workspace: Path, wait: float, progress: bool | None) -> None:
    """Apply every pending request of WORKSPACE, in order, each to the model the last one produced.

    Prints per request its status, whether the run converged, Acc(D_f) after (percent of its
    instances still predicted as their label), steps, seconds and the receipt's verdict. A request
    whose run diverges or is refused is marked failed (the model is unchanged; fix and retry it);
    a run that does not converge is still committed, and reported.

    Exit code 0 if every request was applied and converged (or none was pending), 3 if some
    request failed or did not converge, 1 on an error (nothing half-written: each request is
    committed whole or not at all).
    """
    show = sys.stderr.isatty() if progress is None else progress
    handled: list[RequestRecord] = []
    with _errors(f"cannot apply the requests of {workspace}"), Ledger.open(workspace, wait=wait) as ledger:
        if ledger.cleaned:
            click.echo(f"removed the leftovers of an interrupted commit: {', '.join(ledger.cleaned)}", err=True)
        pending = ledger.pending()
        start = ledger.current_version()
        if not pending:
            click.echo(f"nothing to apply: no pending request (current version {start.version_id})")
            return
        source = _source(ledger)
        builder = model_builder(source["model"], workspace)
        data = open_data_source(source["data"], workspace)
        click.echo(f"applying {len(pending)} pending request(s) to version {start.version_id} ({start.sha256[:12]})")
        try:
            apply_pending(
                ledger, builder, data.rows, all_ids=data.ids, input_range=_input_range(source),
                progress=show, on_request=handled.append,
            )
        finally:
            # Also when a later request stops the run: what was committed stays committed.
            if handled:
                click.echo(format_table(_APPLY_HEADERS, [_apply_row(r) for r in handled]))
        end = ledger.current_version()
    for record in handled:
        if record.status == "failed":
            click.echo(f"{record.request_id} FAILED: {record.error}", err=True)
    failed = sum(r.status == "failed" for r in handled)
    unconverged = sum(r.status == "applied" and (r.metrics or {}).get("converged") is False for r in handled)
    click.echo(
        f"current version {end.version_id} ({end.path}, sha256 {end.sha256}); "
        f"{len(handled) - failed} applied ({unconverged} not converged), {failed} failed"
    )
    if failed or unconverged:
        if failed:
            click.echo("failed requests left the model unchanged; `unlearnkit status` shows them with their errors", err=True)
        if unconverged:
            click.echo(
                "a request that did not converge was committed, but some of its instances do not meet their goal: "
                "add a new request for them with other settings (--set)", err=True,
            )
        click.get_current_context().exit(EXIT_APPLY_INCOMPLETE)


# -- status -------------------------------------------------------------------------------------


@click.command()
@_WORKSPACE
def status(workspace: Path) -> None:
    """Show WORKSPACE's current model version and every request (read-only, takes no lock)."""
    with _errors(f"cannot read {workspace}"), Ledger.open_readonly(workspace) as ledger:
        current = ledger.current_version()
        requests = ledger.requests()
        problem = ""
        try:
            source: dict[str, Any] | None = _source(ledger)
        except LedgerError as err:
            source, problem = None, str(err)
    click.echo(f"workspace {workspace}")
    origin = f"produced by {current.request_id}" if current.request_id else "the deployed model as initialised"
    click.echo(f"current version {current.version_id} ({origin}): {current.path}, sha256 {current.sha256}")
    if source is not None:
        model, data = source["model"], source["data"]
        click.echo(
            f"model source: {model.get('kind')} {model.get('path')}; data: {data.get('kind')} "
            f"{data.get('path', data.get('root'))} ({data.get('num_rows')} rows, {data.get('num_classes')} classes)"
        )
    else:
        click.echo(f"warning: {problem}", err=True)
    counts = {s: sum(r.status == s for r in requests) for s in STATUSES}
    unconverged = sum("NOT converged" in _status_of(r) for r in requests)
    click.echo(
        "requests: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES)
        + (f" ({unconverged} applied without converging)" if unconverged else "")
    )
    if not requests:
        return
    rows = [
        [r.request_id, r.goal, len(r.ids), r.method, _status_of(r), r.version_id, _short_time(r.created_at), _short_time(r.applied_at)]
        for r in requests
    ]
    click.echo(format_table(["request", "goal", "n", "method", "status", "version", "created (UTC)", "applied (UTC)"], rows))
    for r in requests:
        if r.status == "failed":
            click.echo(f"{r.request_id} failed: {r.error}")


# -- verify -------------------------------------------------------------------------------------


@click.command("verify")
@_WORKSPACE
def verify_command(workspace: Path) -> None:
    """Re-check every applied request of WORKSPACE on the current model.

    Each instance must still meet its request's goal (misclassified, or predicted as its new
    label) and its row must still hash to the content recorded. Exit code 1 if any request
    relapsed (an instance that met its goal when applied no longer does), its content changed,
    or its rows could not be read; 0 otherwise (a request applied without converging is reported,
    not failed: apply already said so).
    """
    with _errors(f"cannot verify {workspace}"), Ledger.open_readonly(workspace) as ledger:
        source = _source(ledger)
        builder = model_builder(source["model"], workspace)
        # verify=False: a data set changed since init is judged request by request (content
        # hashes), so that the requests whose rows are intact are still checked.
        data = open_data_source(source["data"], workspace, verify=False)
        recorded = source["data"].get("fingerprint")
        if recorded is not None and recorded != data.fingerprint:
            click.echo(
                "warning: the data source changed since init (its fingerprint differs); rows whose content "
                "changed are reported as content_changed", err=True,
            )
        current = ledger.current_version()
        results = verify(ledger, builder, data.rows)
    click.echo(f"verifying on version {current.version_id} ({current.path}, sha256 {current.sha256[:12]})")
    if not results:
        click.echo("no applied request to verify")
        return
    rows = [
        [r["request_id"], r["goal"], r["instances"], r["checked"], r["goal_share"], r["goal_share_at_apply"],
         r["version_id"], r["status"]]
        for r in results
    ]
    click.echo(format_table(["request", "goal", "n", "checked", "goal met now %", "at apply %", "version", "status"], rows))
    for r in results:
        if r["status"] != "ok":
            click.echo(f"{r['request_id']} {r['status']}: {r['message']}")
    failing = [r["request_id"] for r in results if r["status"] in VERIFY_FAILING]
    if failing:
        click.echo(f"FAILED: {len(failing)} request(s) no longer verified: {', '.join(failing)}", err=True)
        click.get_current_context().exit(EXIT_VERIFY_FAILED)
    click.echo(f"ok: {len(results)} applied request(s) verified")


@click.command()
@_WORKSPACE
@click.argument("request_id", metavar="REQUEST")
@click.option("--id", "new_id", default=None, metavar="REQ", help="Name of the new request  [default: req-NNNN]")
@_WAIT
def reapply(workspace: Path, request_id: str, new_id: str | None, wait: float) -> None:
    """Add a pending request that forgets again the relapsed instances of REQUEST.

    REQUEST is an applied request of WORKSPACE. Its instances are re-checked on the current
    model as `unlearnkit verify` does; those that met the goal when it was applied and no longer
    do get a new pending request with REQUEST's goal, method, hyperparameters and seed, recorded
    as re-applying REQUEST (its receipt and `status` say so). Prints the new request's id; prints
    nothing and exits 0 when no instance relapsed. Run `unlearnkit apply` next.
    """
    with _errors(f"cannot re-apply {request_id} in {workspace}"), Ledger.open(workspace, wait=wait) as ledger:
        target = ledger.get(request_id)
        if target.status != "applied":
            raise click.ClickException(f"request {request_id!r} is {target.status}, not applied: there is nothing to re-apply")
        source = _source(ledger)
        data = open_data_source(source["data"], workspace, verify=False)
        check = next(r for r in verify(ledger, model_builder(source["model"], workspace), data.rows)
                     if r["request_id"] == request_id)
        relapsed = {str(i) for i in check["relapsed_ids"]}
        if not relapsed:
            click.echo(f"{request_id}: no instance relapsed (status {check['status']}); nothing to re-apply", err=True)
            return
        pick = [n for n, i in enumerate(target.ids) if str(i) in relapsed]
        record = ledger.add_request(
            [target.ids[n] for n in pick], labels=[target.labels[n] for n in pick],
            content_hashes=[target.content_hashes[n] for n in pick], goal=target.goal,
            new_labels=None if target.new_labels is None else [target.new_labels[n] for n in pick],
            method=target.method, hyperparams=target.hyperparams, seed=target.seed, request_id=new_id,
            reapplies=request_id,
        )
    click.echo(record.request_id)
    click.echo(
        f"pending: {record.request_id} re-applies {record.reapplies} to {len(record.ids)} relapsed instance(s) "
        f"(ids {list(record.ids)[:10]}); run `unlearnkit apply {workspace}`",
        err=True,
    )


# -- export -------------------------------------------------------------------------------------


def _snapshot(ledger: Ledger) -> tuple[list[VersionRecord], list[RequestRecord]]:
    """The versions and requests as of one moment: a reader takes no lock, so a commit may land
    between two queries; read until no version was added in between (commits only add)."""
    for _ in range(10):
        before = ledger.current_version()
        requests = ledger.requests()
        versions = ledger.versions()
        if versions[-1] == before:
            return versions, requests
    raise LedgerError(f"{ledger.workspace} kept changing while being read; export again when `apply` is done")


def _copy_model(source: Path, target: Path, sha256: str) -> None:
    """Copies the model file atomically, checking the copy's sha256 before it takes its name."""

    def write(tmp: Path) -> None:
        shutil.copyfile(source, tmp)
        if file_sha256(tmp) != sha256:
            raise CheckpointError(
                f"the model file {source} does not match the sha256 the ledger recorded: it was changed or corrupted"
            )

    write_atomic(target, write)


@click.command()
@_WORKSPACE
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), metavar="DIR", help="Directory to write to.")
@click.option("--force", is_flag=True, help="Write into DIR even if it is not empty (overwriting the files of an export).")
def export(workspace: Path, output: Path, force: bool) -> None:
    """Write WORKSPACE's current model and every receipt to DIR, for deployment and audit.

    DIR gets model.safetensors (the current version) with model.json (its sha256, version and
    the request that produced it), receipts/<request id>.json for every applied request, and
    ledger.json (every version and request), written last. Each file is written atomically.
    Refuses a DIR that is not empty unless --force.
    """
    with _errors(f"cannot export {workspace}"), Ledger.open_readonly(workspace) as ledger:
        versions, requests = _snapshot(ledger)
        current = versions[-1]
        model_file = workspace / current.path
        schema_version = ledger.schema_version
        try:
            source: dict[str, Any] | None = ledger.source
        except LedgerError:
            source = None  # the summary says so; the model and receipts do not depend on it
    receipts = {r.request_id: r.receipt for r in requests if r.status == "applied" and r.receipt is not None}
    # Check everything before writing anything.
    for request_id, receipt in receipts.items():
        if receipt.get("receipt_sha256") != receipt_sha256(receipt):
            raise click.ClickException(
                f"the receipt of request {request_id!r} in the ledger does not match its receipt_sha256: "
                "the ledger was edited; nothing was exported"
            )
    if not model_file.is_file():
        raise click.ClickException(f"the model file of version {current.version_id} is missing: {model_file}")
    with _errors(f"cannot read {model_file}"):
        if file_sha256(model_file) != current.sha256:  # checked again on the copy, before it takes its name
            raise click.ClickException(
                f"the model file of version {current.version_id} ({model_file}) does not match the sha256 the "
                "ledger recorded: it was changed or corrupted; nothing was exported"
            )
    if output.exists():
        if not output.is_dir():
            raise click.ClickException(f"the export directory {output} exists and is not a directory")
        if any(output.iterdir()) and not force:
            raise click.ClickException(f"the export directory {output} is not empty; choose an empty one, or pass --force")
    counts = {s: sum(r.status == s for r in requests) for s in STATUSES}
    summary = {
        "format": "unlearnkit-workspace-export",
        "schema_version": EXPORT_SCHEMA_VERSION,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "unlearnkit_version": __version__,
        "workspace": str(workspace.resolve()),
        "ledger_schema_version": schema_version,
        "source": source,
        "current_version": current.to_dict(),
        "versions": [v.to_dict() for v in versions],
        "counts": counts,
        "requests": [
            {**{k: v for k, v in r.to_dict().items() if k != "receipt"},
             "receipt_file": f"receipts/{r.request_id}.json" if r.request_id in receipts else None}
            for r in requests
        ],
    }
    sidecar = {
        "file": "model.safetensors",
        "sha256": current.sha256,
        "version_id": current.version_id,
        "parent_id": current.parent_id,
        "request_id": current.request_id,
        "created_at": current.created_at,
        "workspace_file": current.path,
    }
    with _errors(f"cannot write the export to {output}"):
        _copy_model(model_file, output / "model.safetensors", current.sha256)
        write_json_atomic(output / "model.json", sidecar)
        for request_id, receipt in receipts.items():  # ids are [A-Za-z0-9._-], starting alphanumeric: safe names
            write_json_atomic(output / "receipts" / f"{request_id}.json", receipt)
        write_json_atomic(output / "ledger.json", summary)  # last: its presence marks a complete export
    click.echo(
        f"exported version {current.version_id} (sha256 {current.sha256}) and {len(receipts)} receipt(s) to {output}"
    )


# -- registration -------------------------------------------------------------------------------

#: The commands, in the order a user meets them.
WORKSPACE_COMMANDS: tuple[click.Command, ...] = (
    init, request, apply_command, status, verify_command, reapply, export,
)


def register_workspace_commands(group: click.Group) -> click.Group:
    """Adds ``init``, ``request``, ``apply``, ``status``, ``verify``, ``reapply`` and ``export``
    to ``group``.

    Example:
        >>> group = register_workspace_commands(click.Group("demo"))
        >>> sorted(group.commands)
        ['apply', 'export', 'init', 'reapply', 'request', 'status', 'verify']
    """
    for command in WORKSPACE_COMMANDS:
        group.add_command(command)
    return group
