"""A dense convolutional backbone: MONAI's 2D U-Net applied to every frame of a clip.

At CPU scale a ViT segmenter trails a plain U-Net by far at every label count
(`benchmarks/RESULTS.md`, "Few labels on a CPU"), so the network that pretraining must improve
is the U-Net itself. This backbone is that network without its class layer: it maps a clip to
per-pixel features, and heads (a 1x1 convolution to classes, a pixel reconstruction) sit on
top. The bottleneck's features are exposed too, for objectives that compare whole images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from monai.networks.nets import UNet


class CardiacUNet(nn.Module):
    """MONAI 2D U-Net body, frame by frame: clip (B, C_in, T, H, W) -> features (B, F, T, H, W).

    Args:
        channels: channels at each resolution, full resolution first (MONAI ``UNet``).
        strides: downsampling between them; H and W must divide by their product.
        num_res_units: residual units per block.
        features: F, channels of the full-resolution output (heads take these).
        in_chans: image channels (1 for MRI).
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        features: int = 16,
        in_chans: int = 1,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) + 1:
            raise ValueError(
                f"channels={tuple(channels)} needs one more entry than strides={tuple(strides)}"
            )
        if features < 1:
            raise ValueError(f"features={features} must be >= 1")
        self.model_args: dict[str, Any] = {
            "channels": list(channels),
            "strides": list(strides),
            "num_res_units": num_res_units,
            "features": features,
            "in_chans": in_chans,
        }
        self.features, self.in_chans = features, in_chans
        self.num_features = features  # timm's name for what heads take
        self.architecture: str | None = None  # the registered name (foundation.registry)
        self.reduction = math.prod(strides)
        from monai.networks.nets import UNet  # here: MONAI's eager import takes seconds

        self.unet = UNet(
            spatial_dims=2,
            in_channels=in_chans,
            out_channels=features,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm="instance",
        )
        self.tap_dims = {"output": int(channels[-1]), "input": int(channels[-2])}
        self._kept: dict[str, torch.Tensor] = {}
        bottom = _deepest_block(self.unet, int(channels[-1]))  # not an attribute: no alias keys
        bottom.register_forward_pre_hook(lambda _m, args: self._kept.__setitem__("input", args[0]))
        bottom.register_forward_hook(lambda _m, _i, out: self._kept.__setitem__("output", out))
        self._register_load_state_dict_pre_hook(_drop_alias_keys)

    def _frames(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, T, H, W) -> (B*T, C, H, W), checking the size; returns (frames, (B, T))."""
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected a clip (B, {self.in_chans}, T, H, W), got {tuple(x.shape)}")
        b, c, t, h, w = x.shape
        if h % self.reduction or w % self.reduction:
            raise ValueError(
                f"image {h} x {w} does not divide by {self.reduction} (the product of strides)"
            )
        return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), (b, t)

    def forward_features(
        self, x: torch.Tensor, bottleneck: bool = False, tap: str = "output"
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, C_in, T, H, W) -> features (B, F, T, H, W); with ``bottleneck`` also the
        deepest block's map: its output (tap "output", (B, T, C_last, H/r, W/r), r the product
        of strides) or its input (tap "input": the deepest encoder level, C_{-2} channels on the
        same grid)."""
        if tap not in self.tap_dims:
            raise ValueError(f"tap={tap!r}: choose {' or '.join(map(repr, self.tap_dims))}")
        frames, (b, t) = self._frames(x)
        self._kept.clear()
        out = self.unet(frames)  # (B*T, F, H, W)
        deep = self._kept[tap]
        self._kept.clear()
        out = out.reshape(b, t, *out.shape[1:]).permute(0, 2, 1, 3, 4)
        if not bottleneck:
            return out
        return out, deep.reshape(b, t, *deep.shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T, H, W) -> features (B, F, T, H, W)."""
        return self.forward_features(x)

    def encoder_modules(self) -> list[nn.Module]:
        """The encoder half: each level's down block, full resolution first, down to (not
        including) the bottom block; what a loss on the deepest encoder level (tap "input")
        trains. The bottom block and the up path are the decoder half."""
        from monai.networks.layers import SkipConnection

        blocks, level = [], self.unet.model
        while isinstance(level, nn.Sequential) and isinstance(level[1], SkipConnection):
            blocks.append(level[0])  # MONAI nests each level as (down, skip(deeper), up)
            level = level[1].submodule
        return blocks

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of :meth:`encoder_modules`."""
        return [p for block in self.encoder_modules() for p in block.parameters()]

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: the bottom block, the up path, the top layer."""
        encoder = {id(p) for p in self.encoder_parameters()}
        return [p for p in self.parameters() if id(p) not in encoder]

    def top_layer(self) -> nn.Module:
        """The last up-sampling layer, which outputs the features (a segmenter's classes)."""
        return self.unet.model[2]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Accepted for the backbone interface; the U-Net's activations are small at CPU scale."""
        if enable:
            raise ValueError("CardiacUNet has no gradient checkpointing; set it to false")


def _drop_alias_keys(state: dict[str, torch.Tensor], prefix: str, *_: Any) -> None:
    """Checkpoints written before 2026-12-04 also hold the bottom block under ``_bottom.``, an
    alias of tensors saved under ``unet.``: drop it so they load strictly."""
    for key in [k for k in state if k.startswith(prefix + "_bottom.")]:
        del state[key]


def _deepest_block(unet: UNet, channels: int) -> nn.Module:
    """The bottom block, the first module that outputs the bottleneck's ``channels`` (its own
    convolutions, met after it, output them too)."""
    blocks = [m for m in unet.modules() if getattr(m, "out_channels", None) == channels]
    if not blocks:
        raise ValueError(f"no block of the U-Net outputs {channels} channels")
    return blocks[0]
