"""Bad Teacher: distil the forget set from a randomly initialised teacher and the retain data from
the original model."""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.batching import shuffled_batches
from unlearnkit.components.distributed import sharded_mean
from unlearnkit.components.loop import take_step
from unlearnkit.components.losses import distillation_loss
from unlearnkit.components.optim import make_optimizer
from unlearnkit.errors import InvalidHyperparameterError, InvalidModelError
from unlearnkit.methods.base import (
    FROM_PRESET,
    MethodRun,
    UnlearnContext,
    UnlearningMethod,
    check_count,
    check_non_negative,
    check_positive,
)
from unlearnkit.methods.registry import register_method
from unlearnkit.methods.retrain import reset_all_parameters
from unlearnkit.methods.scrub import frozen_copy
from unlearnkit.utils.modules import copy_model, model_device

BAD_TEACHER_PRESETS: dict[str, dict[str, Any]] = {
    # The released recipe is one epoch at Adam 1e-4 in batches of 256: on a small forget set
    # and retain sample that is a couple of steps, which barely move the weights. Five epochs
    # at 1e-3 in batches of 64 give the distillation enough steps to act (measured on the
    # digits demo: see the class docstring).
    "default": {"lr": 1e-3, "epochs": 5, "batch_size": 64},
    "paper": {"lr": 1e-4, "epochs": 1, "batch_size": 256},
}


