"""How fast is l2ul? One request timed four ways on the same machine, in one run.

For k training instances drawn with --seed (as the demo draws them) from the pretrained model of
--dataset (digits, mnist or cifar10), the script measures:

(a) ``unlearnkit.unlearn(model, request, method="l2ul", preset=--preset)``: wall time of the
    call, steps, whether it converged, Acc(D_f) and Acc(D_test) after;
(b) benchmarks/paper_loop.py: our plain reimplementation of the released code's loop structure
    (NOT the released code): per-copy targeted L2 PGD on batches of one, per-example MAS
    importance, the method's loss and a separate evaluation of the whole forget set after every
    step; every hyperparameter taken from (a)'s resolved ones, so the outcome is comparable, except
    that its attack takes every PGD step for every copy as the released attack does (the early
    exit of (a)'s default preset is one of unlearnkit's speed-ups; --reference-early-exit gives
    it to (b) too)
    (--paper-two-passes: forget and anchor batches in two forward passes, as the released code;
    with BatchNorm in training mode, the paper preset, that changes the outcome);
(c) retraining from scratch without the forget set with the model's own recipe
    (``unlearnkit.models.pretrained.load_retrained`` pointed at a fresh temporary cache, so it
    really trains); --retrain-epochs shortens a long recipe and the full training time is then
    extrapolated linearly in the number of epochs (the shortened model's accuracy is reported as
    it is);
(d) the attack's achieved throughput: the batched PGD of (a) (``targeted_pgd``, one round over
    all k * n_adv copies, forward + backward per step) in images per second, as a fraction of
    the model's plain training forward + backward (no optimiser step) on random inputs of the
    same batch shape.

It prints a table with the ratios (b)/(a) and (c)/(a) and the attack fraction, and writes JSON
with the configuration, seed, versions, device, thread settings and every timing. Timings are
taken with one intra-op thread (OMP_NUM_THREADS=1 and torch.set_num_threads(1) unless --threads
says otherwise). --profile also runs (a) under cProfile and reports where its time goes.

    OMP_NUM_THREADS=1 python benchmarks/speed.py --dataset digits -k 16 --seed 0 --preset default
    OMP_NUM_THREADS=1 python benchmarks/speed.py --dataset cifar10 --retrain-epochs 1 --preset paper
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; recorded in the JSON

import argparse  # noqa: E402
import ast  # noqa: E402
import copy  # noqa: E402
import cProfile  # noqa: E402
import dataclasses  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import unlearnkit as uk  # noqa: E402
from unlearnkit.components.attacks import targeted_pgd  # noqa: E402
from unlearnkit.components.batching import balanced_other_classes, random_other_classes  # noqa: E402
from unlearnkit.demo import draw_request  # noqa: E402
from unlearnkit.metrics.accuracy import accuracy  # noqa: E402
from unlearnkit.models import pretrained  # noqa: E402
from unlearnkit.report.table import format_table  # noqa: E402
from unlearnkit.request import ForgetRequest  # noqa: E402
from unlearnkit.utils.io import write_json_atomic  # noqa: E402
from unlearnkit.utils.memory_format import memory_format_name, preferred_memory_format  # noqa: E402
from unlearnkit.utils.versions import environment_versions  # noqa: E402

# paper_loop.py sits beside this file; make it importable however this file was loaded.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
from paper_loop import PaperLoopConfig, paper_unlearn  # noqa: E402

PAPER_LOOP_NOTE = (
    "(b) is our reimplementation of the released code's loop structure (benchmarks/paper_loop.py), "
    "not the released code"
)
#: Functions whose cumulative time the --profile breakdown reports, by (file suffix, name).
PROFILE_PHASES: dict[str, tuple[str, str]] = {
    "whole call (UnlearningMethod.unlearn)": ("methods/base.py", "unlearn"),
    "attack (calibrated_targeted_pgd)": ("components/attacks.py", "calibrated_targeted_pgd"),
    "anchors (_make_anchors: attack, shifted copies, teacher)": ("methods/l2ul.py", "_make_anchors"),
    "importance (mas_importance)": ("components/importance.py", "mas_importance"),
    "loop (optimise_until)": ("components/loop.py", "optimise_until"),
    "  steps (take_step)": ("components/loop.py", "take_step"),
    "    forward + losses (loss_fn)": ("methods/l2ul.py", "loss_fn"),
    "      penalty (importance_weighted_l2)": ("components/regularizers.py", "importance_weighted_l2"),
    "    backward": ("torch/_tensor.py", "backward"),
    "    optimizer.step": ("torch/optim/optimizer.py", "wrapper"),
    "  checks after each step (StopMonitor.check)": ("components/stopping.py", "check"),
    "make_pass (batching)": ("methods/l2ul.py", "make_pass"),
    "hashes of the model (state_dict_sha256)": ("utils/hashing.py", "state_dict_sha256"),
    "copy_model": ("utils/modules.py", "copy_model"),
}


def parse_hyperparams(items: Sequence[str]) -> dict[str, Any]:
    """``["n_adv=2", "lr=1e-3", "anchor_weight=None"]`` -> ``{"n_adv": 2, ...}`` (Python literals,
    else the string itself).

    Example:
        >>> parse_hyperparams(["n_adv=2", "optimizer=sgd", "anchor_weight=None"])
        {'n_adv': 2, 'optimizer': 'sgd', 'anchor_weight': None}
    """
    values: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ValueError(f"hyperparameters are NAME=VALUE, got {item!r}")
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            values[name] = text
    return values


def thread_settings() -> dict[str, Any]:
    """The threading the timings ran under, and how busy the machine was."""
    return {
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _test_accuracy(model: nn.Module, data: Any) -> float:
    return accuracy(model, data.x_test, data.y_test)


def _forget_accuracy(model: nn.Module, request: ForgetRequest) -> float:
    return accuracy(model, request.inputs, request.labels)


def _timed(call: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Runs ``call`` ``repeats`` times (at least once); the wall time of each run, by
    ``time.perf_counter`` around the call, and the last run's result."""
    walls, result = [], None
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        result = call()
        walls.append(time.perf_counter() - started)
    return walls, result


