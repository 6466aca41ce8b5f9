"""Retrain: train a fresh copy of the model from scratch on the retain data, the gold standard."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from unlearnkit.errors import InvalidModelError
from unlearnkit.methods.base import (
    MethodRun,
    UnlearnContext,
    UnlearningMethod,
    check_choice,
    check_count,
    check_non_negative,
    check_positive,
)
from unlearnkit.methods.registry import register_method
from unlearnkit.models.pretrained import DIGITS_RECIPE
from unlearnkit.models.training import AUGMENTATIONS, TrainRecipe, train_classifier


def reset_all_parameters(model: nn.Module) -> None:
    """Re-initialises every parameter of ``model`` with its module's ``reset_parameters()``.

    Modules that define ``reset_parameters`` are reset (BatchNorm's also resets its running
    statistics), in module order, from the global RNG: seed it first for reproducible weights.

    Raises:
        InvalidModelError: Naming the modules that hold parameters but have no
            ``reset_parameters()`` (nothing is reset then).
    """
    stuck = [
        name or type(module).__name__
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False)) and not callable(getattr(module, "reset_parameters", None))
    ]
    if stuck:
        raise InvalidModelError(
            f"retrain cannot re-initialise the parameters of module(s) {stuck}: they have no "
            "reset_parameters() method"
        )
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


@register_method("retrain")
class Retrain(UnlearningMethod):
    """Retraining from scratch on the retain data only: the exact-unlearning gold standard.

    Every parameter is re-initialised (``module.reset_parameters()``, seeded with ``seed``), so
    the result does not depend on the original weights, then the model is trained on the retain
    data by :func:`~unlearnkit.models.training.train_classifier` with a
    :class:`~unlearnkit.models.training.TrainRecipe` (cosine decay per step; the defaults equal
    :data:`~unlearnkit.models.pretrained.DIGITS_RECIPE`, the recipe unlearnkit's pretrained
    digits model was trained with). The reference every approximate method is measured against
    (e.g. Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023,
    https://arxiv.org/abs/2304.04934; Kurmanji et al., "Towards Unbounded Machine Unlearning",
    NeurIPS 2023, https://arxiv.org/abs/2302.09880). Give the model's own pretraining recipe
    for a faithful reference (:meth:`params_for_recipe`; demos and benchmarks do): with it and
    the recipe's seed, the result equals the model retrained by that recipe, bit for bit.

    The forget set is never trained on: it is only read before (by the base class) and once at
    the end to report whether the goal holds. Fixed schedule: ``stop_reason="fixed_schedule"``,
    ``ceil(n_retain / batch_size) * epochs`` steps; ``converged`` says whether every forget
    instance is misclassified at the end (retraining does not promise that: a model trained
    without an instance often still classifies it correctly). Misclassification requests only.

    Data: the model (its architecture; its weights are discarded), the forget set (read, never
    trained on) and retain data of any size (``data_access = "forget+retain"``).

    Args:
        epochs: Passes over the retain data, 30.
        batch_size: Retain instances per step, 64.
        lr: Peak learning rate, 2e-3.
        weight_decay: Weight decay, 1e-4.
        optimizer: ``"adam"`` (default) or ``"sgd"``.
        momentum: SGD momentum, 0.9 (ignored by Adam).
        augment: ``None`` (default) or a named augmentation of
            :data:`~unlearnkit.models.training.AUGMENTATIONS` (``"crop-flip"``).

    Raises:
        InvalidModelError: (from ``unlearn``) if a module holds parameters but has no
            ``reset_parameters()``.

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 1])
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="retrain", retain=retain, epochs=2)
        >>> result.steps, result.stop_reason, result.retain_used
        (2, 'fixed_schedule', 10)
    """

    summary = "Retrain from scratch on the retain data only (the gold standard)."
    data_access = "forget+retain"
    supports_relabel = False
    supports_unseen = False
    goal_driven = False

    def __init__(
        self,
        *,
        epochs: int = DIGITS_RECIPE.epochs,
        batch_size: int = DIGITS_RECIPE.batch_size,
        lr: float = DIGITS_RECIPE.lr,
        weight_decay: float = DIGITS_RECIPE.weight_decay,
        optimizer: str = DIGITS_RECIPE.optimizer,
        momentum: float = DIGITS_RECIPE.momentum,
        augment: str | None = DIGITS_RECIPE.augment,
    ) -> None:
        check_positive(epochs=epochs, batch_size=batch_size, lr=lr)
        check_count(epochs=epochs, batch_size=batch_size)
        check_non_negative(weight_decay=weight_decay, momentum=momentum)
        check_choice("optimizer", optimizer, ("adam", "sgd"))
        check_choice("augment", augment, (None, *sorted(AUGMENTATIONS)))
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.optimizer, self.momentum, self.augment = optimizer, momentum, augment

    @classmethod
    def params_for_recipe(cls, recipe: TrainRecipe) -> dict[str, Any]:
        """The hyperparameters that retrain with ``recipe`` (a model's own pretraining recipe;
        its seed is the run's).

        Example:
            >>> from unlearnkit.models.pretrained import CIFAR10_RECIPE
            >>> Retrain.params_for_recipe(CIFAR10_RECIPE)["augment"]
            'crop-flip'
        """
        return {
            "epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr,
            "weight_decay": recipe.weight_decay, "optimizer": recipe.optimizer, "momentum": recipe.momentum,
            "augment": recipe.augment,
        }

    def recipe(self, seed: int) -> TrainRecipe:
        """The training recipe of a run with ``seed``."""
        return TrainRecipe(
            self.epochs, self.batch_size, self.lr, self.weight_decay, seed, optimizer=self.optimizer,
            momentum=self.momentum, augment=self.augment,
        )

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        assert context.retain is not None  # guaranteed by the data contract
        model = context.model
        x, y = context.retain
        recipe = self.recipe(context.seed)
        torch.manual_seed(recipe.seed)  # the base class restores the caller's RNG afterwards
        reset_all_parameters(model)
        train_classifier(model, x, y, recipe, device=context.device, progress=context.progress)
        steps = -(-x.shape[0] // recipe.batch_size) * recipe.epochs  # train_for_epochs' fixed count
        return MethodRun(steps, recipe.epochs, context.goal_holds(), "fixed_schedule", {"recipe": asdict(recipe)})
