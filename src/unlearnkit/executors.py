"""Where the cells of a benchmark grid run: in this process, or as Ray tasks.

An executor takes the cells still to run and the :class:`~unlearnkit.bench.CellSettings` they
share, and yields one grid line per cell as it finishes. It never writes the grid file:
:func:`~unlearnkit.bench.run_grid`, in the calling process, appends each line it yields, so
there is exactly one writer however many workers compute.

- :class:`LocalExecutor` runs the cells one after another in this process (the default; the
  lines are those of unlearnkit before executors existed).
- :class:`RayExecutor` runs each cell as a Ray task with declared resources, on a local Ray
  instance it starts and stops, or on a running cluster (``address``). Ray is an optional
  dependency (``pip install "unlearnkit[ray]"``), imported only when a ``RayExecutor`` is made.

Both produce the same kinds of lines: a cell that raises becomes a failed line (see
:mod:`unlearnkit.bench`) and the other cells go on. For the same cells, settings, model cache
and torch thread count, both write the same lines up to their order and the fields that
measure time or describe the host (the wall times: ``seconds`` of the run and of the
reference's training, timing details such as ``attack/seconds``; the reference's
``from_cache``; ``versions.platform``; ``device``; a failure's traceback): every random choice
of a cell is seeded by the cell, and a task gets everything it needs by value.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from unlearnkit.errors import UnlearnkitError

if TYPE_CHECKING:
    from types import ModuleType

    from unlearnkit.bench import Cell, CellSettings

#: Executors the ``bench`` command offers, by name.
EXECUTORS = ("local", "ray")

#: What to install when Ray is missing.
RAY_INSTALL_HINT = 'pip install "unlearnkit[ray]"'


class ExecutorError(UnlearnkitError, RuntimeError):
    """An executor could not start, e.g. Ray could not start or reach its cluster."""


@runtime_checkable
class Executor(Protocol):
    """Runs grid cells and yields their lines as they finish (it does not write them)."""

    def run(self, cells: Sequence[Cell], settings: CellSettings, *, progress: bool = False) -> Iterator[dict[str, Any]]:
        """Yields one grid line per cell of ``cells``, in any order.

        Args:
            cells: The cells to run (the grid minus what is done).
            settings: Hyperparameters, evidence flag and model cache, shared by every cell.
            progress: Show progress bars while a model trains on first use.
        """
        ...


class LocalExecutor:
    """Runs the cells one after another in this process, in grid order.

    Args:
        threads: torch intra-op threads while a cell runs; ``None`` (default) keeps the
            process's setting, as unlearnkit did before executors existed.

    Example:
        >>> LocalExecutor().threads is None
        True
    """

    def __init__(self, *, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads

    def run(self, cells: Sequence[Cell], settings: CellSettings, *, progress: bool = False) -> Iterator[dict[str, Any]]:
        """Yields the line of each cell of ``cells`` in turn (see :class:`Executor`)."""
        from unlearnkit.bench import CellRunner

        runner = CellRunner(settings, threads=self.threads, progress=progress)
        for cell in cells:
            yield runner.run(cell)


def import_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        ImportError: If Ray is not installed, naming the extra that installs it.
    """
    try:
        return importlib.import_module("ray")
    except ImportError as err:
        raise ImportError(f"the ray executor needs Ray, an optional dependency: {RAY_INSTALL_HINT}") from err


