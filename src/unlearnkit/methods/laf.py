"""LAF: label-agnostic forgetting, unlearning at the representation level without any labels."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearnkit.components.batching import cycled_batches, shuffled_batches
from unlearnkit.components.loop import take_step
from unlearnkit.components.penultimate import extractor_parameters, logits_and_embeddings, resolve_head
from unlearnkit.components.vae import fit_embedding_vae, standardisation
from unlearnkit.errors import DataContractError, InvalidHyperparameterError, InvalidRequestError
from unlearnkit.methods.base import (
    FROM_PRESET,
    MethodRun,
    RetainData,
    UnlearnContext,
    UnlearningMethod,
    check_choice,
    check_count,
    check_non_negative,
    check_positive,
)
from unlearnkit.methods.registry import register_method
from unlearnkit.request import ForgetRequest
from unlearnkit.utils.modules import copy_model, model_dtype

#: Inputs per forward pass when reading the original model's embeddings.
_EMBED_BATCH = 512


@register_method("laf")
class LAF(UnlearningMethod):
    """Label-Agnostic Forgetting (LAF): forgetting in the representation, with no labels at all.

    Shen, Zhang, Zhao, Bialkowski, Chen, Xu, "Label-Agnostic Forgetting: A Supervision-Free
    Unlearning in Deep Models", ICLR 2024, https://arxiv.org/abs/2404.00506 (released code:
    https://github.com/ShaofeiShen768/LAF).

    The model is split into an *extractor* (everything that computes the input of the head) and
    the *head*, its last ``nn.Linear`` (or the one named by ``head``); the *embedding* ``e(x)`` is
    the head's input. Neither the forget set's labels nor the retain set's are read (except by
    the optional head refit, below), so a request may come without labels
    (``ForgetRequest(inputs, None)``; ``needs_labels = False``).

    1. **Two VAEs on embeddings** of the original model: one on the training data (a sample of
       at most ``vae_max_rows`` retain inputs), one on the forget set; each ``vae_epochs``
       passes of Adam (``vae_lr``) in batches of ``batch_size``, loss squared error plus
       ``vae_kld_weight`` times the KL divergence (see
       :class:`~unlearnkit.components.vae.EmbeddingVAE`).
    2. **Unlearning**, ``epochs`` passes over the forget set in batches of ``batch_size``, each
       forget batch paired with a batch of retain inputs drawn from a seeded shuffle of the
       retain set that continues over the epochs (the released code zips a forget loader with a
       shuffled retain loader, so each epoch sees as many retain batches as the forget set has
       batches); for each pair, two Adam steps on the extractor's parameters (the head is left
       as it is):

       - *extractor unlearning* (lr ``lr``): minimise
         ``sum_r exp(m_s / (m_s + 1)) - sum_f exp(m_u / (m_u + 1))``, where ``m_s`` is the
         training-data VAE's reconstruction error of the current embedding of a retain input and
         ``m_u`` the forget VAE's of a forget input. The minus sign makes this *raise* ``m_u``:
         forget embeddings are pushed away from the forget distribution the forget VAE learnt,
         while retain embeddings are held where the training-data VAE reconstructs them well
         (``exp(m / (m + 1))`` grows with ``m`` and saturates at ``e``, so neither term can
         dominate without bound). The paper's text switches between ``argmin`` and ``argmax``
         around this objective; the sign here is that of the released ``extractor_unlearning``
         (``loss = nmse(retain) - nmse(forget)``, minimised), which matches the paper's intent
         of keeping retain representations and removing forget ones.
       - *representation alignment* (lr ``lr_align``): with ``c = 1 - cos(e(x), e_0(x))``
         against the frozen original extractor ``e_0``, minimise
         ``sum_r log(exp(c_r) / sum_f exp(c_f / tau))``: retain embeddings are kept aligned with
         the original ones, forget embeddings are pushed to turn away from theirs (a
         contrastive loss with the forget set as negatives; the released code's
         ``CosineEmbeddingLoss`` with target 1 is this ``c``).

    3. **Optional +R** (``refit_head=True``, the paper's LAF+R): the head alone is refitted
       with cross-entropy on the labelled retain data (Adam, ``head_lr``, ``head_epochs``
       passes of the same forget-paired schedule). This is the only place labels are read, and
       only the retain set's; with ``refit_head=True`` unlabelled retain data is refused.

    LAF is a representation-level method with a fixed schedule (``goal_driven = False``): it
    does not aim at misclassifying every forget instance. The paper reports the forget set's
    accuracy falling toward the test accuracy (that of a retrained model), not to 0; ``converged``
    reports honestly whether every forget instance is misclassified at the end, which is
    usually not the case.

    Measured with the default preset, k = 16 random training instances, seeds 0 / 1 / 2, the
    whole retain split, unlabelled forget set (``unlearnkit demo`` setting):

    - digits SmallCNN (test accuracy 99.7 %): Acc(D_f) 100 -> 56.2 / 62.5 / 56.2 %, Acc(D_r)
      100 -> 99.4 / 98.8 / 97.7 %, Acc(D_test) -> 98.6 / 97.2 / 97.5 %, 1-2 s on one CPU thread;
    - MNIST SmallCNN (test accuracy 99.0 %): Acc(D_f) 100 -> 56.2 / 68.8 / 50.0 %, Acc(D_r)
      -> 97.8 / 98.3 / 98.3 %, Acc(D_test) -> 97.9 / 98.1 / 98.1 %, 5-7 s; with
      ``refit_head=True`` Acc(D_f) 68.8 / 87.5 / 68.8 %, Acc(D_test) 98.4 %.

    So LAF does not make the forget set misclassified on these models (a retrained model would
    still classify about 99 % of random digits correctly); it trades a few points of test
    accuracy for a partial drop of the forget accuracy, and more epochs or larger learning
    rates move further along that trade (digits, 100 step pairs at lr = lr_align = 1e-3:
    Acc(D_f) 38-50 %, Acc(D_test) 91-95 %). On a forget set of only 4 instances it does misclassify them
    (tests/test_laf.py). The paper preset changes nothing measurable on 16 instances
    (20 step pairs of lr 5e-5: Acc(D_f) stays 100 %).

    Differences from the released code, and why:

    - The extractor is everything before the model's last ``nn.Linear`` (the released CNN's
      embedding is the output of ``fc1``, before a two-layer head); any architecture works.
    - The VAEs standardise their input (per-dimension center, one scalar scale, both from the
      original model's retain embeddings and shared by both VAEs) and decode linearly; the
      released VAE ends in a sigmoid, which cannot reconstruct unbounded embeddings. The
      reconstruction error ``m`` is the mean over dimensions (the released code sums over 256
      dimensions, where ``exp(m / (m + 1))`` is saturated and nearly flat); the VAE's own
      training loss keeps the released sum.
    - The training-data VAE is fitted on (a sample of) the retain inputs, not on the whole
      training set with the forget set in it (this library's callers hold retain data; the
      forget set has its own VAE), and a VAE fitted on a small forget set takes at least
      ``vae_min_steps`` steps (10 passes over 16 instances are 10 steps).
    - The model runs in eval mode throughout (BatchNorm statistics and dropout frozen), as the
      released code's does (its model comes out of ``Train.test`` in eval mode).
    - The reparameterisation noise of the VAEs comes from the seeded generator.

    Data: the model, the forget inputs (labels never read), and retain data of any size
    (``data_access = "forget+retain"``): its inputs always, its labels only with
    ``refit_head=True``. Retain data may come without labels, ``retain=(inputs, None)``, unless
    ``refit_head=True``. Misclassification requests only (``supports_relabel = False``).

    ``preset="paper"``: the released MNIST CNN values for random-data unlearning (lr 5e-5,
    lr_align 1e-4, 20 epochs, tau 5, no minimum). The default preset keeps the paper's ratio
    ``lr_align = 2 lr`` at six times the step size (lr 3e-4, lr_align 6e-4) and runs at least
    100 step pairs: an epoch is one pass over the forget set, so with a few dozen forget
    instances the paper's schedule is a few dozen tiny steps. A larger ``lr`` than
    ``lr_align`` lets the unlearning step wreck the representation (digits, 50 step pairs at
    lr 1e-3 and lr_align 1e-4: Acc(D_test) 10-59 %).

    Args:
        preset: ``"default"`` or ``"paper"``; explicit values override the preset's.
        epochs: Passes over the forget set, ``20`` / ``20``.
        lr: Adam learning rate of the extractor-unlearning step, ``3e-4`` / ``5e-5``.
        lr_align: Adam learning rate of the representation-alignment step, ``6e-4`` / ``1e-4``.
        tau: Temperature of the forget terms of the alignment loss, ``5`` / ``5``.
        min_pairs: Least number of (forget batch, retain batch) step pairs: when ``epochs``
            passes over a small forget set hold fewer, passes are added, ``100`` / ``0``.
        batch_size: Forget instances and retain instances per step, 32.
        latent_dim: Latent dimension of both VAEs, 8.
        vae_epochs: Passes of each VAE over its data, 10.
        vae_min_steps: Least number of steps of each VAE's fit, 100.
        vae_lr: Adam learning rate of the VAEs, 1e-3.
        vae_kld_weight: Weight of the KL term of the VAE loss, 0.025.
        vae_max_rows: Most retain inputs the training-data VAE is fitted on (a seeded random
            sample when the retain set is larger), 5000.
        refit_head: Refit the head with cross-entropy on the labelled retain data afterwards
            (LAF+R), ``False``.
        head_epochs: Passes of the head refit over the same forget-paired schedule (also
            raised to at least ``min_pairs`` steps), 5.
        head_lr: Adam learning rate of the head refit, 1e-3.
        head: Name of the ``nn.Linear`` whose input is the embedding; ``None`` for the model's
            last ``nn.Linear`` in registration order.

    Example:
        >>> import torch, unlearnkit
        >>> torch.manual_seed(0) and None
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> x = torch.rand(2, 4)
        >>> retain = (torch.rand(20, 4), None)  # no labels needed
        >>> result = unlearnkit.unlearn(
        ...     model, forget=(x, None), method="laf", retain=retain, epochs=2, min_pairs=0
        ... )
        >>> result.steps, result.stop_reason, result.details["labels"]
        (4, 'fixed_schedule', 'predicted_by_original')
    """

    summary = "Label-agnostic forgetting: VAE-guided extractor unlearning and representation alignment, no labels."
    data_access = "forget+retain"
    supports_relabel = False
    supports_unseen = False
    goal_driven = False
    needs_labels = False
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {"epochs": 20, "min_pairs": 100, "lr": 3e-4, "lr_align": 6e-4, "tau": 5.0},
        "paper": {"epochs": 20, "min_pairs": 0, "lr": 5e-5, "lr_align": 1e-4, "tau": 5.0},
    }

    # Hyperparameters, stored by _set_params from the keyword arguments (typed here for readers and checkers).
    epochs: int
    lr: float
    lr_align: float
    tau: float
    min_pairs: int
    batch_size: int
    latent_dim: int
    vae_epochs: int
    vae_min_steps: int
    vae_lr: float
    vae_kld_weight: float
    vae_max_rows: int
    refit_head: bool
    head_epochs: int
    head_lr: float
    head: str | None

    def __init__(
        self,
        *,
        preset: str = "default",
        epochs: int = FROM_PRESET,
        lr: float = FROM_PRESET,
        lr_align: float = FROM_PRESET,
        tau: float = FROM_PRESET,
        min_pairs: int = FROM_PRESET,
        batch_size: int = 32,
        latent_dim: int = 8,
        vae_epochs: int = 10,
        vae_min_steps: int = 100,
        vae_lr: float = 1e-3,
        vae_kld_weight: float = 0.025,
        vae_max_rows: int = 5000,
        refit_head: bool = False,
        head_epochs: int = 5,
        head_lr: float = 1e-3,
        head: str | None = None,
    ) -> None:
        self._set_params(
            preset, epochs=epochs, lr=lr, lr_align=lr_align, tau=tau, min_pairs=min_pairs, batch_size=batch_size,
            latent_dim=latent_dim, vae_epochs=vae_epochs, vae_min_steps=vae_min_steps, vae_lr=vae_lr,
            vae_kld_weight=vae_kld_weight, vae_max_rows=vae_max_rows, refit_head=refit_head,
            head_epochs=head_epochs, head_lr=head_lr, head=head,
        )
        check_count(
            epochs=self.epochs, min_pairs=self.min_pairs, batch_size=self.batch_size, latent_dim=self.latent_dim,
            vae_epochs=self.vae_epochs,
            vae_min_steps=self.vae_min_steps, vae_max_rows=self.vae_max_rows, head_epochs=self.head_epochs,
        )
        check_positive(
            epochs=self.epochs, lr=self.lr, lr_align=self.lr_align, tau=self.tau, batch_size=self.batch_size,
            latent_dim=self.latent_dim, vae_lr=self.vae_lr, vae_max_rows=self.vae_max_rows, head_lr=self.head_lr,
        )
        check_non_negative(vae_kld_weight=self.vae_kld_weight)
        check_choice("refit_head", self.refit_head, (False, True))
        if self.head is not None and not isinstance(self.head, str):
            raise InvalidHyperparameterError(f"head must be a module name (str) or None, got {self.head!r}")

    # -- data contract: retain inputs without labels are fine unless the head is refitted ----------

    def _check_retain(  # type: ignore[override]
        self, retain: RetainData, num_classes: int, device: torch.device, what: str = "retain"
    ) -> RetainData:
        try:
            inputs, labels = retain
        except (TypeError, ValueError):
            raise DataContractError(f"{what} must be a pair (inputs, labels)") from None
        if labels is not None or what != "retain":
            return UnlearningMethod._check_retain(retain, num_classes, device, what)
        if self.refit_head:
            raise DataContractError(
                "laf with refit_head=True refits the head with cross-entropy on the retain data and "
                "needs its labels: pass retain=(inputs, labels), or refit_head=False to use the retain "
                "inputs without labels"
            )
        try:
            checked = ForgetRequest(inputs, None, input_range=None)  # same shape/finite checks
        except InvalidRequestError as err:
            message = str(err).replace("forget set", "retain set").replace("forget inputs", "retain inputs")
            raise DataContractError(f"retain data: {message}") from None
        return checked.inputs.to(device), None  # type: ignore[return-value]

    # -- the algorithm -----------------------------------------------------------------------------

    def _unlearn(self, context: UnlearnContext) -> MethodRun:
        assert context.retain is not None  # guaranteed by the data contract
        model, generator = context.model, context.generator
        dtype = model_dtype(model)
        head_name, head = resolve_head(model, self.head)
        # Only the inputs: LAF never reads the forget set's labels.
        x_forget = context.request.inputs
        x_retain = context.retain[0].to(context.device, dtype)
        n_forget, n_retain = x_forget.shape[0], x_retain.shape[0]

        model.eval()
        # The frozen original extractor e_0, for the VAEs' data and the alignment step.
        original = copy_model(model).eval().requires_grad_(False)
        original_head = dict(original.named_modules())[head_name]
        e0_forget = _embeddings(original, original_head, x_forget)
        vae_rows = torch.randperm(n_retain, generator=generator)[: self.vae_max_rows].to(x_retain.device)
        e0_retain = _embeddings(original, original_head, x_retain[vae_rows])
        center, scale = standardisation(e0_retain)
        vae_args = dict(
            generator=generator, latent_dim=self.latent_dim, epochs=self.vae_epochs, min_steps=self.vae_min_steps,
            lr=self.vae_lr, batch_size=self.batch_size, kld_weight=self.vae_kld_weight, center=center, scale=scale,
        )
        retain_vae, retain_vae_losses = fit_embedding_vae(e0_retain, **vae_args)
        forget_vae, forget_vae_losses = fit_embedding_vae(e0_forget, **vae_args)
        del e0_retain

        params = extractor_parameters(model, head)
        opt_unlearn = torch.optim.Adam(params, lr=self.lr)
        opt_align = torch.optim.Adam(params, lr=self.lr_align)
        retain_batches = cycled_batches(n_retain, self.batch_size, generator)
        steps = 0
        unlearn_loss = align_loss = float("nan")

        def set_mode(m: nn.Module) -> None:
            m.eval()  # frozen BatchNorm statistics and no dropout, as in the released code

        passes = _passes(self.epochs, self.min_pairs, n_forget, self.batch_size)
        for _ in range(passes):
            for f_idx in shuffled_batches(n_forget, self.batch_size, generator):
                f_idx = f_idx.to(x_forget.device)
                xf = x_forget[f_idx]
                xr = x_retain[next(retain_batches).to(x_retain.device)]
                noise_r = retain_vae.draw_noise(xr.shape[0], generator)
                noise_f = forget_vae.draw_noise(xf.shape[0], generator)

                def unlearning_loss() -> Tensor:
                    m_s = retain_vae.reconstruction_error(logits_and_embeddings(model, xr, head)[1], noise_r)
                    m_u = forget_vae.reconstruction_error(logits_and_embeddings(model, xf, head)[1], noise_f)
                    return torch.exp(m_s / (m_s + 1)).sum() - torch.exp(m_u / (m_u + 1)).sum()

                steps += 1
                unlearn_loss = take_step(model, opt_unlearn, unlearning_loss, set_mode, steps)

                with torch.no_grad():
                    er0 = logits_and_embeddings(original, xr, original_head)[1]
                ef0 = e0_forget[f_idx]

                def alignment_loss() -> Tensor:
                    c_r = 1 - F.cosine_similarity(logits_and_embeddings(model, xr, head)[1], er0, dim=1)
                    c_f = 1 - F.cosine_similarity(logits_and_embeddings(model, xf, head)[1], ef0, dim=1)
                    # sum_r log(exp(c_r) / sum_f exp(c_f / tau)), written stably.
                    return (c_r - torch.logsumexp(c_f / self.tau, dim=0)).sum()

                steps += 1
                align_loss = take_step(model, opt_align, alignment_loss, set_mode, steps)

        head_steps, head_loss, head_passes = 0, None, 0
        if self.refit_head:
            head_passes = _passes(self.head_epochs, self.min_pairs, n_forget, self.batch_size)
            head_pairs = head_passes * math.ceil(n_forget / self.batch_size)
            head_steps, head_loss = self._refit_head(context, head, x_retain, head_pairs, steps)
            steps += head_steps
        model.zero_grad(set_to_none=True)  # hand the model back without stale gradients

        details = {
            "embedding_dim": int(e0_forget.shape[1]),
            "vae_rows": int(vae_rows.numel()),
            "vae/retain/final_loss": retain_vae_losses[-1] if retain_vae_losses else None,
            "vae/forget/final_loss": forget_vae_losses[-1] if forget_vae_losses else None,
            "final_unlearning_loss": unlearn_loss,
            "final_alignment_loss": align_loss,
            "head_refit_steps": head_steps,
            "head_refit_final_loss": head_loss,
        }
        return MethodRun(steps, passes + head_passes, context.goal_holds(), "fixed_schedule", details)

    def _refit_head(
        self, context: UnlearnContext, head: nn.Linear, x_retain: Tensor, n_steps: int, step_offset: int
    ) -> tuple[int, float | None]:
        """LAF+R: cross-entropy on labelled retain batches, the head's parameters only."""
        assert context.retain is not None
        y_retain = context.retain[1]
        if y_retain is None:  # refused by _check_retain already; kept for direct callers
            raise DataContractError("laf with refit_head=True needs labelled retain data")
        model, generator = context.model, context.generator
        optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=self.head_lr)
        retain_batches = cycled_batches(x_retain.shape[0], self.batch_size, generator)
        steps, loss_value = 0, None
        for _ in range(n_steps):
            idx = next(retain_batches).to(x_retain.device)
            xr, yr = x_retain[idx], y_retain[idx.to(y_retain.device)].to(context.device)
            steps += 1
            loss_value = take_step(
                model, optimizer, lambda: F.cross_entropy(model(xr), yr), lambda m: m.eval(), step_offset + steps
            )
        return steps, loss_value


def _passes(epochs: int, min_pairs: int, n_forget: int, batch_size: int) -> int:
    """Passes over the forget set: ``epochs``, or more when those hold fewer than ``min_pairs``
    batches."""
    return max(epochs, math.ceil(min_pairs / math.ceil(n_forget / batch_size)))


@torch.no_grad()
def _embeddings(model: nn.Module, head: nn.Module, inputs: Tensor) -> Tensor:
    """The embeddings ``(N, D)`` of ``inputs`` at ``head``, batched, without gradients."""
    starts = range(0, inputs.shape[0], _EMBED_BATCH)
    return torch.cat([logits_and_embeddings(model, inputs[i : i + _EMBED_BATCH], head)[1] for i in starts])
