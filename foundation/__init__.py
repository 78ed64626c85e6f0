"""The backbone: a spatiotemporal ViT and its registry of sizes."""

from foundation.registry import BACKBONES, create_backbone, register_backbone
from foundation.vit import CardiacViT

__all__ = ["BACKBONES", "CardiacViT", "create_backbone", "register_backbone"]
