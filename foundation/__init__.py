"""The backbone: a spatiotemporal ViT, its registry of sizes, and hub folders (save/load)."""

from foundation.hub import from_pretrained, save_pretrained
from foundation.registry import BACKBONES, create_backbone, register_backbone
from foundation.vit import AXES, MODALITIES, CardiacViT, axis_index, modality_index

__all__ = [
    "AXES",
    "BACKBONES",
    "MODALITIES",
    "CardiacViT",
    "axis_index",
    "create_backbone",
    "from_pretrained",
    "modality_index",
    "register_backbone",
    "save_pretrained",
]
