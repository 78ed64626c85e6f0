"""`cmrfm export` and `cmrfm publish`: a training checkpoint (a Lightning file or a DeepSpeed
ZeRO-2/3 folder) -> a hub folder (foundation.hub), and a hub folder -> a Hugging Face Hub repo.
A fine-tuning checkpoint (finetune.system.SegFinetuner) becomes a fine-tuned model folder
(finetune.package) instead: the whole model, its preprocessing and clip length, for
`cmrfm predict`.

Nothing is unpickled beyond plain containers and tensors: Lightning files are read with
``weights_only=True``; DeepSpeed's own ZeRO reconstruction runs with torch.load forced to
``weights_only=True`` and only DeepSpeed's bookkeeping classes allowlisted.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cmrfm_io.files import sha256_file
from foundation.card import dataset_names, detect_datasets
from foundation.checkpoint import (
    backbone_kind,
    read_checkpoint,
    recorded_backbone,
    weights_from_state_dict,
)
from foundation.hub import PROBE_PLOT, check_hub_folder, from_pretrained, save_pretrained
from foundation.registry import BACKBONES, Backbone, create_backbone
from foundation.vit import MODALITIES, CardiacViT

MANIFEST = "manifest.json"
SEG_FINETUNER = "finetune.system.SegFinetuner"


@dataclass
class TrainingCheckpoint:
    """Weights and the rest of a training checkpoint, whatever wrote it."""

    path: Path
    kind: str  # "Lightning checkpoint" or "DeepSpeed ZeRO-<stage> checkpoint"
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)  # hyper_parameters, global_step, ...


# --- reading checkpoints -----------------------------------------------------------------------


def read_training_checkpoint(path: Path) -> TrainingCheckpoint:
    """A Lightning .ckpt file, or a DeepSpeed ZeRO folder (Lightning's `xxx.ckpt/` directory,
    or its tag folder holding `*_model_states.pt`), as fp32 weights + metadata."""
    path = Path(path)
    if path.is_dir():
        return _read_zero_folder(path)
    ckpt = read_checkpoint(path)  # weights_only=True; errors name the file
    if "state_dict" not in ckpt:
        raise ValueError(f"{path}: no 'state_dict'; is this a Lightning checkpoint?")
    state = ckpt.pop("state_dict")
    ckpt.pop("optimizer_states", None)
    return TrainingCheckpoint(path, "Lightning checkpoint", state, ckpt)


def _zero_tag_folder(path: Path) -> tuple[Path, str]:
    """(DeepSpeed checkpoint dir, tag) of a Lightning ZeRO folder or of its tag folder."""
    if any(path.glob("*_model_states.pt")):
        return path.parent, path.name
    latest = path / "latest"
    if latest.is_file():
        return path, latest.read_text().strip()
    tags = [d for d in sorted(path.iterdir()) if d.is_dir() and any(d.glob("*_model_states.pt"))]
    if len(tags) == 1:
        return path, tags[0].name
    raise FileNotFoundError(
        f"{path}: a folder, but not a DeepSpeed checkpoint (no 'latest' file and "
        f"{len(tags)} tag folders with *_model_states.pt)"
    )


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside (DeepSpeed's zero_to_fp32 asks for weights_only=False) to
    weights_only=True, allowlisting only the plain bookkeeping classes DeepSpeed pickles."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        allow = [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]
        with torch.serialization.safe_globals(allow):
            yield
    finally:
        if before is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = before


def _read_zero_folder(path: Path) -> TrainingCheckpoint:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds_dir, tag = _zero_tag_folder(path)
    tag_dir = ds_dir / tag
    # Lightning keeps its own state (hyper_parameters, global_step) in rank 0's model states.
    client_file = next(
        (tag_dir / n for n in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt") if (tag_dir / n).is_file()),
        None,
    )  # fmt: skip
    if client_file is None:
        raise FileNotFoundError(f"{tag_dir}: no rank-0 model states file (mp_rank_00_...)")
    meta = read_checkpoint(client_file)
    stage = meta.get("ds_config", {}).get("zero_optimization", {}).get("stage", "?")
    for key in ("module", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params"):
        meta.pop(key, None)  # DeepSpeed's partition bookkeeping, not the model's metadata
    try:
        # DeepSpeed prints progress on stdout; keep stdout for cmrfm's own summary.
        with _weights_only_loads(), contextlib.redirect_stdout(sys.stderr):
            state = get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=tag)
    except Exception as err:
        raise ValueError(
            f"{tag_dir}: cannot rebuild fp32 weights from the ZeRO shards ({type(err).__name__}: "
            f"{err})"
        ) from err
    return TrainingCheckpoint(path, f"DeepSpeed ZeRO-{stage} checkpoint", dict(state), meta)


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


# --- data, preprocessing and training facts for the card --------------------------------------


def shard_manifests(datamodule_hparams: Mapping[str, Any]) -> tuple[list[Path], list[str]]:
    """(manifest files found, shard locations without one here) of a data module's `shards`
    (a folder, a list, or a {folder: weight} mixture); remote urls count as not found."""
    shards = datamodule_hparams.get("shards")
    if shards is None:
        return [], []
    specs = [shards] if isinstance(shards, str) else list(shards)  # dict -> its keys
    found, missing = [], []
    for spec in map(str, specs):
        local = "://" not in spec and not spec.startswith("pipe:") and "{" not in spec
        path = Path(spec)
        folder = path.parent if path.suffix == ".tar" else path
        if local and (folder / MANIFEST).is_file():
            found.append(folder / MANIFEST)
        else:
            missing.append(spec)
    return found, missing


def manifest_summary(path: Path) -> dict[str, Any]:
    """What the card says about one shard manifest: sha256, source, counts, modalities,
    datasets, and its preprocessing."""
    manifest = json.loads(Path(path).read_text())
    samples = manifest.get("samples", [])
    seen = {s.get("modality") for s in samples}
    return {
        "sha256": sha256_file(path),
        "source": manifest.get("source"),
        "subjects": len({s.get("subject", s.get("key")) for s in samples}),
        "samples": len(samples),
        "modalities": [m for m in MODALITIES if m in seen] + sorted(seen - {*MODALITIES, None}),
        "datasets": detect_datasets(manifest),
        "preprocess": manifest.get("preprocess", {}),
    }


def data_and_preprocess(
    manifests: Sequence[Path], frames: int | None, overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(card data, config preprocess) from the shard manifests the model was trained on."""
    summaries = [manifest_summary(p) for p in manifests]
    shared = ("spacing", "size", "percentiles", "orientation", "crop")
    settings = {json.dumps({k: s["preprocess"].get(k) for k in shared}) for s in summaries}
    if len(settings) > 1:
        raise ValueError(
            f"the manifests {[str(p) for p in manifests]} were preprocessed differently "
            f"({sorted(settings)}); a backbone expects one preprocessing"
        )
    pre: dict[str, Any] = dict(json.loads(settings.pop())) if settings else {}
    pre = {k: v for k, v in pre.items() if v is not None or k == "spacing"}
    seen = {m for s in summaries for m in s["modalities"]}
    pre["modalities"] = [m for m in MODALITIES if m in seen]
    if frames is not None:
        pre["frames"] = frames
    pre.update(overrides or {})
    datasets = sorted({d for s in summaries for d in s["datasets"]})
    data = {"datasets": datasets, "manifests": [_card_fields(s) for s in summaries]}
    return data, pre


