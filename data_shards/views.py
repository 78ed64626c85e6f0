"""Two views of one subject for contrastive pretraining: two slices with independent temporal
windows.

Augmentation is not applied here: the stream augments each view on its own, later.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from data_shards.clips import cyclic_window


def _window(
    image: np.ndarray, index: int, frames: int, stride: int, rng: np.random.Generator
) -> np.ndarray:
    """Slice index of image (S, T, H, W) over ``frames`` frames from a random start, wrapping."""
    n_frames = image.shape[1]
    return image[index, cyclic_window(int(rng.integers(n_frames)), frames, n_frames, stride)]


def _stride(strides: tuple[int, ...], rng: np.random.Generator) -> int:
    return strides[int(rng.integers(len(strides)))] if len(strides) > 1 else strides[0]


def _modality(subject: dict[str, Any]) -> str:
    return str(subject["meta"].get("modality", "unknown"))


def slice_pairs(
    subjects: Iterable[dict[str, Any]],
    frames: int,
    rng: np.random.Generator,
    stride: int | Sequence[int] = 1,
) -> Iterator[dict[str, Any]]:
    """One pair per slice: the slice, and another slice of the same subject drawn uniformly (the
    same slice when S = 1); each view its own random start and stride, windows wrapping as in
    :func:`~data_shards.clips.slice_clips`.

    Yields:
        ``{"clip", "clip2": uint8 (frames, H, W), "modality", "modality2": str, "key": str,
        "slice", "slice2": int}``.
    """
    strides = (stride,) if isinstance(stride, int) else tuple(stride)
    for subject in subjects:
        image = subject["image"]  # (S, T, H, W)
        n_slices = image.shape[0]
        modality = _modality(subject)
        for index in range(n_slices):
            other = index
            if n_slices > 1:  # uniform over the other slices
                other = (index + 1 + int(rng.integers(n_slices - 1))) % n_slices
            yield {
                "clip": _window(image, index, frames, _stride(strides, rng), rng),
                "clip2": _window(image, other, frames, _stride(strides, rng), rng),
                "modality": modality,
                "modality2": modality,
                "key": subject["key"],
                "slice": index,
                "slice2": other,
            }
