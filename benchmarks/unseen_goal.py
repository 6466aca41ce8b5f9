"""How close do the forgotten instances get to "never trained on"? misclassify vs unseen vs retrain.

On digits (k forget instances, several seeds) this script retrains the default CNN without the
forget set (same recipe and seed: the gold standard), unlearns the same set from the original with
`l2ul` under each goal, and compares the forget instances' losses:

- gap to retrained: mean over instances of |log loss_unlearned - log loss_retrained|;
- KS to held-out: Kolmogorov-Smirnov distance between the forget instances' losses and the
  losses of held-out test images under the same model (0: indistinguishable by loss).

The unseen goal is calibrated on the first half of the test set; KS uses the second half.

    python benchmarks/unseen_goal.py --seeds 0-4 -k 16 -o unseen_goal.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import unlearnkit as uk
from unlearnkit.cli import parse_seeds
from unlearnkit.components.unseen import per_example_loss
from unlearnkit.metrics.distribution import ks_distance, mean_log_ratio
from unlearnkit.demo import draw_request, heldout_half
from unlearnkit.models.pretrained import PRETRAINED, build_untrained, load_pretrained
from unlearnkit.models.training import train_classifier
from unlearnkit.report.table import format_table
from unlearnkit.utils.io import write_json_atomic
from unlearnkit.utils.modules import predict_logits
from unlearnkit.utils.versions import environment_versions


def losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy in eval mode."""
    return per_example_loss(predict_logits(model, x), y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("-k", type=int, default=16)
    parser.add_argument("--method", default="l2ul")
    parser.add_argument("-o", "--output", default="unseen_goal.json")
    args = parser.parse_args()

    default = load_pretrained("digits")
    data, original = default.data, default.model
    calib = heldout_half(data)
    half = len(data.y_test) // 2
    probe = (data.x_test[half:], data.y_test[half:])
    rows: dict[str, list[dict[str, float | None]]] = {}
    runs = []
    for seed in parse_seeds(args.seeds):
        request, keep = draw_request(data, args.k, seed, "misclassify")
        xf, yf = request.inputs, request.labels
        started = time.perf_counter()
        retrained = train_classifier(build_untrained(PRETRAINED["digits"]), data.x_train[keep], data.y_train[keep], PRETRAINED["digits"].recipe)
        retrain_seconds = time.perf_counter() - started
        reference = losses(retrained, xf, yf)
        models = {"original": (original, None), "retrained": (retrained, retrain_seconds)}
        for label, goal, heldout in (
            ("misclassify", "misclassify", None),
            ("unseen (held-out)", "unseen", calib),
            ("unseen (shifted copies)", "unseen", None),
        ):
            result = uk.unlearn(original, (xf, yf), args.method, seed=seed, goal=goal, heldout=heldout, progress=False)
            models[f"{args.method} {label}"] = (result.model, result.seconds)
        for name, (model, seconds) in models.items():
            lf = losses(model, xf, yf)
            row = {
                "gap to retrained": mean_log_ratio(lf, reference),
                "KS to held-out": ks_distance(lf, losses(model, *probe)),
                "median loss": float(lf.median()),
                "Acc(D_f)": uk.evaluate(model, {"f": (xf, yf)})["acc/f"],
                "Acc(D_test)": uk.evaluate(model, {"t": (data.x_test, data.y_test)})["acc/t"],
                "seconds": seconds,
            }
            rows.setdefault(name, []).append(row)
            runs.append({"seed": seed, "model": name, **row})
    keys = ["gap to retrained", "KS to held-out", "median loss", "Acc(D_f)", "Acc(D_test)", "seconds"]
    table = [
        [name] + [None if rs[0][k] is None else statistics.fmean(r[k] for r in rs) for k in keys]
        for name, rs in rows.items()
    ]
    print(f"digits, k = {args.k}, seeds {args.seeds}, means over seeds")
    print(format_table(["model"] + keys, [[r[0]] + ["-" if v is None else f"{v:.3g}" for v in r[1:]] for r in table]))
    write_json_atomic(args.output, {"config": vars(args), "runs": runs, "versions": environment_versions()})
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
