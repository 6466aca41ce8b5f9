"""A seeded, deterministic training recipe for small classifiers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from unlearnkit.components.loop import train_for_epochs
from unlearnkit.utils.modules import resolve_device


@dataclass(frozen=True)
class TrainRecipe:
    """How a model is trained: Adam with cosine decay over a fixed number of epochs.

    Args:
        epochs: Passes over the training set.
        batch_size: Examples per step.
        lr: Peak learning rate.
        weight_decay: Adam weight decay.
        seed: Seed of the initialisation and the shuffling.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def fingerprint(self) -> str:
        """A short hash of the recipe, used to key caches."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def train_classifier(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    recipe: TrainRecipe,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> nn.Module:
    """Trains ``model`` in place with ``recipe`` and returns it in eval mode.

    The model's initial weights are not touched by this function: seed the construction of the
    model (e.g. ``torch.manual_seed(recipe.seed)`` before building it) for a fully deterministic
    run. Shuffling and dropout are seeded from ``recipe.seed``.
    """
    device = resolve_device(device, model)
    model.to(device)
    inputs, labels = inputs.to(device), labels.to(device)
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = -(-inputs.shape[0] // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * steps_per_epoch)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(recipe.seed)
        train_for_epochs(
            model, optimizer, inputs, labels, epochs=recipe.epochs, batch_size=recipe.batch_size,
            generator=generator, schedule=schedule, schedule_every="step", progress=progress,
        )
    return model.eval()
