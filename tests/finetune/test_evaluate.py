"""finetune.evaluate: whole-study prediction in wrapping windows, and a subject's scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from data_shards.record import IGNORE
from finetune.evaluate import predict_study, score_subject


class IntensityLabeller(nn.Module):
    """Stub segmenter: label = intensity // 64, returned as one-hot logits (B, 4, T, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # predict_study reads the device from it
        self.seen: list[torch.Tensor] = []  # every clip (1, frames, H, W) it was given

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.extend(x)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        label = (x[:, 0] * 255).round().long() // 64  # (B, T, H, W)
        return nn.functional.one_hot(label, 4).permute(0, 4, 1, 2, 3).float() + self.anchor


@pytest.mark.parametrize(("t", "frames"), [(4, 2), (5, 2), (5, 3), (2, 4), (6, 1)])
@pytest.mark.parametrize("batch", [1, 16])
def test_predict_study_reproduces_the_stub_labels(t, frames, batch) -> None:
    image = np.random.default_rng(t).integers(0, 256, (3, t, 8, 8), dtype=np.uint8)
    model = IntensityLabeller()
    pred = predict_study(model, image, frames, batch=batch)
    assert pred.shape == image.shape and pred.dtype == np.uint8
    np.testing.assert_array_equal(pred, image // 64)
    # Each slice is cut into consecutive windows, the last one wrapping to the start of the cycle.
    expected = [
        image[z, [(start + i) % t for i in range(frames)]]
        for z in range(3)
        for start in range(0, t, frames)
    ]
    seen = [(clip[0] * 255).round().numpy().astype(np.uint8) for clip in model.seen]
    assert sorted(c.tobytes() for c in seen) == sorted(c.tobytes() for c in expected)


def test_score_subject_of_a_perfect_prediction() -> None:
    structures = np.zeros((2, 3, 8, 8), np.uint8)
    structures[:, :, 1:6, 1:6] = 2
    structures[:, 0, 2:5, 2:5] = 1
    structures[:, 2, 3:5, 3:5] = 1
    structures[:, :, 6:8, 0:3] = 3
    label = structures.copy()
    label[:, 1] = IGNORE  # not an annotated phase
    subject = {"key": "s0", "label": label, "meta": {"spacing": [8.0, 1.5, 1.5], "ed": 0, "es": 2}}
    row = score_subject(structures, subject, num_classes=4)
    for name in ("lv", "myo", "rv"):
        assert row[f"dice_{name}_ed"] == pytest.approx(1.0)
        assert row[f"dice_{name}_es"] == pytest.approx(1.0)
    assert row["lv_ef_error"] == pytest.approx(0.0)
    assert row["lv_ef_true"] == pytest.approx(100 * (9 - 4) / 9)
