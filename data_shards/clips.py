"""Clips cut from subjects: a cyclic window of frame indices, and one clip per slice.

The stream (:mod:`data_shards.stream`), the two-view pairs (:mod:`data_shards.views`) and the
fine-tuning readers all cut their windows here, so a window wraps the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np


def cyclic_window(start: int, frames: int, n_frames: int, stride: int = 1) -> np.ndarray:
    """Frame indices (frames,) from start every ``stride`` frames, wrapping past the last frame
    (cine is periodic)."""
    return (start + stride * np.arange(frames)) % n_frames


def slice_clips(
    subjects: Iterable[dict[str, Any]],
    frames: int,
    rng: np.random.Generator,
    stride: int | Sequence[int] = 1,
) -> Iterator[dict[str, Any]]:
    """One clip per slice: ``frames`` frames every ``stride`` from a random start, wrapping.

    Cine is periodic over the cardiac cycle, so a window running past the last frame continues
    at the first; a study with fewer than ``frames`` frames (LGE: T = 1) repeats its frames.
    A sequence of strides draws one per clip.

    Yields:
        ``{"clip": uint8 (frames, H, W), "modality": str, "key": str, "slice": int, "slices":
        int}``: slice ``slice`` of the subject's ``slices``, base to apex.
    """
    strides = (stride,) if isinstance(stride, int) else tuple(stride)
    for subject in subjects:
        image = subject["image"]  # (S, T, H, W)
        n_frames = image.shape[1]
        modality = str(subject["meta"].get("modality", "unknown"))
        for index in range(image.shape[0]):
            start = int(rng.integers(n_frames))
            step = strides[int(rng.integers(len(strides)))] if len(strides) > 1 else strides[0]
            window = cyclic_window(start, frames, n_frames, step)  # (frames,)
            yield {
                "clip": image[index, window],  # (frames, H, W), a copy
                "modality": modality,
                "key": subject["key"],
                "slice": index,
                "slices": image.shape[0],
            }
