"""l1-sparse: fine-tune on the retain data with a decaying l1 penalty on the weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from unlearnkit.methods.base import FROM_PRESET, check_choice, check_non_negative
from unlearnkit.methods.finetune import FineTune
from unlearnkit.methods.registry import register_method

L1_SPARSE_PRESETS: dict[str, dict[str, Any]] = {
    # Robust on a small retain subset: finetune's default recipe (cosine over the epochs, batch
    # 64) for 5 epochs. The penalty pulls each weight by about lr * alpha_t per step, so its
    # effect grows with the number of steps: the paper's 1e-4 over ~1,800 CIFAR-10 steps is a
    # real pull, over the ~100 steps of a small retain set it barely registers. At 5e-4, 5 epochs on the
    # 1,421 retain rows of the digits demo lower the l1 norm of its CNN by ~6 % (1e-4: ~1 %),
    # with no change in retain or test accuracy.
    "default": {"alpha": 5e-4, "lr": 1e-2, "epochs": 5, "batch_size": 64, "schedule": "cosine"},
    # The released code's FT_l1 / FT_prune run: 10 epochs, SGD lr 0.01 held constant (its
    # MultiStepLR milestones 91,136 are never reached), batch 256; alpha 1e-4 (see the class
    # docstring for where that value comes from).
    "paper": {"alpha": 1e-4, "lr": 1e-2, "epochs": 10, "batch_size": 256, "schedule": "constant"},
}


def l1_norm(params: Sequence[Tensor]) -> Tensor:
    """``sum_j |theta_j|`` over the given tensors (the released code's ``l1_regularization``).

    Example:
        >>> l1_norm([torch.tensor([1.0, -2.0]), torch.tensor([[0.5]])]).item()
        3.5
    """
    return torch.stack([p.abs().sum() for p in params]).sum()


@register_method("l1_sparse")
class L1Sparse(FineTune):
    """l1-sparse unlearning: fine-tuning on the retain data plus ``alpha_t * ||theta||_1``.

    From "Model Sparsity Can Simplify Machine Unlearning" (Jia, Liu, Ram, Yao, Liu, Liu,
    Sharma, Liu; NeurIPS 2023, https://arxiv.org/abs/2304.04934; code
    https://github.com/OPTML-Group/Unlearn-Sparse, ``unlearn/FT.py``: ``FT_l1``). Sparsity
    brings an approximate unlearner closer to retraining; the "sparsity-aware" variant adds
    an l1 penalty on every trainable parameter to fine-tuning (FT, see
    :class:`~unlearnkit.methods.finetune.FineTune`), with a weight that decays linearly over
    the epochs: in epoch ``e`` (0-based) of ``E`` the loss of every step is
    ``CE(g(x_r), y_r) + alpha * (1 - e / E) * sum_j |theta_j|`` (the released code's
    ``current_alpha = alpha * (1 - epoch / unlearn_epochs)`` with its default
    ``no_l1_epochs = 0``), so the last epoch still carries ``alpha / E``.

    Recipe of the released code (``preset="paper"``): 10 epochs, SGD lr 0.01 (constant: its
    MultiStepLR milestones 91 and 136 lie beyond the 10 epochs), momentum 0.9, weight decay
    5e-4, batch 256. Its README leaves ``alpha`` to the user (``--alpha ${alpha}``); unlearnkit
    takes 1e-4, the value that run scripts built on this code base pass with the README's
    other settings (e.g. ``--unlearn FT_prune --alpha 1e-4 --unlearn_lr 0.01 --unlearn_epochs
    10`` for SVHN). With ``alpha=0`` and ``schedule="cosine"`` the method is exactly
    :class:`FineTune`, bit for bit.

    The default preset is for a user holding a small retain subset: finetune's cosine schedule
    (stepped per epoch), batch 64, 5 epochs and ``alpha = 5e-4``. The penalty's gradient is
    ``alpha_t * sign(theta)`` whatever the model size, so its total pull on a weight grows
    with the number of steps; a small retain set gives few steps, and a larger ``alpha``
    keeps the penalty noticeable (digits demo, 1,421 retain rows: the l1 norm of the CNN
    falls by ~6 % at 5e-4 and ~1 % at 1e-4, with unchanged retain and test accuracy).

    The forget set is never trained on: it is read once at the end to report whether the goal
    holds. Fixed schedule: exactly ``ceil(n_retain / batch_size) * epochs`` steps,
    ``stop_reason="fixed_schedule"``; ``converged`` says whether every forget instance is
    misclassified at the end (fine-tuning does not promise that). Misclassification requests
    only.

    Differences from the released code: the schedule is a hyperparameter (finetune's cosine
    by default, the released constant lr with ``preset="paper"``); batches are a seeded
    shuffle of in-memory tensors, and the last batch of an epoch may be short.

    Data: the model, the forget set (read, never trained on) and retain data of any size
    (``data_access = "forget+retain"``); ``result.retain_used`` is its size.

    Args:
        preset: ``"default"`` or ``"paper"``; explicit values override the preset's.
        alpha: Initial weight of the l1 penalty, ``5e-4`` / ``1e-4`` (0: plain fine-tuning).
        schedule: Learning-rate schedule over the epochs, ``"cosine"`` (stepped per epoch,
            as finetune) / ``"constant"``.
        lr: Initial SGD learning rate, ``1e-2`` / ``1e-2``.
        epochs: Passes over the retain data, ``5`` / ``10``.
        batch_size: Retain instances per step, ``64`` / ``256``.
        momentum: SGD momentum, 0.9.
        weight_decay: SGD weight decay, 5e-4.

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 1])
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="l1_sparse", retain=retain, batch_size=4)
        >>> result.steps, result.stop_reason, result.retain_used
        (15, 'fixed_schedule', 10)
    """

    summary = "Fine-tune on the retain data with a linearly decaying l1 penalty (Jia et al. 2023)."
    presets: ClassVar[dict[str, dict[str, Any]]] = L1_SPARSE_PRESETS

    # Hyperparameters, stored by _set_params from the keyword arguments (typed here for readers and checkers).
    alpha: float
    schedule: str

    def __init__(
        self,
        *,
        preset: str = "default",
        alpha: float = FROM_PRESET,
        schedule: str = FROM_PRESET,
        lr: float = FROM_PRESET,
        epochs: int = FROM_PRESET,
        batch_size: int = FROM_PRESET,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__(
            preset=preset, lr=lr, epochs=epochs, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay
        )
        self._set_params(preset, alpha=alpha, schedule=schedule)
        check_non_negative(alpha=self.alpha)
        check_choice("schedule", self.schedule, ("cosine", "constant"))

    def penalty_weight(self, epoch: int) -> float:
        """The l1 weight in 0-based ``epoch``: ``alpha * (1 - epoch / epochs)``."""
        return self.alpha * (1.0 - epoch / self.epochs)

    def _penalty(self, params: Sequence[nn.Parameter]) -> Callable[[int], Tensor] | None:
        """The per-step penalty for ``train_for_epochs`` (``None`` at ``alpha = 0``, so that the
        run is plain fine-tuning, bit for bit)."""
        if self.alpha == 0:
            return None
        return lambda epoch: self.penalty_weight(epoch) * l1_norm(params)

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler | None:
        """Cosine over the epochs (as finetune, so that alpha=0 reproduces it), or constant."""
        return super()._schedule(optimizer) if self.schedule == "cosine" else None

    def _details(self, params: list[nn.Parameter]) -> dict[str, Any]:
        with torch.no_grad():
            return {"final_l1_norm": float(l1_norm(params))}
