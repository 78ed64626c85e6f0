"""The one in-memory record every source yields and the shard writer consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# One label convention for every source. Sources map theirs onto it.
BACKGROUND, LV, MYO, RV, INFARCT, MVO = 0, 1, 2, 3, 4, 5
LABEL_NAMES = {
    BACKGROUND: "background",
    LV: "lv",
    MYO: "myo",
    RV: "rv",
    INFARCT: "infarct",
    MVO: "mvo",
}
IGNORE = 255  # label value of pixels/frames without ground truth


@dataclass
class Subject:
    """One study as a source reads it, before preprocessing.

    image: (S, T, H, W) any real dtype, S slices (base to apex), T frames (1 for LGE).
    label: (S, T, H, W) uint8 in our convention, IGNORE for unlabelled frames; None if unlabelled.
    spacing: (dz, dy, dx) in mm; dz is slice spacing; any of them NaN where unknown (EMIDEC
      PNGs carry none: preprocessing then keeps the native pixel grid rather than invent one).
    meta: source, modality ("cine"/"lge"), ed, es (0-based frame indices on the T axis), group,
      height, weight and anything else JSON-serialisable; never a patient identifier. Sources
      that know the geometry add ``direction`` ([[S], [H], [W]]: unit vectors in patient LPS
      coordinates along increasing slice, row and column index) and ``origin`` (LPS mm of
      voxel [0, 0, 0, 0]); preprocessing uses them for canonical orientation.
    """

    subject: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 4:
            raise ValueError(
                f"{self.subject}: image must be (S, T, H, W), got shape {self.image.shape}"
            )
        if self.label is not None and self.label.shape != self.image.shape:
            raise ValueError(
                f"{self.subject}: label shape {self.label.shape} != image shape {self.image.shape}"
            )
