"""UNETR-style per-frame segmentation decoder on backbone intermediates (MONAI blocks, 2D)."""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from foundation.vit import CardiacViT, n_upsample


class UNETRSegmenter(nn.Module):
    """Backbone + 2D UNETR decoder applied to every time slot of the token grid.

    The backbone attends across space and time; the decoder turns each time slot's (h, w) token
    map into `tubelet` frames of logits, so input (B, 1, T, H, W) gives logits (B, K, T, H, W).
    Which blocks feed the decoder is asked of the backbone (`default_taps`), so any size fits.

    Args:
        backbone: the encoder; its patch_size must be a power of two.
        num_classes: K output classes including background.
        feature_size: channels of the full-resolution decoder stage (doubles per stage down).
    """

    def __init__(self, backbone: CardiacViT, num_classes: int = 4, feature_size: int = 16) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes} must be >= 2")
        self.backbone, self.num_classes = backbone, num_classes
        levels = n_upsample(backbone.patch_size)  # resolutions H/2^0 .. H/2^levels
        self.taps = backbone.default_taps(max(levels, 1))
        dim, tub, fs = backbone.embed_dim, backbone.tubelet, feature_size
        kw = {"spatial_dims": 2, "norm_name": "instance"}
        self.stem = UnetrBasicBlock(
            in_channels=tub, out_channels=fs, kernel_size=3, stride=1, res_block=True, **kw
        )
        # encoders[k-1] lifts tap k-1 from H/2^levels to H/2^k with fs*2^k channels.
        self.encoders = nn.ModuleList(
            UnetrPrUpBlock(
                in_channels=dim,
                out_channels=fs * 2**k,
                num_layer=levels - k - 1,
                kernel_size=3,
                stride=1,
                upsample_kernel_size=2,
                **kw,
            )
            for k in range(1, levels)
        )
        # decoders[k] goes from H/2^(k+1) to H/2^k and fuses that stage's skip.
        self.decoders = nn.ModuleList(
            UnetrUpBlock(
                in_channels=dim if k == levels - 1 else fs * 2 ** (k + 1),
                out_channels=fs * 2**k,
                kernel_size=3,
                upsample_kernel_size=2,
                res_block=True,
                **kw,
            )
            for k in range(levels)
        )
        self.head = UnetOutBlock(spatial_dims=2, in_channels=fs, out_channels=num_classes * tub)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1, T, H, W) in [0, 1] -> logits (B, K, T, H, W)."""
        b, _, t_in, h_in, w_in = x.shape
        t, h, w = self.backbone.grid(x.shape)
        tub = self.backbone.tubelet
        feats = self.backbone.forward_intermediates(x, self.taps, norm=True)  # each (B, L, D)

        def to_maps(tokens: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B*t, D, h, w)
            return tokens.reshape(b, t, h, w, -1).permute(0, 1, 4, 2, 3).reshape(b * t, -1, h, w)

        frames = x.reshape(b, t, tub, h_in, w_in).reshape(
            b * t, tub, h_in, w_in
        )  # (B*t, tub, H, W)
        skips = [self.stem(frames)] + [enc(to_maps(f)) for enc, f in zip(self.encoders, feats[:-1])]
        y = to_maps(feats[-1])  # (B*t, D, h, w)
        for k in reversed(range(len(self.decoders))):
            y = self.decoders[k](y, skips[k])  # (B*t, fs*2^k, H/2^k, W/2^k)
        logits = self.head(y)  # (B*t, K*tub, H, W)
        logits = logits.reshape(b, t, self.num_classes, tub, h_in, w_in)
        return logits.permute(0, 2, 1, 3, 4, 5).reshape(b, self.num_classes, t_in, h_in, w_in)
