"""What every forget-objective method shares: optimiser, forget loss, BatchNorm mode, stop rule.

Each hyperparameter that differs between the published recipe and unlearnkit's robust default
comes from a preset (see :attr:`UnlearningMethod.presets`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from unlearnkit.components.losses import forget_hinge_loss, forget_loss, unseen_hinge_loss
from unlearnkit.components.optim import make_optimizer
from unlearnkit.components.stopping import StopRule
from unlearnkit.errors import InvalidHyperparameterError
from unlearnkit.methods.base import (
    FROM_PRESET,
    UnlearningMethod,
    check_caps,
    check_choice,
    check_non_negative,
    check_positive,
)
from unlearnkit.utils.modules import train_with_frozen_batchnorm

#: Values of the shared hyperparameters in each preset.
ASCENT_PRESETS: dict[str, dict[str, Any]] = {
    # Robust on models nobody tuned for: bounded loss, small adaptive steps, frozen BatchNorm,
    # a margin so forgotten instances do not sit on the decision boundary.
    "default": {
        "optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "forget_loss": "hinge",
        "stop_margin": 0.1, "bn_mode": "freeze",
    },
    # The released recipe of Cha et al. (AAAI 2024).
    "paper": {
        "optimizer": "sgd", "lr": 1e-3, "weight_decay": 1e-4, "forget_loss": "ce",
        "stop_margin": 0.0, "bn_mode": "train",
    },
}


class ForgetObjectiveMethod(UnlearningMethod):
    """Base of methods that minimise a forget objective on the forget set step by step.

    Not registered itself. Shared hyperparameters (``default`` / ``paper`` preset values):

    Args:
        preset: ``"default"`` (robust) or ``"paper"`` (the published recipe). Any
            hyperparameter given explicitly overrides the preset's value.
        optimizer: ``"adam"`` / ``"sgd"``.
        lr: Learning rate, ``1e-4`` / ``1e-3``; ``"auto"`` (methods with a retain proxy only):
            the largest rate whose first steps keep the proxy's predictions, see
            :func:`~unlearnkit.components.step_size.search_learning_rate`.
        momentum: SGD momentum (unused by Adam), 0.9.
        weight_decay: ``0`` / ``1e-4``.
        forget_loss: ``"hinge"`` (bounded: per-instance margin loss that stops pushing once the
            instance meets its goal by ``forget_margin``) / ``"ce"`` (``-CE(labels)``, or
            ``CE(new labels)`` when relabeling; unbounded in misclassification mode).
        forget_margin: Logit margin of the hinge loss, 0.5 (raised to ``stop_margin`` if smaller).
        stop_margin: Logit margin by which every instance must meet its goal before the run
            stops, ``0.1`` / ``0`` (0: just cross the boundary).
        bn_mode: ``"freeze"`` (BatchNorm keeps its running statistics during updates) /
            ``"train"`` (statistics move with each batch, as in the paper).
        max_passes: Cap on passes over the data, 1000.
        max_steps: Cap on optimiser steps, none.
        max_seconds: Cap on wall time, none.
    """

    presets: ClassVar[dict[str, dict[str, Any]]] = ASCENT_PRESETS
    supports_unseen = True
    #: Whether the method has a retain proxy to choose ``lr="auto"`` against.
    supports_auto_lr: ClassVar[bool] = False

    # Hyperparameters, stored by _set_params from the keyword arguments (typed here for readers and checkers).
    optimizer: str
    lr: float | str
    momentum: float
    weight_decay: float
    forget_loss: str
    forget_margin: float
    stop_margin: float
    bn_mode: str
    max_passes: int | None
    max_steps: int | None
    max_seconds: float | None

    def __init__(
        self,
        *,
        preset: str = "default",
        optimizer: str = FROM_PRESET,
        lr: float | str = FROM_PRESET,
        momentum: float = 0.9,
        weight_decay: float = FROM_PRESET,
        forget_loss: str = FROM_PRESET,
        forget_margin: float = 0.5,
        stop_margin: float = FROM_PRESET,
        bn_mode: str = FROM_PRESET,
        max_passes: int | None = 1000,
        max_steps: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        self._set_params(
            preset, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
            forget_loss=forget_loss, forget_margin=forget_margin, stop_margin=stop_margin,
            bn_mode=bn_mode, max_passes=max_passes, max_steps=max_steps, max_seconds=max_seconds,
        )
        check_choice("optimizer", self.optimizer, ("adam", "sgd"))
        check_choice("forget_loss", self.forget_loss, ("hinge", "ce"))
        check_choice("bn_mode", self.bn_mode, ("freeze", "train"))
        if self.lr == "auto":
            if not self.supports_auto_lr:
                raise InvalidHyperparameterError(
                    f"method {self.name!r} has no retain proxy to choose lr='auto' against; give a number"
                )
        else:
            check_positive(lr=self.lr)
        check_non_negative(
            momentum=self.momentum, weight_decay=self.weight_decay, forget_margin=self.forget_margin,
            stop_margin=self.stop_margin,
        )
        check_caps(self.max_passes, self.max_steps, self.max_seconds)

    def make_optimizer(self, model: nn.Module, lr: float | None = None) -> Any:
        """The configured optimiser over the model's trainable parameters (at ``lr`` if given)."""
        params = [p for p in model.parameters() if p.requires_grad]
        rate = self.lr if lr is None else lr
        return make_optimizer(
            self.optimizer, params, lr=rate, momentum=self.momentum, weight_decay=self.weight_decay  # type: ignore[arg-type]
        )

    def forget_term(
        self, logits: Tensor, labels: Tensor, new_labels: Tensor | None, loss_targets: Tensor | None = None
    ) -> Tensor:
        """The configured forget loss on a batch of forget logits (``loss_targets``: ``unseen``)."""
        if loss_targets is not None and self.forget_loss == "hinge":
            return unseen_hinge_loss(logits, labels, loss_targets)
        if self.forget_loss == "hinge":
            # Never below the stop margin: an instance between the two would get no gradient and
            # the run could not reach its stop rule.
            return forget_hinge_loss(logits, labels, new_labels, max(self.forget_margin, self.stop_margin))
        return forget_loss(logits, labels, new_labels)

    @property
    def train_mode(self) -> Callable[[nn.Module], object]:
        """How the model is put in training mode before each step."""
        return train_with_frozen_batchnorm if self.bn_mode == "freeze" else nn.Module.train

    def stop_rule(self) -> StopRule:
        """The caps and margin of the stopping rule."""
        return StopRule(self.max_passes, self.max_steps, self.max_seconds, self.stop_margin)
