"""S3T on MNIST: the accuracy cost of sharded sliced training, and its deletion capacity.

The training set is split by a seeded permutation: ``--fixed`` of it (default 50 %) is
non-deletable (a SmallCNN backbone is trained on it with the default MNIST recipe, less
``--val`` rows held out as the validation split that picks S3T's checkpoints), the rest is
deletable and trains the S3T adapters. Compared on the test set:

- plain: the default MNIST SmallCNN (``load_pretrained("mnist")``: all 60k rows, the same
  2-epoch recipe as the backbone, whose budget is spent on twice the data);
- backbone only: the backbone's own CNN, trained on the non-deletable rows alone (what a model
  that never sees deletable data reaches);
- S3T for each ``--orders`` value: the served ensemble before any deletion, and after the
  deletions it absorbs.

Deletion capacity: single-row deletions in a seeded random order (over the deletable rows)
until some shard has no surviving prefix; the capacity is the number absorbed before that
deletion. Averaged over ``--seeds``.

    OMP_NUM_THREADS=1 python benchmarks/s3t_mnist.py --seeds 0-4 -o s3t_mnist.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from torch import Tensor, nn

from unlearnkit.cli import parse_seeds
from unlearnkit.errors import InvalidRequestError
from unlearnkit.models import SmallCNN, train_classifier
from unlearnkit.models.pretrained import MNIST_RECIPE, load_pretrained
from unlearnkit.report.table import format_table
from unlearnkit.s3t import S3TConfig, S3TModel, train_s3t
from unlearnkit.utils.io import write_json_atomic
from unlearnkit.utils.versions import environment_versions


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 2000) -> float:
    """Test accuracy in percent, eval mode, in batches."""
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return 100.0 * hits / len(x)


def deletion_generator(seed: int) -> torch.Generator:
    """The generator of deletion order ``seed``; offset so that it never replays the permutation
    that assigned the slices (seed 0 would otherwise delete slice after slice, in order)."""
    return torch.Generator().manual_seed(1_000_003 + seed)


def capacity_run(model: S3TModel, deletable: list[int], seed: int) -> tuple[int, float]:
    """Deletes random single rows (seeded order) from a copy until a shard has no surviving
    prefix; returns (deletions absorbed before that one, mean seconds per deletion)."""
    model = copy.deepcopy(model)
    order = torch.randperm(len(deletable), generator=deletion_generator(seed)).tolist()
    started = time.perf_counter()
    for count, position in enumerate(order):
        try:
            report = model.delete([deletable[position]])
        except InvalidRequestError:  # the last shard would die: also the end of the capacity
            return count, (time.perf_counter() - started) / (count + 1)
        if report.needs_retraining:
            return count, (time.perf_counter() - started) / (count + 1)
    return len(order), (time.perf_counter() - started) / len(order)


def main() -> None:
    """Trains the models, measures them, prints the table and writes the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0-4", help="seeds of the deletion orders")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--fixed", type=float, default=0.5, help="share of non-deletable training rows")
    parser.add_argument("--val", type=int, default=5000, help="validation rows taken from the non-deletable share")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--orders", default="1,4", help="comma-separated B values to compare")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per S3T stage")
    parser.add_argument("-o", "--output", default="s3t_mnist.json")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)

    plain = load_pretrained("mnist")
    data = plain.data
    n = data.x_train.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.split_seed)).tolist()
    n_fixed = int(round(args.fixed * n))
    backbone_rows, val_rows = sorted(perm[: n_fixed - args.val]), sorted(perm[n_fixed - args.val : n_fixed])
    deletable = sorted(perm[n_fixed:])

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MNIST_RECIPE.seed)
        cnn = SmallCNN(1, 10, image_size=28)
    train_classifier(cnn, data.x_train[backbone_rows], data.y_train[backbone_rows], MNIST_RECIPE)
    backbone_seconds = time.perf_counter() - started
    backbone_acc = accuracy(cnn, data.x_test, data.y_test)
    backbone = nn.Sequential(cnn.features, *list(cnn.head)[:-1]).requires_grad_(False).eval()

    rows: list[list[object]] = [
        ["plain SmallCNN (all 60k rows)", plain.test_accuracy, None, None, None],
        ["backbone only (non-deletable rows)", backbone_acc, None, None, round(backbone_seconds, 1)],
    ]
    results: dict[str, object] = {}
    validation = (data.x_train[val_rows], data.y_train[val_rows])
    for b in [int(v) for v in args.orders.split(",")]:
        config = S3TConfig(shards=args.shards, slices=args.slices, orders=b, epochs=args.epochs)
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            model = train_s3t(backbone, (data.x_train, data.y_train), deletable, config, args.split_seed, directory,
                              validation=validation, num_classes=10)
            train_seconds = time.perf_counter() - started
            acc = accuracy(model, data.x_test, data.y_test)
            runs = []
            for seed in seeds:
                absorbed, per_delete = capacity_run(model, deletable, seed)
                # Accuracy after the absorbed deletions: replay them on a fresh copy.
                replay = copy.deepcopy(model)
                order = torch.randperm(len(deletable), generator=deletion_generator(seed)).tolist()
                if absorbed:
                    replay.delete([deletable[p] for p in order[:absorbed]])
                runs.append({"seed": seed, "absorbed": absorbed, "seconds_per_deletion": per_delete,
                             "acc_after": accuracy(replay, data.x_test, data.y_test),
                             "served_after": [list(p) if p else None for p in replay.served_prefixes]})
        mean_cap = statistics.mean(r["absorbed"] for r in runs)
        mean_after = statistics.mean(r["acc_after"] for r in runs)
        label = f"S3T m={config.shards} L={config.slices} B={b}"
        rows.append([label, acc, mean_cap, mean_after, round(train_seconds, 1)])
        results[label] = {"config": config.to_dict(), "test_accuracy": acc, "train_seconds": train_seconds,
                          "checkpoints": len(model.manifest["checkpoints"]), "capacity_mean": mean_cap,
                          "capacity_min": min(r["absorbed"] for r in runs),
                          "capacity_max": max(r["absorbed"] for r in runs), "runs": runs}

    print(format_table(["model", "test acc %", "deletions absorbed (mean)", "acc % after them", "train s"], rows))
    write_json_atomic(args.output, {
        "split_seed": args.split_seed, "deletion_seeds": seeds, "fixed_share": args.fixed,
        "rows": {"backbone": len(backbone_rows), "validation": len(val_rows), "deletable": len(deletable)},
        "plain": {"test_accuracy": plain.test_accuracy, "recipe": plain.recipe.as_dict(), "sha256": plain.sha256},
        "backbone": {"test_accuracy": backbone_acc, "recipe": MNIST_RECIPE.as_dict(), "seconds": backbone_seconds},
        "s3t": results, "versions": environment_versions(), "threads": torch.get_num_threads(),
    })
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
