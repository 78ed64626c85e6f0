"""The contact sheet: one row per clip, one column per frame, label contours drawn."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from data_shards.contact_sheet import contact_sheet
from data_shards.stream import load_subjects

N_SUBJECTS, N_SLICES = 8, 2


@pytest.fixture(scope="module")
def shards(make_phantom_shards) -> Path:
    """Phantom cine subjects (4 frames) and a few single-frame LGE subjects."""
    return make_phantom_shards(N_SUBJECTS, N_SLICES, lge_fraction=0.25)


def test_contact_sheet_has_one_row_per_clip_and_one_column_per_frame(
    shards: Path, tmp_path: Path
) -> None:
    subjects = load_subjects(shards)
    cine = [s for s in subjects if s["meta"]["modality"] == "cine"]
    lge = [s for s in subjects if s["meta"]["modality"] == "lge"]
    sizes = {}
    for name, chosen, clips in (("cine1", cine, 1), ("cine2", cine, 2), ("lge2", lge, 2)):
        rows = contact_sheet(chosen, tmp_path / f"{name}.png", clips=clips, frames=2, seed=1)
        assert len(rows) == clips
        sizes[name] = matplotlib.image.imread(tmp_path / f"{name}.png").shape[:2]
    # Fixed-size cells: twice the clips, twice the height, same width.
    assert sizes["cine2"][0] == 2 * sizes["cine1"][0]
    assert sizes["cine2"][1] == sizes["cine1"][1]
    # Single-frame LGE fills one column of the two asked for, and leaves no empty one.
    assert sizes["lge2"] == (sizes["cine2"][0], sizes["cine2"][1] // 2)
    rows = contact_sheet(subjects, tmp_path / "all.png", clips=N_SUBJECTS, frames=3, seed=0)
    assert {r["key"] for r in rows} == {s["key"] for s in subjects}  # each subject once
    for row in rows:  # an LGE study (T = 1) shows its single frame, cine 3 consecutive ones
        start = row["frames"][0]
        expected = [0] if row["modality"] == "lge" else [(start + i) % 4 for i in range(3)]
        assert row["frames"] == expected


def test_contact_sheet_outlines_labels(shards: Path, tmp_path: Path) -> None:
    subject = load_subjects(shards)[0]
    unlabelled = {**subject, "label": None}
    contact_sheet([subject], tmp_path / "with.png", clips=1, frames=2, seed=0)
    contact_sheet([unlabelled], tmp_path / "without.png", clips=1, frames=2, seed=0)
    drawn = matplotlib.image.imread(tmp_path / "with.png")
    plain = matplotlib.image.imread(tmp_path / "without.png")
    assert drawn.shape == plain.shape
    assert not np.array_equal(drawn, plain)
