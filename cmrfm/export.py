"""`cmrfm export` and `cmrfm publish`: a training checkpoint (a Lightning file or a DeepSpeed
ZeRO-2/3 folder) -> a hub folder (foundation.hub), and a hub folder -> a Hugging Face Hub repo.
A fine-tuning checkpoint (finetune.system.SegFinetuner) becomes a fine-tuned model folder
(finetune.package) instead: the whole model, its preprocessing and clip length, for
`cmrfm predict`.

Checkpoints are read by foundation.training_checkpoint (nothing unpickled beyond containers
and tensors); what the card says about data and training comes from cmrfm.card_facts.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmrfm.card_facts import (
    MANIFEST,
    beside,
    data_and_preprocess,
    read_fewshot_rows,
    read_probe_rows,
    shard_manifests,
    training_facts,
)
from cmrfm_io.files import write_atomic
from foundation.architecture import backbone_kind
from foundation.card import with_fewshot
from foundation.checkpoint import recorded_backbone, weights_from_state_dict
from foundation.datasets import dataset_names
from foundation.hub import CARD_NAME, PROBE_PLOT, check_hub_folder, from_pretrained, save_pretrained
from foundation.registry import BACKBONES, Backbone, create_backbone
from foundation.training_checkpoint import TrainingCheckpoint, read_training_checkpoint
from foundation.vit import CardiacViT

SEG_FINETUNER = "finetune.system.SegFinetuner"


# --- finding the backbone ----------------------------------------------------------------------


def backbone_spec(
    hparams: Mapping[str, Any], name: str | None = None, kind: type[nn.Module] = CardiacViT
) -> tuple[str, dict]:
    """(registered name, constructor kwargs) from a system's hyper-parameters (read by
    foundation.checkpoint.recorded_backbone) for a backbone of class kind; name, when given,
    replaces the recorded one."""
    recorded, kwargs = recorded_backbone(hparams, kind)
    name = name or recorded
    if name not in BACKBONES:
        raise ValueError(
            f"hyper_parameters name no registered backbone (backbone={hparams.get('backbone')!r}, "
            f"registered: {sorted(BACKBONES)}); pass --backbone NAME"
        )
    return name, kwargs


def extract_backbone(
    ckpt: TrainingCheckpoint, name: str | None = None, prefix: str | None = None
) -> Backbone:
    """The trained backbone of a checkpoint, rebuilt from its hyper-parameters and loaded by the
    one loader (foundation.registry.create_backbone: the backbone found under its prefix,
    architecture checked, strict)."""
    hparams = ckpt.meta.get("hyper_parameters") or {}
    try:
        weights = weights_from_state_dict(ckpt.state_dict, ckpt.path, hparams, prefix)
        kind = backbone_kind(weights.state) or CardiacViT
        name, kwargs = backbone_spec(hparams, name, kind)
        model = create_backbone(name, pretrained=weights, **kwargs)
    except ValueError as err:
        raise ValueError(
            f"{err} (check --backbone, --prefix and the checkpoint's backbone_kwargs)"
        ) from err
    return model.eval()


# --- the commands ------------------------------------------------------------------------------


def training_manifests(ckpt: TrainingCheckpoint, manifests: Sequence[Path] | None) -> list[Path]:
    """The manifest.json files given (files or shard folders), else those of the checkpoint's
    data module `shards`; FileNotFoundError saying to pass --manifest when none is found."""
    if manifests:
        files = [Path(m) / MANIFEST if Path(m).is_dir() else Path(m) for m in manifests]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"manifest(s) not found: {absent}")
        return files
    dm = ckpt.meta.get("datamodule_hyper_parameters") or {}
    files, missing = shard_manifests(dm)
    if missing or not files:
        raise FileNotFoundError(
            f"{ckpt.path}: cannot find the training data's manifest.json (shards: "
            f"{missing or dm.get('shards')}); pass --manifest SHARD_FOLDER so the card can name "
            "the data and config.json its preprocessing"
        )
    return files


def finetuned_class_path(ckpt: TrainingCheckpoint) -> str | None:
    """The fine-tuning system that wrote a checkpoint (LightningCLI records `_class_path`; a
    plain Trainer's SegFinetuner is known by its hyper-parameters and weights), else None."""
    hparams = ckpt.meta.get("hyper_parameters") or {}
    class_path = hparams.get("_class_path")
    if isinstance(class_path, str):
        return class_path if class_path.startswith("finetune.") else None
    seg_args = {"num_classes", "feature_size", "backbone"} <= set(hparams)
    if seg_args and any(k.startswith("model.") for k in ckpt.state_dict):
        return SEG_FINETUNER
    return None


def export_finetuned(
    ckpt: TrainingCheckpoint,
    class_path: str,
    out: Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    manifests: Sequence[Path] | None = None,
    datasets: Sequence[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A fine-tuning checkpoint -> a fine-tuned model folder (finetune.package): the system
    rebuilt from its hyper-parameters (pretrained=None), weights loaded strictly, preprocessing
    and clip length from the training shards' manifest and data module."""
    from finetune.package import FILE_ARGS, load_finetuned, save_finetuned

    hparams = {k: v for k, v in (ckpt.meta.get("hyper_parameters") or {}).items() if k[0] != "_"}
    args = {k: (None if k in FILE_ARGS else v) for k, v in hparams.items()}
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
        model = cls(**args)
        model.load_state_dict(ckpt.state_dict, strict=True)
    except (ImportError, AttributeError, TypeError, RuntimeError, ValueError) as err:
        raise ValueError(
            f"{ckpt.path}: cannot rebuild {class_path} from its hyper-parameters and weights "
            f"({type(err).__name__}: {err})"
        ) from err
    dm = ckpt.meta.get("datamodule_hyper_parameters") or {}
    data, pre = data_and_preprocess(
        training_manifests(ckpt, manifests), dm.get("frames"), preprocess
    )
    frames = pre.get("frames")
    if frames is None:
        raise ValueError(
            f"{ckpt.path}: the clip length is not recorded (no data module `frames`); pass "
            "--preprocess '{\"frames\": N}'"
        )
    if datasets:
        data["datasets"] = dataset_names([*data["datasets"], *datasets])
    task = hparams.get("task") if hparams.get("task") in ("ef", "cls") else "seg"
    facts = {k: v for k, v in training_facts(ckpt).items() if k != "hyper_parameters"}
    if "labels" in dm or "seed" in dm:
        facts["labelled_subjects"], facts["seed"] = dm.get("labels"), dm.get("seed")
    save_finetuned(
        model, out, preprocess=pre, frames=int(frames), task=task, training=facts,
        metrics=metrics, datasets=data["datasets"], class_path=class_path,
        init_args=hparams,  # with `pretrained`: the package's lineage (base_model); not reloaded
    )  # fmt: skip
    reloaded, _ = load_finetuned(out)  # the folder must give back exactly these weights
    mine = model.state_dict()
    for key, value in reloaded.state_dict().items():
        if not torch.equal(mine[key], value):
            raise RuntimeError(f"{out}: {key} did not survive the round trip")
    return {
        "out": str(out),
        "architecture": f"{name} ({hparams.get('arch', 'unetr')}, {hparams.get('backbone')})",
        "checkpoint": ckpt.kind,
        "steps": ckpt.meta.get("global_step"),
        "datasets": data["datasets"],
        "manifests": [m["sha256"] for m in data["manifests"]],
        "package": "finetuned",
    }


def export(
    checkpoint: Path,
    out: Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    manifests: Sequence[Path] | None = None,
    datasets: Sequence[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    backbone: str | None = None,
    prefix: str | None = None,
    overwrite: bool = False,
    probe: Path | None = None,
    fewshot: Path | None = None,
) -> dict[str, Any]:
    """Checkpoint -> hub folder out (model.safetensors, config.json, README.md, LICENSE.md).

    Args:
        checkpoint: Lightning .ckpt file or DeepSpeed ZeRO-2/3 checkpoint folder.
        manifests: shard manifests (files or their folders) it was trained on; default: those
            its data module's `shards` point to, resolved from the working directory.
        datasets: names for the card when the manifests do not say (ACDC, EMIDEC, ...).
        preprocess: overrides of config.json's preprocessing (e.g. {"frames": 16}).
        backbone, prefix: the registered backbone and its key prefix, when the checkpoint's
            hyper-parameters do not say or several backbones fit.
        probe: a probe.csv (`cmrfm probe`, or a run's SegProbe) for the card; the probe.png
            beside it is copied into the folder.
        fewshot: a few-shot benchmark's summary.csv (`cmrfm fewshot`) for the card.

    Returns:
        A summary: out, architecture, checkpoint kind, steps, datasets, manifest hashes.
    """
    from finetune.package import base_model  # the weights pretraining continued from, if any

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    ckpt = read_training_checkpoint(checkpoint)
    finetuned = finetuned_class_path(ckpt)
    if finetuned is not None:
        return export_finetuned(
            ckpt, finetuned, out, metrics=metrics, manifests=manifests, datasets=datasets,
            preprocess=preprocess,
        )  # fmt: skip
    model = extract_backbone(ckpt, backbone, prefix)
    dm = ckpt.meta.get("datamodule_hyper_parameters") or {}
    files = training_manifests(ckpt, manifests)
    data, pre = data_and_preprocess(files, dm.get("frames"), preprocess, dm.get("splits"))
    if datasets:
        data["datasets"] = dataset_names([*data["datasets"], *datasets])
    probe_rows = read_probe_rows(probe)
    training = training_facts(ckpt)
    hparams = training.get("hyper_parameters") or {}
    start = base_model(hparams.get("pretrained"), hparams.get("backbone"))
    if start is not None:  # pretraining continued from other weights: the card names them
        training["started_from"] = start
    save_pretrained(
        model, out, preprocess=pre, data=data, training=training, metrics=metrics,
        probe=probe_rows, fewshot=read_fewshot_rows(fewshot),
        probe_plot=beside(probe, PROBE_PLOT) if probe is not None else None,
    )  # fmt: skip
    reloaded = from_pretrained(out)  # the folder must give back exactly these weights
    for key, value in model.state_dict().items():
        if not torch.equal(reloaded.state_dict()[key], value):
            raise RuntimeError(f"{out}: {key} did not survive the round trip")
    return {
        "out": str(out),
        "architecture": model.architecture,
        "checkpoint": ckpt.kind,
        "steps": ckpt.meta.get("global_step"),
        "datasets": data["datasets"],
        "manifests": [m["sha256"] for m in data["manifests"]],
    }


def add_fewshot(folder: Path, fewshot: Path) -> Path:
    """A hub folder's card gets a few-shot summary.csv (its table and the Hub model-index), the
    weights and config.json untouched: a release is benchmarked after it is committed. The
    folder must pass :func:`~foundation.hub.check_hub_folder` first (its weights load)."""
    folder = Path(folder)
    check_hub_folder(folder)
    card = folder / CARD_NAME
    rows = read_fewshot_rows(fewshot)
    try:
        text = with_fewshot(card.read_text(), rows or [])
    except ValueError as error:
        raise ValueError(f"{card}: {error}") from error
    write_atomic(card, text)
    return card


def publish(
    folder: Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload cmrfm backbone",
) -> str:
    """Upload a checked hub folder (only its hub files) to a Hugging Face model repo, creating
    the repo if needed; the token comes from `huggingface-cli login` or HF_TOKEN. Returns the
    commit url."""
    from huggingface_hub import HfApi

    files = check_hub_folder(folder)  # refuses an incomplete folder before any network call
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            allow_patterns=[f.name for f in files],
            commit_message=commit_message,
        )
    except Exception as err:  # no network, no login, no access: say which, in one line
        raise OSError(
            f"{repo_id}: uploading to the Hugging Face Hub failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no details'}); check the network and "
            "`huggingface-cli login` (or HF_TOKEN)"
        ) from err
    return str(getattr(info, "commit_url", info))
