"""The supervised baseline every fine-tuned model must beat: MONAI's 2D U-Net, frame by frame."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn


class UNet2DSegmenter(nn.Module):
    """MONAI 2D U-Net applied to every frame of a clip: (B, 1, T, H, W) -> logits (B, K, T, H, W).

    Same interface as :class:`finetune.unetr.UNETRSegmenter`, so one training system and one
    evaluation serve both. H and W must divide by 2 ** len(strides).
    """

    def __init__(
        self,
        num_classes: int = 4,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        self.num_classes = num_classes
        self.net = UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=num_classes,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm="instance",
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, T, H, W) in [0, 1] -> logits (B, K, T, H, W)."""
        b, _, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, 1, h, w)  # (B*T, 1, H, W)
        logits = self.net(frames)  # (B*T, K, H, W)
        return logits.reshape(b, t, self.num_classes, h, w).permute(0, 2, 1, 3, 4)
