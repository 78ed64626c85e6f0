"""Cavity volumes and ejection fraction from label maps (shared by the phantom and the metrics)."""

from __future__ import annotations

import numpy as np


def volumes_ml(label_map: np.ndarray, spacing: tuple[float, float, float], cls: int) -> np.ndarray:
    """Volume of class cls in ml per frame: label_map (S, T, H, W), spacing (dz, dy, dx) mm -> (T,)."""
    if label_map.ndim != 4:
        raise ValueError(f"label_map must be (S, T, H, W), got shape {label_map.shape}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return (label_map == cls).sum(axis=(0, 2, 3)).astype(np.float64) * voxel_ml


def ejection_fraction(edv: float, esv: float) -> float:
    """EF in percent; NaN when the end-diastolic volume is zero."""
    return float("nan") if edv <= 0 else 100.0 * (edv - esv) / edv
