"""The repair scenario on digits: does unlearning corrupted training rows restore the model?

For each seed and corruption kind (random mislabelling of a share of the training rows; a
BadNets-style backdoor: a 2x2 bright square in the bottom-right corner stamped on n training
images of other classes, relabelled to the target class), this script trains M_clean on the clean
part D and M_corrupt on D + D_c (unlearnkit.scenarios.repair.run_repair), unlearns D_c from
M_corrupt with each method in misclassification mode and, where the method supports it, in
relabeling mode with the true labels, and prints per kind, method and mode the means over seeds of

- R: restoration on the affected set A = {M_clean right, M_corrupt wrong} (the test set for
  mislabelling, the triggered non-target test images for the backdoor), with the number of seeds
  where A was non-empty (R is undefined otherwise and left out of the mean);
- Acc(D_test) of the unlearned model, and Acc(D_c, true labels);
- for the backdoor, the attack success rate (ASR) of M_corrupt before and of the model after.

Methods with retain data (salun, retrain) get the clean part D; retrain is given the scenario's
training recipe, so it is M_clean up to initialisation. All reports are written as JSON.

    python benchmarks/repair_digits.py --seeds 0-2 -o repair_digits.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from unlearnkit.cli import parse_seeds
from unlearnkit.data import load_digits_split
from unlearnkit.report.table import format_table
from unlearnkit.scenarios.repair import REPAIR_DIGITS_RECIPE, REPAIR_SUMMARY_HEADERS, repair_summary, run_repair
from unlearnkit.utils.io import write_json_atomic
from unlearnkit.utils.versions import environment_versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--kinds", default="mislabel,backdoor")
    parser.add_argument("--methods", default="l2ul,neggrad,salun,retrain")
    parser.add_argument("--share", type=float, default=0.03, help="share of rows mislabelled (0.03: 43 rows)")
    parser.add_argument("--n-poison", type=int, default=40, help="poisoned training images")
    parser.add_argument("--target", type=int, default=0, help="the backdoor's target class")
    parser.add_argument("-o", "--output", default="repair_digits.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared machine

    data = load_digits_split()
    recipe = REPAIR_DIGITS_RECIPE
    # Retrain with the scenario's own recipe, not its 30-epoch default: then it sees exactly
    # M_clean's data and schedule, and differs from it only by initialisation.
    fields = ("epochs", "batch_size", "lr", "weight_decay")
    hyperparams = {"retrain": {name: getattr(recipe, name) for name in fields}}
    methods = tuple(args.methods.split(","))
    reports: list[dict[str, Any]] = []
    started = time.perf_counter()
    for kind in args.kinds.split(","):
        for seed in parse_seeds(args.seeds):
            report = run_repair(
                data, kind=kind, methods=methods, modes=("misclassify", "relabel"), seed=seed, recipe=recipe,
                share=args.share, n_poison=args.n_poison, target=args.target, hyperparams=hyperparams,
            )
            reports.append(report.to_dict())
            print(f"{kind} seed {seed}: done at {time.perf_counter() - started:.0f} s", flush=True)

    print(format_table(list(REPAIR_SUMMARY_HEADERS), repair_summary(reports, methods)))
    write_json_atomic(
        args.output,
        {"recipe": recipe.as_dict(), "args": vars(args), "versions": environment_versions(), "reports": reports,
         "seconds": time.perf_counter() - started},
    )
    print(f"wrote {args.output} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
