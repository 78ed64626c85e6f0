"""Report pictures: MAE input / masked / reconstruction, segmentation overlays on cine frames,
and `cmrfm predict`'s overlay sheet and volume curves over the cardiac cycle."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from data_shards.record import LV, MYO, RV

# background transparent, LV red, myocardium green, RV blue
LABEL_COLOURS = ListedColormap(
    [(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.45), (0.2, 0.8, 0.3, 0.45), (0.2, 0.4, 1.0, 0.45)]
)
# predict's overlay sheet (RGB 0-1) by label value: LV, MYO, RV, infarct, MVO.
OVERLAY_COLOURS = {
    LV: (0.9, 0.1, 0.1),
    MYO: (0.1, 0.8, 0.2),
    RV: (0.1, 0.4, 1.0),
    4: (1, 0.9, 0),
    5: (1, 0, 1),
}


def mae_figure(clip: np.ndarray, mask: np.ndarray, recon: np.ndarray, path: Path) -> None:
    """Rows input / masked input / reconstruction over frames; clip, recon (T, H, W), mask (T, H, W) 1=masked."""
    t = clip.shape[0]
    fig, axes = plt.subplots(3, t, figsize=(2 * t, 6.2), squeeze=False)
    masked = np.where(mask > 0, 0.5 * clip.max(), clip) * (1 - 0.6 * mask)
    for row, (title, frames) in enumerate(
        (("input", clip), ("masked", masked), ("reconstruction", recon))
    ):
        for f in range(t):
            ax = axes[row, f]
            ax.imshow(frames[f], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if f == 0:
                ax.set_ylabel(title)
            if row == 0:
                ax.set_title(f"frame {f}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def overlay_figure(
    image: np.ndarray,
    truth: np.ndarray,
    pred: np.ndarray,
    frames: list[int],
    slices: list[int],
    path: Path,
) -> None:
    """Grid of (slice, frame) panels: ground truth and prediction overlays side by side.

    image, truth, pred (S, T, H, W); image uint8.
    """
    rows = len(slices)
    fig, axes = plt.subplots(
        rows, 2 * len(frames), figsize=(4 * len(frames), 2.1 * rows), squeeze=False
    )
    for r, z in enumerate(slices):
        for c, f in enumerate(frames):
            for k, (what, lab) in enumerate((("truth", truth), ("prediction", pred))):
                ax = axes[r, 2 * c + k]
                ax.imshow(image[z, f], cmap="gray")
                shown = np.where(lab[z, f] > 3, 0, lab[z, f])  # ignore value shows as nothing
                ax.imshow(shown, cmap=LABEL_COLOURS, vmin=0, vmax=3, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{what}, frame {f}", fontsize=9)
                if c == 0 and k == 0:
                    ax.set_ylabel(f"slice {z}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_overlay(
    image: np.ndarray,
    label_map: np.ndarray,
    spacing: tuple,
    phases: dict,
    path: Path,
    alerts: list[str] | None = None,
) -> Path:
    """`cmrfm predict`'s overlay.png: rows ED and ES (one row when they are one frame), one
    column per slice; image (S, T, H, W) with label_map (S, T, H, W) over it, cut to the segmented
    region (plus a margin) so the heart fills the tiles. alerts (the failed quality checks) are
    printed in red under the tiles."""
    picked = [("ED", phases["ed"]), ("ES", phases["es"])]
    if phases["ed"] == phases["es"]:  # one frame (or no contraction found): one row
        picked = [("frame", phases["ed"])]
    ys, xs = _box(label_map)
    shown = image[:, [f for _, f in picked]][:, :, ys, xs]
    window = tuple(float(v) for v in np.percentile(shown, (1, 99)))  # one grey scale for all tiles
    rows = []
    for _, f in picked:
        tiles = [
            _tile(image[z, f, ys, xs], label_map[z, f, ys, xs], window)
            for z in range(image.shape[0])
        ]
        rows.append(np.concatenate(tiles, axis=1))
    sheet = np.concatenate(rows, axis=0)  # (rows h, S w, 3)
    h, w = ys.stop - ys.start, xs.stop - xs.start
    aspect = float(spacing[1]) / float(spacing[2]) if all(map(math.isfinite, spacing[1:])) else 1.0
    n = image.shape[0]
    fig_w = min(24.0, 1.6 * n + 0.8)
    fig_h = fig_w * (len(picked) * h * aspect) / (n * w) + 0.6
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=100)
    ax.imshow(sheet, aspect=aspect, interpolation="nearest")
    ax.set_xticks([(z + 0.5) * w for z in range(n)], [str(z) for z in range(n)], fontsize=7)
    ax.set_yticks(
        [(r + 0.5) * h for r in range(len(picked))],
        [f"{p} {f}" if p == "frame" else f"{p} (frame {f})" for p, f in picked],
    )
    ax.set_xlabel("slice")
    ax.tick_params(length=0)
    names = {LV: "LV", MYO: "MYO", RV: "RV", 4: "infarct", 5: "MVO"}
    present = [c for c in OVERLAY_COLOURS if (label_map == c).any()]
    if present:
        handles = [Patch(color=OVERLAY_COLOURS[c], label=names[c]) for c in present]
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    if alerts:
        fig.set_figheight(fig.get_figheight() + 0.16 * len(alerts))
        text = "\n".join(f"quality: {a}" for a in alerts)
        fig.text(0.01, 0.005, text, color="#c00000", fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, min(0.5, 0.04 * len(alerts or [])), 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _box(label_map: np.ndarray, margin: float = 0.3) -> tuple[slice, slice]:
    """(rows, columns) around every labelled pixel of the study, widened by ``margin``."""
    h, w = label_map.shape[2:]
    found = label_map.any(axis=(0, 1))
    if not found.any():
        return slice(0, h), slice(0, w)
    ys, xs = np.nonzero(found)
    pad = int(margin * max(np.ptp(ys) + 1, np.ptp(xs) + 1)) + 4
    return (
        slice(max(0, ys.min() - pad), min(h, ys.max() + pad + 1)),
        slice(max(0, xs.min() - pad), min(w, xs.max() + pad + 1)),
    )


def _tile(
    image: np.ndarray, label_map: np.ndarray, window: tuple[float, float], alpha: float = 0.45
) -> np.ndarray:
    """(h, w) image and label_map -> (h, w, 3) RGB with its classes coloured, half-transparent; the
    image's grey levels ``window`` = (lo, hi) map to black and white."""
    lo, hi = window
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for value, colour in OVERLAY_COLOURS.items():
        mask = label_map == value
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour)
    return rgb


