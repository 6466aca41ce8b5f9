"""A small variational autoencoder on feature vectors (a model's penultimate embeddings).

Used to model the distribution of a set of embeddings: a VAE fitted on one set reconstructs
embeddings like those well and others badly, so its per-example reconstruction error is a
differentiable "does this embedding look like the training ones" score.

The VAE works on *standardised* embeddings, ``(e - center) / scale`` with a per-dimension
``center`` and one scalar ``scale`` (the root mean square deviation of the fitting set), both
fixed at fitting time and stored as buffers; its decoder output is linear. Reconstruction errors
are therefore in units of the embedding's own spread, whatever the model's width or activation
scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from unlearnkit.components.batching import shuffled_batches


@dataclass(frozen=True)
class VAEOutput:
    """One forward pass of :class:`EmbeddingVAE`.

    Attributes:
        recon: Reconstruction ``(N, D)``, in standardised units.
        target: The standardised input ``(N, D)`` it should match.
        mu: Latent means ``(N, latent)``.
        logvar: Latent log-variances ``(N, latent)``.
    """

    recon: Tensor
    target: Tensor
    mu: Tensor
    logvar: Tensor

    def errors(self) -> Tensor:
        """Per-example reconstruction error ``(N,)``: the mean squared error over dimensions."""
        return (self.recon - self.target).pow(2).mean(dim=1)

    def loss(self, kld_weight: float) -> Tensor:
        """The VAE objective: squared error summed over dimensions plus ``kld_weight`` times the
        KL divergence from the standard normal prior, both averaged over the batch."""
        mse = (self.recon - self.target).pow(2).sum(dim=1).mean()
        kld = -0.5 * (1 + self.logvar - self.mu.pow(2) - self.logvar.exp()).sum(dim=1).mean()
        return mse + kld_weight * kld


class EmbeddingVAE(nn.Module):
    """A fully connected VAE on ``dim``-dimensional feature vectors.

    Encoder ``dim -> hidden[0] -> hidden[1] -> (mu, logvar)`` with ReLUs, decoder the mirror
    image back to ``dim`` (linear output, since standardised embeddings are unbounded).

    Args:
        dim: Embedding dimension.
        latent_dim: Latent dimension.
        hidden: Widths of the two hidden layers.

    Example:
        >>> vae = EmbeddingVAE(6, latent_dim=2)
        >>> out = vae(torch.rand(4, 6))
        >>> tuple(out.recon.shape), tuple(out.mu.shape), tuple(out.errors().shape)
        ((4, 6), (4, 2), (4,))
    """

    def __init__(self, dim: int, latent_dim: int = 8, hidden: Sequence[int] = (128, 32)) -> None:
        super().__init__()
        if dim <= 0 or latent_dim <= 0 or len(hidden) != 2 or min(hidden) <= 0:
            raise ValueError(
                f"need dim > 0, latent_dim > 0 and two positive hidden widths, got {dim}, {latent_dim}, {hidden}"
            )
        wide, narrow = hidden
        self.encoder = nn.Sequential(nn.Linear(dim, wide), nn.ReLU(), nn.Linear(wide, narrow), nn.ReLU())
        self.to_mu = nn.Linear(narrow, latent_dim)
        self.to_logvar = nn.Linear(narrow, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, narrow), nn.ReLU(), nn.Linear(narrow, wide), nn.ReLU(), nn.Linear(wide, dim)
        )
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    @property
    def latent_dim(self) -> int:
        """Dimension of the latent space."""
        return self.to_mu.out_features

    def standardise(self, embeddings: Tensor) -> Tensor:
        """``(embeddings - center) / scale``."""
        return (embeddings - self.center) / self.scale

    def forward(self, embeddings: Tensor, noise: Tensor | None = None) -> VAEOutput:
        """Encodes and decodes ``embeddings`` ``(N, dim)``.

        Args:
            embeddings: Raw (unstandardised) embeddings.
            noise: Standard normal draws ``(N, latent_dim)`` for the reparameterised sample
                ``z = mu + exp(logvar / 2) * noise``; ``None`` decodes ``z = mu`` (no sampling).
                Passing the noise in keeps every random draw under the caller's generator.
        """
        target = self.standardise(embeddings)
        hidden = self.encoder(target)
        mu, logvar = self.to_mu(hidden), self.to_logvar(hidden)
        z = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise.to(mu)
        return VAEOutput(self.decoder(z), target, mu, logvar)

    def reconstruction_error(self, embeddings: Tensor, noise: Tensor | None = None) -> Tensor:
        """Per-example mean squared reconstruction error ``(N,)`` in standardised units
        (differentiable with respect to ``embeddings``)."""
        return self(embeddings, noise).errors()

    def draw_noise(self, n: int, generator: torch.Generator) -> Tensor:
        """``(n, latent_dim)`` standard normal draws from ``generator`` (CPU), on the VAE's device."""
        return torch.randn(n, self.latent_dim, generator=generator).to(self.center)


