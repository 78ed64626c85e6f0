"""What a hub folder's card says about its training, read from the files beside a run: the
shard manifests (data, preprocessing), the checkpoint's training facts, a probe.csv, a few-shot
summary.csv and --card-metrics. Errors name the file."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from cmrfm_io.files import read_json, sha256_file
from data_shards.preprocess import PreprocessConfig
from finetune.report import evaluated_on
from foundation.datasets import detect_datasets
from foundation.training_checkpoint import TrainingCheckpoint
from foundation.vit import MODALITIES

MANIFEST = "manifest.json"
# The settings a manifest records and every training manifest must share: PreprocessConfig's.
PREPROCESS_FIELDS = tuple(f.name for f in fields(PreprocessConfig))


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


def manifest_summary(path: Path, splits: Sequence[str] | None = None) -> dict[str, Any]:
    """What the card says about one shard manifest: sha256, source, counts, modalities,
    datasets, and its preprocessing; with the splits training read, the subjects in them (the
    rest, e.g. the test split, were never seen)."""
    manifest = read_json(path)
    samples = manifest.get("samples", [])
    seen = {s.get("modality") for s in samples}
    used = [s for s in samples if splits is None or s.get("split") in splits]
    return {
        "sha256": sha256_file(path),
        "source": manifest.get("source"),
        "subjects": len({s.get("subject", s.get("key")) for s in samples}),
        "trained_on": len({s.get("subject", s.get("key")) for s in used}),
        "splits": list(splits) if splits is not None else None,
        "samples": len(samples),
        "modalities": [m for m in MODALITIES if m in seen] + sorted(seen - {*MODALITIES, None}),
        "datasets": detect_datasets(manifest),
        "preprocess": manifest.get("preprocess", {}),
    }


def data_and_preprocess(
    manifests: Sequence[Path],
    frames: int | None,
    overrides: Mapping[str, Any] | None = None,
    splits: Sequence[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(card data, config preprocess) from the shard manifests the model was trained on, of
    which it read ``splits`` (None: all)."""
    summaries = [manifest_summary(p, splits) for p in manifests]
    settings = {
        json.dumps({k: s["preprocess"].get(k) for k in PREPROCESS_FIELDS}) for s in summaries
    }
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
    keys = ("sha256", "source", "datasets", "subjects", "trained_on", "splits", "samples",
            "modalities")  # fmt: skip
    return {k: summary[k] for k in keys}


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
    ``split`` it was scored on: the row's own (summaries since 2026-12-05), else from the
    benchmark's config.json beside it ("" when absent)."""
    rows = read_csv_rows(path)
    if rows is None:
        return None
    if not {"metric", "method", "labels", "mean"} <= set(rows[0]):
        raise ValueError(f"{path}: not a few-shot summary.csv (needs metric, method, labels, mean)")
    where = evaluated_on(Path(path).parent)
    return [row | {k: v for k, v in where.items() if not row.get(k)} for row in rows]


def beside(path: Path, name: str) -> Path | None:
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
