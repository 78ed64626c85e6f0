"""Backbones registered by name (timm-style thin entry points)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundation.vit import CardiacViT

BACKBONES: dict[str, Callable[..., CardiacViT]] = {}


def register_backbone(fn: Callable[..., CardiacViT]) -> Callable[..., CardiacViT]:
    BACKBONES[fn.__name__] = fn
    return fn


def create_backbone(name: str, **kwargs: Any) -> CardiacViT:
    """Build a registered backbone; kwargs (patch_size, tubelet, ...) override its defaults."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


@register_backbone
def cmr_vit_tiny(**kwargs: Any) -> CardiacViT:
    """Width 192, 12 blocks, 3 heads (~5.5M parameters)."""
    return CardiacViT(**{"embed_dim": 192, "depth": 12, "num_heads": 3, **kwargs})


@register_backbone
def cmr_vit_small(**kwargs: Any) -> CardiacViT:
    """Width 384, 12 blocks, 6 heads (~21M parameters)."""
    return CardiacViT(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kwargs})


@register_backbone
def cmr_vit_test(**kwargs: Any) -> CardiacViT:
    """Width 32, 4 blocks, 2 heads: for tests and the CPU demo's smoke runs."""
    return CardiacViT(**{"embed_dim": 32, "depth": 4, "num_heads": 2, **kwargs})
