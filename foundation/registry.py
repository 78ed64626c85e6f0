"""Backbones registered by name (timm-style thin entry points)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from foundation.vit import CardiacViT

BACKBONES: dict[str, Callable[..., CardiacViT]] = {}


def register_backbone(fn: Callable[..., CardiacViT]) -> Callable[..., CardiacViT]:
    """Register an entry point under its function name; the models it builds carry that name
    (`model.architecture`), which the hub's config.json records."""

    @functools.wraps(fn)
    def build(**kwargs: Any) -> CardiacViT:
        model = fn(**kwargs)
        model.architecture = fn.__name__
        return model

    BACKBONES[fn.__name__] = build
    return build


def create_backbone(name: str, **kwargs: Any) -> CardiacViT:
    """Build a registered backbone; kwargs (patch_size, tubelet, depth, ...) override its defaults."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


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
