"""Lightning checkpoints and the backbone inside them: a checkpoint is read with ``weights_only``
(nothing arbitrary is unpickled), a system rebuilt from its hyper-parameters, and the backbone
found under its prefix by its own key names (the removed MAEPretrainer's ``mae.`` refused) with
the architecture the hyper-parameters record. Loading those weights into a model is
:func:`foundation.weights.load_backbone_weights`'s job."""

from __future__ import annotations

import inspect
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from foundation.architecture import (
    ANCHORS,
    ARCH_ARGS,
    BACKBONE_TOPS,
    BackboneWeights,
    backbone_kind,
    check_agree,
    inferred_architecture,
    missing_keys,
)
from foundation.vit import CardiacViT

M = TypeVar("M", bound=nn.Module)


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
RUNTIME_ARGS = frozenset({"compile"})  # constructor arguments that are not architecture


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's dict, never unpickling arbitrary objects; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a checkpoint, or unsafe pickle content
        raise ValueError(
            f"{path}: cannot read as a Lightning checkpoint ({_why(path, err)})"
        ) from err


def cut_file(path: Path) -> bool:
    """A checkpoint file that is no zip archive (torch has saved zip archives since 1.6,
    Lightning too): a copy cut short, damaged, or another kind of file. One that cannot be
    opened (permissions) is not called so: its error says why."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            return not zipfile.is_zipfile(f)
    except OSError:
        return False


def _why(path: Path, err: Exception) -> str:
    """What is wrong with a file torch.load refused, in words that do not suggest loading it
    unsafely (torch's own message for a refused pickle advises ``weights_only=False``)."""
    if isinstance(err, OSError):  # e.g. a lab-mate's file without read permission
        return err.strerror or str(err)
    if cut_file(path):
        return (
            "not a PyTorch checkpoint: no zip archive, so a truncated or damaged copy or "
            "another kind of file"
        )
    if isinstance(err, pickle.UnpicklingError):
        said = [ln for ln in str(err).splitlines() if "WeightsUnpickler error:" in ln]
        what = said[0].split("error:", 1)[1].split(". Please")[0].strip() if said else ""
        return (
            "it holds objects other than tensors and plain values, which cmrfm does not unpickle "
            "since that could run code" + (f": {what}" if what else "")
        )
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


def _strip_wrappers(prefix: str) -> str:
    """prefix without the DeepSpeed wrapper (WRAPPERS) in front of it, if any."""
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
    gaps = {p: missing_keys(_under(state, p)) for p in candidates}
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
    check_agree(
        inferred_architecture(tensors), recorded, source,
        f"the weights under {prefix!r} have", "the checkpoint's hyper_parameters say",
    )  # fmt: skip
    return weights
