"""Predict whole studies with a fine-tuned segmenter and score them against ground truth."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cmrfm_io.progress_lines import logged
from data_shards.clips import cyclic_window
from data_shards.record import IGNORE, INFARCT, LABEL_NAMES, RV
from data_shards.stream import load_subjects, shard_urls
from finetune.metrics import (
    AGREEMENT_STATS,
    CLINICAL_INDICES,
    SCAR_INDICES,
    agreement,
    clinical_indices,
    dice_per_class,
    hd95_per_class,
    hd95_undefined,
    scar_extent,
)

if TYPE_CHECKING:
    from finetune.system import SegFinetuner


@torch.no_grad()
def predict_study(
    model: nn.Module, image: np.ndarray, frames: int, batch: int = 16, entropy: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Label map (S, T, H, W) uint8 for a uint8 study (S, T, H, W); with ``entropy`` also the
    model's uncertainty per (slice, frame), (S, T) float (:func:`heart_entropy`).

    Each slice is cut into windows of `frames` frames (the last one wraps around the cycle) and
    every frame takes its prediction from the first window that holds it.
    """
    s, t = image.shape[:2]
    unsure = np.full((s, t), np.nan, dtype=np.float32)
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
        logits = model(x)  # (B, K, frames, H, W)
        label_maps = logits.argmax(dim=1).cpu().numpy().astype(np.uint8)  # (B, frames, H, W)
        spread = heart_entropy(logits) if entropy else None  # (B, frames)
        for j, ((z, idx), lab) in enumerate(zip(where[b : b + batch], label_maps)):
            for i, f in enumerate(idx):
                if not done[z, f]:
                    pred[z, f], done[z, f] = lab[i], True
                    if spread is not None:
                        unsure[z, f] = spread[j, i]
    return (pred, unsure) if entropy else pred


def heart_entropy(logits: torch.Tensor, margin: int = 2) -> np.ndarray:
    """Mean normalised entropy (entropy / log K: 0 certain, 1 uniform) of the class
    probabilities over each frame's heart pixels (predicted foreground, dilated by margin
    pixels: the edges are where a model hesitates): logits (B, K, T, H, W) -> (B, T), NaN for
    a frame without foreground."""
    probs = logits.float().softmax(dim=1)
    k = probs.shape[1]
    h = -(probs * probs.clamp_min(1e-8).log()).sum(dim=1) / math.log(k)  # (B, T, H, W)
    heart = (probs.argmax(dim=1) > 0).float()  # (B, T, H, W)
    size = 2 * margin + 1
    heart = F.max_pool2d(heart.flatten(0, 1)[:, None], size, stride=1, padding=margin)
    heart = heart[:, 0].reshape(h.shape) > 0
    total = (h * heart).sum(dim=(-2, -1))
    count = heart.sum(dim=(-2, -1))
    mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return mean.detach().cpu().numpy()


PHASES = ("ed", "es")


def score_subject(pred: np.ndarray, subject: dict, num_classes: int) -> dict:
    """One subject's row: pred (S, T, H, W) against subject["label"] (S, T, H, W).

    Dice and HD95 (mm) per structure at every labelled phase (`dice_lv_ed`, `hd95_rv_es`, ...),
    `hd95_undefined_{structure}_{phase}` (1 where the structure is in only one of prediction and
    truth, so its HD95 is NaN), and every clinical index as `{index}_true` / `{index}_pred`, plus
    `lv_ef_error` (pred - true, EF points); with infarct classes, `infarct_pct` and `mvo_pct`
    (% of the myocardium, `finetune.metrics.scar_extent`) likewise. A single-phase study (LGE:
    ed == es) is scored once, under "ed". Without a known spacing (EMIDEC's PNGs) HD95 and the
    volumes are NaN: millimetres and millilitres cannot be made up.
    """
    label, meta = subject["label"], subject["meta"]
    spacing = known_spacing(meta.get("spacing"))
    ed, es = int(meta["ed"]), int(meta["es"])
    phases = {"ed": ed} if ed == es else {"ed": ed, "es": es}
    row: dict = {"subject": subject["key"], "group": meta.get("group")}
    for phase, f in phases.items():
        if not (label[:, f] != IGNORE).any():
            continue  # no ground truth at this phase
        p, t = pred[:, f], label[:, f]
        for structure, d in dice_per_class(p, t, num_classes).items():
            row[f"dice_{structure}_{phase}"] = d
        if spacing is None:
            continue
        for structure, h in hd95_per_class(p, t, num_classes, spacing).items():
            row[f"hd95_{structure}_{phase}"] = h
        for structure, undefined in hd95_undefined(p, t, num_classes).items():
            row[f"hd95_undefined_{structure}_{phase}"] = int(undefined)
    nan = {index: float("nan") for index in CLINICAL_INDICES}
    truth, predicted = nan, nan
    if spacing is not None and ed != es:
        # RV indices only where the truth has an RV at all (not for LV-only label maps: Sunnybrook).
        rv = num_classes > RV and bool((label == RV).any())
        truth = clinical_indices(label, spacing, ed, es, rv=rv)
        predicted = clinical_indices(pred, spacing, ed, es, rv=rv)
    for index in CLINICAL_INDICES:
        row[f"{index}_true"], row[f"{index}_pred"] = truth[index], predicted[index]
    row["lv_ef_error"] = row["lv_ef_pred"] - row["lv_ef_true"]
    if num_classes > INFARCT:  # LGE: scar extent at the (first) labelled phase
        truth, predicted = scar_extent(label, ed), scar_extent(pred, ed)
        for index in SCAR_INDICES:
            row[f"{index}_true"], row[f"{index}_pred"] = truth[index], predicted[index]
    return row


