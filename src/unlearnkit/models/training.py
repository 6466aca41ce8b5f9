"""A seeded, deterministic training recipe for small classifiers."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.loop import train_for_epochs
from unlearnkit.utils.modules import resolve_device


#: An augmentation hook: ``(batch, generator) -> augmented batch`` of the same shape, drawing
#: all its randomness from ``generator`` (a CPU ``torch.Generator``).
Augment = Callable[[Tensor, torch.Generator], Tensor]

_OPTIMIZERS = ("adam", "sgd")


def crop_flip(batch: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop after zero padding by ``pad`` pixels, and a horizontal flip with probability
    1/2, drawn independently per image: the standard CIFAR augmentation (torchvision's
    ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``, applied before normalisation).

    Inputs are images in ``[0, 1]``, so the padding is black, as in the torchvision pipeline.

    Example:
        >>> x = torch.rand(4, 3, 8, 8)
        >>> out = crop_flip(x, torch.Generator().manual_seed(0))
        >>> out.shape == x.shape, torch.equal(crop_flip(x, torch.Generator().manual_seed(0)), out)
        (True, True)
    """
    if batch.dim() != 4:
        raise ValueError(f"crop_flip needs (N, C, H, W) images, got shape {tuple(batch.shape)}")
    n, _, h, w = batch.shape
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).to(batch.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(batch.device)
    padded = F.pad(batch, (pad, pad, pad, pad))
    rows = offsets[0, :, None] + torch.arange(h, device=batch.device)  # (N, H)
    cols = torch.arange(w, device=batch.device).expand(n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols) + offsets[1, :, None]  # (N, W)
    index = torch.arange(n, device=batch.device)[:, None, None]
    # Advanced indices around a slice: the result is (N, H, W, C).
    return padded[index, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


#: Augmentations a recipe can name (``TrainRecipe.augment``).
AUGMENTATIONS: dict[str, Augment] = {"crop-flip": crop_flip}


@dataclass(frozen=True)
class TrainRecipe:
    """How a model is trained: Adam (or SGD with momentum) with cosine decay per step over a
    fixed number of epochs, optionally with a named data augmentation.

    Args:
        epochs: Passes over the training set.
        batch_size: Examples per step.
        lr: Peak learning rate.
        weight_decay: Weight decay (Adam's L2 term, or SGD's).
        seed: Seed of the initialisation, the shuffling and the augmentation.
        optimizer: ``"adam"`` (the default) or ``"sgd"``.
        momentum: SGD momentum (ignored by Adam).
        augment: ``None`` or the name of an augmentation in :data:`AUGMENTATIONS`
            (``"crop-flip"``: random crop after padding by 4 pixels plus horizontal flip).

    The last three fields were added after the first release: they enter :meth:`as_dict` and
    :meth:`fingerprint` only where they matter (a non-Adam optimizer, SGD's momentum, an
    augmentation), so the recipes written before keep their fingerprints, and the models cached
    under them their files and sha256.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    optimizer: str = "adam"
    momentum: float = 0.9
    augment: str | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be None or one of {sorted(AUGMENTATIONS)}, got {self.augment!r}")

    def as_dict(self) -> dict[str, Any]:
        """The recipe as a dict, without the later fields where they have no effect.

        Example:
            >>> sorted(TrainRecipe().as_dict())
            ['batch_size', 'epochs', 'lr', 'seed', 'weight_decay']
            >>> TrainRecipe(optimizer="sgd", augment="crop-flip").as_dict()["momentum"]
            0.9
        """
        record = asdict(self)
        if self.optimizer == "adam":
            del record["optimizer"], record["momentum"]
        if self.augment is None:
            del record["augment"]
        return record

    def fingerprint(self) -> str:
        """A short hash of the recipe (of :meth:`as_dict`), used to key caches."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]


class _Augmented(nn.Module):
    """``model`` behind an augmentation applied to its inputs in training mode only."""

    def __init__(self, model: nn.Module, augment: Augment, generator: torch.Generator) -> None:
        super().__init__()
        self.model = model
        self.augment = augment
        self.generator = generator

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.augment(x, self.generator) if self.training else x)


def train_classifier(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    recipe: TrainRecipe,
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
    augment: Augment | None = None,
) -> nn.Module:
    """Trains ``model`` in place with ``recipe`` and returns it in eval mode.

    The model's initial weights are not touched by this function: seed the construction of the
    model (e.g. ``torch.manual_seed(recipe.seed)`` before building it) for a fully deterministic
    run. Shuffling, dropout and augmentation are seeded from ``recipe.seed``.

    Args:
        augment: An augmentation hook ``(batch, generator) -> batch`` applied to every training
            batch; it overrides ``recipe.augment`` (which names a built-in one). Its generator
            is seeded from ``recipe.seed`` and is separate from the shuffling's, so the batches
            are the same with and without augmentation. Without either, training is exactly
            what it was before augmentation existed.
    """
    device = resolve_device(device, model)
    model.to(device)
    inputs, labels = inputs.to(device), labels.to(device)
    generator = torch.Generator().manual_seed(recipe.seed)
    if recipe.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    if augment is None and recipe.augment is not None:
        augment = AUGMENTATIONS[recipe.augment]
    trained: nn.Module = model
    if augment is not None:
        trained = _Augmented(model, augment, torch.Generator().manual_seed(recipe.seed + 1))
    steps_per_epoch = -(-inputs.shape[0] // recipe.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * steps_per_epoch)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(recipe.seed)
        train_for_epochs(
            trained, optimizer, inputs, labels, epochs=recipe.epochs, batch_size=recipe.batch_size,
            generator=generator, schedule=schedule, schedule_every="step", progress=progress,
        )
    return model.eval()
