"""Data-parallel unlearning under ``torchrun``: one forget request of a built-in data set, N processes.

Launch with ``torchrun`` (or ``python -m torch.distributed.run``)::

    torchrun --standalone --nproc_per_node 2 -m unlearnkit.distributed_run \\
        --methods finetune,neggrad_plus --dataset digits -k 16 --seed 0 --out-dir runs/ddp

Every process (rank) loads the same model and data, draws the same forget request and calls
:func:`unlearnkit.unlearn` with the same seed; the shared optimisation loops then split each
batch of retain data across the ranks and average the gradients (see
:mod:`unlearnkit.components.distributed`), so the effective batch size is the method's
``batch_size`` whatever the number of processes. The process group uses gloo on CPUs and NCCL
for GPUs (one GPU per rank, ``LOCAL_RANK``), chosen automatically. Only rank 0 writes files:
``<out-dir>/<method>.safetensors`` (the unlearned weights) and ``<out-dir>/<method>.json`` (the
result without the model, plus ``world_size``, ``backend`` and the accuracy on the retain and
test data).

Run without ``torchrun`` (``python -m unlearnkit.distributed_run ...``) it is a plain
single-process run: the reference a data-parallel run matches up to float rounding (exactly
the same steps; weights within ~1e-6 for models without train-mode BatchNorm).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import torch
import torch.distributed as dist
from torch import nn

from unlearnkit.api import unlearn
from unlearnkit.cli import DATASETS, parse_settings
from unlearnkit.components import distributed
from unlearnkit.data import DataSplit
from unlearnkit.demo import draw_request
from unlearnkit.methods.registry import list_methods, method_class
from unlearnkit.metrics.accuracy import evaluate
from unlearnkit.models.pretrained import PRETRAINED, load_pretrained
from unlearnkit.result import UnlearnResult
from unlearnkit.sources.model import load_model
from unlearnkit.utils.checkpoint import save_state_dict
from unlearnkit.utils.io import write_json_atomic
from unlearnkit.utils.modules import default_device


def load_model_and_data(
    dataset: str, model_source: Path | None = None, *, progress: bool = False
) -> tuple[nn.Module, DataSplit]:
    """The model to unlearn and its data: the pretrained model of ``dataset``, or the user's model
    described by the JSON model source ``model_source`` (see :mod:`unlearnkit.sources.model`;
    relative paths in it are resolved against its folder) with ``dataset``'s data.

    Under a process group rank 0 loads first, alone (training and caching the pretrained model
    if it is not cached yet), and the other ranks then read it from the cache; rank 0's weights
    are finally copied to every rank, so that all of them start from the same model.
    """

    def load() -> tuple[nn.Module, DataSplit]:
        if model_source is None:
            default = load_pretrained(dataset, progress=progress)
            return default.model, default.data
        source = json.loads(Path(model_source).read_text())
        return load_model(source, base_dir=Path(model_source).parent), PRETRAINED[dataset].load_data()

    if distributed.is_main_process():
        with distributed.local_only():  # training the cached model must not wait for other ranks
            model, data = load()
    distributed.barrier()
    if not distributed.is_main_process():
        with distributed.local_only():
            model, data = load()
    distributed.broadcast_module(model)
    return model, data


def unlearn_request(
    model: nn.Module,
    data: DataSplit,
    method: str,
    *,
    k: int,
    seed: int,
    mode: str = "misclassify",
    hyperparams: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> UnlearnResult:
    """Runs ``method`` on the demo's forget request of ``k`` training rows drawn with ``seed``.

    The request is :func:`unlearnkit.demo.draw_request`'s; methods that use retain data get
    every other training row. Called on every rank under ``torchrun``, and in one process for
    the reference run.
    """
    request, keep = draw_request(data, k, seed, mode)  # type: ignore[arg-type]
    retain = None
    if method_class(method).data_access != "forget":
        retain = (data.x_train[keep], data.y_train[keep])
    return unlearn(
        model, request, method=method, retain=retain, seed=seed, device=device, progress=progress,
        **dict(hyperparams or {}),
    )


def _device(choice: str) -> torch.device:
    # "auto": init_from_env made LOCAL_RANK's GPU the current device, where there is one.
    return default_device() if choice == "auto" else torch.device(choice)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--methods", "method_spec", default="finetune", show_default=True, help="Comma-separated method names.")
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True)
@click.option(
    "--model-source", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
    help="JSON model source of your own model (default: the data set's pretrained model).",
)
@click.option("-k", "--k", "k", default=16, show_default=True, type=click.IntRange(min=1), help="Forget instances.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the request and the runs.")
@click.option("--mode", type=click.Choice(["misclassify", "relabel"]), default="misclassify", show_default=True)
@click.option("--set", "settings", multiple=True, metavar="[METHOD.]NAME=VALUE", help="Override a hyperparameter (repeatable).")
@click.option("--device", default="auto", show_default=True, help="auto (this rank's GPU if any, else CPU), cpu, cuda:0, ...")
@click.option(
    "--sync-batchnorm", is_flag=True,
    help="Convert BatchNorm to SyncBatchNorm (GPU only): train-mode statistics over the global batch.",
)
@click.option(
    "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("unlearnkit-ddp"), show_default=True,
    help="Where rank 0 writes <method>.safetensors and <method>.json.",
)
@click.option("--progress/--no-progress", default=False, show_default=True, help="Progress bars (rank 0 only).")
def main(
    method_spec: str,
    dataset: str,
    model_source: Path | None,
    k: int,
    seed: int,
    mode: str,
    settings: tuple[str, ...],
    device: str,
    sync_batchnorm: bool,
    out_dir: Path,
    progress: bool,
) -> None:
    """Unlearn one forget request data-parallel across the processes torchrun started."""
    methods = [m.strip() for m in method_spec.split(",") if m.strip()]
    unknown = [m for m in methods if m not in list_methods()]
    if unknown or not methods:
        raise click.BadParameter(f"unknown method(s) {unknown}; known: {list_methods()}", param_hint="--methods")
    hyperparams = parse_settings(settings, methods)
    # A caller that set up the process group itself (a script calling main) keeps it afterwards.
    owned = dist.is_available() and not dist.is_initialized()
    parallel = distributed.init_from_env()
    try:
        where = _device(device)
        main_rank = distributed.is_main_process()
        model, data = load_model_and_data(dataset, model_source, progress=progress and main_rank)
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        backend = dist.get_backend() if parallel else None
        for method in methods:
            started = time.perf_counter()
            result = unlearn_request(
                model, data, method, k=k, seed=seed, mode=mode, hyperparams=hyperparams.get(method, {}),
                device=where, progress=progress and main_rank,
            )
            wall = time.perf_counter() - started
            if main_rank:
                _, keep = draw_request(data, k, seed, mode)  # type: ignore[arg-type]
                figures = evaluate(
                    result.model, {"retain": (data.x_train[keep], data.y_train[keep]), "test": (data.x_test, data.y_test)}
                )
                out_dir.mkdir(parents=True, exist_ok=True)
                save_state_dict(result.model, out_dir / f"{method}.safetensors", metadata={"method": method})
                record = {
                    **result.to_dict(), "world_size": distributed.world_size(), "backend": backend,
                    "wall_seconds": wall, "evaluation": figures,
                }
                write_json_atomic(out_dir / f"{method}.json", record)
                click.echo(
                    f"{method}: {result.steps} steps in {wall:.2f} s on {distributed.world_size()} process(es), "
                    f"{result.stop_reason}, acc/forget {result.metrics['acc/forget/after']:.1f}, "
                    f"acc/retain {figures['acc/retain']:.1f}, acc/test {figures['acc/test']:.1f}"
                )
    finally:
        if parallel and owned:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