def incompetent_teacher(model: nn.Module, seed: int) -> nn.Module:
    """A frozen copy of ``model``'s architecture with every parameter re-initialised from ``seed``.

    The weights come from each module's ``reset_parameters()`` (see
    :func:`~unlearnkit.methods.retrain.reset_all_parameters`) under ``torch.manual_seed(seed)``,
    on the CPU (so the same seed gives the same teacher on any device), in a forked RNG (the
    caller's global RNG state is untouched). They do not depend on ``model``'s weights.

    Raises:
        InvalidModelError: If a module holds parameters but has no ``reset_parameters()``.

    Example:
        >>> a = incompetent_teacher(torch.nn.Linear(3, 2), seed=0)
        >>> b = incompetent_teacher(torch.nn.Linear(3, 2), seed=0)
        >>> torch.equal(a.weight, b.weight), a.training, a.weight.requires_grad
        (True, False, False)
    """
    device = model_device(model)
    teacher = copy_model(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            reset_all_parameters(teacher)
        except InvalidModelError as err:
            raise InvalidModelError(str(err).replace("retrain cannot", "bad_teacher cannot")) from None
    teacher.to(device).eval()
    teacher.requires_grad_(False)
    return teacher


@register_method("bad_teacher")
class BadTeacher(UnlearningMethod):
    """Bad Teacher: the model is distilled from a randomly initialised ("incompetent") teacher on
    the forget set and from the original ("competent") teacher on a sample of the retain data.

    From "Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks using an Incompetent
    Teacher" (Chundawat, Tarun, Mandal, Kankanhalli; AAAI 2023, https://arxiv.org/abs/2205.08096;
    code https://github.com/vikram2000b/bad-teaching-unlearning, ``unlearn.py:
    blindspot_unlearner`` and ``UnlearnerLoss``, run from ``CIFARSuper20_Rocket_Unlearn.ipynb``).
    The competent teacher is a frozen copy of the original model; the incompetent teacher is
    the same architecture with every parameter re-initialised (:func:`incompetent_teacher`,
    seeded from the run's generator); both stay in eval mode. The student is the model being
    unlearned (train mode). A random ``retain_fraction`` of the retain rows (drawn once) joins
    the forget set; every epoch is a seeded shuffle of that union in batches of ``batch_size``,
    and each step minimises ``KL(teacher_probs || softmax(student / T))`` averaged over the
    batch, where ``teacher_probs = softmax(teacher / T)`` of the incompetent teacher for forget
    rows and of the competent one for retain rows (:meth:`teacher_probs`). Adam, no weight
    decay, no schedule.

    Recipe of the released code (``preset="paper"``): 1 epoch, Adam lr 1e-4, batch 256, ``T = 1``,
    30 % of the retain data. The default preset runs 5 epochs at lr 1e-3 in batches of 64: with
    a small forget set and retain sample the released recipe is a couple of steps that leave
    the model almost unchanged. Digits demo, k = 16, 1,421 retain rows, seed 0: the paper's
    values take 2 steps and move ``KL(incompetent || model)`` on the forget set from 10.6 to
    10.3 (mean top probability 0.9995 -> 0.9993); the default's 35 steps bring it to 1.7
    (top probability 0.66), test accuracy 99.4 % -> 99.2 %.

    Fixed schedule: ``ceil((k + n_sample) / batch_size) * epochs`` steps,
    ``stop_reason="fixed_schedule"``; ``converged`` says whether every forget instance is
    misclassified at the end (the method promises only that the forget rows' outputs look like
    a random network's, not that they are wrong). Misclassification requests only.
    ``result.details`` holds ``retain_rows_used`` (the sample's size), ``forget_rows`` and the
    incompetent teacher's seed.

    Differences from the released code: the KL is averaged over the batch (``batchmean``, a
    true KL); the released ``F.kl_div`` default averages over batch x classes, i.e. divides
    the same loss by the number of classes, which Adam's scale invariance all but cancels.
    The retain sample has at least one row, and is drawn with the run's seeded generator.

    Data: the model, the forget set and retain data of any size
    (``data_access = "forget+retain"``); ``result.retain_used`` is the size of the retain data
    given, ``result.details["retain_rows_used"]`` how many of its rows were trained on.

    Args:
        preset: ``"default"`` or ``"paper"``; explicit values override the preset's.
        lr: Adam learning rate, ``1e-3`` / ``1e-4``.
        epochs: Passes over the union of the forget set and the retain sample, ``5`` / ``1``.
        batch_size: Rows per step, ``64`` / ``256``.
        temperature: Softmax temperature ``T`` of the teachers and the student, 1.0.
        retain_fraction: Share of the retain rows sampled (at least one row), 0.3.
        weight_decay: Adam (L2) weight decay, 0.

    Raises:
        InvalidModelError: (from ``unlearn``) if a module holds parameters but has no
            ``reset_parameters()`` (the incompetent teacher cannot be built).

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        >>> x, y = torch.rand(2, 4), torch.tensor([0, 1])
        >>> retain = (torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> result = unlearnkit.unlearn(model, forget=(x, y), method="bad_teacher", retain=retain, batch_size=4)
        >>> result.steps, result.details["retain_rows_used"], result.stop_reason
        (10, 3, 'fixed_schedule')
    """

    summary = "Distil the forget set from a random teacher, the retain data from the original (Bad Teacher)."
    data_access = "forget+retain"
    supports_relabel = False
    supports_unseen = False
    goal_driven = False
    presets: ClassVar[dict[str, dict[str, Any]]] = BAD_TEACHER_PRESETS

    # Hyperparameters, stored by _set_params from the keyword arguments (typed here for readers and checkers).
    lr: float
    epochs: int
    batch_size: int
    temperature: float
    retain_fraction: float
    weight_decay: float

    def __init__(
        self,
        *,
        preset: str = "default",
        lr: float = FROM_PRESET,
        epochs: int = FROM_PRESET,
        batch_size: int = FROM_PRESET,
        temperature: float = 1.0,
        retain_fraction: float = 0.3,
        weight_decay: float = 0.0,
    ) -> None:
        self._set_params(
            preset, lr=lr, epochs=epochs, batch_size=batch_size, temperature=temperature,
            retain_fraction=retain_fraction, weight_decay=weight_decay,
        )
        check_positive(lr=self.lr, epochs=self.epochs, batch_size=self.batch_size, temperature=self.temperature)
        check_count(epochs=self.epochs, batch_size=self.batch_size)
        check_non_negative(weight_decay=self.weight_decay)
        check_positive(retain_fraction=self.retain_fraction)
        if self.retain_fraction > 1:
            raise InvalidHyperparameterError(f"retain_fraction must be <= 1, got {self.retain_fraction}")

    def teacher_probs(self, competent: nn.Module, incompetent: nn.Module, inputs: Tensor, is_forget: Tensor) -> Tensor:
        """The distillation targets of a batch: ``softmax(teacher(x) / T)`` of the incompetent
        teacher for rows where ``is_forget`` holds, of the competent one elsewhere."""
        with torch.no_grad():
            good = F.softmax(competent(inputs) / self.temperature, dim=1)
            bad = F.softmax(incompetent(inputs) / self.temperature, dim=1)
        return torch.where(is_forget.view(-1, 1), bad, good)

    def retain_sample_size(self, n_retain: int) -> int:
        """How many retain rows join the forget set: ``int(retain_fraction * n)``, at least 1."""
        return max(1, int(self.retain_fraction * n_retain))

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        assert context.retain is not None  # guaranteed by the data contract
        student, request = context.model, context.request
        xr = context.retain[0]
        competent = frozen_copy(student)
        teacher_seed = int(torch.randint(0, 2**31 - 1, (), generator=context.generator))
        incompetent = incompetent_teacher(student, teacher_seed)
        sample = torch.randperm(xr.shape[0], generator=context.generator)[: self.retain_sample_size(xr.shape[0])]
        inputs = torch.cat([request.inputs, xr[sample.to(xr.device)]])
        is_forget = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
        is_forget[: len(request)] = True
        params = [p for p in student.parameters() if p.requires_grad]
        optimizer = make_optimizer("adam", params, lr=self.lr, weight_decay=self.weight_decay)
        temperature = self.temperature

        def loss_fn(idx: Tensor) -> Tensor:
            x = inputs[idx]
            targets = self.teacher_probs(competent, incompetent, x, is_forget[idx])
            return distillation_loss(student(x) / temperature, targets)

        steps = 0
        last: float | None = None
        for _ in range(self.epochs):
            for idx in shuffled_batches(inputs.shape[0], self.batch_size, context.generator):
                # Under torchrun each rank takes its share of the batch (sharded_mean).
                last = take_step(student, optimizer, partial(sharded_mean, idx, loss_fn), nn.Module.train, steps + 1)
                steps += 1
        return MethodRun(
            steps, self.epochs, context.goal_holds(), "fixed_schedule",
            {
                "retain_rows_used": int(sample.numel()), "forget_rows": len(request),
                "incompetent_teacher_seed": teacher_seed, "final_loss": last,
            },
        )
