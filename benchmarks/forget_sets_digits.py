"""Random vs worst-case forget sets (Fan et al., "Challenging Forgets", ECCV 2024) on digits.

For each seed, this script draws a forget set of k training instances of the default digits CNN
in each kind (random, worst-case and optionally easiest / one-class, with
``unlearnkit.scenarios.forget_sets.draw_forget_set``), runs each method in misclassification mode
(retain data, the training set minus the forget set, goes to the methods that use it) and reports
Acc(D_f), Acc(D_r) and Acc(D_test) of the result, the mean over seeds per (kind, method), with the
original model as a baseline row. The worst-case search runs on the whole training set with the
paper's T = 10 rounds of K = 10 sign-SGD epochs (step 0.01) but a weight step of 1.0 (with the
paper's 0.01 the weights of this model move by ~1e-3 per round and the set stays random).

    python benchmarks/forget_sets_digits.py --seeds 0-2 -k 16 -o forget_sets_digits.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import unlearnkit as uk
from unlearnkit.cli import parse_seeds
from unlearnkit.methods.registry import method_class
from unlearnkit.models.pretrained import cache_dir, load_pretrained
from unlearnkit.report.table import format_table
from unlearnkit.scenarios.forget_sets import draw_forget_set
from unlearnkit.utils.hashing import state_dict_sha256
from unlearnkit.utils.io import write_json_atomic
from unlearnkit.utils.versions import environment_versions


def main() -> None:
    """Parses the arguments, runs the grid, prints the table and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("-k", type=int, default=16, help="forget-set size m")
    parser.add_argument("--methods", default="l2ul,neggrad,salun,retrain")
    parser.add_argument("--kinds", default="random,worst", help="any of random,worst,easiest,one-class")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lower-epochs", type=int, default=10)
    parser.add_argument("--weight-lr", type=float, default=1.0)
    parser.add_argument("-o", "--output", default="forget_sets_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine

    default = load_pretrained("digits")
    data, model = default.data, default.model
    methods, kinds, seeds = args.methods.split(","), args.kinds.split(","), parse_seeds(args.seeds)
    search = {"rounds": args.rounds, "lower_epochs": args.lower_epochs, "weight_lr": args.weight_lr}
    test = (data.x_test, data.y_test)
    runs: list[dict[str, Any]] = []
    sets: list[dict[str, Any]] = []
    for seed in seeds:
        for kind in kinds:
            started = time.perf_counter()
            chosen = draw_forget_set(
                kind, model, data.x_train, data.y_train, args.k, seed=seed,
                **({} if kind in ("random", "one-class") else {**search, "cache_dir": cache_dir() / "forget_sets"}),
            )
            sets.append({
                "seed": seed, "kind": kind, "indices": chosen.indices.tolist(), "recipe": chosen.recipe,
                "seconds": time.perf_counter() - started, "from_cache": chosen.from_cache,
            })
            keep = torch.ones(len(data.y_train), dtype=torch.bool)
            keep[chosen.indices] = False
            forget = (data.x_train[chosen.indices], data.y_train[chosen.indices])
            retain_split = (data.x_train[keep], data.y_train[keep])
            splits = {"f": forget, "r": retain_split, "t": test}
            runs.append({"seed": seed, "kind": kind, "method": "original", **uk.evaluate(model, splits)})
            for method in methods:
                retain = None if method_class(method).data_access == "forget" else retain_split
                result = uk.unlearn(model, forget, method, seed=seed, retain=retain, progress=False)
                runs.append({
                    "seed": seed, "kind": kind, "method": method, **uk.evaluate(result.model, splits),
                    "steps": result.steps, "seconds": result.seconds, "converged": result.converged,
                })
                print(f"seed {seed} {kind:>9} {method:>8}: Acc(D_f) {runs[-1]['acc/f']:.1f}", flush=True)

    rows = []
    summary = []
    for kind in kinds:
        for method in ["original", *methods]:
            cell = [r for r in runs if r["kind"] == kind and r["method"] == method]
            mean = {key: statistics.mean(r[key] for r in cell) for key in ("acc/f", "acc/r", "acc/t")}
            spread = statistics.pstdev(r["acc/f"] for r in cell)
            # The original model ran no method: it has no convergence to count.
            converged = None if method == "original" else sum(bool(r["converged"]) for r in cell)
            summary.append({"kind": kind, "method": method, **mean, "acc/f_std": spread, "converged": converged})
            rows.append([kind, method, f"{mean['acc/f']:.1f} ± {spread:.1f}", f"{mean['acc/r']:.2f}",
                         f"{mean['acc/t']:.2f}", "-" if converged is None else f"{converged}/{len(cell)}"])
    print(format_table(["forget set", "method", "Acc(D_f)", "Acc(D_r)", "Acc(D_test)", "converged"], rows))
    write_json_atomic(args.output, {
        "config": {**vars(args), "search": search, "model_sha256": state_dict_sha256(model)},
        "seeds": seeds, "versions": environment_versions(), "sets": sets, "runs": runs, "summary": summary,
    })
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
