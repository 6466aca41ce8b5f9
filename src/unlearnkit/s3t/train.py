"""Training an S3T model: slices, orders, stage-by-stage training, checkpoints and manifest."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from unlearnkit.errors import InvalidRequestError
from unlearnkit.request import instance_sha256
from unlearnkit.models import SmallCNN, TrainRecipe, train_classifier
from unlearnkit.s3t.config import S3TConfig
from unlearnkit.s3t.model import MANIFEST, S3TModel, prefix_key
from unlearnkit.s3t.shard import ShardNet, extract_features, prefix_seed, train_stage
from unlearnkit.utils.checkpoint import save_state_dict
from unlearnkit.utils.io import write_json_atomic
from unlearnkit.utils.versions import environment_versions

#: Version tag of the manifest layout.
FORMAT = "unlearnkit-s3t/1"


def train_backbone(
    inputs: Tensor, labels: Tensor, *, num_classes: int, image_size: int, recipe: TrainRecipe | None = None
) -> nn.Module:
    """Trains a SmallCNN on the non-deletable split and returns its frozen feature extractor.

    The extractor is the CNN without its last layer (conv blocks, hidden layer and ReLU), in
    eval mode with ``requires_grad=False``: S3T never changes it, so it must only ever see data
    that is never deleted.

    Args:
        inputs: Non-deletable training inputs ``(N, C, H, W)``.
        labels: Their labels.
        num_classes: Output classes.
        image_size: Input height and width.
        recipe: Training recipe (default: 10 epochs of Adam, seed 0); its seed also seeds the
            initialisation.
    """
    recipe = recipe or TrainRecipe(epochs=10, seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)  # a seeded initialisation, without touching the caller's RNG
        model = SmallCNN(in_channels=inputs.shape[1], num_classes=num_classes, image_size=image_size)
    train_classifier(model, inputs, labels, recipe)
    extractor = nn.Sequential(model.features, *list(model.head)[:-1])
    extractor.requires_grad_(False)
    return extractor.eval()


def assign_slices(deletable_ids: Sequence[int], shards: int, slices: int, seed: int) -> list[list[list[int]]]:
    """Splits the deletable ids into ``shards x slices`` near-equal slices by a seeded permutation.

    Args:
        deletable_ids: The ids to split.
        shards: Number of shards.
        slices: Slices per shard.
        seed: Seed of the permutation.

    Returns:
        ``layout[shard][slice]`` = sorted ids of that slice.

    Example:
        >>> layout = assign_slices(list(range(12)), 2, 3, seed=0)
        >>> sorted(i for shard in layout for piece in shard for i in piece) == list(range(12))
        True
    """
    ids = list(deletable_ids)
    perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks = [sorted(ids[p] for p in part.tolist()) for part in torch.tensor(perm).tensor_split(shards * slices)]
    return [chunks[k * slices : (k + 1) * slices] for k in range(shards)]


def draw_orders(slices: int, orders: int, seed: int, shard: int) -> list[tuple[int, ...]]:
    """``orders`` distinct slice orders of one shard: the identity first, then seeded random
    permutations, preferring new first slices (a shard dies only when the first slice of every
    order is deleted, so distinct first slices raise its deletion capacity).

    Args:
        slices: Slices per shard.
        orders: Number of orders (at most ``slices!``).
        seed: The run's seed.
        shard: The shard (each shard draws its own orders).

    Example:
        >>> draw_orders(3, 3, seed=0, shard=0)[0]
        (0, 1, 2)
        >>> len({o[0] for o in draw_orders(3, 3, seed=0, shard=0)})
        3
    """
    generator = torch.Generator().manual_seed(prefix_seed(seed, shard, [-1]))
    chosen: list[tuple[int, ...]] = [tuple(range(slices))]
    total = math.factorial(slices)
    while len(chosen) < orders:
        candidate = tuple(torch.randperm(slices, generator=generator).tolist())
        fresh_first = candidate[0] not in {o[0] for o in chosen}
        if candidate in chosen or (not fresh_first and len(chosen) < slices):
            continue  # terminates: at most L! permutations, and L fresh first slices exist
        chosen.append(candidate)
    assert len(chosen) <= total
    return chosen


def _check_ids(deletable_ids: Sequence[int], num_rows: int, config: S3TConfig) -> list[int]:
    ids = [int(i) for i in deletable_ids]
    if any(isinstance(i, bool) for i in deletable_ids):
        raise InvalidRequestError("deletable ids must be row indices (ints), not bools")
    if len(set(ids)) != len(ids):
        raise InvalidRequestError("deletable ids contain duplicates")
    bad = [i for i in ids if not 0 <= i < num_rows]
    if bad:
        raise InvalidRequestError(f"deletable ids out of range 0..{num_rows - 1}: {bad[:10]}")
    if len(ids) < config.shards * config.slices:
        raise InvalidRequestError(
            f"{len(ids)} deletable ids cannot fill {config.shards} shards x {config.slices} slices"
        )
    return ids


def train_prefix(
    backbone: nn.Module,
    slice_data: Mapping[int, tuple[Tensor, Tensor]],
    prefix: Sequence[int],
    *,
    shard: int,
    num_classes: int,
    config: S3TConfig,
    seed: int,
    validation: tuple[Tensor, Tensor] | None = None,
) -> ShardNet:
    """Trains one shard's prefix from scratch, stage by stage, from its slices' data alone.

    This is the retraining an exact deletion must equal: given only the data of the prefix's
    slices (rows in the manifest's order), it reproduces the stored checkpoint bit for bit.

    Args:
        backbone: The frozen backbone.
        slice_data: Slice index -> (inputs, labels) of that slice, for every slice in ``prefix``.
        prefix: Slice indices in training order.
        shard: The shard (enters the stage seeds).
        num_classes: Output classes.
        config: The S3T configuration.
        seed: The run's seed.
        validation: Validation inputs and labels (the ones used at training).

    Returns:
        The prefix's network, in eval mode.
    """
    val = None if validation is None else (extract_features(backbone, validation[0]), validation[1])
    features = {s: extract_features(backbone, slice_data[s][0]) for s in prefix}
    net: ShardNet | None = None
    for i in range(1, len(prefix) + 1):
        part = prefix[:i]
        x = torch.cat([features[s] for s in part])
        y = torch.cat([slice_data[s][1] for s in part])
        net, _ = train_stage(
            net, x, y, num_classes=num_classes, config=config, seed=prefix_seed(seed, shard, part), validation=val
        )
    assert net is not None, "prefix must hold at least one slice"
    return net


def train_s3t(
    backbone: nn.Module,
    data: tuple[Tensor, Tensor],
    deletable_ids: Sequence[int],
    config: S3TConfig,
    seed: int,
    directory: str | Path,
    *,
    validation: tuple[Tensor, Tensor] | None = None,
    num_classes: int | None = None,
) -> S3TModel:
    """Trains an S3T model and writes its checkpoints and manifest to ``directory``.

    The backbone is frozen (trained by the caller on rows that are never deleted, e.g. with
    :func:`train_backbone`). The deletable rows are split into ``config.shards x
    config.slices`` slices by a seeded permutation; per shard, ``config.orders`` slice orders
    are drawn and every distinct prefix of every order is trained (stage by stage, see
    :func:`~unlearnkit.s3t.shard.train_stage`) and saved as safetensors. Equal prefixes of two
    orders are trained once (their seeds are equal by construction).

    Args:
        backbone: Feature extractor mapping inputs to ``(N, d)``; frozen here.
        data: All training inputs and labels; ids are row indices into them.
        deletable_ids: Rows that may later be deleted; the others are never used here.
        config: Layout and training settings.
        seed: Seed of the slice assignment, the orders and every stage.
        directory: Where checkpoints and ``s3t_manifest.json`` are written.
        validation: Inputs and labels of a validation split (never deletable, never the test
            set), used to pick each stage's epoch and to break ties between orders.
        num_classes: Output classes (default: ``max(label) + 1``).

    Returns:
        The model, serving every shard's full first order.

    Raises:
        InvalidRequestError: On duplicate, out-of-range or too few deletable ids.
    """
    inputs, labels = data
    if inputs.shape[0] != labels.shape[0]:
        raise InvalidRequestError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels")
    ids = _check_ids(deletable_ids, inputs.shape[0], config)
    classes = int(labels.max()) + 1 if num_classes is None else num_classes
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone.requires_grad_(False)
    backbone.eval()
    layout = assign_slices(ids, config.shards, config.slices, seed)
    orders = [draw_orders(config.slices, config.orders, seed, k) for k in range(config.shards)]
    val = None if validation is None else (extract_features(backbone, validation[0]), validation[1])
    checkpoints: dict[str, dict[str, object]] = {}
    feature_dim = 0
    for k in range(config.shards):
        # The same per-slice feature call as train_prefix: identical batches give identical bits.
        feats = {s: extract_features(backbone, inputs[rows]) for s, rows in enumerate(layout[k])}
        ys = {s: labels[rows] for s, rows in enumerate(layout[k])}
        feature_dim = next(iter(feats.values())).shape[1]
        trained: dict[tuple[int, ...], ShardNet] = {}
        for order in orders[k]:
            for i in range(1, config.slices + 1):
                part = tuple(order[:i])
                if part in trained:
                    continue
                x = torch.cat([feats[s] for s in part])
                y = torch.cat([ys[s] for s in part])
                parent = trained.get(part[:-1])
                net, acc = train_stage(
                    parent, x, y, num_classes=classes, config=config, seed=prefix_seed(seed, k, part), validation=val
                )
                trained[part] = net
                key = prefix_key(k, part)
                file = f"shard{k}/prefix-{'-'.join(map(str, part))}.safetensors"
                (directory / f"shard{k}").mkdir(exist_ok=True)
                sha = save_state_dict(net, directory / file)
                checkpoints[key] = {"file": file, "sha256": sha, "val_acc": acc, "rows": int(x.shape[0])}
    backbone_sha = save_state_dict(backbone, directory / "backbone.safetensors")
    manifest = {
        "format": FORMAT,
        "config": config.to_dict(),
        "seed": int(seed),
        "num_rows": int(inputs.shape[0]),
        "num_classes": classes,
        "feature_dim": int(feature_dim),
        "slices": layout,
        # Content hashes of the deletable rows: a deletion by id can then check that the caller's
        # rows are the ones trained on (ids alone could silently name other rows).
        "row_sha256": {str(i): instance_sha256(inputs[i], int(labels[i])) for i in ids},
        "orders": [[list(o) for o in shard_orders] for shard_orders in orders],
        "checkpoints": checkpoints,
        "backbone": {"file": "backbone.safetensors", "sha256": backbone_sha},
        "validation_rows": None if validation is None else int(validation[0].shape[0]),
        "versions": environment_versions(),
    }
    write_json_atomic(directory / MANIFEST, manifest)
    return S3TModel(backbone, manifest, directory)
