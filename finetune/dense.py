"""A segmenter on a dense backbone: per-pixel features to classes with a 1x1 convolution.

A dense backbone (foundation.unet.CardiacUNet) already has its decoder, so the only new layer is
the class layer; started from pretrained weights, it is the baseline U-Net with every tensor but
that layer pretrained (benchmarks/RESULTS.md, "Few labels on a CPU").
"""

from __future__ import annotations

import torch
from torch import nn

from foundation.unet import CardiacUNet


class DenseSegmenter(nn.Module):
    """backbone (B, 1, T, H, W) -> features (B, F, T, H, W) -> logits (B, K, T, H, W)."""

    def __init__(self, backbone: CardiacUNet, num_classes: int = 4) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        self.backbone, self.num_classes = backbone, num_classes
        self.head = nn.Conv3d(backbone.num_features, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, T, H, W) in [0, 1] -> logits (B, K, T, H, W)."""
        return self.head(self.backbone(x))
