"""Backbones registered by name (timm-style thin entry points)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from foundation.architecture import ARCH_ARGS, BackboneWeights
from foundation.released import resolve_pretrained
from foundation.unet import CardiacUNet
from foundation.vit import CardiacViT
from foundation.weights import load_backbone_weights, read_backbone_weights

Backbone = CardiacViT | CardiacUNet
BACKBONES: dict[str, Callable[..., Backbone]] = {}


def register_backbone(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
    """Register an entry point under its function name; the models it builds carry that name
    (`model.architecture`), which the hub's config.json records."""

    @functools.wraps(fn)
    def build(**kwargs: Any) -> Backbone:
        model = fn(**kwargs)
        model.architecture = fn.__name__
        return model

    BACKBONES[fn.__name__] = build
    return build


def create_backbone(
    name: str, pretrained: str | Path | BackboneWeights | None = None, **kwargs: Any
) -> Backbone:
    """Build a registered backbone, the one way to get pretrained weights into one (as timm's
    create_model); kwargs (patch_size, tubelet, depth, ...) override its defaults.

    pretrained: a Lightning checkpoint (pretraining or fine-tuning; DeepSpeed folders go through
    `cmrfm export` first), a hub folder (config.json + model.safetensors, sha256-verified), or
    weights already read (foundation.architecture.BackboneWeights), or a released model's name
    (foundation.released, e.g. "cmr-unet-small-cine"); None or "none" = random init. Weights
    trained for other architecture arguments are refused naming both, and loading is strict
    (foundation.weights.load_backbone_weights).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    model = BACKBONES[name](**kwargs)
    weights = pretrained
    if not isinstance(weights, BackboneWeights):
        path = resolve_pretrained(pretrained)
        if path is None:
            return model
        weights = read_backbone_weights(path)
    return load_backbone_weights(model, _with_registered_defaults(weights))


def _with_registered_defaults(weights: BackboneWeights) -> BackboneWeights:
    """weights with the arguments their recorded entry point implies filled in: a checkpoint's
    hyper-parameters name the backbone but state only its overrides, and num_heads, which the
    tensor shapes do not show, is usually among the defaults."""
    if weights.config is not None or weights.architecture not in BACKBONES:
        return weights  # a hub folder records every argument; an unknown name implies nothing
    try:
        with torch.device("meta"):  # arguments only, no memory
            args = BACKBONES[weights.architecture](**weights.recorded).model_args
    except (TypeError, ValueError):
        return weights  # recorded arguments this cmrfm cannot build: check what is stated
    return dataclasses.replace(weights, recorded={k: args[k] for k in ARCH_ARGS if k in args})


@register_backbone
def cmr_vit_tiny(**kwargs: Any) -> CardiacViT:
    """Width 192, 12 blocks, 3 heads (~5.4M parameters at patch 16, tubelet 2)."""
    return CardiacViT(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **kwargs})


@register_backbone
def cmr_vit_small(**kwargs: Any) -> CardiacViT:
    """Width 384, 12 blocks, 6 heads (~21M parameters)."""
    return CardiacViT(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kwargs})


@register_backbone
def cmr_vit_base(**kwargs: Any) -> CardiacViT:
    """Width 768, 12 blocks, 12 heads (~86M parameters): ViT-B."""
    return CardiacViT(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


@register_backbone
def cmr_vit_large(**kwargs: Any) -> CardiacViT:
    """Width 1024, 24 blocks, 16 heads (~303M parameters): ViT-L."""
    return CardiacViT(**{"embed_dim": 1024, "depth": 24, "num_heads": 16, **kwargs})


@register_backbone
def cmr_vit_test(**kwargs: Any) -> CardiacViT:
    """Width 32, 4 blocks, 2 heads: for tests and the CPU demo's smoke runs."""
    return CardiacViT(**{"embed_dim": 32, "depth": 4, "num_heads": 2, **kwargs})


@register_backbone
def cmr_unet_small(**kwargs: Any) -> CardiacUNet:
    """MONAI's 2D U-Net body, channels 16-256, 2 residual units, 16 output features (~1.6M
    parameters): the baseline's network, for CPU-scale pretraining (foundation.unet)."""
    return CardiacUNet(**kwargs)