def _card_fields(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("sha256", "source", "subjects", "samples", "modalities")}


def training_facts(ckpt: TrainingCheckpoint) -> dict[str, Any]:
    """Objective, steps, epoch, checkpoint kind and hyper-parameters for the card."""
    hparams = {k: v for k, v in (ckpt.meta.get("hyper_parameters") or {}).items() if k[0] != "_"}
    objective = hparams.get("objective")
    objective = objective if isinstance(objective, str) else None
    system = (ckpt.meta.get("hyper_parameters") or {}).get("_class_path", "")
    dm = ckpt.meta.get("datamodule_hyper_parameters") or {}
    cpu_s = (ckpt.meta.get("pretrain_state") or {}).get("cpu_seconds")
    facts = {
        "objective": objective,
        "steps": ckpt.meta.get("global_step"),
        # process CPU time of training (pretext.system.PretrainSystem.cpu_seconds), all threads
        "cpu_hours": None if cpu_s is None else round(cpu_s / 3600, 2),
        "epoch": ckpt.meta.get("epoch"),
        "checkpoint": ckpt.kind,
        "lightning": ckpt.meta.get("pytorch-lightning_version"),
        "system": system or None,
        # data module settings without local paths (they say nothing to a reader of the card)
        "data_module": {k: v for k, v in dm.items() if k[0] != "_" and k != "shards"} or None,
        "hyper_parameters": hparams,
    }
    return {k: v for k, v in facts.items() if v is not None}


