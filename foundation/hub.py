"""Hub folders for the backbone: save_pretrained / from_pretrained with safetensors weights,
config.json (architecture, preprocessing, the weights' sha256) and a model card, laid out as
huggingface_hub's PyTorchModelHubMixin and timm's save_for_hf do. Reading and checking a folder's
weights is foundation.hub_files' job, loading them foundation.weights', the one loader."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cmrfm_io.files import sha256_file, usual_permissions
from foundation.card import card_text
from foundation.datasets import LICENCE_NAME, write_licence
from foundation.hub_files import read_hub_weights
from foundation.names import CONFIG_NAME, FORMAT, FORMAT_VERSION, SHA256_KEY, WEIGHTS_NAME
from foundation.registry import BACKBONES, Backbone, create_backbone
from foundation.unet import CardiacUNet
from foundation.vit import AXES, MODALITIES, CardiacViT
from foundation.weights import load_backbone_weights

CARD_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)  # a folder without one of these is refused
PROBE_PLOT = "probe.png"  # the card's probe curve, published with the folder when present
# What a user must do to an image before the backbone sees it.
PREPROCESS_KEYS = ("spacing", "size", "frames", "percentiles", "modalities")
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def hub_config(model: Backbone, preprocess: Mapping[str, Any]) -> dict[str, Any]:
    """config.json contents: architecture name + every constructor argument, the embedding row
    order (a ViT's), the preprocessing the weights expect, and the cmrfm version that wrote them.

    preprocess needs spacing (mm, in-plane; None = native grid), size (crop, pixels), frames,
    percentiles ([lo, hi] mapped to 0 and 255), modalities (seen in training); axes defaults to
    ["time"] and value_range to [0, 1]; further keys (orientation, crop, ...) are kept.
    """
    missing = [k for k in PREPROCESS_KEYS if k not in preprocess]
    if missing:
        raise ValueError(f"preprocess lacks {missing}; it needs {list(PREPROCESS_KEYS)}")
    pre = {**preprocess}
    pre.setdefault("axes", ["time"])
    pre.setdefault("value_range", [0.0, 1.0])
    for key, known in (("modalities", MODALITIES), ("axes", AXES)):
        unknown = sorted(set(pre[key]) - set(known))
        if unknown:
            raise ValueError(f"preprocess {key} {unknown} are not known; known: {list(known)}")
    if len(pre["percentiles"]) != 2:
        raise ValueError(f"preprocess percentiles must be [lo, hi], got {pre['percentiles']}")
    rows = {"modalities": list(MODALITIES), "axes": list(AXES)}  # modality/axis_embed rows
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,  # None: build CardiacViT(**model_args) directly
        "model_args": dict(model.model_args),
        "num_features": model.num_features,
        **(rows if isinstance(model, CardiacViT) else {}),
        "input": {"layout": "B C T H W", "channels": model.in_chans, "dtype": "float32"},
        "preprocess": json.loads(json.dumps(pre)),  # tuples -> lists, fails early if not JSON
        "cmrfm_version": _version(),
    }


def _version() -> str:
    try:
        return importlib.metadata.version("cmrfm")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def save_pretrained(
    model: Backbone,
    folder: Path,
    *,
    preprocess: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    probe: Sequence[Mapping[str, Any]] | None = None,
    fewshot: Sequence[Mapping[str, Any]] | None = None,
    probe_plot: Path | None = None,
) -> Path:
    """Write model.safetensors, config.json (with the weights' sha256), README.md (and LICENSE.md
    unless the data was only synthetic) into folder; returns folder. data/training/metrics/
    probe/fewshot feed the model card (see foundation.card.card_text); probe_plot is copied in
    as probe.png, which the card shows."""
    from safetensors.torch import save_model

    if not isinstance(model, (CardiacViT, CardiacUNet)):
        raise TypeError(
            f"save_pretrained takes a CardiacViT or CardiacUNet, got {type(model).__name__}"
        )
    config = hub_config(model, preprocess)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # save_model drops duplicate names of shared tensors (safetensors refuses aliasing).
    save_model(model, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    usual_permissions(folder / WEIGHTS_NAME)
    config[SHA256_KEY] = sha256_file(folder / WEIGHTS_NAME)  # verified by every load
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
    card = card_text(
        config, data=data, training=training, metrics=metrics, probe=probe, fewshot=fewshot
    )
    (folder / CARD_NAME).write_text(card)
    if probe_plot is not None:
        shutil.copyfile(probe_plot, folder / PROBE_PLOT)
    datasets = list((data or {}).get("datasets") or [])
    write_licence(folder, datasets)
    return folder


def build_from_config(config: Mapping[str, Any], **overrides: Any) -> Backbone:
    """An untrained backbone of config's architecture; overrides (drop_path_rate, compile)."""
    name, args = config.get("architecture"), {**config["model_args"], **overrides}
    if name is None:
        model = CardiacViT(**args)
    elif name in BACKBONES:
        model = create_backbone(name, **args)
    else:
        raise ValueError(
            f"architecture {name!r} is not registered; registered: {sorted(BACKBONES)}"
        )
    return model


def resolve_folder(
    folder_or_repo_id: str | Path, *, revision: str | None = None, local_files_only: bool = False
) -> Path:
    """A local folder as is; otherwise a Hub repo id fetched (or found in the cache) with
    huggingface_hub.snapshot_download, only the hub files."""
    path = Path(folder_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(folder_or_repo_id)
    if path.exists() or not _REPO_ID.match(text) or text.startswith("."):
        raise FileNotFoundError(f"{text}: not a folder, and not a Hub repo id like 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=text,
                revision=revision,
                local_files_only=local_files_only,
                allow_patterns=[*HUB_FILES, LICENCE_NAME, PROBE_PLOT],
            )
        )
    except Exception as err:  # offline, unknown repo, no access: say which and why
        raise OSError(
            f"{text}: not a local folder, and fetching it from the Hugging Face Hub failed "
            f"({type(err).__name__}: {err})"
        ) from err


def from_pretrained(
    folder_or_repo_id: str | Path,
    *,
    revision: str | None = None,
    local_files_only: bool = False,
    device: str = "cpu",
    **overrides: Any,
) -> CardiacViT:
    """The backbone saved by save_pretrained, built from its config.json and loaded by the one
    loader (foundation.weights.load_backbone_weights: config.json checked against the
    weights, sha256 verified, strict, nothing unpickled), in eval mode on device;
    ``model.hub_config`` holds its config.json. overrides: non-architecture constructor
    arguments (drop_path_rate, compile)."""
    folder = resolve_folder(folder_or_repo_id, revision=revision, local_files_only=local_files_only)
    weights = read_hub_weights(folder)
    model = load_backbone_weights(build_from_config(weights.config, **overrides), weights)
    model.hub_config = weights.config
    return model.to(device).eval()


def check_hub_folder(folder: Path) -> list[Path]:
    """The files to publish from folder, after checking that it is a complete hub folder whose
    weights load into its config's architecture; raises naming what is wrong."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    missing = [name for name in HUB_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: missing {', '.join(missing)}; write the folder with `cmrfm export` "
            "(or foundation.hub.save_pretrained)"
        )
    card = (folder / CARD_NAME).read_text()
    if not card.startswith("---\n") or "\nlicense:" not in card.split("\n---\n", 1)[0]:
        raise ValueError(f"{folder / CARD_NAME}: no YAML front matter with a license")
    from_pretrained(folder)  # the weights must load into the recorded architecture
    files = [folder / name for name in HUB_FILES]
    files += [folder / name for name in (LICENCE_NAME, PROBE_PLOT) if (folder / name).is_file()]
    return files
