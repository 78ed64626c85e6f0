"""Predict whole studies with a fine-tuned segmenter and score them against ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import nn

from data_shards.record import IGNORE
from data_shards.stream import cyclic_window, load_subjects, shard_urls
from finetune.metrics import dice_per_class, lv_ef
from finetune.system import SegFinetuner
from foundation.checkpoint import restore


@torch.no_grad()
def predict_study(model: nn.Module, image: np.ndarray, frames: int, batch: int = 16) -> np.ndarray:
    """Label map (S, T, H, W) uint8 for a uint8 study (S, T, H, W).

    Each slice is cut into windows of `frames` frames (the last one wraps around the cycle) and
    every frame takes its prediction from the first window that holds it.
    """
    s, t = image.shape[:2]
    starts = list(range(0, t, frames))
    clips, where = [], []
    for z in range(s):
        for start in starts:
            idx = cyclic_window(start, frames, t)
            clips.append(image[z, idx])
            where.append((z, idx))
    pred = np.zeros(image.shape, dtype=np.uint8)
    done = np.zeros((s, t), dtype=bool)  # a frame keeps the prediction of its own window
    device = next(model.parameters()).device
    for b in range(0, len(clips), batch):
        x = torch.from_numpy(np.stack(clips[b : b + batch])).float().div(255)[:, None].to(device)
        labels = model(x).argmax(dim=1).cpu().numpy().astype(np.uint8)  # (B, frames, H, W)
        for (z, idx), lab in zip(where[b : b + batch], labels):
            for i, f in enumerate(idx):
                if not done[z, f]:
                    pred[z, f], done[z, f] = lab[i], True
    return pred


def score_subject(pred: np.ndarray, subject: dict, num_classes: int) -> dict:
    """Dice per structure at every labelled frame (ED, ES) and LV EF error for one subject."""
    label, meta = subject["label"], subject["meta"]
    spacing = tuple(meta["spacing"])
    ed, es = int(meta["ed"]), int(meta["es"])
    row: dict = {"subject": subject["key"], "group": meta.get("group")}
    for name, f in (("ed", ed), ("es", es)):
        if (label[:, f] != IGNORE).any():
            for structure, d in dice_per_class(pred[:, f], label[:, f], num_classes).items():
                row[f"dice_{structure}_{name}"] = d
    truth, predicted = lv_ef(label, spacing, ed, es), lv_ef(pred, spacing, ed, es)
    row |= {f"lv_{k}_true": float(v) for k, v in truth.items()}
    row |= {f"lv_{k}_pred": float(v) for k, v in predicted.items()}
    row["lv_ef_error"] = row["lv_ef_pred"] - row["lv_ef_true"]
    return row


def summarise(rows: Sequence[dict], structures: Sequence[str]) -> dict:
    """Means over subjects: Dice per structure (ED and ES pooled), mean Dice, LV EF MAE and bias."""
    out: dict = {"n_subjects": len(rows)}
    per_structure = []
    for st in structures:
        vals = [r[k] for r in rows for k in (f"dice_{st}_ed", f"dice_{st}_es") if k in r]
        out[f"dice_{st}"] = float(np.nanmean(vals)) if vals else float("nan")
        per_structure.append(out[f"dice_{st}"])
    out["dice_mean"] = float(np.nanmean(per_structure))
    errors = np.array([r["lv_ef_error"] for r in rows], dtype=float)
    out["lv_ef_mae"] = float(np.nanmean(np.abs(errors)))
    out["lv_ef_bias"] = float(np.nanmean(errors))
    return out


def evaluate(model: nn.Module, subjects: Sequence[dict], frames: int, num_classes: int = 4) -> dict:
    """Score every labelled subject; returns {"summary": {...}, "subjects": [rows]}."""
    model.eval()
    rows = []
    for subject in track(subjects, description="evaluating", transient=True):
        if subject["label"] is None:
            continue
        pred = predict_study(model, subject["image"], frames)
        rows.append(score_subject(pred, subject, num_classes))
    structures = ["lv", "myo", "rv"][: num_classes - 1]
    return {"summary": summarise(rows, structures), "subjects": rows}


def load_finetuned(checkpoint: Path) -> tuple[SegFinetuner, int, dict]:
    """A fine-tuned segmenter, the clip length it was trained on, and its data hparams."""
    # pretrained=None: the weights come from this checkpoint, not from the pretraining one.
    model, ckpt = restore(SegFinetuner, Path(checkpoint), pretrained=None)
    data_hparams = ckpt.get("datamodule_hyper_parameters", {})
    return model.eval(), int(data_hparams.get("frames", model.hparams.tubelet)), data_hparams


def evaluate_checkpoint(
    checkpoint: Path, shards: str, split: str = "test", frames: int | None = None
) -> dict:
    """Score a fine-tuned checkpoint on every labelled subject of one split of the shards."""
    model, trained_frames, data_hparams = load_finetuned(checkpoint)
    subjects = load_subjects(shard_urls(shards), splits=[split])
    if not any(s["label"] is not None for s in subjects):
        raise ValueError(f"{shards}: no labelled subjects in split {split!r} to evaluate on")
    report = evaluate(model, subjects, frames or trained_frames, model.hparams.num_classes)
    report["checkpoint"] = str(checkpoint)
    report["split"] = split
    report["train_subjects"] = data_hparams.get("labels")
    return report
