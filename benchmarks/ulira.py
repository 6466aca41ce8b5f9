"""U-LiRA on digits: can a per-example likelihood-ratio attack tell unlearned from retrained models?

Hayes et al., "Inexact Unlearning Needs More Careful Evaluations to Avoid a False Sense of
Privacy" (SaTML 2025, arXiv 2403.01218). For k forget instances drawn with --seed (as the demo
draws them), --shadows shadow triples are made, each from its own seeds:

- original: a SmallCNN trained on the whole digits training split with the pretrained digits
  recipe (Adam, cosine, batch 64, lr 2e-3; --epochs passes, 30 in the recipe);
- unlearned: that model after the method unlearns the k instances (methods that use retain
  data get every other training row);
- retrained: a SmallCNN trained without the k instances, same recipe.

Original and retrained shadows depend only on their seeds, so they are trained once and shared
by every method; only the unlearning step differs. Per forget instance, U-LiRA fits a Gaussian
to its logit-scaled confidence under the unlearned and under the retrained shadows and judges
held-out shadow pairs by the sign of the log likelihood ratio (unlearnkit.metrics.ulira). 50 %:
indistinguishable from retraining; 100 %: always told apart. "+- se" is a rough standard error
with the held-out model as the sampling unit (a model that sits high moves every example's
call), "pooled-std" the same attack with one variance per group shared by all examples (LiRA's
remedy for few shadows). The NeurIPS 2023 challenge's forgetting score F is computed from the
same shadows (delta 1e-5; with S shadows per side the largest finite epsilon is about log S, so
F is coarse for small S). "retrain" as a method is the sanity check: its attack accuracy must
sit near 50 %. "original (no unlearning)" attacks the trained models themselves: how much the
forget instances' membership shows at all before any unlearning.

    OMP_NUM_THREADS=1 python benchmarks/ulira.py --shadows 8 -k 16 --seed 0 -o ulira.json
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import unlearnkit as uk
from unlearnkit.data import load_digits_split
from unlearnkit.demo import draw_request
from unlearnkit.methods.registry import create_method, method_class
from unlearnkit.metrics.gap import forgetting_score, per_example_epsilons
from unlearnkit.metrics.ulira import ShadowConfidences, shadow_confidences, ulira_attack
from unlearnkit.models import SmallCNN, TrainRecipe, train_classifier
from unlearnkit.models.pretrained import DIGITS_RECIPE
from unlearnkit.report.table import format_table
from unlearnkit.utils.io import write_json_atomic
from unlearnkit.utils.versions import environment_versions

DEFAULT_METHODS = "l2ul,neggrad_plus,finetune,retrain"


def cached_trainer(recipe: TrainRecipe) -> Callable[[Tensor, Tensor, int], nn.Module]:
    """``(x, y, seed) -> SmallCNN`` trained with ``recipe`` under ``seed``, memoised.

    The memo is keyed by the seed and the identity of the data (the whole training split or the
    retain rows), so the shadows every method shares are trained once; each call returns a
    fresh copy, so an in-place unlearning method cannot spoil the cache.
    """
    memo: dict[tuple[int, int, int], dict[str, Tensor]] = {}

    def train(x: Tensor, y: Tensor, seed: int) -> nn.Module:
        key = (seed, x.shape[0], hash(x.numpy().tobytes()))
        if key not in memo:
            torch.manual_seed(seed)  # the initialisation; train_classifier seeds the shuffling
            fresh = train_classifier(SmallCNN(1, 10, image_size=8), x, y, dataclasses.replace(recipe, seed=seed))
            memo[key] = {k: v.clone() for k, v in fresh.state_dict().items()}
        model = SmallCNN(1, 10, image_size=8)
        model.load_state_dict(memo[key])
        return model.eval()

    return train


def finite_or_none(values: np.ndarray) -> list[float | None]:
    """JSON cannot hold infinity: an infinite epsilon is written as null."""
    return [float(v) if math.isfinite(v) else None for v in values]


def summarise(name: str, unlearned: np.ndarray, retrained: np.ndarray, accuracy: dict[str, np.ndarray],
              extra: dict[str, Any]) -> dict[str, Any]:
    """One method's figures from its shadows' confidences and accuracies."""
    attack = ulira_attack(unlearned, retrained)
    pooled = ulira_attack(unlearned, retrained, global_std=True)
    eps = per_example_epsilons(unlearned, retrained)
    return {
        "method": name,
        "status": "ok",
        "ulira_accuracy": attack.accuracy,
        "ulira_standard_error": attack.standard_error,
        "ulira_accuracy_pooled_std": pooled.accuracy,
        "ulira_per_example": attack.per_example_accuracy.tolist(),
        "forgetting_score": forgetting_score(eps),
        "epsilons (null = inf)": finite_or_none(eps),
        "accuracy_mean": {split: float(v.mean()) for split, v in accuracy.items()},
        "accuracy_per_shadow": {split: v.tolist() for split, v in accuracy.items()},
        "unlearned_conf": unlearned.tolist(),
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    parser.add_argument("--shadows", type=int, default=8, help="shadow triples (default 8)")
    parser.add_argument("-k", type=int, default=16, help="forget instances (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="forget set and shadow seeds (default 0)")
    parser.add_argument("--epochs", type=int, default=DIGITS_RECIPE.epochs,
                        help=f"training epochs of every shadow (default {DIGITS_RECIPE.epochs}, the recipe's)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("-o", "--output", default="ulira.json")
    args = parser.parse_args()
    if args.shadows < 2:
        parser.error("--shadows must be at least 2 (the attack holds one pair out)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    recipe = dataclasses.replace(DIGITS_RECIPE, epochs=args.epochs)
    # "retrain" as a method must use the shadows' recipe, or it is not the same distribution.
    hyperparams = {"retrain": {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
                               "weight_decay": recipe.weight_decay}}
    for method in methods:  # refuse bad names before any training
        create_method(method, **hyperparams.get(method, {}))

    data = load_digits_split()
    request, keep = draw_request(data, args.k, args.seed, "misclassify")
    forget_index = list(request.ids)
    x, y = data.x_train, data.y_train
    retain = (x[keep], y[keep])
    train = cached_trainer(recipe)
    results: list[dict[str, Any]] = []
    shared: ShadowConfidences | None = None
    started_all = time.perf_counter()
    for method in methods:
        uses_retain = method_class(method).data_access != "forget"
        runs: list[dict[str, Any]] = []

        def unlearn(model: nn.Module, index: Tensor, seed: int, method: str = method,
                    uses_retain: bool = uses_retain, runs: list[dict[str, Any]] = runs) -> nn.Module:
            result = uk.unlearn(model, (x[index], y[index]), method, seed=seed,
                                retain=retain if uses_retain else None, progress=False,
                                **hyperparams.get(method, {}))
            runs.append({"converged": result.converged, "steps": result.steps, "seconds": result.seconds})
            return result.model

        started = time.perf_counter()
        try:
            shadows = shadow_confidences(
                train, unlearn, train, x, y, forget_index, args.shadows, args.seed,
                eval_sets={"test": (data.x_test, data.y_test)}, progress=args.progress,
            )
        except Exception as err:  # a diverged method is a result, not a crash of the benchmark
            results.append({"method": method, "status": "failed", "error": f"{type(err).__name__}: {err}"})
            print(f"{method}: failed ({type(err).__name__}: {err})")
            continue
        shared = shared or shadows
        results.append(summarise(method, shadows.unlearned, shadows.retrained, shadows.accuracy["unlearned"], {
            "converged": sum(r["converged"] for r in runs),
            "mean_steps": statistics.fmean(r["steps"] for r in runs),
            "mean_unlearn_seconds": float(shadows.unlearn_seconds.mean()),
            "challenge_score": shadows.challenge_score(),
            "wall_seconds": time.perf_counter() - started,
        }))
        print(f"{method}: U-LiRA {results[-1]['ulira_accuracy']:.1f} %, "
              f"F {results[-1]['forgetting_score']:.3g} ({time.perf_counter() - started:.0f} s)", flush=True)
    if shared is None:
        raise SystemExit("every method failed")

    # The two ends of the scale, from the shared shadows: no unlearning at all, and retraining.
    reference = [summarise("original (no unlearning)", shared.original, shared.retrained,
                           shared.accuracy["original"], {})]
    retrained_acc = {split: float(v.mean()) for split, v in shared.accuracy["retrained"].items()}

    headers = ["method", "U-LiRA acc %", "+- se", "pooled-std acc %", "ex. >= 90 %", "F", "Acc(D_f)", "Acc(D_test)",
               "converged", "unlearn s"]
    rows: list[list[object]] = []
    for r in results + reference:
        if r["status"] != "ok":
            rows.append([r["method"], "failed"] + [None] * (len(headers) - 2))
            continue
        acc = r["accuracy_mean"]
        rows.append([
            r["method"], f"{r['ulira_accuracy']:.1f}", f"{r['ulira_standard_error']:.1f}",
            f"{r['ulira_accuracy_pooled_std']:.1f}",
            f"{sum(a >= 90 for a in r['ulira_per_example'])}/{len(r['ulira_per_example'])}",
            f"{r['forgetting_score']:.3g}", f"{acc['forget']:.1f}", f"{acc['test']:.2f}",
            f"{r['converged']}/{args.shadows}" if "converged" in r else "-",
            f"{r['mean_unlearn_seconds']:.2f}" if "mean_unlearn_seconds" in r else "-",
        ])
    rows.append(["retrained shadows", "-", "-", "-", "-", "-", f"{retrained_acc['forget']:.1f}",
                 f"{retrained_acc['test']:.2f}", "-", "-"])
    print(f"\ndigits, k = {args.k}, seed {args.seed}, {args.shadows} shadows per side, {args.epochs} "
          f"training epochs; accuracies in %, means over shadows")
    print(format_table(headers, rows))
    report = {
        "seed": args.seed,
        "config": {**vars(args), "methods": methods, "recipe": dataclasses.asdict(recipe),
                   "hyperparams": hyperparams, "delta": 1e-5},
        "forget": {"ids": forget_index, "labels": request.labels.tolist()},
        "shadow_seeds": shared.seeds.tolist(),
        "retrained": {"accuracy_mean": retrained_acc, "conf": shared.retrained.tolist()},
        "results": results,
        "reference": reference,
        "total_seconds": time.perf_counter() - started_all,
        "versions": environment_versions(),
    }
    write_json_atomic(args.output, report)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
