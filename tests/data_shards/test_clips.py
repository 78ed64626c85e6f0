"""Clips cut from subjects: cyclic frame windows (stride, wrap) and one clip per slice."""

from __future__ import annotations

import numpy as np

from data_shards.clips import cyclic_window, slice_clips


def test_cyclic_window_stride() -> None:
    assert cyclic_window(3, 4, 5).tolist() == [3, 4, 0, 1]
    assert cyclic_window(3, 4, 5, stride=2).tolist() == [3, 0, 2, 4]
    assert cyclic_window(0, 3, 1, stride=3).tolist() == [0, 0, 0]


def test_slice_clips_one_clip_per_slice_and_lge_repeats_its_frame() -> None:
    cine = np.arange(3 * 5, dtype=np.uint8).reshape(3, 5, 1, 1)  # (S, T, H, W): s * 5 + t
    lge = np.arange(2, dtype=np.uint8).reshape(2, 1, 1, 1)
    subjects = [
        {"key": "a", "image": cine, "meta": {"modality": "cine"}},
        {"key": "b", "image": lge, "meta": {"modality": "lge"}},
    ]
    clips = list(slice_clips(subjects, 4, np.random.default_rng(0)))
    assert [(c["key"], c["slice"], c["slices"]) for c in clips] == [
        ("a", 0, 3), ("a", 1, 3), ("a", 2, 3), ("b", 0, 2), ("b", 1, 2),
    ]  # fmt: skip
    for clip in clips[:3]:
        codes = clip["clip"][:, 0, 0].astype(int)  # (4,)
        assert set(codes // 5) == {clip["slice"]} and clip["modality"] == "cine"
        assert np.all(np.diff(codes % 5) % 5 == 1)  # consecutive frames, wrapping
    for clip in clips[3:]:
        assert clip["clip"].shape == (4, 1, 1) and (clip["clip"] == clip["slice"]).all()
