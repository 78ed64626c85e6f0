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
        grid = self.backbone.grid(x.shape)
        feats = self.backbone.forward_intermediates(x, self.taps, norm=True)  # each (B, L, D)
        frames = slot_frames(x, self.backbone.tubelet)  # (B*t, tub, H, W)
        maps = [slot_maps(f, grid) for f in feats]  # each (B*t, D, h, w)
        skips = [self.stem(frames)] + [enc(m) for enc, m in zip(self.encoders, maps[:-1])]
        y = maps[-1]
        for k in reversed(range(len(self.decoders))):
            y = self.decoders[k](y, skips[k])  # (B*t, fs*2^k, H/2^k, W/2^k)
        return slot_logits(self.head(y), x.shape, self.num_classes)  # from (B*t, K*tub, H, W)


def slot_frames(x: torch.Tensor, tubelet: int) -> torch.Tensor:
    """Clips (B, 1, T, H, W) -> each time slot's frames as channels (B*t, tubelet, H, W)."""
    b, _, t_in, h, w = x.shape
    return x.reshape(b * (t_in // tubelet), tubelet, h, w)


def slot_maps(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Tokens (B, t*h*w, D) in t-major order -> one map per time slot (B*t, D, h, w)."""
    t, h, w = grid
    b = tokens.shape[0]
    return tokens.reshape(b, t, h, w, -1).permute(0, 1, 4, 2, 3).reshape(b * t, -1, h, w)


def slot_logits(logits: torch.Tensor, shape: torch.Size, num_classes: int) -> torch.Tensor:
    """Per-slot logits (B*t, K*tubelet, H, W) -> per-frame logits (B, K, T, H, W) for input
    clips of shape (B, 1, T, H, W)."""
    b, _, t_in, h, w = shape
    tubelet = logits.shape[1] // num_classes
    logits = logits.reshape(b, t_in // tubelet, num_classes, tubelet, h, w)
    return logits.permute(0, 2, 1, 3, 4, 5).reshape(b, num_classes, t_in, h, w)
