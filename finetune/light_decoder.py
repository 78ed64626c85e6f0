"""A light per-frame segmentation decoder on backbone intermediates: progressive upsampling with
few small convolutions and a full-resolution skip from the input frames (MONAI blocks, 2D)."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, UnetOutBlock
from torch import nn

from finetune.unetr import slot_frames, slot_logits, slot_maps
from foundation.vit import CardiacViT, n_upsample

MAX_TAPS = 4  # blocks fused into the decoder's input, evenly spread over depth
MAX_DOUBLINGS = 2  # channels double per stage down to H/4, then stay: fs * 2^min(k, 2)
ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})  # as MONAI's Unet blocks


class LightSegmenter(nn.Module):
    """Backbone + light 2D decoder applied to every time slot of the token grid.

    Same interface as :class:`finetune.unetr.UNETRSegmenter`: input (B, 1, T, H, W) gives logits
    (B, K, T, H, W), and the blocks tapped are asked of the backbone (`default_taps`). Unlike
    UNETR it lifts no tap to intermediate resolutions and has no residual blocks: the taps are
    concatenated and projected once at token resolution, then doubled stage by stage, each stage
    a 2x2 transposed convolution and one 3x3 convolution, with fs * 2^min(k, 2) channels at
    H/2^k. At full resolution one 3x3 convolution of each time slot's raw frames is the skip
    that keeps boundaries sharp; the last stage's convolution fuses it with the upsampled map.

    Args:
        backbone: the encoder; its patch_size must be a power of two, at least 2.
        num_classes: K output classes including background.
        feature_size: fs, channels at full resolution (doubling per stage down, at most 4x).
    """

    def __init__(self, backbone: CardiacViT, num_classes: int = 4, feature_size: int = 16) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        if feature_size < 1:
            raise ValueError(f"feature_size={feature_size} must be >= 1")
        levels = n_upsample(backbone.patch_size)  # resolutions H/2^0 .. H/2^levels
        if levels < 1:
            raise ValueError(
                f"patch_size={backbone.patch_size} must be at least 2 for this decoder"
            )
        self.backbone, self.num_classes = backbone, num_classes
        self.taps = backbone.default_taps(min(MAX_TAPS, backbone.depth))
        dim, tub, fs = backbone.embed_dim, backbone.tubelet, feature_size
        channels = [fs * 2 ** min(k, MAX_DOUBLINGS) for k in range(levels + 1)]  # at H/2^k
        # Plain convolutions before a concatenation or the next 3x3 convolution's norm: at token
        # resolution a map can be 1x1, too small to normalise.
        self.fuse = Convolution(
            2, dim * len(self.taps), channels[-1], kernel_size=1, conv_only=True
        )
        conv = {"spatial_dims": 2, "kernel_size": 3, "norm": "instance", "act": ACT}
        # ups[i] and convs[i] go from H/2^(k+1) to H/2^k, k = levels-1-i; the last (k = 0) also
        # takes the stem's full-resolution map.
        up = {"strides": 2, "kernel_size": 2, "is_transposed": True, "padding": 0}
        stages = list(reversed(range(levels)))
        self.ups = nn.ModuleList(
            Convolution(2, channels[k + 1], channels[k], output_padding=0, conv_only=True, **up)
            for k in stages
        )
        self.convs = nn.ModuleList(
            Convolution(in_channels=channels[k] * (1 + (k == 0)), out_channels=channels[k], **conv)
            for k in stages
        )
        self.stem = Convolution(in_channels=tub, out_channels=fs, **conv)
        self.head = UnetOutBlock(spatial_dims=2, in_channels=fs, out_channels=num_classes * tub)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, T, H, W) in [0, 1] -> logits (B, K, T, H, W)."""
        grid = self.backbone.grid(x.shape)
        feats = self.backbone.forward_intermediates(x, self.taps, norm=True)  # each (B, L, D)
        y = self.fuse(slot_maps(torch.cat(feats, dim=-1), grid))  # (B*t, C, h, w)
        frames = slot_frames(x, self.backbone.tubelet)  # (B*t, tub, H, W)
        for i, (up, conv) in enumerate(zip(self.ups, self.convs)):
            y = up(y)  # (B*t, C_k, H/2^k, W/2^k)
            if i == len(self.ups) - 1:
                y = torch.cat([y, self.stem(frames)], dim=1)  # (B*t, 2 fs, H, W)
            y = conv(y)
        return slot_logits(self.head(y), x.shape, self.num_classes)  # from (B*t, K*tub, H, W)
