"""The ``unlearnkit`` command line: a thin shell over the library."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from unlearnkit import __version__
from unlearnkit.bench import cell_key, grid, markdown_table, read_grid, run_grid, succeeded, summarise_grid
from unlearnkit.demo import DEFAULT_DEMO_METHODS, demo_tables, run_demo
from unlearnkit.data import load_digits_split
from unlearnkit.errors import UnlearnkitError
from unlearnkit.executors import make_executor
from unlearnkit.methods.registry import list_methods, method_class
from unlearnkit.report.bench_plots import grid_plots, markdown_figures, write_grid_plots
from unlearnkit.report.continual_html import write_continual_report
from unlearnkit.report.html import ResultsFormatError, load_results, write_report
from unlearnkit.models.pretrained import PRETRAINED, load_pretrained
from unlearnkit.report.table import format_table
from unlearnkit.scenarios.continual import draw_sequence, relapse_table, run_sequence
from unlearnkit.scenarios.forget_sets import FORGET_SET_KINDS
from unlearnkit.scenarios.repair import REPAIR_DIGITS_RECIPE, REPAIR_SUMMARY_HEADERS, repair_summary, run_repair
from unlearnkit.utils.io import write_atomic, write_json_atomic
from unlearnkit.utils.versions import environment_versions


def parse_seeds(spec: str) -> list[int]:
    """``"3"`` -> [3]; ``"0-4"`` -> [0..4]; ``"0,2,5"`` -> [0, 2, 5] (ranges and lists mix).

    Example:
        >>> parse_seeds("0-2,7")
        [0, 1, 2, 7]
    """
    seeds: list[int] = []
    try:
        for part in spec.split(","):
            if "-" in part.strip()[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else ("", "")
                if int(high) < int(low):
                    raise ValueError(part)
                seeds.extend(range(int(low), int(high) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise click.BadParameter(f"{spec!r} is not a seed list like 0, 0-4 or 0,2,5") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise click.BadParameter(f"{spec!r} must name distinct non-negative seeds")
    return seeds


#: Data sets the demo, continual and bench commands take (keys of the pretrained specs).
#: Every pretrained model by name: digits, mnist, cifar10 (narrow ResNet-18 for a CPU) and
#: cifar10-resnet18-full (the paper's ResNet-18, for a GPU).
DATASETS = list(PRETRAINED)


@contextlib.contextmanager
def cli_errors(output: Path, *, values: bool = False) -> Iterator[None]:
    """Turns the library's errors into one-line CLI errors (exit code 1): unlearnkit's own,
    a missing input file, ``ValueError`` when ``values`` (bad data met while running), and any
    other ``OSError`` as a failure to write ``output``."""
    caught: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError) if values else (FileNotFoundError,)
    try:
        yield
    except UnlearnkitError as err:
        raise click.ClickException(str(err)) from err
    except caught as err:
        raise click.ClickException(str(err)) from err
    except OSError as err:
        raise click.ClickException(f"cannot write {output}: {err}") from err


def parse_settings(settings: tuple[str, ...], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``("l2ul.lr=0.01", "n_adv=5")`` -> per-method hyperparameters.

    A setting without ``method.`` applies to every chosen method that has that hyperparameter.
    Values are read as JSON (numbers, ``null``, ``true``), else kept as strings.

    Example:
        >>> parse_settings(("l2ul.lr=0.01", "n_adv=5"), ["l2ul", "neggrad"])
        {'l2ul': {'lr': 0.01, 'n_adv': 5}}
    """
    result: dict[str, dict[str, Any]] = {}
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{setting!r} is not NAME=VALUE or METHOD.NAME=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        method, dot, name = key.rpartition(".")
        targets = [method] if dot else [m for m in methods if name in method_class(m).param_names()]
        if dot and method not in methods:
            raise click.BadParameter(f"{setting!r} names method {method!r}, which is not among {methods}")
        if not targets:
            raise click.BadParameter(f"no chosen method has a hyperparameter {name!r}")
        for target in targets:
            result.setdefault(target, {})[name] = value
    return result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="unlearnkit")
def main() -> None:
    """unlearnkit: forget training instances from trained PyTorch classifiers."""


