"""A segmenter that is a dense backbone: the U-Net's top layer outputs the classes.

A dense backbone (foundation.unet.CardiacUNet) already has its decoder. Built with ``features``
equal to the number of classes it is MONAI's baseline U-Net itself, layer for layer (same
initialisation under the same seed, same cost per step); started from pretrained weights, every
tensor but that top layer is loaded (foundation.weights.load_backbone_weights), as in
benchmarks/RESULTS.md, "Few labels on a CPU".
"""

from __future__ import annotations

import torch
from torch import nn

from foundation.unet import CardiacUNet


class DenseSegmenter(nn.Module):
    """backbone (B, 1, T, H, W) -> logits (B, K, T, H, W), K = the backbone's features."""

    def __init__(self, backbone: CardiacUNet) -> None:
        super().__init__()
        if backbone.num_features < 2:
            raise ValueError(
                f"a dense segmenter needs >= 2 classes; the backbone outputs {backbone.num_features}"
            )
        self.backbone, self.num_classes = backbone, backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, T, H, W) in [0, 1] -> logits (B, K, T, H, W)."""
        return self.backbone(x)
