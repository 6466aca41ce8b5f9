"""The served S3T model: shard ensembles over surviving prefixes, and exact deletion."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from unlearnkit.errors import CheckpointError, DeletionCapacityError, InvalidModelError, InvalidRequestError
from unlearnkit.request import instance_sha256
from unlearnkit.s3t.config import S3TConfig
from unlearnkit.s3t.shard import ShardNet
from unlearnkit.utils.checkpoint import load_state_dict
from unlearnkit.utils.hashing import file_sha256

#: Name of the manifest file in an S3T directory.
MANIFEST = "s3t_manifest.json"

Prefix = tuple[int, ...]


def prefix_key(shard: int, prefix: Sequence[int]) -> str:
    """Manifest key of a shard's prefix checkpoint, e.g. ``"1/2-0"``.

    Example:
        >>> prefix_key(1, (2, 0))
        '1/2-0'
    """
    return f"{shard}/{'-'.join(str(int(s)) for s in prefix)}"


def _parse_key(key: str) -> tuple[int, Prefix]:
    """Inverse of :func:`prefix_key`."""
    shard, prefix = key.split("/")
    return int(shard), tuple(int(s) for s in prefix.split("-"))


class _DeadShard(nn.Module):
    """Stands in for a shard with no surviving prefix: holds no weights, serves nothing."""

    def forward(self, features: Tensor) -> Tensor:
        """Never called: dead shards are skipped when serving."""
        raise InvalidModelError("this shard has no surviving prefix and must be retrained")


@dataclass(frozen=True)
class DeletionReport:
    """What one deletion did.

    Attributes:
        ids: The deleted ids.
        slices: ``(shard, slice)`` pairs deleted by this request (new ones only).
        dropped_prefixes: ``(shard, prefix)`` checkpoints that became unusable now.
        served_before: Per shard, the prefix served before (``None``: dead shard).
        served_after: Per shard, the prefix served after.
        needs_retraining: Shards with no surviving prefix: they must be retrained from their
            surviving slices (until then the model averages the other shards).
        remaining_capacity: Slice deletions the model surely absorbs before some shard dies
            (the worst case over which slices are hit); 0 when a shard is dead.
        exact: Always ``True``: every served weight was trained without the deleted slices.
        optimizer_steps: Always 0: a deletion only switches checkpoints.
    """

    ids: tuple[int, ...]
    slices: tuple[tuple[int, int], ...]
    dropped_prefixes: tuple[tuple[int, Prefix], ...]
    served_before: tuple[Prefix | None, ...]
    served_after: tuple[Prefix | None, ...]
    needs_retraining: tuple[int, ...]
    remaining_capacity: int
    exact: bool = True
    optimizer_steps: int = 0
    switched: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (prefixes as lists)."""

        def listed(prefix: Prefix | None) -> list[int] | None:
            return None if prefix is None else list(prefix)

        return {
            "ids": list(self.ids),
            "slices": [list(s) for s in self.slices],
            "dropped_prefixes": [[k, list(p)] for k, p in self.dropped_prefixes],
            "served_before": [listed(p) for p in self.served_before],
            "served_after": [listed(p) for p in self.served_after],
            "switched": list(self.switched),
            "needs_retraining": list(self.needs_retraining),
            "remaining_capacity": self.remaining_capacity,
            "exact": self.exact,
            "optimizer_steps": self.optimizer_steps,
        }


