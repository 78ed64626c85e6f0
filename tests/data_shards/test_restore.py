"""data_shards.restore: a prediction on the model's grid mapped back onto the study's own grid."""

from __future__ import annotations

import numpy as np

from data_shards.preprocess import PreprocessConfig, preprocess
from data_shards.record import Subject
from data_shards.restore import restore_labels


def test_labels_preprocessed_onto_the_model_grid_come_back_voxel_for_voxel() -> None:
    """A coronal-like study (canonical orientation swaps H and W and flips both), padded into
    the model's window without resampling: every voxel's label returns to where it was."""
    rng = np.random.default_rng(3)
    label = rng.integers(0, 4, (3, 2, 20, 24)).astype(np.uint8)
    meta = {"direction": [[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            "origin": [-30.0, 20.0, 50.0]}  # fmt: skip
    study = Subject("s", rng.random(label.shape).astype(np.float32), label, (8.0, 1.5, 1.5), meta)
    model_grid = preprocess(study, PreprocessConfig(spacing=1.5, size=32))
    assert model_grid.meta["orientation"] == {"transposed": True, "flipped": ["H", "W"]}
    restored = restore_labels(model_grid.label, model_grid.meta, num_classes=4)
    assert restored.shape == label.shape
    np.testing.assert_array_equal(restored, label)