def run_unlearnkit(
    model: nn.Module,
    request: ForgetRequest,
    data: Any,
    *,
    preset: str,
    seed: int,
    hyperparams: dict[str, Any],
    repeats: int,
) -> dict[str, Any]:
    """(a): ``unlearnkit.unlearn(..., method="l2ul")`` timed ``repeats`` times (median reported).

    The wall time is taken around the whole call (``time.perf_counter``), which includes the
    model copy, the hashes and the per-instance outcomes; ``result.seconds`` is reported too.
    """
    walls, result = _timed(
        lambda: uk.unlearn(model, request, method="l2ul", seed=seed, progress=False, preset=preset, **hyperparams),
        repeats,
    )
    return {
        "seconds": statistics.median(walls),
        "seconds_all": walls,
        "result_seconds": result.seconds,
        "steps": result.steps,
        "passes": result.passes,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "acc_forget": _forget_accuracy(result.model, request),
        "acc_test": _test_accuracy(result.model, data),
        "hyperparams": result.hyperparams,
        "attack_seconds": result.details.get("attack/seconds"),
        "attack_success_rate": result.details.get("attack/success_rate"),
        "anchors": (result.details.get("anchors/adversarial") or 0) + (result.details.get("anchors/shifted") or 0),
    }


def run_paper_loop(
    model: nn.Module,
    request: ForgetRequest,
    data: Any,
    *,
    hyperparams: dict[str, Any],
    seed: int,
    num_classes: int,
    repeats: int,
    two_forward_passes: bool = False,
    early_exit: bool = False,
) -> dict[str, Any]:
    """(b): the plain reference loop with (a)'s resolved hyperparameters, timed ``repeats`` times
    (median reported), wall time by ``time.perf_counter`` around the call.

    ``early_exit=False`` (the default) keeps the released attack's structure: every copy takes
    every PGD step, whatever (a)'s ``pgd_stop_margin``; ``True`` gives (b) (a)'s early exit too.
    """
    config = PaperLoopConfig.from_hyperparams(
        hyperparams, input_range=request.input_range, two_forward_passes=two_forward_passes
    )
    if not early_exit:
        config = dataclasses.replace(config, pgd_stop_margin=None)
    walls, result = _timed(
        lambda: paper_unlearn(model, request.inputs, request.labels, config, num_classes=num_classes, seed=seed),
        repeats,
    )
    return {
        "seconds": statistics.median(walls),
        "seconds_all": walls,
        "steps": result.steps,
        "passes": result.passes,
        "converged": result.converged,
        "stop_reason": result.stop_reason,
        "acc_forget": _forget_accuracy(result.model, request),
        "acc_test": _test_accuracy(result.model, data),
        "phase_seconds": result.phase_seconds,
        "attack_success_rate": result.attack_success_rate,
        "anchors": result.anchors,
        "config": dataclasses.asdict(config),
    }


