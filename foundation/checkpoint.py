"""Backbone weights, loaded one way whatever holds them.

A Lightning checkpoint is read with ``weights_only`` (nothing arbitrary is unpickled) and the
backbone is found under its prefix; a hub folder's ``model.safetensors`` is checked for
truncation and against the sha256 and architecture its ``config.json`` records. Either way the
architecture the weights imply is compared with the one asked for before a strict load.
``foundation.registry.create_backbone(name, pretrained=...)``, ``foundation.hub.from_pretrained``,
``cmrfm export`` and fine-tuning all load through :func:`load_backbone_weights`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import re
import struct
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file
from torch import nn

from cmrfm_io.files import sha256_file
from foundation.names import CONFIG_NAME, FORMAT, FORMAT_VERSION, SHA256_KEY, WEIGHTS_NAME
from foundation.unet import CardiacUNet
from foundation.vit import AXES, CONTEXT_EMBEDDINGS, MODALITIES, CardiacViT

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=nn.Module)
B = TypeVar("B", CardiacViT, CardiacUNet)


# Where Lightning systems keep the backbone, in order of preference when several complete ones
# fit (an EMA teacher next to the student): pretraining (PretrainSystem), fine-tuning
# (SegFinetuner, SubjectFinetuner), a bare objective. DeepSpeed's fp32 reconstruction puts
# WRAPPERS in front. Any other prefix is found by the backbone's own key names
# (find_backbone_prefix), so a new system needs no entry here.
PREFIXES = ("objective.encoder.", "model.backbone.", "encoder.")
WRAPPERS = ("_forward_module.",)
# The removed MAEPretrainer kept its modules under mae.; pretext.migrate rewrites such a
# checkpoint once (named here as a command: foundation does not import pretext).
LEGACY_PREFIX = "mae."
MIGRATE_HINT = "rewrite it once with `python -m pretext.migrate OLD.ckpt NEW.ckpt`"
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
RUNTIME_ARGS = frozenset({"compile"})  # constructor arguments that are not architecture


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


# --- Lightning checkpoints ---------------------------------------------------------------------


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's dict, never unpickling arbitrary objects; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a checkpoint, or unsafe pickle content
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: cannot read as a Lightning checkpoint ({first})") from err


def restore(cls: type[M], path: Path, **overrides: Any) -> tuple[M, dict[str, Any]]:
    """Rebuild cls from the checkpoint's hyper_parameters (+ overrides) and load its weights strictly."""
    ckpt = read_checkpoint(path)
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    module = cls(**{**hparams, **overrides})  # "_"-keys are LightningCLI bookkeeping
    module.load_state_dict(ckpt["state_dict"], strict=True)
    return module, ckpt


def recorded_backbone(
    hparams: Mapping[str, Any], kind: type[nn.Module] = CardiacViT
) -> tuple[str | None, dict[str, Any]]:
    """(registered name or None, constructor kwargs) that a system's hyper-parameters record:
    ``backbone`` with ``backbone_kwargs`` (PretrainSystem) or top-level patch_size, tubelet, ...
    (the fine-tuning systems, the removed MAEPretrainer), for a backbone of class kind
    (top-level arguments it does not take, e.g. a U-Net fine-tuner's patch_size, are left out);
    runtime switches (compile) left out."""
    name = hparams.get("backbone")
    known = set(inspect.signature(kind).parameters) - RUNTIME_ARGS
    kwargs = {k: v for k, v in hparams.items() if k in known}
    kwargs.update(hparams.get("backbone_kwargs") or {})
    kwargs = {k: v for k, v in kwargs.items() if k not in RUNTIME_ARGS}
    return (name if isinstance(name, str) else None), kwargs


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


def _strip_wrappers(prefix: str) -> str:
    for wrapper in WRAPPERS:
        if prefix.startswith(wrapper):
            return prefix[len(wrapper) :]
    return prefix


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The backbone's tensors under prefix, prefix stripped; siblings (heads, decoders) left out."""
    return {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and k[len(prefix) :].split(".")[0] in BACKBONE_TOPS
    }


