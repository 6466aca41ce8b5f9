"""Input-space neighbours of the forget instances that keep their class: shifted copies.

A model that must misclassify one image of a "7" must not stop recognising 7s. Shifted copies
of the forget instances, which the original model still assigns to their class, stand in for
the rest of that class near the instance: training to keep the original's outputs on them
confines the change to the instance itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def shifted_copies(images: Tensor, max_shift: int) -> tuple[Tensor, Tensor]:
    """Every translation of each image by ``(dy, dx)`` with ``1 <= max(|dy|, |dx|) <= max_shift``.

    Borders are filled by replicating the edge pixels (no wrap-around).

    Args:
        images: ``(N, C, H, W)`` images.
        max_shift: Largest shift in pixels; 0 returns nothing.

    Returns:
        ``(copies, source)``: the shifted images, ``(N * S, C, H, W)``, and for each copy the
        index of the image it came from.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> copies, source = shifted_copies(x, 1)
        >>> copies.shape, source.tolist() == [0] * 8
        (torch.Size([8, 1, 4, 4]), True)
    """
    if images.dim() != 4:
        raise ValueError(f"shifted copies need (N, C, H, W) images, got shape {tuple(images.shape)}")
    if max_shift <= 0:
        return images[:0], torch.zeros(0, dtype=torch.long, device=images.device)
    n, _, h, w = images.shape
    s = max_shift
    padded = F.pad(images, (s, s, s, s), mode="replicate")
    copies, sources = [], []
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            if (dy, dx) == (0, 0):
                continue
            copies.append(padded[:, :, s - dy : s - dy + h, s - dx : s - dx + w])
            sources.append(torch.arange(n, device=images.device))
    return torch.cat(copies), torch.cat(sources)