def run_retrain(dataset: str, ids: Sequence[int], epochs: int | None) -> dict[str, Any]:
    """(c): ``load_retrained`` into a fresh temporary cache (so it trains), optionally shortened.

    With ``epochs`` below the recipe's, the spec's recipe is replaced by the same recipe with
    fewer epochs for the duration of the call (its cosine schedule then spans the shorter run;
    the time per step is the same), and the full time is extrapolated as
    ``train_seconds * full_epochs / epochs``.
    """
    spec = pretrained.PRETRAINED[dataset]
    full_epochs = spec.recipe.epochs
    run_epochs = full_epochs if epochs is None or epochs >= full_epochs else epochs
    patched = dataclasses.replace(spec, recipe=dataclasses.replace(spec.recipe, epochs=run_epochs))
    with tempfile.TemporaryDirectory(prefix="unlearnkit-speed-retrain-") as directory:
        pretrained.PRETRAINED[dataset] = patched
        try:
            started = time.perf_counter()
            reference = pretrained.load_retrained(dataset, ids, directory=directory)
            wall = time.perf_counter() - started
        finally:
            pretrained.PRETRAINED[dataset] = spec
    if reference.from_cache:
        raise RuntimeError("the retrained model came from a cache: nothing was timed")
    scale = full_epochs / run_epochs
    return {
        "seconds": reference.train_seconds * scale,
        "train_seconds_measured": reference.train_seconds,
        "wall_seconds_measured": wall,
        "epochs_run": run_epochs,
        "epochs_full": full_epochs,
        "extrapolated": run_epochs != full_epochs,
        "steps": -(-(len(reference.data.y_train) - len(set(ids))) // spec.recipe.batch_size) * full_epochs,
        "acc_test": reference.test_accuracy,
        "acc_test_is_of_shortened_run": run_epochs != full_epochs,
        "recipe": spec.recipe.as_dict(),
    }


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def attack_throughput(
    model: nn.Module,
    request: ForgetRequest,
    hyperparams: dict[str, Any],
    *,
    seed: int,
    num_classes: int,
    repeats: int,
) -> dict[str, Any]:
    """(d): the batched attack's images/s over the plain training forward+backward's images/s.

    The attack batch is (a)'s first round: every forget instance repeated ``n_adv`` times, with
    the targets (a) draws for ``seed``; ``targeted_pgd`` runs ``pgd_steps`` steps at (a)'s radius
    and step (eval mode, input gradients only). Its throughput is ``N * pgd_steps / seconds``.
    The reference is a training step without the optimiser on random inputs of the same shape:
    ``CE(model(x), y).backward()`` in training mode, ``pgd_steps`` times, ``N * pgd_steps /
    seconds``. Each is warmed up, then timed ``repeats`` times; the fastest run counts. Both run
    in the memory layout (a) runs in (channels-last for convolutional models), and the attack
    takes every step (no early exit), so the two process the same number of images.
    """
    layout = preferred_memory_format(model)
    model = copy.deepcopy(model).to(memory_format=layout)
    n_adv, steps = int(hyperparams["n_adv"]), int(hyperparams["pgd_steps"])
    inputs = request.inputs.repeat_interleave(n_adv, dim=0)
    generator = torch.Generator().manual_seed(seed)
    if hyperparams["anchor_targets"] == "balanced":
        targets = balanced_other_classes(request.labels, n_adv, num_classes, generator)
    else:
        targets = random_other_classes(request.labels.repeat_interleave(n_adv), num_classes, generator)
    eps, step = float(hyperparams["pgd_eps"]), float(hyperparams["pgd_step_size"])

    def attack(n_steps: int) -> Tensor:
        return targeted_pgd(
            model, inputs, targets, eps=eps, steps=n_steps, step_size=step, norm="l2",
            input_range=request.input_range, generator=torch.Generator().manual_seed(seed),
        )

    attack(2)  # warm-up
    attack_seconds = _best_seconds(lambda: attack(steps), repeats)

    trainee = copy.deepcopy(model).train()
    x = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(seed + 1))
    y = torch.randint(0, num_classes, (inputs.shape[0],), generator=torch.Generator().manual_seed(seed + 2))

    def train_passes(n_steps: int) -> None:
        for _ in range(n_steps):
            trainee.zero_grad(set_to_none=True)
            F.cross_entropy(trainee(x), y).backward()

    train_passes(2)  # warm-up
    plain_seconds = _best_seconds(lambda: train_passes(steps), repeats)
    batch = int(inputs.shape[0])
    attack_rate = batch * steps / attack_seconds
    plain_rate = batch * steps / plain_seconds
    return {
        "batch": batch,
        "input_shape": list(inputs.shape[1:]),
        "pgd_steps": steps,
        "attack_seconds": attack_seconds,
        "attack_images_per_second": attack_rate,
        "train_fwd_bwd_seconds": plain_seconds,
        "train_fwd_bwd_images_per_second": plain_rate,
        "fraction": attack_rate / plain_rate,
        "repeats": repeats,
        "memory_format": memory_format_name(layout),
    }


