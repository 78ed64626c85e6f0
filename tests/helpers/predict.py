"""Synthetic hearts, their studies and NIfTI files, and a stand-in predictor, for predict and cycle tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from data_shards.record import LV, MYO, RV

# The preprocessing of the tiny fine-tuned package (48 x 48 at 1.5 mm) that predict tests use.
PACKAGE_PREPROCESS = {"spacing": 1.5, "size": 48, "percentiles": [0.5, 99.5],
                      "orientation": "canonical", "crop": "centre"}  # fmt: skip

# A rotated, mirrored grid (det < 0): canonical orientation must transpose and flip it.
ROTATION = np.array(
    [[0.0, np.cos(0.5), -np.sin(0.5)], [-1.0, 0.0, 0.0], [0.0, np.sin(0.5), np.cos(0.5)]]
)


def heart(shape: tuple[int, ...], spacing: tuple[float, ...]) -> np.ndarray:
    """Ground truth (S, T, H, W): an off-centre LV whose radius changes over the cycle, a
    myocardial ring and an RV on one side, so any wrong flip or transpose shows."""
    s, t, h, w = shape
    y, x = np.meshgrid(np.arange(h) * spacing[1], np.arange(w) * spacing[2], indexing="ij")
    cy, cx = 0.45 * h * spacing[1], 0.6 * w * spacing[2]
    label = np.zeros(shape, np.uint8)
    for z in range(s):
        for f in range(t):
            r = 13.0 - 4.0 * np.sin(np.pi * f / t) - 1.0 * z  # largest at frame 0
            d = np.hypot(y - cy, x - cx)
            rv = np.hypot(y - cy - 2, x - cx + 20) < 15
            label[z, f][rv] = RV
            label[z, f][d < r + 5] = MYO
            label[z, f][d < r] = LV
    return label


def write_nifti(path: Path, stwh: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """(S, T, H, W) -> a NIfTI (X=W, Y=H, Z=S[, T]) with a rotated, mirrored affine; returns it."""
    dz, dy, dx = spacing
    affine = np.eye(4)
    affine[:3, :3] = ROTATION @ np.diag([dx, dy, dz])
    affine[:3, 3] = [40.0, -120.0, 35.0]
    data = stwh.transpose(3, 2, 0, 1)
    if data.shape[3] == 1:
        data = data[..., 0]
    nib.save(nib.Nifti1Image(data, affine), path)
    return affine


def study_image(label: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.array([30, 220, 90, 180], np.float32)
    return (values[label] + rng.normal(0, 8, label.shape)).astype(np.float32)


def answering(labels: np.ndarray):
    """A stand-in for finetune.evaluate.predict_study that answers labels (S, T, H, W), and a
    certain model's entropy (zeros, (S, T)) when asked for it."""

    def predict_study(*args, entropy: bool = False, **kwargs):
        return (labels, np.zeros(labels.shape[:2], np.float32)) if entropy else labels

    return predict_study


def drawn_heart(
    model, image: np.ndarray, frames: int, batch: int = 16, entropy: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Stands in for finetune.evaluate.predict_study: on the model's grid (S, T, size, size), an
    LV disc that shrinks over the cycle, a myocardial ring and an RV beside it, every slice."""
    t, size = image.shape[1], image.shape[2]
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    labels = np.zeros(image.shape, np.uint8)
    for f in range(t):
        r = 8.0 - 3.0 * np.sin(np.pi * f / t)
        labels[:, f, np.hypot(y, x + 14) < 6] = RV
        labels[:, f, np.hypot(y, x) < r + 3] = MYO
        labels[:, f, np.hypot(y, x) < r] = LV
    return answering(labels)(entropy=entropy)