def cycle_figure(
    per_frame_ml: dict[str, list[float]], cycle: dict, phases: dict, path: Path
) -> Path:
    """`cmrfm predict`'s curves.png: LV and RV volume (ml) against time (ms; frame number when
    the times are unknown), ED and ES marked, the curve's EF, PER and PFR in the title.

    per_frame_ml: {lv, rv} (T,) ml; cycle: volumes.json's "cycle" block; phases: {ed, es}
    frame indices.
    """
    n = len(per_frame_ml["lv"])
    x = np.asarray(cycle["time_ms"] if cycle["time_ms"] is not None else range(n), dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for side in ("lv", "rv"):
        colour = OVERLAY_COLOURS[LV if side == "lv" else RV]
        ax.plot(x, per_frame_ml[side], "o-", color=colour, ms=3, label=side.upper())
    for phase, style in (("ed", "--"), ("es", ":")):
        f = phases[phase]
        ax.axvline(x[f], color="0.3", ls=style, lw=1)
        ax.annotate(f"{phase.upper()} ({f})", (x[f], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -12), textcoords="offset points", fontsize=8)  # fmt: skip
    ax.set_xlabel("time (ms)" if cycle["time_ms"] is not None else "frame")
    ax.set_ylabel("volume (ml)")
    ax.set_title(_cycle_title(cycle), fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _cycle_title(cycle: dict) -> str:
    parts = [
        (name, cycle[key], unit)
        for name, key, unit in (
            ("LV EF (curve)", "lv_ef_percent", "%"),
            ("PER", "lv_peak_ejection_rate_ml_s", " ml/s"),
            ("PFR", "lv_peak_filling_rate_ml_s", " ml/s"),
        )
    ]
    return ", ".join(f"{n} {'n/a' if v is None else f'{v:.0f}{u}'}" for n, v, u in parts)
