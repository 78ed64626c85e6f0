"""Bring every subject onto one grid: orientation, in-plane spacing, field of view, uint8.

Slices and frames are never resampled: only (H, W) changes. The (S, T) axes are folded into the
channel axis of MONAI's 2D transforms, so one call handles a whole 4D study. One (H, W) crop
window serves the whole study, centred on the image or on the labelled heart.

Blank frames (see :func:`blank_frames`) are found on the way to uint8 and recorded in meta; the
converter quarantines a study that holds no image at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from data_shards.orientation import reorient
from data_shards.record import BACKGROUND, IGNORE, Subject

ORIENTATIONS = ("canonical", "none")
CROPS = ("centre", "label")


@dataclass(frozen=True)
class PreprocessConfig:
    """Target grid and intensity window.

    Args:
        spacing: target in-plane pixel size in mm (dy = dx).
        size: output height and width in pixels, after a crop or pad.
        percentiles: (low, high) percentiles of the resampled 4D image that map to 0 and 255.
        orientation: "canonical" reorients using meta["direction"] (see data_shards.orientation);
            "none" keeps the source's voxel order.
        crop: "centre" centres the window on the image; "label" on the centroid of the labelled
            heart (falling back to the centre for unlabelled subjects).
    """

    spacing: float = 1.5
    size: int = 128
    percentiles: tuple[float, float] = (0.5, 99.5)
    orientation: str = "canonical"
    crop: str = "centre"

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
        if self.orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (percentiles a list): the ``preprocess`` object of shard meta,
        manifest.json, the conversion journal and a fine-tuned model's config.json."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "preprocess") -> PreprocessConfig:
        """The config that a ``preprocess`` object (:meth:`to_dict`) records.

        Keys that are not fields are skipped (hub and package configs keep ``frames`` and
        ``modalities`` beside them), and fields an older file lacks take their defaults.

        Raises:
            ValueError: ``d`` is not a mapping, or a field has a bad type or value; the message
                names ``where`` (the file, say) and the field.
        """
        if not isinstance(d, Mapping):
            raise ValueError(
                f"{where}: preprocess must be an object of PreprocessConfig fields, "
                f"got {type(d).__name__}"
            )
        names = {f.name for f in fields(cls)}
        given = {k: _from_json(k, v, where) for k, v in d.items() if k in names}
        try:
            return cls(**given)
        except ValueError as err:  # __post_init__'s messages start with the field's name
            raise ValueError(f"{where}: bad preprocess {dict(d)}: {err}") from None


def preprocess(subject: Subject, config: PreprocessConfig) -> Subject:
    """Orient, resample in-plane to config.spacing, crop/pad to size, robust uint8 intensities.

    Args:
        subject: image (S, T, H, W) of any real dtype, label (S, T, H, W) uint8 or None,
            spacing (dz, dy, dx) mm; dz may be NaN, and NaN dy/dx (unknown, e.g. PNG slices)
            keeps the native pixel grid: crop/pad only.
        config: the target grid and intensity window.

    Returns:
        A new Subject with image uint8 (S, T, size, size), label uint8 (S, T, size, size) or None,
        spacing (dz, config.spacing, config.spacing) (the input's where dy/dx are unknown) and
        meta extended by ``preprocess``, ``original_spacing`` (None where unknown),
        ``original_shape``, ``orientation`` and ``crop``; ``direction`` and ``origin``, where
        known, describe the output grid. Where frames are blank (:func:`blank_frames`),
        ``blank_frames`` lists them as [slice, frame] of the output; where the whole study is,
        ``blank`` says why (data_shards.convert acts on both).

    Raises:
        ValueError: in-plane spacing zero, negative or infinite; the image holds NaN/Inf; or a
            malformed meta["direction"].
    """
    name = subject.subject
    dz, dy, dx = _check_spacing(subject)
    image = np.asarray(subject.image)
    n_bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    if n_bad:
        raise ValueError(f"{name}: image holds {n_bad} non-finite voxels (NaN/Inf)")
    meta = dict(subject.meta)
    meta["original_spacing"] = [v if math.isfinite(v) else None for v in (dz, dy, dx)]
    meta["original_shape"] = [int(n) for n in image.shape]
    label = None if subject.label is None else np.asarray(subject.label)
    image, label, (dz, dy, dx) = _orient(name, image, label, (dz, dy, dx), meta, config)

    s, t, h, w = image.shape
    known = math.isfinite(dy) and math.isfinite(dx)
    out_hw = (h, w)
    if known:
        out_hw = (max(1, round(h * dy / config.spacing)), max(1, round(w * dx / config.spacing)))
    # Same float32 values whatever the input dtype, so int16/uint8/float32 inputs agree.
    flat = np.ascontiguousarray(image.reshape(s * t, h, w), dtype=np.float32)
    resampled = _resample_image(flat, out_hw)  # (S*T, h', w') float32
    label_rs = None if label is None else _resample_label(label.reshape(s * t, h, w), out_hw)
    percentile_window = tuple(float(v) for v in np.percentile(resampled, config.percentiles))
    blank, reason = blank_frames(resampled, percentile_window)  # (S*T,) bool
    if blank.any():
        meta["blank_frames"] = [[int(i) // t, int(i) % t] for i in np.flatnonzero(blank)]
    if reason:
        meta["blank"] = reason

    start, crop = _crop_window(label_rs, out_hw, config)
    # Window after the intensity mapping, so padding is black whatever the source's values.
    window = _intensity_window(resampled, percentile_window)
    image_out = _window(_to_uint8(resampled, window), start, config.size, 0)
    label_out = None
    if label_rs is not None:
        label_out = _window(label_rs, start, config.size, BACKGROUND)
        # A frame without ground truth must stay without ground truth, padding included.
        label_out[(label_rs == IGNORE).all(axis=(1, 2))] = IGNORE
        label_out = label_out.reshape(s, t, config.size, config.size)

    scale = (h / out_hw[0], w / out_hw[1])  # native pixels per output pixel
    _shift_origin(meta, start, scale, (dy, dx))
    meta["crop"] = crop
    meta["preprocess"] = config.to_dict()
    out_spacing = (dz, float(config.spacing), float(config.spacing)) if known else (dz, dy, dx)
    return replace(
        subject,
        image=image_out.reshape(s, t, config.size, config.size),
        label=label_out,
        spacing=out_spacing,
        meta=meta,
    )


def _check_spacing(subject: Subject) -> tuple[float, float, float]:
    """(dz, dy, dx); NaN is unknown, but zero, negative or infinite means a broken header."""
    name = subject.subject
    if len(subject.spacing) != 3:
        raise ValueError(f"{name}: spacing must be (dz, dy, dx) in mm, got {subject.spacing}")
    dz, dy, dx = (float(v) for v in subject.spacing)
    if any(not math.isnan(v) and not (math.isfinite(v) and v > 0) for v in (dy, dx)):
        raise ValueError(
            f"{name}: in-plane spacing (dy, dx) = ({dy}, {dx}) mm must be positive and finite, "
            "or NaN where unknown; zero, negative or infinite spacing means a broken header"
        )
    return dz, dy, dx


def _orient(
    name: str,
    image: np.ndarray,
    label: np.ndarray | None,
    spacing: tuple[float, float, float],
    meta: dict,
    config: PreprocessConfig,
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """Canonical orientation from meta["direction"], recorded in meta; unknown geometry: as is."""
    direction = meta.get("direction")
    if config.orientation == "none":
        meta["orientation"] = "none"
        return image, label, spacing
    if direction is None:
        meta["orientation"] = "unknown"
        return image, label, spacing
    try:
        out = reorient(image, label, spacing, direction, meta.get("origin"))
    except ValueError as err:
        raise ValueError(f"{name}: meta {err}") from None
    meta["orientation"] = out.info
    meta["direction"] = out.direction.tolist()
    if out.origin is None:
        meta.pop("origin", None)
    else:
        meta["origin"] = out.origin.tolist()
    return out.image, out.label, out.spacing


def _resample_image(flat: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(N, h, w) float32 -> (N, h', w'); "area" anti-aliases downsampling without a dark rim."""
    if out_hw == flat.shape[1:]:
        return flat
    downsampling = out_hw[0] <= flat.shape[1] and out_hw[1] <= flat.shape[2]
    return _resize(flat, out_hw, "area" if downsampling else "bilinear")


def _resample_label(flat: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """(N, h, w) uint8 -> (N, h', w') nearest neighbour, keeping every label value exactly."""
    if out_hw == flat.shape[1:]:
        return np.ascontiguousarray(flat, dtype=np.uint8)
    out = _resize(np.ascontiguousarray(flat, np.float32), out_hw, "nearest-exact")
    return np.rint(out).astype(np.uint8)


def _resize(flat: np.ndarray, out_hw: tuple[int, int], mode: str) -> np.ndarray:
    """(N, h, w) float32 -> (N, h', w'): what MONAI's ``Resize(out_hw, mode)`` computes (its
    torch interpolate, no anti-aliasing), without importing MONAI, whose eager import of all
    its modules costs predict seconds before any work (tests compare the two)."""
    x = torch.from_numpy(flat)[None]  # (1, N, h, w): MONAI's channel-first batch of one
    return F.interpolate(x, size=out_hw, mode=mode).squeeze(0).numpy()


def _crop_window(
    label: np.ndarray | None, hw: tuple[int, int], config: PreprocessConfig
) -> tuple[tuple[int, int], dict]:
    """Top-left (y0, x0) of the size x size window in resampled pixels, and its meta record."""
    size = config.size
    crop: dict = {"mode": "centre"}
    center = ((hw[0] - 1) / 2, (hw[1] - 1) / 2)
    if config.crop == "label":
        foreground = None
        if label is not None:
            foreground = ((label != BACKGROUND) & (label != IGNORE)).any(axis=0)  # (h', w')
        if foreground is not None and foreground.any():
            ys, xs = np.nonzero(foreground)
            center = (float(ys.mean()), float(xs.mean()))
            crop["mode"] = "label"
        else:
            crop["note"] = "crop=label but no foreground labels: centred on the image"
    start = (math.floor(center[0] - (size - 1) / 2), math.floor(center[1] - (size - 1) / 2))
    crop.update(
        center=[round(c, 2) for c in center],
        box=[start[0], start[1], start[0] + size, start[1] + size],  # y0, x0, y1, x1
        resampled_shape=list(hw),
        pad=[[max(0, -a), max(0, a + size - n)] for a, n in zip(start, hw, strict=True)],
    )
    return start, crop


def _window(flat: np.ndarray, start: tuple[int, int], size: int, fill: float) -> np.ndarray:
    """(N, h, w) -> (N, size, size) window at ``start``; outside the image is ``fill``."""
    n, h, w = flat.shape
    out = np.full((n, size, size), fill, dtype=flat.dtype)
    y0, x0 = start
    ys, xs = slice(max(0, y0), min(h, y0 + size)), slice(max(0, x0), min(w, x0 + size))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = flat[:, ys, xs]
    return out


def _shift_origin(
    meta: dict, start: tuple[int, int], scale: tuple[float, float], dyx: tuple[float, float]
) -> None:
    """Move meta["origin"] to output voxel [0, 0]: resampled pixel ``start`` in native pixels."""
    if meta.get("origin") is None or meta.get("direction") is None:
        return
    direction = np.asarray(meta["direction"], dtype=np.float64)
    origin = np.asarray(meta["origin"], dtype=np.float64)
    for row, (a, k, d) in enumerate(zip(start, scale, dyx, strict=True), start=1):
        # Resampled pixel i is centred on native pixel (i + 0.5) * k - 0.5 (MONAI's convention).
        origin = origin + ((a + 0.5) * k - 0.5) * d * direction[row]
    if np.isfinite(origin).all():
        meta["origin"] = origin.tolist()
    else:
        meta.pop("origin")  # unknown spacing: no honest origin for the output grid


def _intensity_window(
    image: np.ndarray, percentile_window: tuple[float, float]
) -> tuple[float, float]:
    """(low, high) of the uint8 mapping: the image's percentiles, or its full range where they
    coincide (mostly one value, e.g. a few bright voxels on zeros); equal for a constant image."""
    lo, hi = percentile_window
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    return lo, hi


def blank_frames(
    flat: np.ndarray, percentile_window: tuple[float, float]
) -> tuple[np.ndarray, str | None]:
    """Which frames of a study hold no image, and why the whole study holds none (or None).

    The rule: a frame (one slice at one time) is blank when its intensities span less than one
    grey level (a 255th) of the study's uint8 window, so a constant frame, or one that the study
    shows as a single grey, is blank. The study holds no image when every frame is blank, or
    when its percentile window is empty: most voxels (all but the percentile tails, 1% by
    default) share one value, which no acquisition does (a few bright voxels on a blank field).
    Real frames always span far more than one grey level: zero-padded borders, nulled (dark)
    LGE myocardium and dim apical slices have tissue beside them, so none of them is blank.

    Args:
        flat: (N, h, w) float32 frames of one study, before the uint8 mapping.
        percentile_window: the study's (low, high) intensity percentiles (the uint8 window).

    Returns:
        (N,) bool, True for a blank frame; and why the whole study is blank, or None.
    """
    p_lo, p_hi = percentile_window
    lows, highs = flat.min(axis=(1, 2)), flat.max(axis=(1, 2))  # (N,)
    lo, hi = (p_lo, p_hi) if p_hi > p_lo else (float(lows.min()), float(highs.max()))
    blank = (highs - lows) * 255.0 < hi - lo
    if hi <= lo:
        return np.ones(len(flat), dtype=bool), f"constant image: every voxel is {lo:g}"
    if p_hi <= p_lo:
        others = int(np.count_nonzero(flat != p_lo))
        return (
            blank,
            f"near-constant image: all but {others} of its {flat.size} voxels are {p_lo:g}",
        )
    if blank.all():
        return blank, (
            f"every one of its {len(flat)} frames is constant or near-constant (spans less "
            f"than one grey level of the study's window {lo:g} to {hi:g})"
        )
    return blank, None


def _to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip ``image`` to ``window`` = (low, high) and scale linearly to 0..255."""
    lo, hi = window
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (np.clip(image, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _from_json(key: str, value: Any, where: str) -> Any:
    """A JSON value of field ``key`` as the field's type (percentiles a tuple, size an int);
    a wrong type is a ValueError naming ``where`` and ``key``, not a TypeError deep inside."""
    if key == "percentiles":
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        ok, want = pair and all(map(_is_number, value)), "a [low, high] pair of numbers"
        value = tuple(value) if ok else value
    elif key == "size":
        ok, want = _is_number(value) and float(value).is_integer(), "a whole number of pixels"
        value = int(value) if ok else value
    elif key == "spacing":
        ok, want = _is_number(value), "a number of mm"
    else:
        ok, want = isinstance(value, str), "a string"
    if not ok:
        raise ValueError(f"{where}: preprocess {key!r} must be {want}, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)
