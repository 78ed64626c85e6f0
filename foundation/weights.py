"""Backbone weights, loaded one way whatever holds them.

A Lightning checkpoint is read by :mod:`foundation.checkpoint` (``weights_only``, the backbone
found under its prefix); a hub folder's files are checked by :mod:`foundation.hub_files`
(truncation, the sha256 and architecture its ``config.json`` records). Either way the architecture
the weights imply is compared with the one asked for before a strict load.
``foundation.registry.create_backbone(name, pretrained=...)``, ``foundation.hub.from_pretrained``,
``cmrfm export`` and fine-tuning all load through :func:`load_backbone_weights`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch

from foundation.architecture import BackboneWeights, backbone_kind, check_agree
from foundation.checkpoint import read_checkpoint, weights_from_state_dict
from foundation.hub_files import read_hub_weights
from foundation.names import CONFIG_NAME
from foundation.unet import CardiacUNet
from foundation.vit import CONTEXT_EMBEDDINGS, CardiacViT

logger = logging.getLogger(__name__)
B = TypeVar("B", CardiacViT, CardiacUNet)


def read_backbone_weights(path: str | Path, prefix: str | None = None) -> BackboneWeights:
    """Backbone weights from a Lightning checkpoint file or a hub folder (checked as
    read_hub_weights describes); prefix: where a checkpoint keeps the backbone (default: found)."""
    path = Path(path)
    if path.is_dir():
        return read_hub_weights(path)
    if path.suffix == ".safetensors":
        raise ValueError(
            f"{path}: pass the hub folder that holds it, so its {CONFIG_NAME} (architecture and "
            "sha256) is checked too"
        )
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise ValueError(f"{path}: no 'state_dict'; is this a Lightning checkpoint?")
    return weights_from_state_dict(ckpt["state_dict"], path, ckpt.get("hyper_parameters"), prefix)


def backbone_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone tensors (prefix stripped) of a checkpoint or hub folder, for inspection."""
    return read_backbone_weights(path).state


def _some(keys: list[str], n: int = 8) -> str:
    """The first n keys, and how many more, for an error message."""
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_backbone_weights(model: B, pretrained: str | Path | BackboneWeights) -> B:
    """Load pretrained (a Lightning checkpoint, a hub folder, or weights already read) into model
    strictly; returns model.

    Refused, naming the source: weights of another architecture than model's (patch_size,
    tubelet, depth, embed_dim, num_heads when recorded, ...), a missing or an unexpected key, a
    shape that differs. Only the modality and axis tables of checkpoints from before they existed
    may be absent (CardiacViT loads zeros, with a warning). A U-Net asked for with other output
    ``features`` (a segmenter's classes) keeps its own fresh top layer, as timm resets a
    classifier for another num_classes (:func:`_without_top_layer`).
    """
    if not isinstance(model, (CardiacViT, CardiacUNet)):
        raise TypeError(
            "load_backbone_weights loads into a CardiacViT or CardiacUNet, got "
            f"{type(model).__name__}"
        )
    weights = (
        pretrained if isinstance(pretrained, BackboneWeights) else read_backbone_weights(pretrained)
    )
    name = model.architecture or type(model).__name__
    was = f" (they were trained as {weights.architecture})" if weights.architecture else ""
    kind = backbone_kind(weights.state)
    if kind is not None and not isinstance(model, kind):
        raise ValueError(
            f"{weights.source}: the weights are a {kind.__name__}'s{was}, but {name} is a "
            f"{type(model).__name__}: build the backbone they were trained as"
        )
    fresh: set[str] = set()  # the model's own keys that stay as initialised
    if isinstance(model, CardiacUNet):
        weights, fresh = _without_top_layer(weights, model)
    check_agree(
        weights.arch_args(), model.model_args, weights.source,
        "the pretrained weights have", f"but {name} is asked for with",
        f"{was}: build the backbone with their arguments, or load weights trained for this one",
    )  # fmt: skip
    expected = set(model.state_dict()) - fresh
    missing = sorted(expected - set(weights.state) - set(CONTEXT_EMBEDDINGS))
    unexpected = sorted(set(weights.state) - expected)
    if missing or unexpected:
        where = f" under {weights.prefix!r}" if weights.prefix else ""
        problems = [f"missing keys {_some(missing)}"] if missing else []
        problems += [f"unexpected keys {_some(unexpected)}"] if unexpected else []
        raise ValueError(
            f"{weights.source}: the weights{where} do not fit {name}{was}: {'; '.join(problems)}"
        )
    try:
        model.load_state_dict(weights.state, strict=not fresh)  # the keys were checked above
    except RuntimeError as err:  # shapes the architecture check cannot see
        raise ValueError(f"{weights.source}: the weights do not fit {name}{was}: {err}") from err
    return model


UNET_TOP = "unet.model.2."  # the U-Net's last up-sampling layer: it outputs the features


def _without_top_layer(
    weights: BackboneWeights, model: CardiacUNet
) -> tuple[BackboneWeights, set[str]]:
    """(weights, model keys left fresh): unchanged when the weights output the model's number of
    features; otherwise the weights without their top layer and the model's top-layer keys,
    which keep their initialisation (a U-Net segmenter's top layer outputs its classes)."""
    theirs = weights.arch_args().get("features")
    if theirs is None or theirs == model.features:
        return weights, set()
    logger.info(
        "%s: features %s, the model asks for %s: its top layer (%s*) starts fresh",
        weights.source, theirs, model.features, UNET_TOP,
    )  # fmt: skip
    state = {k: v for k, v in weights.state.items() if not k.startswith(UNET_TOP)}
    recorded = {k: v for k, v in weights.recorded.items() if k != "features"}
    fresh = {k for k in model.state_dict() if k.startswith(UNET_TOP)}
    return dataclasses.replace(weights, state=state, recorded=recorded), fresh
