"""Bring every subject onto one grid: in-plane spacing, field of view and uint8 intensities.

Slices and frames are never resampled: only (H, W) changes. The (S, T) axes are folded into the
channel axis of MONAI's 2D transforms, so one call handles a whole 4D study.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from monai.transforms import Resize, ResizeWithPadOrCrop

from data_shards.record import BACKGROUND, IGNORE, Subject


@dataclass(frozen=True)
class PreprocessConfig:
    """Target grid and intensity window.

    Args:
        spacing: target in-plane pixel size in mm (dy = dx).
        size: output height and width in pixels, after a centred crop or pad.
        percentiles: (low, high) percentiles of the resampled 4D image that map to 0 and 255.
    """

    spacing: float = 1.5
    size: int = 128
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.spacing) and self.spacing > 0):
            raise ValueError(f"spacing must be a positive number of mm, got {self.spacing}")
        if self.size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {self.size}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}"
            )


def preprocess(subject: Subject, config: PreprocessConfig) -> Subject:
    """In-plane resample to config.spacing, centre crop/pad to size, robust uint8 intensities.

    Args:
        subject: image (S, T, H, W) of any real dtype, label (S, T, H, W) uint8 or None,
            spacing (dz, dy, dx) mm with finite positive dy and dx (dz may be NaN).
        config: the target grid and intensity window.

    Returns:
        A new Subject with image uint8 (S, T, size, size), label uint8 (S, T, size, size) or None,
        spacing (dz, config.spacing, config.spacing) and meta extended by ``preprocess``,
        ``original_spacing`` (None where unknown) and ``original_shape``.

    Raises:
        ValueError: the in-plane spacing is missing, zero or NaN, or the image holds NaN/Inf.
    """
    name = subject.subject
    if len(subject.spacing) != 3:
        raise ValueError(f"{name}: spacing must be (dz, dy, dx) in mm, got {subject.spacing}")
    dz, dy, dx = (float(s) for s in subject.spacing)
    if not all(math.isfinite(s) and s > 0 for s in (dy, dx)):
        raise ValueError(
            f"{name}: in-plane spacing (dy, dx) = ({dy}, {dx}) mm must be finite and positive; "
            "preprocessing needs it to resample to a common grid"
        )
    image = np.asarray(subject.image)
    n_bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    if n_bad:
        raise ValueError(f"{name}: image holds {n_bad} non-finite voxels (NaN/Inf)")

    s, t, h, w = image.shape
    # Same float32 values whatever the input dtype, so int16/uint8/float32 inputs agree.
    channels = torch.from_numpy(np.ascontiguousarray(image.reshape(s * t, h, w), dtype=np.float32))
    out_hw = (max(1, round(h * dy / config.spacing)), max(1, round(w * dx / config.spacing)))
    # "area" averages the pixels a target pixel covers, which anti-aliases downsampling without
    # the zero-padded border that MONAI's Gaussian anti-aliasing leaves.
    downsampling = out_hw[0] <= h and out_hw[1] <= w
    resize_image = Resize(out_hw, mode="area" if downsampling else "bilinear")
    crop_or_pad = ResizeWithPadOrCrop((config.size, config.size), mode="constant", value=0)
    resampled = _to_numpy(resize_image(channels))  # (S*T, h', w') float32
    cropped = _to_numpy(crop_or_pad(torch.from_numpy(resampled)))  # (S*T, size, size)
    image_out = _to_uint8(cropped, resampled, config.percentiles)
    image_out = image_out.reshape(s, t, config.size, config.size)

    label_out = None
    if subject.label is not None:
        label_out = _resample_label(subject.label, out_hw, config.size)

    meta = dict(subject.meta)
    meta["preprocess"] = _json_config(config)
    meta["original_spacing"] = [v if math.isfinite(v) else None for v in (dz, dy, dx)]
    meta["original_shape"] = [int(n) for n in image.shape]
    return replace(
        subject,
        image=image_out,
        label=label_out,
        spacing=(dz, float(config.spacing), float(config.spacing)),
        meta=meta,
    )


def _resample_label(label: np.ndarray, out_hw: tuple[int, int], size: int) -> np.ndarray:
    """Nearest-neighbour resample and crop/pad, keeping every label value exactly."""
    s, t, h, w = label.shape
    flat = np.asarray(label).reshape(s * t, h, w)
    # A frame without ground truth must stay without ground truth, padding included.
    unlabelled = (flat == IGNORE).all(axis=(1, 2))  # (S*T,)
    resize = Resize(out_hw, mode="nearest-exact")
    crop_or_pad = ResizeWithPadOrCrop((size, size), mode="constant", value=BACKGROUND)
    out = _to_numpy(crop_or_pad(resize(torch.from_numpy(np.ascontiguousarray(flat, np.float32)))))
    out = np.rint(out).astype(np.uint8)  # (S*T, size, size)
    out[unlabelled] = IGNORE
    return out.reshape(s, t, size, size)


def _to_uint8(
    image: np.ndarray, reference: np.ndarray, percentiles: tuple[float, float]
) -> np.ndarray:
    """Clip ``image`` to the percentiles of ``reference`` and scale linearly to 0..255."""
    lo, hi = (float(v) for v in np.percentile(reference, percentiles))
    if hi <= lo:
        # Mostly-constant images (e.g. a few bright voxels on zeros) collapse the percentile
        # window; fall back to the full range rather than dividing by zero.
        lo, hi = float(reference.min()), float(reference.max())
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (np.clip(image, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _to_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """MONAI hands back MetaTensors; keep only the plain array."""
    return x.as_tensor().numpy() if hasattr(x, "as_tensor") else np.asarray(x)


def _json_config(config: PreprocessConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