def known_spacing(spacing: Sequence[float | None] | None) -> tuple[float, ...] | None:
    """(dz, dy, dx) in mm as floats, or None when the shard records any of them as unknown."""
    if spacing is None or any(s is None or not np.isfinite(float(s)) for s in spacing):
        return None
    return tuple(float(s) for s in spacing)


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN (without numpy's warning) when there are none."""
    vals = np.asarray(values, dtype=float)
    vals = vals[~np.isnan(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def summary_over_subjects(rows: Sequence[dict], structures: Sequence[str]) -> dict:
    """Summary over subject rows (see `score_subject`).

    dice_{st} and hd95_{st}: mean over subjects and phases (ED and ES pooled); dice_{st}_{phase},
    hd95_{st}_{phase}: per phase; dice_mean, hd95_mean: mean over structures; hd95_undefined_{st}:
    how many (subject, phase) pairs left out of hd95_{st} because the structure was in only one
    of prediction and truth; for every clinical index (and the LGE scar extent where rows have
    it) its agreement, `{index}_{stat}` for stat in n, mae, bias, sd, loa_low, loa_high, r (e.g.
    lv_ef_mae, infarct_pct_mae).
    """
    out: dict = {"n_subjects": len(rows)}
    for metric in ("dice", "hd95"):
        for st in structures:
            keys = [f"{metric}_{st}_{phase}" for phase in PHASES]
            for key in keys:
                out[key] = _nanmean([r[key] for r in rows if key in r])
            out[f"{metric}_{st}"] = _nanmean([r[k] for r in rows for k in keys if k in r])
        out[f"{metric}_mean"] = _nanmean([out[f"{metric}_{st}"] for st in structures])
    for st in structures:
        keys = [f"hd95_undefined_{st}_{phase}" for phase in PHASES]
        out[f"hd95_undefined_{st}"] = int(sum(r.get(k, 0) for r in rows for k in keys))
    scar = [i for i in SCAR_INDICES if any(f"{i}_pred" in r for r in rows)]
    for index in (*CLINICAL_INDICES, *scar):
        pairs = [(r[f"{index}_pred"], r[f"{index}_true"]) for r in rows if f"{index}_pred" in r]
        stats = agreement([p for p, _ in pairs], [t for _, t in pairs])
        out |= {f"{index}_{stat}": stats[stat] for stat in AGREEMENT_STATS}
    return out


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the block on one torch thread: the metrics' many small tensor ops only lose to
    threading overhead, several-fold on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_predictions(
    preds: Mapping[str, np.ndarray], subjects: Sequence[dict], num_classes: int = 4
) -> dict:
    """Score given predictions {subject key: (S, T, H, W) label map} against labelled subjects.

    Subjects without a label map are skipped; a labelled subject without a prediction is an error.
    The summary covers the structures some subject's truth holds (EMIDEC has no RV: its
    dice_mean is over LV, MYO, infarct and MVO). Returns {"summary": {...}, "subjects": [rows]}.
    """
    rows, labelled = [], [s for s in subjects if s["label"] is not None]
    with _one_torch_thread():
        for subject in labelled:
            if subject["key"] not in preds:
                raise KeyError(f"no prediction for labelled subject {subject['key']!r}")
            rows.append(score_subject(preds[subject["key"]], subject, num_classes))
    present = {c for s in labelled for c in np.unique(s["label"]).tolist()}
    structures = [LABEL_NAMES[c] for c in range(1, num_classes) if c in present]
    return {"summary": summary_over_subjects(rows, structures), "subjects": rows}


def evaluate(model: nn.Module, subjects: Sequence[dict], frames: int, num_classes: int = 4) -> dict:
    """Predict and score every labelled subject; returns {"summary": {...}, "subjects": [rows]}."""
    model.eval()
    labelled = [s for s in subjects if s["label"] is not None]
    preds = {
        s["key"]: predict_study(model, s["image"], frames)
        for s in logged(labelled, len(labelled), "evaluating", "subjects")
    }
    return evaluate_predictions(preds, labelled, num_classes)


def load_finetune_checkpoint(checkpoint: Path) -> tuple[SegFinetuner, int, dict]:
    """A fine-tuned segmenter, the clip length it was trained on, and its data hparams."""
    from finetune.system import SegFinetuner  # here: predict_study's users need no Lightning
    from foundation.checkpoint import restore

    # pretrained=None: the weights come from this checkpoint, not from the pretraining one.
    model, ckpt = restore(SegFinetuner, Path(checkpoint), pretrained=None)
    data_hparams = ckpt.get("datamodule_hyper_parameters", {})
    return model.eval(), int(data_hparams.get("frames", model.hparams.tubelet)), data_hparams


def evaluate_checkpoint(
    checkpoint: Path, shards: str, split: str = "test", frames: int | None = None
) -> dict:
    """Score a fine-tuned checkpoint on every labelled subject of one split of the shards."""
    model, trained_frames, data_hparams = load_finetune_checkpoint(checkpoint)
    subjects = load_subjects(shard_urls(shards), splits=[split])
    if not any(s["label"] is not None for s in subjects):
        raise ValueError(f"{shards}: no labelled subjects in split {split!r} to evaluate on")
    report = evaluate(model, subjects, frames or trained_frames, model.hparams.num_classes)
    report["checkpoint"] = str(checkpoint)
    report["split"] = split
    report["train_subjects"] = data_hparams.get("labels")
    return report