class RayExecutor:
    """Runs each cell as a Ray task and yields the lines as the tasks finish.

    Before submitting anything, this process loads (training on first use) the pretrained
    model of each data set into the model cache, so the tasks find it there instead of all
    training it at once; with evidence, one task per request trains its retrained reference
    into the cache and the cells of that request start after it. Each cell task gets its
    cell and the settings by value, sets its torch threads, and loads the models from the cache
    directory it is given: on a cluster of several machines that directory must be shared (or
    each machine trains its own copies, which are the same models given the same thread
    counts). Every machine needs unlearnkit and torch installed. A task whose worker dies is
    retried as Ray retries tasks (``max_retries``), then recorded as a failed line.

    Args:
        address: The cluster to connect to, passed to ``ray.init(address=...)`` (e.g.
            ``"auto"`` or ``"ray://head:10001"``); ``None`` (default) starts a local Ray
            instance for the run and shuts it down at the end. If Ray is already initialised
            in this process (``ray.is_initialized()``), that instance is used as is and left
            running, and ``address`` and ``num_cpus`` are ignored.
        num_cpus: CPUs of the local instance (default: Ray counts them); not with
            ``address``.
        cpus_per_cell: CPUs each cell reserves (``num_cpus`` of its task; default 1).
        gpus_per_cell: GPUs each cell reserves (``num_gpus``; default 0). This reserves
            devices for the task; the grid's models run on the CPU as they do locally.
        threads_per_cell: torch intra-op threads in each task; default
            ``max(1, int(cpus_per_cell))``, one thread per reserved CPU.
        init_options: More keyword arguments for ``ray.init`` (e.g. ``log_to_driver=False``,
            ``runtime_env``); they override the defaults (``include_dashboard=False`` for a
            local instance, ``logging_level=logging.WARNING``).

    Raises:
        ImportError: If Ray is not installed (``pip install "unlearnkit[ray]"``).
        ValueError: If a resource is out of range or ``num_cpus`` comes with ``address``.
        ExecutorError: From :meth:`run`, if Ray cannot start or reach the cluster.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        cpus_per_cell: float = 1.0,
        gpus_per_cell: float = 0.0,
        threads_per_cell: int | None = None,
        init_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not cpus_per_cell > 0:
            raise ValueError(f"cpus_per_cell must be > 0, got {cpus_per_cell}")
        if not gpus_per_cell >= 0:
            raise ValueError(f"gpus_per_cell must be >= 0, got {gpus_per_cell}")
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
        if num_cpus is not None and address is not None:
            raise ValueError("num_cpus sizes a local Ray instance; a cluster at an address has its own")
        if threads_per_cell is not None and threads_per_cell < 1:
            raise ValueError(f"threads_per_cell must be >= 1, got {threads_per_cell}")
        import_ray()  # fail now, with the install hint, not after the grid was prepared
        self.address = address
        self.num_cpus = num_cpus
        self.cpus_per_cell = float(cpus_per_cell)
        self.gpus_per_cell = float(gpus_per_cell)
        self.threads_per_cell = threads_per_cell if threads_per_cell is not None else max(1, int(cpus_per_cell))
        self.init_options = dict(init_options or {})

    def run(self, cells: Sequence[Cell], settings: CellSettings, *, progress: bool = False) -> Iterator[dict[str, Any]]:
        """Yields the line of each cell of ``cells`` as its task finishes (see :class:`Executor`).

        Closing the generator early (an error or interrupt in the caller) cancels the tasks
        still pending and shuts down the instance if this call started it.
        """
        if not cells:
            return
        ray = import_ray()
        started = False
        if not ray.is_initialized():
            options: dict[str, Any] = {"logging_level": logging.WARNING}
            if self.address is None:
                options.update(num_cpus=self.num_cpus, include_dashboard=False)
            else:
                options.update(address=self.address)
            try:
                ray.init(**{**options, **self.init_options})
            except Exception as err:  # noqa: BLE001 - Ray raises many kinds; say what failed
                where = f"connect to the Ray cluster at {self.address}" if self.address else "start a local Ray instance"
                raise ExecutorError(f"cannot {where}: {type(err).__name__}: {err}") from err
            started = True
        try:
            yield from self._run(ray, cells, settings, progress)
        finally:
            if started:
                ray.shutdown()

    def _run(
        self, ray: ModuleType, cells: Sequence[Cell], settings: CellSettings, progress: bool
    ) -> Iterator[dict[str, Any]]:
        from unlearnkit.bench import failed_line
        from unlearnkit.models.pretrained import load_pretrained
        from unlearnkit.utils.versions import environment_versions

        versions = environment_versions()  # of this process, for the failures it records itself
        unloadable: dict[str, Exception] = {}
        for dataset in dict.fromkeys(c.dataset for c in cells):
            try:  # trains it on first use, once, here: not in every task at the same time
                load_pretrained(dataset, directory=settings.cache_directory, progress=progress)
            except Exception as err:  # noqa: BLE001 - its cells fail with it, the others run
                unloadable[dataset] = err
        for cell in cells:
            if cell.dataset in unloadable:
                # The same line a task (or the local executor) would write: the model is missing.
                yield failed_line(cell, unloadable[cell.dataset], versions)
        runnable = [c for c in cells if c.dataset not in unloadable]

        resources = {"num_cpus": self.cpus_per_cell, "num_gpus": self.gpus_per_cell}
        references: dict[tuple[str, int, str, int, str], Any] = {}
        if settings.evidence:
            warm = ray.remote(_warm_reference).options(**resources)
            for c in runnable:
                key = (c.dataset, c.k, c.mode, c.seed, c.forget_set)
                if key not in references:
                    references[key] = warm.remote(
                        c.dataset, c.k, c.mode, c.seed, settings.cache_directory, self.threads_per_cell, c.forget_set
                    )
        task = ray.remote(_run_cell).options(**resources)
        pending = {
            # The reference's ObjectRef as an argument: Ray starts the cell only once it is ready.
            task.remote(c, settings, self.threads_per_cell, references.get((c.dataset, c.k, c.mode, c.seed, c.forget_set))): c
            for c in runnable
        }
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    cell = pending.pop(ref)
                    try:
                        line = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - the task never returned: its worker died, ...
                        line = failed_line(cell, getattr(err, "cause", None) or err, versions)
                    yield line
        finally:
            for ref in [*pending, *references.values()]:
                try:
                    ray.cancel(ref)
                except Exception:  # noqa: BLE001, S110 - already finished or gone: nothing to stop
                    pass


def make_executor(name: str, **options: Any) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`), made with ``options``.

    Raises:
        ValueError: If ``name`` is unknown.
        ImportError: If ``name`` is ``"ray"`` and Ray is not installed.

    Example:
        >>> type(make_executor("local")).__name__
        'LocalExecutor'
    """
    if name == "local":
        return LocalExecutor(**options)
    if name == "ray":
        return RayExecutor(**options)
    raise ValueError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")


def _run_cell(cell: Cell, settings: CellSettings, threads: int, reference: None = None) -> dict[str, Any]:
    """A Ray task: the line of one cell (``reference`` is only there to order it after the
    task that cached its retrained reference)."""
    from unlearnkit.bench import CellRunner

    return CellRunner(settings, threads=threads).run(cell)


def _warm_reference(
    dataset: str, k: int, mode: str, seed: int, cache_directory: str | None, threads: int, forget_set: str = "random"
) -> None:
    """A Ray task: trains (or finds) the retrained reference of one request in the model cache,
    so that the request's cells, which start after it, load it instead of each training it."""
    import torch

    from unlearnkit.demo import draw_request
    from unlearnkit.models.pretrained import load_pretrained, load_retrained

    torch.set_num_threads(threads)  # the thread count of the cells, so the same weights
    try:
        default = load_pretrained(dataset, directory=cache_directory)
        request, _ = draw_request(
            default.data, k, seed, mode, forget_set=forget_set, model=default.model, cache_dir=cache_directory,  # type: ignore[arg-type]
        )
        load_retrained(dataset, request.ids, directory=cache_directory)
    except Exception:  # noqa: BLE001, S110 - each cell of the request meets the error again and records it
        pass
