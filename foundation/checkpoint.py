"""Read Lightning checkpoints safely (weights_only) and restore modules or backbone weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

# Where systems keep the backbone: pretraining (before the objective registry: mae.), fine-tuning.
PREFIXES = ("objective.encoder.", "mae.encoder.", "model.backbone.")
M = TypeVar("M", bound=nn.Module)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's dict, never unpickling arbitrary objects; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a checkpoint, or unsafe pickle content
        raise ValueError(f"{path}: cannot read as a Lightning checkpoint ({err})") from err


def restore(cls: type[M], path: Path, **overrides: Any) -> tuple[M, dict[str, Any]]:
    """Rebuild cls from the checkpoint's hyper_parameters (+ overrides) and load its weights strictly."""
    ckpt = read_checkpoint(path)
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    module = cls(**{**hparams, **overrides})  # "_"-keys are LightningCLI bookkeeping
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return module, ckpt


def backbone_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Backbone tensors from a pretraining or fine-tuning checkpoint (prefix stripped) or from
    a hub folder (``model.safetensors``, what ``cmrfm export`` writes and users download)."""
    path = Path(path)
    if path.is_dir():
        weights = path / "model.safetensors"  # foundation.hub.WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: a folder, but no model.safetensors in it")
        return load_file(weights)  # safetensors: tensors only, nothing unpickled
    state = read_checkpoint(path).get("state_dict", {})
    for prefix in PREFIXES:
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise ValueError(f"{path}: no backbone weights (keys starting with {' or '.join(PREFIXES)})")


def load_backbone_weights(backbone: nn.Module, path: Path) -> None:
    """Strict load: a missing or unexpected key, or a shape mismatch, is an error naming the file."""
    state = backbone_state_dict(path)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: backbone weights do not fit the configured backbone (check backbone name, "
            f"patch_size and tubelet): {err}"
        ) from err
