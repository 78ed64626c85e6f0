"""Segmentation and clinical metrics: Dice per structure (MONAI) and LV EF from masks."""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice

from data_shards.record import IGNORE, LABEL_NAMES
from data_shards.volumes import ejection_fraction, volumes_ml


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    """Dice of each foreground class over one volume: pred, truth (S, H, W) integer labels.

    0 for a class predicted where the truth has none; NaN only for a class absent from both.
    Pixels whose truth is IGNORE (e.g. outside a contour-only label) are left out of both.
    """
    unknown = truth == IGNORE
    pred, truth = np.where(unknown, 0, pred), np.where(unknown, 0, truth)
    p = torch.as_tensor(pred, dtype=torch.long)[None]  # (1, S, H, W)
    t = torch.as_tensor(truth, dtype=torch.long)[None]
    one_hot = lambda x: torch.nn.functional.one_hot(x, num_classes).permute(0, 4, 1, 2, 3)  # noqa: E731
    scores = compute_dice(one_hot(p), one_hot(t), include_background=False, ignore_empty=False)[0]
    absent = [not (pred == c).any() and not (truth == c).any() for c in range(1, num_classes)]
    return {
        LABEL_NAMES[c]: float("nan") if absent[c - 1] else float(scores[c - 1])
        for c in range(1, num_classes)
    }


def lv_ef(
    label: np.ndarray, spacing: tuple[float, float, float], ed: int, es: int
) -> dict[str, float]:
    """LV EDV, ESV (ml) and EF (%) from a label map (S, T, H, W) at frames ed and es."""
    vols = volumes_ml(label, spacing, cls=1)
    return {"edv": vols[ed], "esv": vols[es], "ef": ejection_fraction(vols[ed], vols[es])}