@main.command()
def methods() -> None:
    """List the registered unlearning methods."""
    names = list_methods()
    width = max(len(n) for n in names)
    for name in names:
        cls = method_class(name)
        data = {"forget": "forget only", "forget+retain": "forget + retain"}.get(cls.data_access, "forget, retain optional")
        click.echo(f"{name.ljust(width)}  [{data}{', relabel' if cls.supports_relabel else ''}]  {cls.summary}")


@main.command()
@click.option(
    "--dataset", type=click.Choice(DATASETS), default="digits", show_default=True,
    help="digits is embedded; mnist and cifar10 read mnist.npz / cifar10-jpg.tar.gz from $UNLEARNKIT_DATA_DIR "
    "or ../shared/data (their models train once: about 70 s for MNIST, 15-20 min for the narrow CIFAR ResNet-18).",
)
@click.option("-k", "--k", "k", default=16, show_default=True, type=click.IntRange(min=1), help="Forget instances per request.")
@click.option("--seed", "--seeds", "seeds", default="0", show_default=True, help="Seed(s): 0, 0-4 or 0,2,5; one request per seed.")
@click.option(
    "--scenario", type=click.Choice(["single", "repair"]), default="single", show_default=True,
    help="single: forget k random instances; repair: unlearn corrupted training rows (digits).",
)
@click.option(
    "--corruptions", default="mislabel,backdoor", show_default=True,
    help="With --scenario repair: comma-separated mislabel (3 % of rows), backdoor (40 triggered images).",
)
@click.option(
    "--mode", type=click.Choice(["misclassify", "relabel", "unseen", "both", "all"]), default="misclassify",
    show_default=True,
    help="misclassify the forget instances; relabel them to random other classes; unseen: raise their "
    "loss to that of held-out data; both = misclassify + relabel; all = the three.",
)
@click.option(
    "--methods", "method_spec", default=",".join(DEFAULT_DEMO_METHODS), show_default=True,
    help="Comma-separated method names, or 'all'.",
)
@click.option("--set", "settings", multiple=True, metavar="[METHOD.]NAME=VALUE", help="Override a hyperparameter (repeatable).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("unlearnkit-demo.json"),
    show_default=True, help="Where to write the results JSON.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Model cache directory.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@click.option(
    "--evidence/--no-evidence", default=True, show_default=True,
    help="Gather the evidence of every run: membership attacks, gap to a model retrained without the "
    "forget set (trained once per request, cached), CKA, k-NN, collateral damage, relearn steps, verdict.",
)
@click.option(
    "--embedding", "projection", type=click.Choice(["pca", "umap"]), default="pca", show_default=True,
    help="Projection of the report's embedding maps of penultimate features; umap needs umap-learn.",
)
@click.option(
    "--report/--no-report", "html_report", default=True, show_default=True,
    help="Also write the HTML report next to the results JSON (same name, .html).",
)
def demo(
    dataset: str,
    k: int, seeds: str, mode: str, method_spec: str, settings: tuple[str, ...], output: Path,
    cache_dir: Path | None, progress: bool | None, evidence: bool, projection: str, html_report: bool, scenario: str,
    corruptions: str,
) -> None:
    """Unlearn k random training instances from a pretrained CNN with each method.

    Trains the default model on first use (about 5 s; cached afterwards), prints a table of
    Acc(D_f), Acc(D_r), Acc(D_test) before and after, steps, seconds and convergence, and writes
    every figure to the results JSON.

    With --scenario repair (digits): trains a clean model and one with corrupted training rows
    (--corruptions: mislabelled rows, a backdoor trigger), unlearns the corrupted rows from the
    latter (misclassify, and relabel to the true labels) and prints the restoration R of the
    affected test set and the backdoor's attack success rate before and after.
    """
    chosen = list_methods() if method_spec.strip() == "all" else [m.strip() for m in method_spec.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in list_methods()]
    if unknown or not chosen:
        raise click.BadParameter(f"unknown method(s) {unknown}; known: {list_methods()}", param_hint="--methods")
    goals = {"both": ["misclassify", "relabel"], "all": ["misclassify", "relabel", "unseen"]}.get(mode, [mode])
    show = sys.stderr.isatty() if progress is None else progress
    if scenario == "repair":
        _demo_repair(dataset, goals, chosen, parse_seeds(seeds), corruptions, parse_settings(settings, chosen), output, show)
        return
    with cli_errors(output):
        report = run_demo(
            dataset=dataset, k=k, seeds=parse_seeds(seeds), goals=goals, methods=chosen,  # type: ignore[arg-type]
            hyperparams=parse_settings(settings, chosen), cache_directory=cache_dir, progress=show,
            evidence=evidence, projection=projection,
        )
        click.echo(demo_tables(report))
        write_json_atomic(output, report)
        if html_report:
            write_report(report, output.with_suffix(".html"))
    click.echo(f"\nresults written to {output}" + (f", report to {output.with_suffix('.html')}" if html_report else ""))