def standardisation(embeddings: Tensor) -> tuple[Tensor, Tensor]:
    """``(center, scale)`` of a set of embeddings ``(N, D)``: the per-dimension mean and the
    root mean square deviation from it over all entries (one scalar; 1 for a constant set).

    One scalar rather than a per-dimension spread keeps dimensions that barely vary on the
    fitting set (dead ReLU units) from being blown up by a tiny divisor.

    Example:
        >>> center, scale = standardisation(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> center.tolist(), float(scale)
        ([1.0, 2.0], 1.0)
    """
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"need embeddings (N, D) with N > 0, got {tuple(embeddings.shape)}")
    center = embeddings.mean(dim=0)
    scale = (embeddings - center).pow(2).mean().sqrt()
    if not bool(scale > 0):
        scale = torch.ones_like(scale)
    return center, scale


def fit_embedding_vae(
    embeddings: Tensor,
    *,
    generator: torch.Generator,
    latent_dim: int = 8,
    hidden: Sequence[int] = (128, 32),
    epochs: int = 10,
    min_steps: int = 0,
    lr: float = 1e-3,
    batch_size: int = 32,
    kld_weight: float = 0.025,
    center: Tensor | None = None,
    scale: Tensor | None = None,
) -> tuple[EmbeddingVAE, list[float]]:
    """Fits an :class:`EmbeddingVAE` to ``embeddings`` with Adam; every random draw (weight
    initialisation, batch order, reparameterisation noise) comes from ``generator``.

    Args:
        embeddings: ``(N, D)`` feature vectors (detached; they are not changed).
        generator: Seeded CPU generator.
        latent_dim: Latent dimension.
        hidden: Widths of the two hidden layers.
        epochs: Passes over ``embeddings``.
        min_steps: Least number of optimiser steps: when ``epochs`` passes take fewer (a small
            set), passes are added until there are at least this many.
        lr: Adam learning rate.
        batch_size: Rows per step.
        kld_weight: Weight of the KL term (see :meth:`VAEOutput.loss`).
        center: Standardisation center ``(D,)``; default: from ``embeddings``
            (see :func:`standardisation`).
        scale: Standardisation scale (scalar); default: from ``embeddings``.

    Returns:
        The VAE in eval mode with ``requires_grad=False`` parameters (gradients still flow
        through it to its inputs), and the mean loss of every pass.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> vae, losses = fit_embedding_vae(torch.randn(64, 6), generator=gen, latent_dim=2, epochs=3)
        >>> len(losses), vae.training, any(p.requires_grad for p in vae.parameters())
        (3, False, False)
    """
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"need embeddings (N, D) with N > 0, got {tuple(embeddings.shape)}")
    if epochs < 0 or min_steps < 0 or batch_size <= 0 or lr <= 0:
        raise ValueError(
            "need epochs >= 0, min_steps >= 0, batch_size > 0 and lr > 0, got "
            f"{epochs}, {min_steps}, {batch_size}, {lr}"
        )
    data = embeddings.detach()
    if center is None or scale is None:
        own_center, own_scale = standardisation(data)
        center = own_center if center is None else center
        scale = own_scale if scale is None else scale
    # Weight initialisation draws from the global RNG: seed it from the generator, and leave the
    # caller's global state as it was.
    devices = [data.device] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        vae = EmbeddingVAE(data.shape[1], latent_dim, hidden)
    vae.to(device=data.device, dtype=data.dtype)
    vae.center.copy_(center.detach().to(vae.center))
    vae.scale.copy_(scale.detach().to(vae.scale).reshape(()))
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    per_pass = math.ceil(data.shape[0] / batch_size)
    passes = max(epochs, math.ceil(min_steps / per_pass)) if epochs > 0 or min_steps > 0 else 0
    losses: list[float] = []
    vae.train()
    for _ in range(passes):
        total = 0.0
        batches = shuffled_batches(data.shape[0], batch_size, generator)
        for idx in batches:
            batch = data[idx.to(data.device)]
            loss = vae(batch, vae.draw_noise(batch.shape[0], generator)).loss(kld_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / len(batches))
    vae.zero_grad(set_to_none=True)
    vae.eval()
    vae.requires_grad_(False)
    return vae, losses
