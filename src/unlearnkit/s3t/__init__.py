"""S3T: exact unlearning by sequence-aware sharded sliced training.

Basu Roy Chowdhury, Choromanski, Sehanobish, Dubey and Chaturvedi, "Towards Scalable Exact
Machine Unlearning Using Parameter-Efficient Fine-Tuning", ICLR 2025,
https://arxiv.org/abs/2406.16257.

A training-time design: a frozen backbone (trained on data that is never deleted), the
deletable rows split into shards x slices, and per shard a chain of residual adapters trained
stage by stage over several slice orders, with a checkpoint per prefix. A deletion drops every
prefix holding the deleted row's slice; each shard then serves its longest surviving prefix,
which was trained without that slice, so the result equals retraining without it, exactly.

Differences from the paper and its released code: the adapters are small residual MLPs on the
backbone's features (the paper stacks LoRA adapters in a transformer's layers; a chain of
feature adapters gives the same parameter isolation on a small CNN and keeps every stage
deterministic); orders are seeded random permutations that prefer distinct first slices (the
paper uses cyclic rotations or bipartite matching); checkpoints (epochs of a stage, and ties
between orders) are chosen on a validation split, never on the test set as the released code
does; a shard with no surviving prefix is reported (``needs_retraining``) and left out of the
average instead of being retrained in the background.
"""

from unlearnkit.s3t.config import S3TConfig
from unlearnkit.s3t.model import MANIFEST, DeletionReport, S3TModel, load_s3t, prefix_key
from unlearnkit.s3t.shard import ResidualAdapter, ShardNet, extract_features, prefix_seed, train_stage
from unlearnkit.s3t.train import assign_slices, draw_orders, train_backbone, train_prefix, train_s3t

__all__ = [
    "MANIFEST",
    "DeletionReport",
    "ResidualAdapter",
    "S3TConfig",
    "S3TModel",
    "ShardNet",
    "assign_slices",
    "draw_orders",
    "extract_features",
    "load_s3t",
    "prefix_key",
    "prefix_seed",
    "train_backbone",
    "train_prefix",
    "train_s3t",
    "train_stage",
]
