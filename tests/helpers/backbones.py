"""Small backbones and the sources their weights load from (hub folders, Lightning
checkpoints), for the tests of foundation's loading path (tests/foundation: registry, weights,
hub_files, checkpoint, architecture)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from foundation import CardiacViT, create_backbone
from foundation.hub import CONFIG_NAME, WEIGHTS_NAME
from foundation.names import SHA256_KEY

ARGS = {"patch_size": 8, "tubelet": 2}  # what every source here was trained with
PREPROCESS = {"spacing": 1.5, "size": 32, "frames": 4, "percentiles": (0.5, 99.5),
              "modalities": ["cine"]}  # fmt: skip
HPARAMS = {"backbone": "cmr_vit_test", "backbone_kwargs": ARGS}  # PretrainSystem's layout
SMALL = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1, "features": 6}  # a U-Net


def trained() -> CardiacViT:
    """A cmr_vit_test whose every weight, modality and axis rows included, is non-trivial."""
    torch.manual_seed(0)
    model = create_backbone("cmr_vit_test", **ARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def outputs(model: CardiacViT) -> torch.Tensor:
    x = torch.rand(2, 1, 4, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x, modality=torch.tensor([0, 1]), axis=torch.tensor([1, 0]))


def save_checkpoint(path: Path, state: dict, hparams: dict | None = None) -> Path:
    torch.save({"state_dict": state, "hyper_parameters": hparams or HPARAMS}, path)
    return path


def prefixed(model: CardiacViT, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if key in config["model_args"]:
            config["model_args"][key] = value
        elif value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def rewrite_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """New weights with their sha256 recorded, so only what else is wrong with them shows."""
    save_file(state, str(folder / WEIGHTS_NAME))
    edit_config(
        folder, **{SHA256_KEY: hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()}
    )


def load(pretrained, **kwargs) -> CardiacViT:
    return create_backbone("cmr_vit_test", pretrained=pretrained, **{**ARGS, **kwargs})


def save_pretraining_checkpoint(
    path: Path, patch: int = 8, seed: int = 1, system: str = "objective.", **extra
) -> dict:
    """A pretraining checkpoint with its MAE under system (``mae.``: the removed MAEPretrainer's)."""
    torch.manual_seed(seed)
    backbone = create_backbone("cmr_vit_test", patch_size=patch, tubelet=2)
    state = {f"{system}encoder.{k}": v for k, v in backbone.state_dict().items()}
    state[f"{system}decoder_embed.weight"] = torch.zeros(4, 4)  # the rest of the MAE: no backbone
    torch.save(
        {"state_dict": state, "hyper_parameters": {"backbone": "cmr_vit_test"}, **extra}, path
    )
    return backbone.state_dict()
