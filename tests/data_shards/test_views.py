"""Two views of one subject: slice pairs with independent cyclic windows."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import numpy as np

from data_shards.views import slice_pairs


def subject(key: str, slices: int, frames: int, modality: str = "cine", **meta) -> dict:
    """Every pixel of slice s, frame t holds s * frames + t, so a clip tells where it came from."""
    codes = np.arange(slices * frames, dtype=np.uint8).reshape(slices, frames, 1, 1)
    image = np.broadcast_to(codes, (slices, frames, 4, 4)).copy()
    return {"key": key, "image": image, "meta": {"modality": modality, **meta}}


def origin(clip: np.ndarray, frames: int) -> tuple[int, list[int]]:
    """(slice, frame indices) of a clip cut from a `subject` image with `frames` frames."""
    codes = clip[:, 0, 0].astype(int)
    assert (clip == clip[:, :1, :1]).all()  # whole frames, not mixed pixels
    slices = set(codes // frames)
    assert len(slices) == 1
    return slices.pop(), (codes % frames).tolist()


def is_cyclic_window(indices: list[int], n_frames: int, stride: int) -> bool:
    return all((b - a) % n_frames == stride % n_frames for a, b in pairwise(indices))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- slice pairs -------------------------------------------------------------------------------


def test_slice_pairs_one_pair_per_slice_from_two_different_slices() -> None:
    subjects = [subject("a", 5, 10), subject("b", 3, 10, "lge")]
    pairs = list(slice_pairs(subjects, 4, rng()))
    assert [(p["key"], p["slice"]) for p in pairs] == [("a", s) for s in range(5)] + [
        ("b", s) for s in range(3)
    ]
    for pair in pairs:
        assert pair["clip"].dtype == np.uint8 and pair["clip"].shape == (4, 4, 4)
        assert pair["clip2"].shape == (4, 4, 4)
        first, frames1 = origin(pair["clip"], 10)
        second, frames2 = origin(pair["clip2"], 10)
        assert (first, second) == (pair["slice"], pair["slice2"])
        assert pair["slice2"] != pair["slice"]
        assert is_cyclic_window(frames1, 10, 1) and is_cyclic_window(frames2, 10, 1)
        assert pair["modality"] == pair["modality2"] == ("cine" if pair["key"] == "a" else "lge")


def test_partner_slices_are_uniform_over_the_other_slices() -> None:
    pairs = list(slice_pairs([subject("a", 4, 2)] * 1500, 2, rng()))
    for index in range(4):
        partners = Counter(p["slice2"] for p in pairs if p["slice"] == index)
        assert set(partners) == set(range(4)) - {index}
        assert min(partners.values()) > 0.8 * 1500 / 3


def test_windows_are_independent_and_wrap() -> None:
    pairs = list(slice_pairs([subject("a", 2, 6)] * 300, 4, rng(), stride=2))
    starts = [(origin(p["clip"], 6)[1][0], origin(p["clip2"], 6)[1][0]) for p in pairs]
    assert sum(a != b for a, b in starts) > 0.7 * len(starts)  # starts drawn per view
    assert {a for a, _ in starts} == set(range(6))
    for pair in pairs:
        assert is_cyclic_window(origin(pair["clip"], 6)[1], 6, 2)  # wraps past the last frame


def test_strides_are_drawn_per_view() -> None:
    pairs = list(slice_pairs([subject("a", 2, 12)] * 200, 3, rng(), stride=[1, 3]))
    steps = Counter()
    for pair in pairs:
        for clip in (pair["clip"], pair["clip2"]):
            frames = origin(clip, 12)[1]
            steps[(frames[1] - frames[0]) % 12] += 1
    assert set(steps) == {1, 3}
    mixed = sum(
        (origin(p["clip"], 12)[1][1] - origin(p["clip"], 12)[1][0]) % 12
        != (origin(p["clip2"], 12)[1][1] - origin(p["clip2"], 12)[1][0]) % 12
        for p in pairs
    )
    assert mixed > 0  # the two views of one pair may differ in stride


def test_single_slice_subject_pairs_its_slice_with_itself() -> None:
    pairs = list(slice_pairs([subject("lge", 1, 1, "lge")], 4, rng()))
    assert len(pairs) == 1 and pairs[0]["slice"] == pairs[0]["slice2"] == 0
    assert np.array_equal(pairs[0]["clip"], pairs[0]["clip2"])  # T = 1: the frame repeated


def test_slice_pairs_are_reproducible_from_the_generator() -> None:
    subjects = [subject("a", 4, 9), subject("b", 3, 9)]
    first = list(slice_pairs(subjects, 3, rng(7)))
    again = list(slice_pairs(subjects, 3, rng(7)))
    other = list(slice_pairs(subjects, 3, rng(8)))
    same = all(
        np.array_equal(a["clip"], b["clip"]) and np.array_equal(a["clip2"], b["clip2"])
        for a, b in zip(first, again)
    )
    assert same
    assert any(not np.array_equal(a["clip2"], b["clip2"]) for a, b in zip(first, other))