class S3TModel(nn.Module):
    """An S3T classifier: a frozen backbone and one network per shard, logits averaged.

    Each shard serves the longest prefix, over its slice orders, that holds no deleted slice
    (ties: the better validation accuracy recorded at training, then the earlier order).
    :meth:`delete` marks the slices of the given ids as deleted and switches each affected
    shard to its best surviving checkpoint, read from ``directory`` and checked against its
    sha256; no optimiser runs. Build one with :func:`~unlearnkit.s3t.train.train_s3t` or
    :func:`load_s3t`.

    The state dict holds the served weights and three buffers, ``deleted`` (shards x slices,
    bool), ``deleted_rows`` (one bool per training row) and ``served`` (per shard: order index
    and prefix length, ``-1, 0`` when dead), so its hash changes with every deletion.

    Args:
        backbone: The frozen feature extractor the model was trained with.
        manifest: The training manifest (``s3t_manifest.json``).
        directory: The directory holding the checkpoints.
    """

    def __init__(self, backbone: nn.Module, manifest: dict[str, Any], directory: str | Path) -> None:
        super().__init__()
        backbone.requires_grad_(False)
        self.backbone = backbone.eval()
        self.manifest = manifest
        self.directory = Path(directory)
        self.config = S3TConfig(**manifest["config"])
        self._slice_of: dict[int, tuple[int, int]] = {
            int(i): (k, s) for k, shard in enumerate(manifest["slices"]) for s, rows in enumerate(shard) for i in rows
        }
        # Which training rows were deleted, in the state dict so that a restored state (a
        # ledger's model version) still refuses deleting them again.
        self.register_buffer("deleted_rows", torch.zeros(int(manifest["num_rows"]), dtype=torch.bool))
        self._rows_by_hash: dict[str, list[int]] | None = None  # built on first lookup by content
        m, length = self.config.shards, self.config.slices
        self.register_buffer("deleted", torch.zeros(m, length, dtype=torch.bool))
        self.register_buffer("served", torch.tensor([[-1, 0]] * m, dtype=torch.long))
        choices = [self._best(k, self.deleted) for k in range(m)]
        self.shards = nn.ModuleList(self._load(k, choice) for k, choice in enumerate(choices))
        for k, choice in enumerate(choices):
            self._mark_served(k, choice)

    @property
    def deleted_ids(self) -> set[int]:
        """The training rows deleted so far."""
        return {int(i) for i in torch.nonzero(self.deleted_rows).flatten().tolist()}

    # -- serving ---------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> S3TModel:
        """Sets the mode; the backbone stays in eval mode (its BatchNorm statistics must never
        absorb deletable data)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, C)``: the mean of the living shards' logits on the backbone's features.

        Raises:
            InvalidModelError: If no shard has a surviving prefix.
        """
        alive = [k for k in range(self.config.shards) if int(self.served[k, 1]) > 0]
        if not alive:
            raise InvalidModelError("every S3T shard has lost all its prefixes: the model must be retrained")
        features = self.backbone(x)
        return torch.stack([self.shards[k](features) for k in alive]).mean(dim=0)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Loads a state saved from this model, before or after any deletions.

        A deletion changes what each shard serves, and with it the shape of the state dict (a
        shorter prefix has fewer adapters). The state's ``served`` buffer says which prefix
        each shard served: those networks are first read from their checkpoints (checked
        against their sha256), then the state is loaded into them as usual. This is how a
        ledger restores a model version after S3T deletions.

        Args:
            state_dict: A state dict of this S3T model (same manifest).
            strict: As :meth:`torch.nn.Module.load_state_dict`.
            assign: As :meth:`torch.nn.Module.load_state_dict`.

        Raises:
            CheckpointError: If the state names a prefix the manifest has no checkpoint for.
        """
        served = state_dict.get("served")
        if isinstance(served, Tensor) and served.shape == self.served.shape:
            orders = self.manifest["orders"]
            for k in range(self.config.shards):
                order, depth = (int(v) for v in served[k])
                if (order, depth) == tuple(int(v) for v in self.served[k]):
                    continue
                if depth > 0 and not (0 <= order < len(orders[k]) and depth <= len(orders[k][order])):
                    raise CheckpointError(f"the state serves order {order} depth {depth} of shard {k}, unknown to the manifest")
                choice = None if depth == 0 else (order, tuple(orders[k][order][:depth]))
                self.shards[k] = self._load(k, choice)
                self._mark_served(k, choice)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def served_prefixes(self) -> tuple[Prefix | None, ...]:
        """Per shard, the served prefix (slice indices in order), ``None`` for a dead shard."""
        result: list[Prefix | None] = []
        for k in range(self.config.shards):
            order, depth = (int(v) for v in self.served[k])
            result.append(None if depth == 0 else tuple(self.manifest["orders"][k][order][:depth]))
        return tuple(result)

    def capacity(self, deleted: Tensor | None = None) -> list[int]:
        """Per shard, how many further slice deletions it surely absorbs: the number of distinct
        first slices of its orders that are not deleted (a shard dies when all are hit).

        Args:
            deleted: A deletion mask (shards x slices) to evaluate; default the model's own.
        """
        deleted = self.deleted if deleted is None else deleted
        return [
            len({o[0] for o in self.manifest["orders"][k] if not bool(deleted[k, o[0]])})
            for k in range(self.config.shards)
        ]

    def _best(self, shard: int, deleted: Tensor) -> tuple[int, Prefix] | None:
        """The shard's best surviving (order index, prefix), or ``None`` if none survives."""
        best: tuple[int, float, int] | None = None
        choice: tuple[int, Prefix] | None = None
        for b, order in enumerate(self.manifest["orders"][shard]):
            depth = next((i for i, s in enumerate(order) if bool(deleted[shard, s])), len(order))
            if depth == 0:
                continue
            acc = self.manifest["checkpoints"][prefix_key(shard, order[:depth])]["val_acc"]
            rank = (depth, -1.0 if acc is None else float(acc), -b)
            if best is None or rank > best:
                best, choice = rank, (b, tuple(order[:depth]))
        return choice

    def _load(self, shard: int, choice: tuple[int, Prefix] | None) -> nn.Module:
        """The network of ``choice``, read from its checkpoint and checked against its sha256."""
        if choice is None:
            return _DeadShard()
        _, prefix = choice
        key = prefix_key(shard, prefix)
        entry = self.manifest["checkpoints"].get(key)
        if entry is None:
            raise CheckpointError(f"the S3T manifest has no checkpoint for shard {shard} prefix {list(prefix)}")
        net = ShardNet(int(self.manifest["feature_dim"]), self.config.adapter_dim, int(self.manifest["num_classes"]), len(prefix))
        load_state_dict(net, self.directory / entry["file"], expected_sha256=entry["sha256"])
        return net.train(self.training)

    def _mark_served(self, shard: int, choice: tuple[int, Prefix] | None) -> None:
        values = [-1, 0] if choice is None else [choice[0], len(choice[1])]
        self.served[shard] = torch.tensor(values, dtype=torch.long, device=self.served.device)

    # -- deletion --------------------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        if isinstance(ids, (Tensor, np.ndarray)):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
            raise InvalidRequestError(f"ids must be a sequence of ints, got {type(ids).__name__}")
        bad_type = [i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
        if bad_type:
            raise InvalidRequestError(f"S3T ids are training row indices (ints), got {bad_type[:5]}")
        values = [int(i) for i in ids]
        if not values:
            raise InvalidRequestError("no ids to delete")
        dupes = sorted(i for i, count in Counter(values).items() if count > 1)
        if dupes:
            raise InvalidRequestError(f"duplicate ids in the deletion: {dupes[:10]}")
        rows = int(self.manifest["num_rows"])
        unknown = [i for i in values if not 0 <= i < rows]
        if unknown:
            raise InvalidRequestError(f"unknown ids (training rows are 0..{rows - 1}): {unknown[:10]}")
        fixed = [i for i in values if i not in self._slice_of]
        if fixed:
            raise InvalidRequestError(
                f"ids {fixed[:10]} are not deletable: they are outside every slice (the frozen "
                "backbone may have been trained on them); deleting them needs a new backbone"
            )
        again = [i for i in values if bool(self.deleted_rows[i])]
        if again:
            raise InvalidRequestError(f"ids already deleted: {again[:10]}")
        return values

    def check_rows(self, ids: Sequence[int], inputs: Tensor, labels: Tensor) -> None:
        """Checks that ``inputs`` and ``labels`` are the training rows ``ids`` name.

        Raises:
            InvalidRequestError: If the ids are not deletable rows, or a row's content differs
                from the one trained on (compared by :func:`~unlearnkit.request.instance_sha256`).
        """
        values = self._check_ids(ids)
        if len(values) != inputs.shape[0] or len(values) != labels.shape[0]:
            raise InvalidRequestError(f"{len(values)} ids but {inputs.shape[0]} inputs and {labels.shape[0]} labels")
        hashes = self.manifest["row_sha256"]
        wrong = [i for n, i in enumerate(values) if hashes[str(i)] != instance_sha256(inputs[n], int(labels[n]))]
        if wrong:
            raise InvalidRequestError(
                f"ids {wrong[:10]} name training rows whose input or label differ from the given ones: "
                "pass the training row indices the S3T model was trained with as ids"
            )

    def rows_with_content(self, inputs: Tensor, labels: Tensor) -> list[list[int]]:
        """Per given instance, the deletable training rows holding exactly that input and label.

        Requests name instances by the caller's ids, which need not be the row indices the model
        was trained with; the content hash recorded at training
        (:func:`~unlearnkit.request.instance_sha256`) finds the rows. An instance present
        several times in the training data names every copy, so that deleting it deletes them
        all. Rows deleted before are left out.

        Args:
            inputs: Instances ``(N, ...)``.
            labels: Their labels ``(N,)``.

        Returns:
            ``N`` lists of row indices (each possibly empty).

        Example:
            >>> import tempfile, torch
            >>> from unlearnkit.s3t import S3TConfig, train_s3t
            >>> x, y = torch.rand(20, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 2
            >>> with tempfile.TemporaryDirectory() as tmp:
            ...     model = train_s3t(torch.nn.Flatten(), (x, y), range(20), S3TConfig(shards=1, slices=2, orders=1, epochs=1), 0, tmp)
            ...     model.rows_with_content(x[[3, 7]], y[[3, 7]])
            [[3], [7]]
        """
        if self._rows_by_hash is None:
            table: dict[str, list[int]] = {}
            for row, digest in self.manifest["row_sha256"].items():
                table.setdefault(digest, []).append(int(row))
            self._rows_by_hash = {digest: sorted(rows) for digest, rows in table.items()}
        if inputs.shape[0] != labels.shape[0]:
            raise InvalidRequestError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels")
        found = []
        for n in range(inputs.shape[0]):
            rows = self._rows_by_hash.get(instance_sha256(inputs[n], int(labels[n])), [])
            found.append([r for r in rows if not bool(self.deleted_rows[r])])
        return found

    def delete(self, ids: Sequence[int], *, allow_dead_shards: bool = True) -> DeletionReport:
        """Deletes training rows exactly: every prefix holding one of their slices is dropped.

        No optimiser step is taken: each affected shard switches to its longest surviving
        prefix, whose weights were trained without the deleted slices. Nothing changes if an
        error is raised (checkpoints are read before anything is committed).

        Args:
            ids: Training row indices, each in a slice (deletable) and not deleted before.
            allow_dead_shards: If ``False``, a deletion that leaves a shard with no surviving
                prefix is refused (``InvalidRequestError``) instead of reported.

        Returns:
            The :class:`DeletionReport`.

        Raises:
            InvalidRequestError: On unknown, duplicate, non-deletable or already deleted ids.
            DeletionCapacityError: When every shard would die, or when a shard would die and
                ``allow_dead_shards`` is ``False``.
            CheckpointError: If a checkpoint to switch to is missing or corrupt.
        """
        values = self._check_ids(ids)
        before = self.served_prefixes
        deleted = self.deleted.clone()
        hit = sorted({self._slice_of[i] for i in values})
        new = [(k, s) for k, s in hit if not bool(deleted[k, s])]
        for k, s in new:
            deleted[k, s] = True
        affected = sorted({k for k, _ in new})
        choices = {k: self._best(k, deleted) for k in affected}
        dead = sorted(k for k in range(self.config.shards) if (choices[k] if k in choices else before[k]) is None)
        if len(dead) == self.config.shards:
            raise DeletionCapacityError(
                "this deletion leaves no shard with a surviving prefix: retrain the S3T model without these ids"
            )
        newly_dead = [k for k in dead if before[k] is not None]
        if newly_dead and not allow_dead_shards:
            raise DeletionCapacityError(
                f"this deletion leaves shard(s) {newly_dead} with no surviving prefix (they would need retraining)"
            )
        switched = [k for k in affected if (None if choices[k] is None else choices[k][1]) != before[k]]
        loaded = {k: self._load(k, choices[k]) for k in switched}  # may raise: nothing committed yet
        dropped = sorted(
            (k, prefix)
            for k, prefix in (_parse_key(key) for key in self.manifest["checkpoints"])
            if k in affected
            and any(bool(deleted[k, s]) for s in prefix)  # unusable now ...
            and not any(bool(self.deleted[k, s]) for s in prefix)  # ... and usable before
        )
        self.deleted.copy_(deleted)
        for k in switched:
            self.shards[k] = loaded[k]
            self._mark_served(k, choices[k])
        self.deleted_rows[values] = True
        capacity = self.capacity()
        return DeletionReport(
            ids=tuple(values),
            slices=tuple(new),
            dropped_prefixes=tuple(dropped),
            served_before=before,
            served_after=self.served_prefixes,
            needs_retraining=tuple(dead),
            remaining_capacity=0 if dead else min(capacity),
            switched=tuple(switched),
        )


def load_s3t(directory: str | Path, backbone: nn.Module) -> S3TModel:
    """Loads an S3T model written by :func:`~unlearnkit.s3t.train.train_s3t`.

    Args:
        directory: The directory holding ``s3t_manifest.json`` and the checkpoints.
        backbone: A module of the backbone's architecture; its weights are loaded from the
            directory.

    Raises:
        CheckpointError: If the manifest or any checkpoint is missing, unreadable or does not
            match its recorded sha256.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the S3T manifest {path}: {err}") from None
    entry = manifest["backbone"]
    load_state_dict(backbone, directory / entry["file"], expected_sha256=entry["sha256"])
    for key, item in manifest["checkpoints"].items():
        file = directory / item["file"]
        if not file.is_file():
            raise CheckpointError(f"S3T checkpoint {key} missing: {file}")
        if file_sha256(file) != item["sha256"]:
            raise CheckpointError(f"S3T checkpoint {key} ({file}) does not match its recorded sha256 (corrupt or replaced)")
    return S3TModel(backbone, manifest, directory)
