"""Two views of one subject for contrastive pretraining: two slices with independent temporal
windows, or a cine slice with an LGE slice of the same patient.

Augmentation is not applied here: the stream augments each view on its own, later.

None of the datasets we shard has cine and LGE of one patient (ACDC, Sunnybrook, M&Ms-2 and
CineMyoPS are cine only, EMIDEC LGE only), so :func:`cross_modality_pairs` yields nothing on
them; it is for cohorts that scan both and record a shared patient id.
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


def patient_id(subject: dict[str, Any]) -> str | None:
    """Who the subject is: ``meta["patient"]``, else ``meta["split_group"]`` (sources set it to the
    patient, so every study of one patient shares it), else None. Ids must be unique across the
    sources being paired."""
    meta = subject["meta"]
    found = meta.get("patient", meta.get("split_group"))
    return None if found is None else str(found)


def cross_modality_pairs(
    cine_subjects: Iterable[dict[str, Any]],
    lge_subjects: Iterable[dict[str, Any]],
    frames: int,
    rng: np.random.Generator,
    stride: int | Sequence[int] = 1,
) -> Iterator[dict[str, Any]]:
    """Cine with LGE of the same patient (matched by :func:`patient_id`): one pair per cine slice,
    the LGE slice at the same relative position from base to apex. Cine subjects without an LGE
    match are skipped; the LGE subjects are held in memory (LGE stacks are small).

    The LGE view repeats its single frame ``frames`` times (T = 1), as in ``slice_clips``.

    Yields:
        ``{"clip": cine uint8 (frames, H, W), "clip2": LGE uint8 (frames, H, W), "modality":
        "cine", "modality2": "lge", "key": cine key, "key2": LGE key, "slice", "slice2": int}``.
    """
    strides = (stride,) if isinstance(stride, int) else tuple(stride)
    lge_by_patient: dict[str, dict[str, Any]] = {}
    for subject in lge_subjects:
        patient = patient_id(subject)
        if patient is not None:
            lge_by_patient.setdefault(patient, subject)  # the first study of a patient
    for cine in cine_subjects:
        lge = lge_by_patient.get(patient_id(cine) or "")
        if lge is None:
            continue
        n_cine, n_lge = cine["image"].shape[0], lge["image"].shape[0]
        for index in range(n_cine):
            other = round(index * (n_lge - 1) / (n_cine - 1)) if n_cine > 1 else n_lge // 2
            yield {
                "clip": _window(cine["image"], index, frames, _stride(strides, rng), rng),
                "clip2": _window(lge["image"], other, frames, _stride(strides, rng), rng),
                "modality": _modality(cine),
                "modality2": _modality(lge),
                "key": cine["key"],
                "key2": lge["key"],
                "slice": index,
                "slice2": other,
            }