def read_csv_rows(path: Path | None) -> list[dict[str, str]] | None:
    """A CSV file's rows (a few-shot summary.csv); None for None; errors name the file."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def read_probe_rows(path: Path | None) -> list[dict[str, Any]] | None:
    """probe.csv rows (step, dice_mean, ...) sorted by step; errors name the file."""
    rows = read_csv_rows(path)
    if rows is None:
        return None
    if not {"step", "dice_mean"} <= set(rows[0]):
        raise ValueError(f"{path}: not a probe.csv (needs the columns step and dice_mean)")
    return sorted(rows, key=lambda r: int(r["step"]))


def read_fewshot_rows(path: Path | None) -> list[dict[str, Any]] | None:
    """A few-shot summary.csv's rows, each with the ``dataset`` (its shards folder's name) and
    ``split`` it was scored on, from the benchmark's config.json beside it ("" when absent)."""
    rows = read_csv_rows(path)
    if rows is None:
        return None
    if not {"metric", "method", "labels", "mean"} <= set(rows[0]):
        raise ValueError(f"{path}: not a few-shot summary.csv (needs metric, method, labels, mean)")
    config = _beside(path, "config.json")
    setup = json.loads(config.read_text()) if config is not None else {}
    where = {"dataset": Path(setup.get("shards") or "").name, "split": setup.get("eval_split", "")}
    return [row | where for row in rows]


def _beside(path: Path, name: str) -> Path | None:
    other = Path(path).with_name(name)
    return other if other.is_file() else None


def read_metrics(text: str | None) -> dict[str, Any] | None:
    """--card-metrics: a JSON object, or a .json file of one (an evaluate report's "summary")."""
    if text is None:
        return None
    path = Path(text)
    try:
        value = json.loads(path.read_text() if path.is_file() else text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--card-metrics {text!r}: neither a JSON file nor JSON ({err})") from err
    if isinstance(value, dict) and isinstance(value.get("summary"), dict):
        value = value["summary"]
    if not isinstance(value, dict):
        raise ValueError(f"--card-metrics must be a JSON object, got {type(value).__name__}")
    return value


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
        metrics=metrics, datasets=data["datasets"], init_args=args, class_path=class_path,
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
    data, pre = data_and_preprocess(files, dm.get("frames"), preprocess)
    if datasets:
        data["datasets"] = dataset_names([*data["datasets"], *datasets])
    probe_rows = read_probe_rows(probe)
    save_pretrained(
        model, out, preprocess=pre, data=data, training=training_facts(ckpt), metrics=metrics,
        probe=probe_rows, fewshot=read_fewshot_rows(fewshot),
        probe_plot=_beside(probe, PROBE_PLOT) if probe is not None else None,
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
