"""A trained backbone and what a hub folder of it records beside the weights (preprocessing,
data manifests, training), for the hub tests (tests/foundation: hub, hub_files)."""

from __future__ import annotations

import torch

from foundation import CardiacViT, create_backbone

PREPROCESS = {
    "spacing": 1.5,
    "size": 32,
    "frames": 4,
    "percentiles": (0.5, 99.5),
    "modalities": ["cine", "lge"],
}
DATA = {
    "datasets": ["ACDC", "EMIDEC"],
    "manifests": [
        {"sha256": "a" * 64, "source": "acdc", "subjects": 100, "samples": 100, "modalities": ["cine"]},
        {"sha256": "b" * 64, "source": "lge-slices", "subjects": 85, "samples": 85, "modalities": ["lge"]},
    ],
}  # fmt: skip
TRAINING = {"objective": "mae_contrastive", "steps": 1234, "hyper_parameters": {"lr": 1e-3}}


def trained_backbone(**kwargs) -> CardiacViT:
    """A small backbone whose every weight, modality and axis rows included, is non-trivial."""
    torch.manual_seed(0)
    model = create_backbone("cmr_vit_test", patch_size=8, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()