def profile_unlearnkit(
    model: nn.Module, request: ForgetRequest, *, preset: str, seed: int, hyperparams: dict[str, Any], top: int = 25
) -> dict[str, Any]:
    """Runs (a) once under cProfile: cumulative seconds of its phases and the top functions.

    The profiler slows Python-heavy code more than tensor kernels, so the shares are indicative.
    """
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    uk.unlearn(model, request, method="l2ul", seed=seed, progress=False, preset=preset, **hyperparams)
    profiler.disable()
    total = time.perf_counter() - started
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    phases: dict[str, dict[str, float]] = {}
    for label, (suffix, name) in PROFILE_PHASES.items():
        cumulative = calls = 0.0
        for (filename, _, funcname), (_, ncalls, _, ct, _) in raw.items():
            if funcname == name and filename.replace("\\", "/").endswith(suffix):
                cumulative, calls = cumulative + ct, calls + ncalls
        phases[label] = {"seconds": cumulative, "calls": calls, "share": cumulative / total if total else 0.0}
    by_cumulative = sorted(raw.items(), key=lambda item: item[1][3], reverse=True)[:top]
    by_own = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]

    def row(item: tuple[tuple[str, int, str], tuple[Any, ...]]) -> dict[str, Any]:
        (filename, line, funcname), (_, ncalls, tottime, cumtime, _) = item
        short = "/".join(Path(filename).parts[-2:])
        return {"function": f"{short}:{line}({funcname})", "calls": ncalls, "own": tottime, "cumulative": cumtime}

    return {
        "total_seconds": total,
        "phases": phases,
        "top_cumulative": [row(i) for i in by_cumulative],
        "top_own": [row(i) for i in by_own],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def summary_table(report: dict[str, Any]) -> str:
    """The timings as text: one row per way of forgetting, then the attack's throughput."""
    a, b, c, d = report["a_unlearnkit"], report["b_paper_loop"], report["c_retrain"], report["d_attack"]
    headers = ["run", "seconds", "x (a)", "steps", "converged", "Acc(D_f)", "Acc(D_test)"]
    original = report["original"]
    rows = [
        ["original model", None, None, None, None, original["acc_forget"], original["acc_test"]],
        [
            "(a) unlearnkit l2ul", f"{a['seconds']:.2f}", "1.0", a["steps"], a["converged"], a["acc_forget"],
            a["acc_test"],
        ],
        [
            "(b) plain reference loop", f"{b['seconds']:.2f}", f"{b['seconds'] / a['seconds']:.1f}", b["steps"],
            b["converged"], b["acc_forget"], b["acc_test"],
        ],
    ]
    if c is not None:
        label = "(c) retrain"
        if c["extrapolated"]:
            label += f" (extrapolated from {c['epochs_run']}/{c['epochs_full']} epochs)"
        ratio = f"{c['seconds'] / a['seconds']:.1f}"
        rows.append([label, f"{c['seconds']:.2f}", ratio, c["steps"], None, None, c["acc_test"]])
    lines = [format_table(headers, rows)]
    lines.append(
        f"(d) attack: {d['attack_images_per_second']:.0f} images/s (batch {d['batch']}, "
        f"{d['pgd_steps']} PGD steps, forward+backward each) vs plain training forward+backward "
        f"{d['train_fwd_bwd_images_per_second']:.0f} images/s: fraction {d['fraction']:.2f}"
    )
    phases = b["phase_seconds"]
    lines.append(
        f"(a) attack {a['attack_seconds']:.2f} s of {a['seconds']:.2f} s; "
        f"(b) attack {phases['attack']:.2f} s, importance {phases['importance']:.2f} s, "
        f"loop {phases['loop']:.2f} s (of which checks {phases['checks']:.2f} s)"
    )
    return "\n".join(lines)


def profile_table(profile: dict[str, Any]) -> str:
    """The --profile phase breakdown as text."""
    rows = [
        [label, v["seconds"], f"{100 * v['share']:.0f} %", int(v["calls"])]
        for label, v in profile["phases"].items()
    ]
    own = [[r["function"], r["own"], r["cumulative"], r["calls"]] for r in profile["top_own"][:12]]
    return (
        f"profile of (a) under cProfile ({profile['total_seconds']:.2f} s with the profiler on; phases overlap)\n"
        + format_table(["phase", "seconds", "share", "calls"], rows)
        + "\n\ntop functions by own time\n"
        + format_table(["function", "own s", "cumulative s", "calls"], own)
    )


def warm_up(model: nn.Module, request: ForgetRequest, *, preset: str, seed: int, num_classes: int) -> float:
    """One tiny untimed run of (a) and (b) (one copy, one PGD step, one optimiser step), so that
    neither timing pays for first-call costs (lazy imports, allocator and kernel set-up)."""
    started = time.perf_counter()
    tiny = {"n_adv": 1, "pgd_steps": 1, "pgd_rounds": 1, "max_steps": 1}
    result = uk.unlearn(model, request, method="l2ul", seed=seed, progress=False, preset=preset, **tiny)
    config = PaperLoopConfig.from_hyperparams(result.hyperparams, input_range=request.input_range)
    paper_unlearn(model, request.inputs, request.labels, config, num_classes=num_classes, seed=seed)
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs (a)-(d) (and the profile when asked) and returns the JSON-ready report."""
    torch.set_num_threads(args.threads)
    hyperparams = parse_hyperparams(args.hp)
    started = time.perf_counter()
    threads_before = thread_settings()
    default = pretrained.load_pretrained(args.dataset)
    data, model = default.data, default.model.eval()
    request, _ = draw_request(data, args.k, args.seed, "misclassify")
    num_classes = int(data.num_classes)
    original = {"acc_forget": _forget_accuracy(model, request), "acc_test": default.test_accuracy}
    warm_up_seconds = warm_up(model, request, preset=args.preset, seed=args.seed, num_classes=num_classes)

    a = run_unlearnkit(
        model, request, data, preset=args.preset, seed=args.seed, hyperparams=hyperparams, repeats=args.repeats
    )
    b = run_paper_loop(
        model, request, data, hyperparams=a["hyperparams"], seed=args.seed, num_classes=num_classes,
        repeats=args.repeats, two_forward_passes=args.paper_two_passes,
        early_exit=args.reference_early_exit,
    )
    c = None if args.retrain_epochs == 0 else run_retrain(args.dataset, request.ids, args.retrain_epochs)
    d = attack_throughput(
        model, request, a["hyperparams"], seed=args.seed, num_classes=num_classes, repeats=args.throughput_repeats
    )
    profile = None
    if args.profile:
        profile = profile_unlearnkit(model, request, preset=args.preset, seed=args.seed, hyperparams=hyperparams)
    return {
        "benchmark": "speed",
        "note": PAPER_LOOP_NOTE,
        "config": {**vars(args), "hyperparams": hyperparams},
        "seed": args.seed,
        "dataset": {"name": args.dataset, "n_train": len(data.y_train), "n_test": len(data.y_test)},
        "model": {
            "name": type(model).__name__, "sha256": default.sha256, "recipe": default.recipe.as_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "request": {"k": args.k, "ids": list(request.ids), "labels": request.labels.tolist()},
        "device": "cpu",
        "threads": {"before": threads_before, "after": thread_settings()},
        "versions": environment_versions(),
        "original": original,
        "a_unlearnkit": a,
        "b_paper_loop": b,
        "c_retrain": c,
        "d_attack": d,
        "ratios": {
            "b_over_a": _ratio(b["seconds"], a["seconds"]),
            "c_over_a": None if c is None else _ratio(c["seconds"], a["seconds"]),
            "attack_fraction": d["fraction"],
        },
        "profile_a": profile,
        "warm_up_seconds": warm_up_seconds,
        "total_seconds": time.perf_counter() - started,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["digits", "mnist", "cifar10"], default="digits")
    parser.add_argument("-k", type=int, default=16, help="forget instances (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=["default", "paper"], default="default")
    parser.add_argument(
        "--hp", action="append", default=[], metavar="NAME=VALUE",
        help="an l2ul hyperparameter for (a), repeatable (b and d take (a)'s resolved values)",
    )
    parser.add_argument(
        "--retrain-epochs", type=int, default=None,
        help="retrain for this many epochs and extrapolate to the recipe's (default: all of them; 0: skip (c))",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of (a) and (b) each; the median is reported")
    parser.add_argument(
        "--throughput-repeats", type=int, default=3, help="timed runs of each side of (d); the fastest counts"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument(
        "--paper-two-passes", action="store_true",
        help="(b) runs the forget and anchor batches through the model separately, as the released code does",
    )
    parser.add_argument(
        "--reference-early-exit", action="store_true",
        help="(b)'s attack stops each copy at (a)'s pgd_stop_margin; by default it takes every step, as released",
    )
    parser.add_argument("--profile", action="store_true", help="also run (a) under cProfile and report its phases")
    parser.add_argument("-o", "--output", default=None, help="JSON file (default speed_<dataset>_<preset>.json)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark from the command line, prints the table and writes the JSON."""
    args = build_parser().parse_args(argv)
    if args.k < 1 or args.repeats < 1 or args.throughput_repeats < 1 or args.threads < 1:
        raise SystemExit("-k, --repeats, --throughput-repeats and --threads must be >= 1")
    if args.output is None:
        args.output = f"speed_{args.dataset}_{args.preset}.json"
    report = run(args)
    threads = report["threads"]["before"]
    print(
        f"{args.dataset}, k = {args.k}, seed {args.seed}, preset {args.preset}, model {report['model']['name']} "
        f"({report['model']['parameters']} parameters), device cpu"
    )
    print(
        f"threads: torch.set_num_threads({threads['torch_num_threads']}), "
        f"OMP_NUM_THREADS={threads['OMP_NUM_THREADS']}, {threads['cpu_count']} cores, "
        f"load average {threads['loadavg'][0]:.2f} at the start"
    )
    passes = "two forward passes, as released" if args.paper_two_passes else "one forward pass, as (a)"
    attack = "(a)'s early exit" if args.reference_early_exit else "every PGD step for every copy, as released"
    print(
        f"{PAPER_LOOP_NOTE}; it uses (a)'s resolved hyperparameters (forget + anchor batch: {passes}; "
        f"attack: {attack})."
    )
    print(summary_table(report))
    c = report["c_retrain"]
    if c is not None and c["extrapolated"]:
        print(
            f"(c) ran {c['epochs_run']} of {c['epochs_full']} epochs in {c['train_seconds_measured']:.2f} s; "
            "its time is extrapolated linearly to the full recipe, its Acc(D_test) is that of the shortened run."
        )
    if report["profile_a"] is not None:
        print()
        print(profile_table(report["profile_a"]))
    write_json_atomic(args.output, report)
    print(f"written to {args.output}")
    return report


if __name__ == "__main__":
    main()
