"""Report pictures: MAE input / masked / reconstruction, and segmentation overlays on cine frames."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

# background transparent, LV red, myocardium green, RV blue
LABEL_COLOURS = ListedColormap(
    [(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.45), (0.2, 0.8, 0.3, 0.45), (0.2, 0.4, 1.0, 0.45)]
)


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