def _demo_repair(
    dataset: str, goals: list[str], methods: list[str], seeds: list[int], corruptions: str,
    hyperparams: dict[str, dict[str, Any]], output: Path, progress: bool,
) -> None:
    """``demo --scenario repair``: the repair scenario per corruption kind and seed, its summary
    table, and every report in the results JSON."""
    if dataset != "digits":
        raise click.BadParameter("the repair scenario trains its models from scratch and runs on digits only", param_hint="--dataset")
    kinds = [c.strip() for c in corruptions.split(",") if c.strip()]
    bad = [c for c in kinds if c not in ("mislabel", "backdoor")]
    if bad or not kinds:
        raise click.BadParameter(f"unknown corruption(s) {bad}; known: mislabel, backdoor", param_hint="--corruptions")
    modes = [g for g in goals if g in ("misclassify", "relabel")]
    if not modes:
        raise click.BadParameter("the repair scenario runs misclassify and/or relabel", param_hint="--mode")
    recipe = REPAIR_DIGITS_RECIPE
    # retrain with the scenario's own recipe: it then sees M_clean's data and schedule exactly.
    retrain = {name: getattr(recipe, name) for name in ("epochs", "batch_size", "lr", "weight_decay")}
    settings = {**hyperparams, "retrain": {**retrain, **hyperparams.get("retrain", {})}}
    with cli_errors(output):
        data = load_digits_split()
        reports = [
            run_repair(
                data, kind=kind, methods=methods, modes=modes, seed=seed, recipe=recipe,  # type: ignore[arg-type]
                hyperparams=settings, progress=progress,
            ).to_dict()
            for kind in kinds
            for seed in seeds
        ]
        click.echo(format_table(list(REPAIR_SUMMARY_HEADERS), repair_summary(reports, methods)))
        write_json_atomic(
            output, {"scenario": "repair", "recipe": recipe.as_dict(), "seeds": seeds, "versions": environment_versions(),
                     "reports": reports},
        )
    click.echo(f"\nresults written to {output}")


@main.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True)
@click.option("-k", "--k", "k", default=16, show_default=True, type=click.IntRange(min=1), help="Forget instances.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the request, sampler and runs.")
@click.option("--mode", type=click.Choice(["misclassify", "relabel", "unseen"]), default="misclassify", show_default=True)
@click.option("--method", default="l2ul", show_default=True, help="Method to tune.")
@click.option("--trials", default=20, show_default=True, type=click.IntRange(min=1), help="Trial budget.")
@click.option("--timeout", default=None, type=click.FloatRange(min=0, min_open=True), help="Wall-time budget in seconds.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE", help="Hold a hyperparameter fixed (repeatable).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("unlearnkit-tune.json"),
    show_default=True, help="Where to write the trials JSON.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Model cache directory.")
