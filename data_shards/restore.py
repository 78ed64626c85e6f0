"""Undo data_shards.preprocess for a prediction: a label map on the model's grid back onto the
study's own grid (the crop, the in-plane resampling, the reorientation), beside preprocess."""

from __future__ import annotations

import numpy as np
import torch


def restore_labels(pred: np.ndarray, meta: dict, num_classes: int) -> np.ndarray:
    """Label map (S, T, size, size) on the model's grid -> (S, T, H, W) on the study's own grid.

    Undoes, in reverse order, what data_shards.preprocess did: the crop window, the in-plane
    resampling (per-class maps resampled, then argmax) and the reorientation (flips, transpose).
    """
    s, t, h0, w0 = meta["original_shape"]
    orientation = meta.get("orientation")
    plan = orientation if isinstance(orientation, dict) else {"transposed": False, "flipped": []}
    oriented_hw = (w0, h0) if plan["transposed"] else (h0, w0)
    crop = meta["crop"]
    window = pred.reshape(s * t, *pred.shape[2:])
    start, resampled = tuple(crop["box"][:2]), tuple(crop["resampled_shape"])
    label_map = _unresample(window, start, resampled, oriented_hw, num_classes)
    label_map = label_map.reshape(s, t, *oriented_hw)
    axes = {"S": 0, "H": 2, "W": 3}
    for name in plan["flipped"]:  # flips were made after the transpose: undo them first
        label_map = np.flip(label_map, axes[name])
    if plan["transposed"]:
        label_map = label_map.swapaxes(2, 3)
    return np.ascontiguousarray(label_map)


def _unresample(
    window: np.ndarray,
    start: tuple[int, int],
    resampled_hw: tuple[int, int],
    native_hw: tuple[int, int],
    num_classes: int,
    chunk: int = 64,
) -> np.ndarray:
    """(N, size, size) label maps of the crop window at ``start`` of the resampled grid -> (N, h, w)
    native label maps: every class's indicator map sampled bilinearly at the native pixel centres
    (MONAI's and torch's convention: native pixel i sits at (i + 0.5) * h' / h - 0.5), then the
    most likely class. Only native pixels near the window are computed; the rest is background.
    """
    n, size, _ = window.shape
    out = np.zeros((n, *native_hw), dtype=np.uint8)
    spans, coords = [], []
    for a0, rn, hn in zip(start, resampled_hw, native_hw, strict=True):
        # In pixels of the window padded by one background pixel; clamped like interpolation.
        u = np.clip((np.arange(hn) + 0.5) * rn / hn - 0.5, 0, rn - 1) - (a0 - 1)
        inside = np.nonzero((u >= 0) & (u <= size + 1))[0]  # u rises with i: one run
        if not inside.size:
            return out
        spans.append(slice(int(inside[0]), int(inside[-1]) + 1))
        coords.append(torch.from_numpy((2 * u[inside] + 1) / (size + 2) - 1).float())
    gy, gx = torch.meshgrid(coords[0], coords[1], indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]  # (1, h, w, 2): x then y, as grid_sample wants
    padded = np.zeros((n, size + 2, size + 2), dtype=np.int64)
    padded[:, 1:-1, 1:-1] = window
    k = max(num_classes, int(window.max()) + 1)
    for i in range(0, n, chunk):
        x = torch.from_numpy(padded[i : i + chunk])
        onehot = torch.nn.functional.one_hot(x, k).permute(0, 3, 1, 2).float()  # (n, K, .., ..)
        maps = torch.nn.functional.grid_sample(
            onehot, grid.expand(len(x), -1, -1, -1), mode="bilinear", align_corners=False
        )
        out[i : i + chunk, spans[0], spans[1]] = _argmax_classes(maps).numpy()
    return out


def _argmax_classes(maps: torch.Tensor) -> torch.Tensor:
    """argmax over dim 1 of (N, K, H, W), class by class: torch's strided argmax is ~10x slower."""
    best, index = maps[:, 0].clone(), torch.zeros(maps[:, 0].shape, dtype=torch.uint8)
    for c in range(1, maps.shape[1]):
        better = maps[:, c] > best  # ties keep the lower class, as argmax does
        best = torch.where(better, maps[:, c], best)
        index[better] = c
    return index
