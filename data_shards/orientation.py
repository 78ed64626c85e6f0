"""Canonical orientation of a 4D study from its patient-space geometry (LPS).

Canonical means: columns (W) run along the in-plane axis closest to patient left and point
left-ward; rows (H) point posterior, or inferior when that axis is more vertical than horizontal;
slices (S) run base to apex (their direction has a positive dot product with the apex direction,
left-anterior-inferior). Only flips and one H/W transpose are used, so voxels are never resampled.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Apex of the heart in LPS: left (+x), anterior (-y), inferior (-z).
APEX = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
_AXIS = {"S": 0, "H": 2, "W": 3}  # array axis of each named axis in (S, T, H, W)
_ROW = {"S": 0, "H": 1, "W": 2}  # row of each named axis in direction and spacing


class Oriented(NamedTuple):
    """A study after reorientation; ``info`` says what was done ({"transposed", "flipped"})."""

    image: np.ndarray  # (S, T, H, W)
    label: np.ndarray | None  # (S, T, H, W)
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    direction: np.ndarray  # (3, 3) rows S, H, W: unit vectors in LPS
    origin: np.ndarray | None  # (3,) LPS mm of voxel [0, 0, 0, 0]
    info: dict


def check_direction(direction: object) -> np.ndarray:
    """``direction`` as a (3, 3) float array of unit rows; ValueError saying what is wrong."""
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or not np.isfinite(d).all():
        raise ValueError(
            f"direction must be 3 finite unit vectors [[S], [H], [W]], got {d.tolist()}"
        )
    norms = np.linalg.norm(d, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise ValueError(
            f"direction rows must be unit vectors, got lengths {norms.round(4).tolist()}"
        )
    return d


def canonical_plan(direction: np.ndarray) -> tuple[bool, list[str]]:
    """Whether to swap H and W, then which of "S", "H", "W" to flip, for a (3, 3) direction."""
    d = np.array(direction, dtype=np.float64)
    transposed = bool(abs(d[1, 0]) > abs(d[2, 0]))  # rows are closer to patient left than columns
    if transposed:
        d = d[[0, 2, 1]]
    flipped = []
    if d[0] @ APEX < 0:
        flipped.append("S")
    row = d[1]
    # Posterior for a mostly horizontal row axis, inferior for a mostly vertical one.
    toward = row[1] if abs(row[1]) >= abs(row[2]) else -row[2]
    if toward < 0:
        flipped.append("H")
    if d[2, 0] < 0:
        flipped.append("W")
    return transposed, flipped


def reorient(
    image: np.ndarray,
    label: np.ndarray | None,
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    origin: np.ndarray | None,
) -> Oriented:
    """Transpose/flip (S, T, H, W) arrays into canonical orientation, geometry kept consistent.

    A voxel keeps its world position: ``origin + s*dz*S + h*dy*H + w*dx*W`` is the same point
    before and after. The origin becomes unknown (None) only when a flipped axis of more than one
    voxel has an unknown (NaN) spacing.
    """
    d = check_direction(direction).copy()  # never flip the caller's array in place
    transposed, flipped = canonical_plan(d)
    spacing = tuple(float(v) for v in spacing)
    o = None if origin is None else np.asarray(origin, dtype=np.float64).copy()
    if transposed:
        image, label = (None if a is None else a.swapaxes(2, 3) for a in (image, label))
        spacing = (spacing[0], spacing[2], spacing[1])
        d = d[[0, 2, 1]]
    for name in flipped:
        axis, row = _AXIS[name], _ROW[name]
        n = image.shape[axis]
        if o is not None and n > 1:
            # The last voxel along this axis becomes voxel 0.
            o = o + (n - 1) * spacing[row] * d[row]
        d[row] = -d[row]
        image = np.flip(image, axis)
        label = None if label is None else np.flip(label, axis)
    if o is not None and not np.isfinite(o).all():
        o = None
    contiguous = (None if a is None else np.ascontiguousarray(a) for a in (image, label))
    info = {"transposed": transposed, "flipped": flipped}
    return Oriented(*contiguous, spacing, d, o, info)