def tune(
    dataset: str, k: int, seed: int, mode: str, method: str, trials: int, timeout: float | None,
    settings: tuple[str, ...], output: Path, cache_dir: Path | None,
) -> None:
    """Search a method's hyperparameters for one request of the demo (needs unlearnkit[tune]).

    Each trial unlearns the request from a copy of the model; converged trials are scored by
    accuracy on held-out data (the first half of the test set), the others below every converged
    one. Prints the trials and the best configuration and writes them as JSON.
    """
    from unlearnkit.demo import draw_request, heldout_half
    from unlearnkit.models.pretrained import load_pretrained
    from unlearnkit.tuning import tune as run_tune

    if method not in list_methods():
        raise click.BadParameter(f"unknown method {method!r}; known: {list_methods()}", param_hint="--method")
    fixed = parse_settings(settings, [method]).get(method, {})
    try:
        default = load_pretrained(dataset, directory=cache_dir)
        request, _ = draw_request(default.data, k, seed, mode)  # type: ignore[arg-type]
        validation = heldout_half(default.data)
        result = run_tune(
            default.model, request, method, validation=validation, n_trials=trials, timeout=timeout, seed=seed,
            heldout=validation if mode == "unseen" else None, **fixed,
        )
    except ImportError as err:
        raise click.ClickException(str(err)) from err
    except (UnlearnkitError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from err
    rows = [
        [t["number"], t["state"], t.get("converged"), t.get("validation_accuracy"), t["score"], t.get("steps"),
         t.get("seconds"), " ".join(f"{n}={v:.3g}" if isinstance(v, float) else f"{n}={v}" for n, v in t["params"].items())]
        for t in result.trials
    ]
    click.echo(format_table(["trial", "state", "converged", "val acc", "score", "steps", "seconds", "params"], rows))
    click.echo(f"\nbest ({method}, score {result.best_score:.2f}): {result.best_params}")
    try:
        write_json_atomic(output, {
            "dataset": dataset, "k": k, "seed": seed, "mode": mode, "method": method,
            "best_params": result.best_params, "best_score": result.best_score, "trials": result.trials,
        })
    except OSError as err:
        raise click.ClickException(f"cannot write {output}: {err}") from err
    click.echo(f"trials written to {output}")


@main.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True)
@click.option("--requests", "n_requests", default=8, show_default=True, type=click.IntRange(min=1), help="Requests in the sequence.")
@click.option("-k", "--k", "k", default=16, show_default=True, type=click.IntRange(min=1), help="Instances per request.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the draw (request j runs with seed + j).")
@click.option("--mode", type=click.Choice(["misclassify", "relabel"]), default="misclassify", show_default=True)
@click.option("--method", default="l2ul", show_default=True, help="Method applied to every request.")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE", help="Override a hyperparameter (repeatable).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("unlearnkit-continual.json"),
    show_default=True, help="Where to write the results JSON.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Model cache directory.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
def continual(
    dataset: str, n_requests: int, k: int, seed: int, mode: str, method: str, settings: tuple[str, ...],
    output: Path, cache_dir: Path | None, progress: bool | None,
) -> None:
    """Apply a sequence of deletion requests one after another to the pretrained model.

    Prints the relapse table (every earlier request's Acc(D_f) after each later one, and which
    earlier requests relapsed), the drift of retain and test accuracy and the cost per request,
    and writes every figure to the results JSON.
    """
    if method not in list_methods():
        raise click.BadParameter(f"unknown method {method!r}; known: {list_methods()}", param_hint="--method")
    show = sys.stderr.isatty() if progress is None else progress
    with cli_errors(output, values=True):
        hyperparams = parse_settings(settings, [method]).get(method, {})
        default = load_pretrained(dataset, directory=cache_dir, progress=show)
        if n_requests * k > len(default.data.y_train):
            raise click.BadParameter(
                f"{n_requests} requests of {k} need {n_requests * k} distinct training rows; the data set has "
                f"{len(default.data.y_train)}", param_hint="--requests/-k",
            )
        sequence = draw_sequence(default.data, n_requests, k, seed, relabel=mode == "relabel")
        report = run_sequence(default.model, sequence, method, data=default.data, hyperparams=hyperparams, seed=seed, progress=show)
        report.update({
            "dataset": default.data.name, "model_sha256": default.sha256, "mode": mode, "k": k,
            "versions": environment_versions(),
        })
        headers, rows = relapse_table(report)
        original = report["original"]
        click.echo(
            f"{method} on {dataset}, {n_requests} requests of {k} ({mode}); original Acc(D_train) "
            f"{original['retain_accuracy']:.1f} %, Acc(D_test) {original['test_accuracy']:.1f} %\n"
            "Acc(D_f) of every request so far after each request (percent); relapsed = earlier requests "
            "whose goal held once and no longer does\n"
        )
        click.echo(format_table(headers, rows))
        write_json_atomic(output, report)
        write_continual_report(report, output.with_suffix(".html"))
    click.echo(f"\nresults written to {output}, report to {output.with_suffix('.html')}")


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint=what) from None
    if not values or any(v < 1 for v in values):
        raise click.BadParameter(f"{text!r}: give one or more integers >= 1", param_hint=what)
    return values


