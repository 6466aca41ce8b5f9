"""A small convolutional classifier for 8x8 digits and 28x28 MNIST."""

from __future__ import annotations

from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Two conv-BatchNorm-ReLU-maxpool blocks and a two-layer head.

    Args:
        in_channels: Input channels.
        num_classes: Output classes.
        image_size: Input height and width (divisible by 4).
        width: Channels of the first block (the second has twice as many).
        hidden: Units of the hidden head layer.

    Example:
        >>> import torch
        >>> SmallCNN(image_size=8)(torch.rand(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8, width: int = 32, hidden: int = 128
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * width * (image_size // 4) ** 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` for inputs ``(N, in_channels, image_size, image_size)``."""
        return self.head(self.features(x))
