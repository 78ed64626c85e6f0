"""Studies without an image, for the blank-image checks of convert."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_shards.record import LV, Subject


def blank_cases(root: Path | None):
    """Two studies without an image (all zeros, and a few hot voxels on zeros), a real one with a
    never-filled slice at frame 0, and a plain real one; every one labelled."""
    rng = np.random.default_rng(7)

    def labelled(name: str, image: np.ndarray) -> Subject:
        label = np.zeros(image.shape, np.uint8)
        label[:, :, 6:14, 5:11] = LV
        meta = {"source": "blanks", "modality": "cine", "ed": 0, "es": 1}
        return Subject(name, image, label, (8.0, 1.2, 1.2), meta)

    yield labelled("zeros", np.zeros((3, 2, 20, 16), np.float32))
    hot = np.zeros((3, 2, 20, 16), np.float32)
    hot[0, 0, 0, :2] = 500.0
    yield labelled("hot", hot)
    one_blank = rng.normal(100, 30, (3, 2, 20, 16)).astype(np.float32)
    one_blank[1, 0] = 0.0
    yield labelled("one_blank", one_blank)
    yield labelled("real", rng.normal(100, 30, (3, 2, 20, 16)).astype(np.float32))