@main.command()
@click.option("--datasets", default="digits", show_default=True, help=f"Comma-separated: {', '.join(DATASETS)} (the last for a GPU).")
@click.option("--methods", "method_spec", default=",".join(DEFAULT_DEMO_METHODS), show_default=True, help="Comma-separated method names, or 'all'.")
@click.option("-k", "--k", "ks", default="16", show_default=True, help="Comma-separated forget-set sizes, e.g. 1,16,64,128.")
@click.option("--modes", default="misclassify", show_default=True, help="Comma-separated: misclassify, relabel, unseen.")
@click.option("--seeds", default="0", show_default=True, help="Seeds: 0, 0-2 or 0,2,5.")
@click.option(
    "--forget-sets", default="random", show_default=True,
    help="Comma-separated: random, worst (hardest to erase, searched per model and seed, cached), easiest, one-class.",
)
@click.option("--set", "settings", multiple=True, metavar="[METHOD.]NAME=VALUE", help="Override a hyperparameter (repeatable).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("unlearnkit-bench.jsonl"), show_default=True, help="The JSONL file; a rerun skips the cells already in it.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the summary tables as Markdown.")
@click.option("--evidence/--no-evidence", default=True, show_default=True, help="Gather MIA, gap to retrain and the rest per run.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Model cache directory.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@click.option(
    "--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help='Where the cells run: one after another in this process, or as parallel Ray tasks '
    '(needs pip install "unlearnkit[ray]"). Either way this process alone writes the output.',
)
@click.option(
    "--address", default=None,
    help="Ray: the cluster to connect to (ray.init(address=...)), e.g. auto or ray://HOST:10001; "
    "the model cache directory must then be one every node reads. Default: start a local Ray "
    "instance for this run and stop it at the end.",
)
@click.option(
    "--ray-num-cpus", type=click.IntRange(min=1), default=None,
    help="Ray: CPUs of the local instance (default: all of this machine's); not with --address.",
)
@click.option(
    "--ray-cpus-per-cell", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
    help="Ray: CPUs each cell reserves; also its torch threads (at least 1).",
)
@click.option("--ray-gpus-per-cell", type=click.FloatRange(min=0), default=0.0, show_default=True, help="Ray: GPUs each cell reserves.")
@click.option(
    "--plots", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Also write SVG plots of the summary here (Acc(D_test) against time and against the gap to "
    "retraining); with --markdown, the tables link them.",
)
def bench(
    datasets: str, method_spec: str, ks: str, modes: str, seeds: str, forget_sets: str, settings: tuple[str, ...],
    output: Path,
    markdown: Path | None, evidence: bool, cache_dir: Path | None, progress: bool | None, executor: str,
    address: str | None, ray_num_cpus: int | None, ray_cpus_per_cell: float, ray_gpus_per_cell: float,
    plots: Path | None,
) -> None:
    """Run a benchmark grid (data set x method x k x mode x seed), one JSONL line per run.

    Resumable: a rerun with the same output skips every cell already run. A cell that raises is
    written as a failed line and the grid goes on; a rerun retries the failed cells, and the
    command exits with status 1 while some remain. Prints means and standard deviations over
    seeds and, with --markdown, writes them as Markdown tables.

    With --executor ray each cell is a Ray task reserving --ray-cpus-per-cell CPUs and
    --ray-gpus-per-cell GPUs; lines are appended as tasks finish, so their order differs from
    a local run, not their content (timings aside).
    """
    chosen = list_methods() if method_spec.strip() == "all" else [m.strip() for m in method_spec.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in list_methods()]
    if unknown or not chosen:
        raise click.BadParameter(f"unknown method(s) {unknown}; known: {list_methods()}", param_hint="--methods")
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    bad = [d for d in names if d not in DATASETS]
    if bad or not names:
        raise click.BadParameter(f"unknown data set(s) {bad}; known: {', '.join(DATASETS)}", param_hint="--datasets")
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in mode_list if m not in ("misclassify", "relabel", "unseen")]
    if bad or not mode_list:
        raise click.BadParameter(f"unknown mode(s) {bad}; known: misclassify, relabel, unseen", param_hint="--modes")
    set_list = [f.strip() for f in forget_sets.split(",") if f.strip()]
    bad = [f for f in set_list if f not in FORGET_SET_KINDS]
    if bad or not set_list:
        raise click.BadParameter(
            f"unknown forget set(s) {bad}; known: {', '.join(FORGET_SET_KINDS)}", param_hint="--forget-sets"
        )
    cells = grid(names, chosen, _int_list(ks, "-k"), mode_list, parse_seeds(seeds), set_list)
    show = sys.stderr.isatty() if progress is None else progress
    ray_options = {"--address": address, "--ray-num-cpus": ray_num_cpus}
    context = click.get_current_context()
    for name in ("ray_cpus_per_cell", "ray_gpus_per_cell"):
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            ray_options["--" + name.replace("_", "-")] = True
    if executor == "local":
        given = [option for option, value in ray_options.items() if value is not None]
        if given:
            raise click.BadParameter(f"{', '.join(given)} only apply with --executor ray", param_hint="--executor")
        runner = make_executor("local")
    else:
        if address is not None and ray_num_cpus is not None:
            raise click.BadParameter(
                "sizes a local Ray instance; a cluster at --address has its own", param_hint="--ray-num-cpus"
            )
        try:
            runner = make_executor(
                "ray", address=address, num_cpus=ray_num_cpus, cpus_per_cell=ray_cpus_per_cell,
                gpus_per_cell=ray_gpus_per_cell,
            )
        except ImportError as err:
            raise click.ClickException(str(err)) from err
    with cli_errors(output, values=True):
        counts = run_grid(
            cells, output, hyperparams=parse_settings(settings, chosen), evidence=evidence,
            cache_directory=cache_dir, progress=show, executor=runner,
        )
        keys = {c.key for c in cells}
        records = [r for r in read_grid(output) if cell_key(r["cell"]) in keys]
        rows = summarise_grid(records)
        table = markdown_table(rows)
        click.echo(table)
        if plots is not None:
            written = write_grid_plots(rows, plots)
            click.echo(f"{len(written)} plot(s) written to {plots}")
            if markdown is not None:
                folder = Path(os.path.relpath(plots.resolve(), markdown.resolve().parent)).as_posix()
                table += "\n" + markdown_figures(grid_plots(rows), relative_to=f"{folder}/")
        if markdown is not None:
            write_atomic(markdown, lambda tmp: Path(tmp).write_text(table, encoding="utf-8"))
    done = {cell_key(r["cell"]) for r in records if succeeded(r)}
    failures = {cell_key(r["cell"]): r for r in records if not succeeded(r)}  # the last per cell
    failing = [r for key, r in failures.items() if key not in done]
    click.echo(f"{counts['run']} run(s), {counts['skipped']} already in {output}")
    if failing:
        for record in failing[:10]:
            cell, error = record["cell"], record["error"]
            click.echo(
                f"failed: {cell['dataset']} {cell['method']} k={cell['k']} {cell['mode']} seed {cell['seed']}: "
                f"{error['type']}: {error['message']}",
                err=True,
            )
        more = f" ({len(failing) - 10} more in {output})" if len(failing) > 10 else ""
        raise click.ClickException(f"{len(failing)} cell(s) failed{more}; rerun the same command to retry them")


@main.command()
@click.argument("results", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Where to write the HTML report  [default: RESULTS with the suffix .html]",
)
@click.option("--title", default=None, help="Title of the page (default: names the data set and model).")
def report(results: Path, output: Path | None, title: str | None) -> None:
    """Write a self-contained HTML report comparing the methods of a demo results JSON.

    The page opens offline (no external resource): a sortable table of every method with the
    original and retrained models, a forgetting-versus-utility plot, per-class accuracy change,
    per-instance cards and layer-wise weight change and CKA, per request and over seeds.
    """

    output = output if output is not None else results.with_suffix(".html")
    # Checked here rather than by click.Path(exists=True) so that every problem with the input
    # reads the same way: "Error: <what is wrong with which file>".
    if not results.exists():
        raise click.ClickException(f"results file {results} does not exist")
    if output.resolve() == results.resolve():
        raise click.ClickException(f"the output {output} would overwrite the results file")
    try:
        data = load_results(results)
        if "runs" not in data:  # load_results passed it: a continual run (`unlearnkit continual`)
            write_continual_report(data, output, title=title)
        else:
            write_report(data, output, title=title)
    except ResultsFormatError as err:
        raise click.ClickException(str(err)) from err
    except OSError as err:
        raise click.ClickException(f"cannot read {results} or write {output}: {err}") from err
    click.echo(f"report written to {output}")


# init, request, apply, status, verify, export: a user's own model in a workspace (cli_workspace.py).
from unlearnkit.cli_workspace import register_workspace_commands  # noqa: E402  (last: it imports from here)

register_workspace_commands(main)


if __name__ == "__main__":
    main()