def _gaps(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys a backbone of the architecture the tensors imply would have and they lack."""
    args = inferred_architecture(state)
    if "channels" in args:
        expected = _unet_keys(len(args["channels"]), args["num_res_units"])
    else:
        expected = _backbone_keys(args.get("depth", 0), args.get("qkv_bias", True))
    return sorted(expected - set(state) - set(CONTEXT_EMBEDDINGS))  # older checkpoints lack these


def find_backbone_prefix(state: Mapping[str, torch.Tensor], source: Path) -> str:
    """The prefix under which a checkpoint holds the backbone, found by its own key names.

    One candidate is taken as it is (a strict load then names what it lacks); among several, the
    complete ones count, the known PREFIXES first; raises naming the candidates otherwise.
    """
    candidates = sorted(
        {
            k[: -len(anchor)]
            for k in state
            for anchor in ANCHORS
            if k == anchor or k.endswith("." + anchor)
        }
    )
    if not candidates:
        raise ValueError(
            f"{source}: no backbone weights (no key ends with {' or '.join(map(repr, ANCHORS))}; "
            f"systems keep the backbone under {', '.join(PREFIXES)})"
        )
    if len(candidates) == 1:
        return candidates[0]
    gaps = {p: _gaps(_under(state, p)) for p in candidates}
    fits = [p for p in candidates if not gaps[p]]
    preferred = sorted(
        (p for p in fits if _strip_wrappers(p) in PREFIXES),
        key=lambda p: PREFIXES.index(_strip_wrappers(p)),
    )
    if preferred:
        return preferred[0]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise ValueError(f"{source}: several backbones fit ({fits}); name the prefix to load")
    missing = {p: g[:3] for p, g in gaps.items()}
    raise ValueError(f"{source}: no prefix holds a complete backbone; missing e.g. {missing}")


def refuse_legacy_prefix(prefix: str, source: Path) -> None:
    """Raise naming source when the backbone sits under the removed MAEPretrainer's ``mae.``."""
    if _strip_wrappers(prefix).startswith(LEGACY_PREFIX):
        raise ValueError(
            f"{source}: the backbone is under {prefix!r}, a checkpoint of the removed "
            f"MAEPretrainer; {MIGRATE_HINT}"
        )


def has_legacy_keys(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint dict's state dict has the removed MAEPretrainer's ``mae.*`` keys."""
    return any(k.startswith(LEGACY_PREFIX) for k in checkpoint.get("state_dict") or {})


def refuse_legacy_keys(checkpoint: Mapping[str, Any]) -> None:
    """Raise for a checkpoint dict whose state dict still has MAEPretrainer's ``mae.*`` keys."""
    if has_legacy_keys(checkpoint):
        raise ValueError(f"a MAEPretrainer checkpoint ({LEGACY_PREFIX}* keys): {MIGRATE_HINT}")


def weights_from_state_dict(
    state: Mapping[str, torch.Tensor],
    source: Path,
    hparams: Mapping[str, Any] | None = None,
    prefix: str | None = None,
) -> BackboneWeights:
    """The backbone inside a training system's state dict (a Lightning checkpoint, or DeepSpeed
    ZeRO shards rebuilt to fp32), with the architecture its hyper-parameters record; the prefix
    is found unless given, and the removed MAEPretrainer's ``mae.`` is refused (pretext.migrate
    rewrites such a checkpoint). source is the file named in errors."""
    if prefix is None:
        prefix = find_backbone_prefix(state, source)
    refuse_legacy_prefix(prefix, source)
    tensors = _under(state, prefix)
    if not tensors:
        raise ValueError(f"{source}: no backbone weights under the prefix {prefix!r}")
    name, kwargs = recorded_backbone(hparams or {}, backbone_kind(tensors) or CardiacViT)
    recorded = {k: kwargs[k] for k in ARCH_ARGS if k in kwargs}
    weights = BackboneWeights(Path(source), tensors, prefix, recorded, name)
    _check_agree(
        inferred_architecture(tensors), recorded, source,
        f"the weights under {prefix!r} have", "the checkpoint's hyper_parameters say",
    )  # fmt: skip
    return weights


# --- hub folders -------------------------------------------------------------------------------


def read_config(folder: Path) -> dict[str, Any]:
    """A hub folder's config.json, checked for the fields loading needs."""
    path = Path(folder) / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: missing; a cmrfm hub folder holds {CONFIG_NAME} (the architecture and the "
            f"sha256 of {WEIGHTS_NAME}) next to its weights: export or download the whole folder"
        ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if config.get("format") != FORMAT:
        raise ValueError(f"{path}: format {config.get('format')!r} is not {FORMAT!r}")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {config['format_version']} is newer than this cmrfm reads "
            f"({FORMAT_VERSION}); upgrade cmrfm"
        )
    for key, ours in (("modalities", MODALITIES), ("axes", AXES)):
        theirs = tuple(config.get(key, ()))
        if theirs != ours[: len(theirs)]:  # rows are only ever appended
            raise ValueError(
                f"{path}: embedding rows {key}={list(theirs)} differ from this cmrfm's {list(ours)}"
            )
    if not isinstance(config.get("model_args"), dict) or "preprocess" not in config:
        raise ValueError(f"{path}: needs 'model_args' and 'preprocess'")
    return config


def check_safetensors(path: Path) -> None:
    """Raise naming path when it is not a whole safetensors file: too short for the 8-byte
    header length, an unreadable header, or fewer bytes than the header describes (a cut-short
    copy or download, which safetensors itself reports only as a deserialising error)."""
    size = path.stat().st_size
    again = "copy, download or export it again"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(
                f"{path}: truncated: {size} bytes, not even a safetensors header; {again}"
            )
        n = struct.unpack("<Q", head)[0]
        if 8 + n > size:
            raise ValueError(
                f"{path}: truncated: {size} bytes, but its header alone says {8 + n}; {again}"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file (unreadable header: {err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (its header is not a JSON object)")
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    expected = 8 + n + max(ends, default=0)
    if size < expected:
        raise ValueError(
            f"{path}: truncated: {size} bytes of the {expected} its header describes; {again}"
        )


def verify_sha256(path: Path, expected: str | None, recorded_in: Path) -> None:
    """Compare path's sha256 with the one recorded_in records; None (a folder from before the
    hash was recorded) only warns, so old folders keep loading."""
    if expected is None:
        warnings.warn(
            f"{recorded_in}: records no {SHA256_KEY} (written before cmrfm recorded it), so "
            f"{path} loads unverified; save or export the folder again to record it",
            stacklevel=3,
        )
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(
            f"{path}: sha256 mismatch: {recorded_in} records {expected}, the file has {actual}; "
            "it was changed or damaged after it was saved: download or export it again"
        )


def read_hub_weights(folder: Path) -> BackboneWeights:
    """A hub folder's weights, after checking that config.json is there and valid, that
    model.safetensors is whole and has the recorded sha256, and that the architecture config.json
    records is the one the tensors have."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file() and not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{folder}: a folder, but no {WEIGHTS_NAME} or {CONFIG_NAME} in it; pass a hub folder "
            "(`cmrfm export` writes one) or a Lightning .ckpt file"
        )
    config = read_config(folder)
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: missing; a cmrfm hub folder holds its weights as safetensors (nothing else "
            "is loaded): export or download the whole folder"
        )
    check_safetensors(path)
    verify_sha256(path, config.get(SHA256_KEY), folder / CONFIG_NAME)
    try:
        state = load_file(path)  # tensors only, nothing unpickled
    except Exception as err:  # a damaged file whose size still adds up
        raise ValueError(f"{path}: cannot read as safetensors ({err})") from err
    args = config["model_args"]
    recorded = {k: args[k] for k in ARCH_ARGS if k in args}
    _check_agree(
        inferred_architecture(state), recorded, path, "holds weights with",
        f"but {CONFIG_NAME} says", f": {CONFIG_NAME} does not describe these weights",
    )  # fmt: skip
    return BackboneWeights(path, state, "", recorded, config.get("architecture"), config)


# --- the one loader ----------------------------------------------------------------------------


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
    if key == "mlp_ratio":  # the hidden width is int(width * ratio): equal widths agree
        return int(width * float(ours)) != round(width * float(theirs))
    if isinstance(theirs, (list, tuple)) and isinstance(ours, (list, tuple)):
        return list(theirs) != list(ours)
    return theirs != ours


def _check_agree(
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
    return ", ".join(f"{k} {args[k]:g}" if k == "mlp_ratio" else f"{k} {args[k]}" for k in keys)


def _some(keys: list[str], n: int = 8) -> str:
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
    _check_agree(
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
