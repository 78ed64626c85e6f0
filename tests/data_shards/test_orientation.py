"""data_shards.orientation: canonical layout by flips/transpose, every voxel kept in place."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_shards.orientation import APEX, canonical_plan, check_direction, reorient


def random_direction(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rows S, H, W: a random rotation, possibly with a reflection (any voxel order)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return (q * np.sign(np.diag(r))).T


def world(origin, spacing, direction, index: np.ndarray) -> np.ndarray:
    """(N, 3) LPS mm of (N, 3) voxel indices (s, h, w)."""
    return np.asarray(origin) + (index * np.asarray(spacing)) @ np.asarray(direction)


@pytest.mark.parametrize("seed", range(12))
def test_every_voxel_keeps_its_world_position(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (3, 2, 5, 7)  # (S, T, H, W), nothing square so a wrong axis cannot pass
    ids = np.arange(np.prod(shape)).reshape(shape)
    label = (ids % 251).astype(np.uint8)
    spacing = (8.0, rng.uniform(0.6, 2.0), rng.uniform(0.6, 2.0))
    direction, origin = random_direction(rng), rng.uniform(-100, 100, 3)
    out = reorient(ids, label, spacing, direction, origin)

    assert np.array_equal(out.label, (out.image % 251).astype(np.uint8))  # labels move with it
    before = np.stack(np.unravel_index(out.image, shape), axis=-1)  # (..., 4) source (s, t, h, w)
    after = np.stack(np.indices(out.image.shape), axis=-1)
    assert np.array_equal(before[..., 1], after[..., 1])  # frames are never reordered
    before, after = before[..., [0, 2, 3]], after[..., [0, 2, 3]]
    np.testing.assert_allclose(
        world(out.origin, out.spacing, out.direction, after.reshape(-1, 3)),
        world(origin, spacing, direction, before.reshape(-1, 3)),
        atol=1e-9,
    )
    # and the result is canonical
    s, h, w = out.direction
    assert w[0] >= 0 and abs(w[0]) >= abs(h[0])
    assert s @ APEX >= 0
    assert (h[1] if abs(h[1]) >= abs(h[2]) else -h[2]) >= 0
    assert canonical_plan(out.direction) == (False, [])  # idempotent


@pytest.mark.parametrize(
    ("direction", "plan"),
    [
        # LPS-aligned axial stack ordered foot to head: only the slices flip (apex is inferior).
        ([[0, 0, 1], [0, 1, 0], [1, 0, 0]], (False, ["S"])),
        # columns to the patient's right and rows anterior: both in-plane axes flip.
        ([[0, 0, -1], [0, -1, 0], [-1, 0, 0]], (False, ["H", "W"])),
        # rows run left, columns posterior: swap them and nothing else.
        ([[0, 0, -1], [1, 0, 0], [0, 1, 0]], (True, [])),
        # coronal-like: columns up (more vertical), rows left: swap, then rows point inferior.
        ([[0, -1, 0], [1, 0, 0], [0, 0, 1]], (True, ["H"])),
    ],
)
def test_plan_for_known_layouts(direction, plan) -> None:
    assert canonical_plan(np.asarray(direction, float)) == plan


def test_transpose_swaps_spacing_and_direction_rows() -> None:
    image = np.zeros((2, 1, 3, 4))
    direction = [[0, 0, -1], [1, 0, 0], [0, 1, 0]]
    out = reorient(image, None, (8.0, 1.0, 2.0), direction, None)
    assert out.image.shape == (2, 1, 4, 3) and out.label is None
    assert out.spacing == (8.0, 2.0, 1.0)
    assert out.direction.tolist() == [[0, 0, -1], [0, 1, 0], [1, 0, 0]]
    assert out.origin is None and out.info == {"transposed": True, "flipped": []}


@pytest.mark.parametrize(("slices", "origin_known"), [(1, True), (4, False)])
def test_unknown_slice_spacing_and_a_slice_flip(slices: int, origin_known: bool) -> None:
    image = np.zeros((slices, 1, 3, 3))
    out = reorient(image, None, (math.nan, 1.0, 1.0), np.eye(3)[[2, 1, 0]], np.zeros(3))
    assert out.info["flipped"] == ["S"]
    assert (out.origin is not None) == origin_known  # no invented position


@pytest.mark.parametrize(
    "direction",
    [
        [[1, 0, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 2, 0], [0, 0, 1]],
        [[1, 0, 0], [0, 1, 0], [0, 0, np.nan]],
    ],
)
def test_malformed_direction_is_rejected(direction) -> None:
    with pytest.raises(ValueError, match="direction"):
        check_direction(direction)
