"""The architecture a backbone's weights imply: their kind (CardiacViT or CardiacUNet) by their
first key, the constructor arguments their tensor shapes show, the keys such a backbone has, and
the check that two statements of the architecture agree. :class:`BackboneWeights` carries the
tensors with what their source records."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foundation.unet import CardiacUNet
from foundation.vit import CONTEXT_EMBEDDINGS, CardiacViT

# The first tensor of each kind of backbone; the prefix it sits under is the backbone's.
ANCHOR = "patch_embed.weight"  # CardiacViT
UNET_ANCHORS = ("unet.model.0.conv.unit0.conv.weight", "unet.model.0.conv.weight")  # CardiacUNet
ANCHORS = (ANCHOR, *UNET_ANCHORS)
# Constructor arguments that decide what the weights mean: the source and the model must agree.
# drop_path_rate and compile are training and runtime choices, free to differ.
VIT_ARGS = (
    "embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "tubelet", "in_chans", "qkv_bias"
)  # fmt: skip
UNET_ARGS = ("channels", "strides", "num_res_units", "features", "in_chans")
ARCH_ARGS = tuple(dict.fromkeys(VIT_ARGS + UNET_ARGS))
# A U-Net's down path: level d's first convolution (the bottom block has no "0.").
_UNET_DOWN = re.compile(r"^unet\.model\.((?:1\.submodule\.)*)(0\.)?conv\.(?:unit0\.conv\.)?weight$")


@dataclass
class BackboneWeights:
    """A backbone's tensors (prefix stripped) and what their source says about them.

    source: the file named in errors; prefix: where the tensors sat in a checkpoint ("" in a hub
    folder); recorded: ARCH_ARGS the source states (config.json ``model_args``, a checkpoint's
    hyper-parameters); architecture: the registered name it states; config: a hub folder's
    config.json.
    """

    source: Path
    state: dict[str, torch.Tensor]
    prefix: str = ""
    recorded: dict[str, Any] = field(default_factory=dict)
    architecture: str | None = None
    config: dict[str, Any] | None = None

    def arch_args(self) -> dict[str, Any]:
        """The architecture of these weights: what the tensor shapes imply, completed by what the
        source records (num_heads leaves no trace in shapes)."""
        return {**self.recorded, **inferred_architecture(self.state)}


@functools.lru_cache(maxsize=16)
def _backbone_keys(depth: int, qkv_bias: bool) -> frozenset[str]:
    """State-dict keys of a CardiacViT of this depth (built on the meta device: names only)."""
    with torch.device("meta"):
        model = CardiacViT(embed_dim=8, depth=depth, num_heads=1, qkv_bias=qkv_bias)
    return frozenset(model.state_dict())


@functools.lru_cache(maxsize=16)
def _unet_keys(levels: int, num_res_units: int) -> frozenset[str]:
    """State-dict keys of a CardiacUNet with this many resolutions (meta device: names only)."""
    with torch.device("meta"):
        model = CardiacUNet([2] * levels, [2] * (levels - 1), num_res_units, features=2)
    return frozenset(model.state_dict())


# The top-level names of backbone tensors: patch_embed, blocks, ... (ViT) and unet (U-Net).
BACKBONE_TOPS = frozenset(k.split(".")[0] for k in _backbone_keys(1, True)) | {"unet"}


def backbone_kind(state: Mapping[str, torch.Tensor]) -> type[nn.Module] | None:
    """The backbone class these tensors (prefix stripped) are weights of, by their first key."""
    if ANCHOR in state:
        return CardiacViT
    if any(anchor in state for anchor in UNET_ANCHORS):
        return CardiacUNet
    return None


def missing_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys a backbone of the architecture the tensors imply would have and they lack."""
    args = inferred_architecture(state)
    if "channels" in args:
        expected = _unet_keys(len(args["channels"]), args["num_res_units"])
    else:
        expected = _backbone_keys(args.get("depth", 0), args.get("qkv_bias", True))
    return sorted(expected - set(state) - set(CONTEXT_EMBEDDINGS))  # older checkpoints lack these


def inferred_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ARCH_ARGS that tensor shapes imply: embed_dim, in_chans, tubelet and patch_size from
    patch_embed.weight (D, C, t, p, p), depth from the blocks present, mlp_ratio and qkv_bias
    from the first block; a U-Net's as :func:`_unet_architecture`; {} for neither."""
    if backbone_kind(state) is CardiacUNet:
        return _unet_architecture(state)
    w = state.get(ANCHOR)
    if w is None or w.ndim != 5:
        return {}
    args: dict[str, Any] = {
        "embed_dim": w.shape[0], "in_chans": w.shape[1], "tubelet": w.shape[2],
        "patch_size": w.shape[3],
    }  # fmt: skip
    parts = [k.split(".") for k in state]
    blocks = {int(p[1]) for p in parts if p[0] == "blocks" and len(p) > 1 and p[1].isdigit()}
    args["depth"] = max(blocks) + 1 if blocks else 0
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        args["mlp_ratio"] = fc1.shape[0] / w.shape[0]
    if "blocks.0.attn.qkv.weight" in state:
        args["qkv_bias"] = "blocks.0.attn.qkv.bias" in state
    return args


def _unet_architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """UNET_ARGS but strides (shapes do not show them): channels from each level's first
    convolution, num_res_units from the first block, in_chans and features from the ends."""
    levels = {}
    for key, tensor in state.items():
        match = _UNET_DOWN.match(key)
        if match and tensor.ndim == 4:
            levels[match.group(1).count("submodule")] = int(tensor.shape[0])
    first = next(state[k] for k in UNET_ANCHORS if k in state)
    units = {k.split(".")[4] for k in state if k.startswith("unet.model.0.conv.unit")}
    args: dict[str, Any] = {
        "channels": [levels[d] for d in sorted(levels)], "num_res_units": len(units),
        "in_chans": int(first.shape[1]),
    }  # fmt: skip
    last = state.get("unet.model.2.1.conv.unit0.conv.weight")  # the up path's units have one
    if last is not None:
        args["features"] = int(last.shape[0])
    elif "unet.model.2.conv.weight" in state:  # no residual units: a transposed convolution
        args["features"] = int(state["unet.model.2.conv.weight"].shape[1])
    return args


def _differ(key: str, theirs: Any, ours: Any, width: int) -> bool:
    """Whether two values of the ARCH_ARG key describe different weights (width: embed_dim)."""
    if key == "mlp_ratio":  # the hidden width is int(width * ratio): equal widths agree
        return int(width * float(ours)) != round(width * float(theirs))
    if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)):
        return list(theirs) != list(ours)
    return theirs != ours


def check_agree(
    theirs: Mapping[str, Any],
    ours: Mapping[str, Any],
    source: Path,
    they: str,
    we: str,
    fix: str = "",
) -> None:
    """Raise naming source and both values of every ARCH_ARG the two mappings both state and
    disagree on: '<source>: <they> patch_size 16, <we> patch_size 8<fix>'."""
    width = int(theirs.get("embed_dim") or ours.get("embed_dim") or 1)
    keys = [
        k for k in ARCH_ARGS if k in theirs and k in ours and _differ(k, theirs[k], ours[k], width)
    ]
    if keys:
        raise ValueError(
            f"{source}: {they} {_listed(theirs, keys)}, {we} {_listed(ours, keys)}{fix}"
        )


def _listed(args: Mapping[str, Any], keys: Iterable[str]) -> str:
    """'patch_size 16, depth 2': the values of keys in args, for an error message."""
    return ", ".join(f"{k} {args[k]:g}" if k == "mlp_ratio" else f"{k} {args[k]}" for k in keys)
