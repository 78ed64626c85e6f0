"""A contact sheet: random clips of decoded subjects drawn into one PNG, one clip per row, its
frames across, label contours overlaid (what ``cmrfm inspect`` writes as ``contact_sheet.png``).
Titles show only the anonymous sample key, source, modality and slice: never patient data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from data_shards.clips import cyclic_window
from data_shards.record import IGNORE, INFARCT, LABEL_NAMES, LV, MVO, MYO, RV

CONTOUR_COLOURS = {LV: "red", MYO: "lime", RV: "deepskyblue", INFARCT: "yellow", MVO: "magenta"}
_CELL_INCHES, _TITLE_INCHES, _DPI = 1.0, 0.15, 100  # 100 x 100 pixel frames, 15 px titles
_GAP = 2  # pixels between frames, so label contours of neighbouring frames stay apart


def contact_sheet(
    subjects: Sequence[dict[str, Any]],
    path: Path,
    clips: int = 16,
    frames: int = 8,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Draw ``clips`` random clips into a PNG: one row per clip, its frames across.

    Args:
        subjects: decoded subjects (``stream.decode``): image uint8 (S, T, H, W), label or None.
        path: the PNG to write: ``frames`` x ``clips`` cells of 100 x 100 pixels, each row
            under a 15-pixel title strip (fewer columns when every study has fewer frames).
        clips: rows; each a random slice of the next subject in a random order.
        frames: columns: consecutive frames from a random start, wrapping over the cycle. A
            study with fewer frames (LGE: T = 1) fills only its own frames.
        seed: picks subjects, slices and starts.

    Returns:
        What each row shows: ``[{"key", "source", "modality", "slice", "frames": [int]}]``.
    """
    if not subjects:
        raise ValueError("contact_sheet needs at least one subject")
    if clips < 1 or frames < 1:
        raise ValueError(f"clips and frames must be >= 1, got clips={clips}, frames={frames}")
    rng = np.random.default_rng(seed)
    # Every subject once in random order before any repeats (more clips than subjects).
    order = rng.permutation(len(subjects))
    picked = [subjects[order[row % len(order)]] for row in range(clips)]
    rows = [_pick_clip(subject, rng, frames) for subject in picked]
    frames = max(len(row["frames"]) for row in rows)  # no empty columns when every T < frames
    image, label, origins = _mosaic(picked, rows, frames)

    # One axes showing one mosaic: a grid of small axes costs ~0.1 s per cell to draw.
    height = clips * (_CELL_INCHES + _TITLE_INCHES)
    figure = Figure(figsize=(frames * _CELL_INCHES, height), dpi=_DPI)
    FigureCanvasAgg(figure)  # the Agg canvas, without switching pyplot's global backend
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    gray = matplotlib.colormaps["gray"].with_extremes(bad="white")
    ax.imshow(image, cmap=gray, vmin=0, vmax=255, interpolation="nearest", aspect="auto")
    present = sorted(set(np.unique(label).tolist()) & set(CONTOUR_COLOURS), reverse=True)
    for value in present:  # highest first, so LV stays visible on the myocardium's inner edge
        mask = (label == value).astype(np.float32)
        ax.contour(mask, levels=[0.5], colors=CONTOUR_COLOURS[value], linewidths=0.6)
    for row, (y, x_origins) in zip(rows, origins):
        title = f"{row['key']}  {row['source']}/{row['modality']}  slice {row['slice']}"
        ax.text(0, y - 1, title, fontsize=6, va="bottom")
        for x, t in zip(x_origins, row["frames"]):
            ax.text(x + 1, y + 1, f"t{t}", color="yellow", fontsize=5, va="top")
    if present:
        handles = [
            Line2D([], [], color=CONTOUR_COLOURS[c], label=LABEL_NAMES[c]) for c in present[::-1]
        ]
        figure.legend(
            handles=handles, loc="upper right", ncol=len(handles), fontsize=5, frameon=False
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI, facecolor="white")
    return rows


def _pick_clip(subject: dict[str, Any], rng: np.random.Generator, frames: int) -> dict[str, Any]:
    """A random slice and start of ``subject``: the row :func:`contact_sheet` draws."""
    n_slices, n_frames = subject["image"].shape[:2]
    index = int(rng.integers(n_slices))
    window = cyclic_window(int(rng.integers(n_frames)), min(frames, n_frames), n_frames)
    return {
        "key": subject["key"],
        "source": subject["meta"].get("source", "?"),
        "modality": subject["meta"].get("modality", "?"),
        "slice": index,
        "frames": window.tolist(),
    }


def _mosaic(
    subjects: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], frames: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, list[int]]]]:
    """Frames laid out on one canvas, NaN (drawn white) between them.

    Returns:
        image float32 (rows * (title + H), frames * (W + gap)), label uint8 of the same shape
        (0 where unlabelled or without ground truth), and per row the top y and left x of its
        cells.
    """
    height = max(s["image"].shape[2] for s in subjects)
    width = max(s["image"].shape[3] for s in subjects)
    title = round(height * _TITLE_INCHES / _CELL_INCHES)
    row_h, col_w = title + height, width + _GAP
    image = np.full((len(rows) * row_h, frames * col_w), np.nan, dtype=np.float32)
    label = np.zeros(image.shape, dtype=np.uint8)
    origins = []
    for r, (subject, row) in enumerate(zip(subjects, rows)):
        y = r * row_h + title
        xs = [c * col_w for c in range(len(row["frames"]))]
        for x, t in zip(xs, row["frames"]):
            frame = subject["image"][row["slice"], t]  # (H, W)
            h, w = frame.shape
            image[y : y + h, x : x + w] = frame
            if subject["label"] is not None:
                truth = subject["label"][row["slice"], t]
                label[y : y + h, x : x + w] = np.where(truth == IGNORE, 0, truth)
        origins.append((y, xs))
    return image, label, origins
