"""ResNet-18 for 32x32 inputs (CIFAR): a 3x3 stem without max-pool and four stages of BasicBlocks.

The usual CIFAR variant of He et al.'s ResNet-18 (as in the instance-wise unlearning paper's
code): ``conv3x3(3, w) - BN - ReLU``, stages of ``[2, 2, 2, 2]`` BasicBlocks with ``w, 2w, 4w, 8w``
channels (strides 1, 2, 2, 2), global average pooling and a linear head. ``width=64`` is the full
model (11.2 M parameters); ``width=16`` a narrow one (16-32-64-128 channels, 0.70 M parameters: 701,466)
that trains on a CPU.

Inputs stay in ``[0, 1]`` (unlearnkit's attacks and bounds assume that range); the per-channel
mean/std normalisation of the training recipe is the model's first layer, :class:`Normalize`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: Per-channel mean and std of the CIFAR-10 recipe (PROTOCOL section 1; the values of the
#: instance-wise paper's code and of many CIFAR ResNet repositories).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std stored as (non-trainable) buffers.

    Being part of the model, it travels with the checkpoint, and the model's input range stays
    ``[0, 1]``.

    Example:
        >>> Normalize((0.5,), (0.25,))(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [2.0, 2.0, 2.0, 2.0]
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``x`` ``(N, C, H, W)``."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={tuple(round(v, 4) for v in self.mean.flatten().tolist())}, " \
            f"std={tuple(round(v, 4) for v in self.std.flatten().tolist())}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 images: 3x3 stem, no max-pool, BasicBlocks ``[2, 2, 2, 2]``.

    Args:
        num_classes: Output classes.
        width: Channels of the stem and first stage; the stages have ``width * (1, 2, 4, 8)``.
            64 is the standard (full) ResNet-18, 16 the narrow CPU model.
        in_channels: Input channels.
        normalize: Put a :class:`Normalize` layer with ``mean``/``std`` first, so inputs are
            in ``[0, 1]``; ``False`` leaves ``norm`` an identity.
        mean: Per-channel mean of :class:`Normalize` (the CIFAR-10 values by default).
        std: Per-channel std of :class:`Normalize`.
        channels_last: Run the convolutions on a channels-last copy of the (normalised) input;
            the weights keep their usual layout. The same numbers up to float rounding, about
            1.3x faster on a CPU (measured: 251 -> 179 ms per batch of 128, width 16, one thread).

    Attributes:
        norm: The input normalisation (``Normalize`` or ``Identity``).
        features: Everything up to and including global pooling and flattening:
            ``features(x)`` is the ``(N, 8 * width)`` penultimate representation.
        head: The final linear layer.

    Example:
        >>> model = CifarResNet18(width=16)
        >>> model(torch.rand(2, 3, 32, 32)).shape, sum(p.numel() for p in model.parameters())
        (torch.Size([2, 10]), 701466)
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 64,
        *,
        in_channels: int = 3,
        normalize: bool = True,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if width < 1 or num_classes < 1:
            raise ValueError(f"width and num_classes must be positive, got {width} and {num_classes}")
        if normalize and len(mean) != in_channels:
            raise ValueError(f"normalisation has {len(mean)} channels but the input has {in_channels}")
        self.width = width
        self.channels_last = channels_last
        self.norm: nn.Module = Normalize(mean, std) if normalize else nn.Identity()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_planes = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**stage
            for block_stride in (stride, 1):
                layers.append(BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for inputs ``(N, in_channels, H, W)`` in ``[0, 1]``."""
        x = self.norm(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))


def resnet18_cifar(num_classes: int = 10, width: int = 64, *, normalize: bool = True) -> CifarResNet18:
    """A CIFAR ResNet-18 (``width=64`` full, ``width=16`` narrow) with CIFAR-10 normalisation."""
    return CifarResNet18(num_classes, width, normalize=normalize)
