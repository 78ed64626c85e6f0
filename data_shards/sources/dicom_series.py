"""The frames of one study folder -> one (S, T) grid: which series, slice order, frame order.

Hospitals export a cine stack in several layouts; all of them end up on the same grid:

* one series holding every slice and frame (classic single-frame files, or one enhanced
  multi-frame file);
* one series per slice, each holding that slice's frames (real-time cine: every frame has the
  same TriggerTime, and AcquisitionTime tells them apart);
* one series per cardiac phase, each holding every slice at that phase;
* one series per image.

Slices are placed by geometry (base to apex along the plane normal), frames by the first time
tag that varies (see :func:`frame_order`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_shards.orientation import APEX  # base to apex: left, anterior, inferior (LPS)
from data_shards.sources.dicom_frames import CLOCK_KEYS, ORDER_KEYS, TRIGGER_KEYS, Frame
from data_shards.sources.registry import SourceError

POSITION_TOL_MM = 0.05  # images closer than this along the slice normal share a slice
ORIENTATION_TOL = 1e-3  # larger differences in direction cosines mean another plane
GEOMETRY = {  # keyword: (tag, number of values)
    "PixelSpacing": ("(0028,0030)", 2),
    "ImageOrientationPatient": ("(0020,0037)", 6),
    "ImagePositionPatient": ("(0020,0032)", 3),
}

Grid = list[list[Frame]]


def choose_frames(folder: Path, frames: list[Frame]) -> list[Frame]:
    """The frames of the one stack to read.

    One series: all of it. Several: the only one that is a cine stack by itself (several slice
    positions, several frames at a position), leaving localisers beside it out. When none is,
    the series that together make one stack (one per slice, per phase or per image); series of
    one image are left out when longer ones exist. SourceError when that is ambiguous: several
    cine stacks, or series of other planes, image sizes or pixel spacings.
    """
    if not frames:
        raise SourceError(folder, "no DICOM images in this folder")
    groups: dict[str, list[Frame]] = {}
    for frame in frames:
        groups.setdefault(frame.series, []).append(frame)
    if len(groups) == 1:
        return frames
    stacks = [series for series in groups.values() if _is_cine_stack(series)]
    if len(stacks) == 1:
        return stacks[0]
    if len(stacks) > 1:  # no descriptions: free text typed at the scanner may name anyone
        counts = sorted((len(series) for series in groups.values()), reverse=True)
        raise SourceError(
            folder,
            f"mixed series: {len(groups)} series (image counts {counts}), {len(stacks)} of them "
            "cine stacks, so the short-axis cine is ambiguous; put one series per folder",
        )
    return _assemble(folder, list(groups.values()))


def _is_cine_stack(series: list[Frame]) -> bool:
    """Several slice positions and several frames at one of them: a cine stack by itself."""
    positions = Counter(_position_key(frame) for frame in series)
    positions.pop(None, None)
    return len(positions) > 1 and max(positions.values()) > 1


def _position_key(frame: Frame) -> tuple[float, ...] | None:
    position = frame.get("ImagePositionPatient")
    return None if position is None else tuple(np.round(position, 1))


def _assemble(folder: Path, series: list[list[Frame]]) -> list[Frame]:
    """Series that are parts of one stack: same plane, size and spacing; all one per slice
    (one position each) or all one per phase (each position once)."""
    parts = [s for s in series if len(s) > 1 and _parallel(s)] or series
    planes = _planes(parts)
    if len(planes) > 1:
        counted = sorted(planes, key=lambda plane: -len(plane))
        sizes = ", ".join(f"{len(p)} of {_size(p[0][0])} at {_spacing(p[0][0])} mm" for p in counted)  # fmt: skip
        raise SourceError(
            folder,
            f"mixed series: {len(parts)} series in {len(planes)} different planes, image sizes "
            f"or pixel spacings ({sizes}), so they are not one stack; a study folder must "
            "hold one stack (put other views in their own folder)",
        )
    kinds = Counter(_kind(part) for part in parts if len(part) > 1)
    if len(kinds) > 1:
        raise SourceError(
            folder,
            f"mixed series: {kinds['slice']} series of one slice each beside "
            f"{kinds['phase']} series of several slices, so they are not one stack; a study "
            "folder must hold one stack",
        )
    if kinds.get("slice"):
        _one_series_per_slice(parts)
    return [frame for part in parts for frame in part]


def _parallel(series: list[Frame]) -> bool:
    """All images of the series in parallel planes (a three-plane localiser is not)."""
    cosines = [f.get("ImageOrientationPatient") for f in series]
    known = [np.array(c) for c in cosines if c is not None and len(c) == 6]
    return all(np.abs(c - known[0]).max() <= ORIENTATION_TOL for c in known)


def _planes(parts: list[list[Frame]]) -> list[list[list[Frame]]]:
    """Series grouped by plane: orientation (within ORIENTATION_TOL), size and pixel spacing."""
    groups: list[list[list[Frame]]] = []
    for part in parts:
        group = next((g for g in groups if _same_plane(g[0][0], part[0])), None)
        if group is None:
            groups.append([part])
        else:
            group.append(part)
    return groups


def _same_plane(a: Frame, b: Frame) -> bool:
    if _size(a) != _size(b) or _spacing(a) != _spacing(b):
        return False
    cosines = [f.get("ImageOrientationPatient") for f in (a, b)]
    if any(c is None or len(c) != 6 for c in cosines):
        return cosines[0] == cosines[1]  # unknown: the geometry check names what is missing
    return bool(np.abs(np.subtract(*cosines)).max() <= ORIENTATION_TOL)


def _spacing(frame: Frame) -> str:
    """PixelSpacing as 'dyxdx' to 3 significant digits, '?' when missing."""
    return "x".join(f"{v:.3g}" for v in frame.get("PixelSpacing") or ()) or "?"


def _kind(part: list[Frame]) -> str:
    """'slice': one position (its frames); else 'phase' (positions, not a stack: each once)."""
    return "slice" if len({_position_key(frame) for frame in part}) == 1 else "phase"


def _one_series_per_slice(parts: list[list[Frame]]) -> None:
    """Per-slice series must not share a slice (a repeated acquisition is for a person to pick)."""
    seen: set[tuple[float, ...] | None] = set()
    for part in parts:
        key = _position_key(part[0])
        if key in seen:
            raise SourceError(
                part[0].path,
                "two series hold the same slice position (a repeated acquisition?): keep one "
                "of them in the study folder",
            )
        seen.add(key)


def arrange(folder: Path, frames: list[Frame], even_gaps: bool = True) -> tuple[Grid, dict]:
    """Frames on an (S, T) grid, slices base to apex and frames in time, and the geometry.

    Returns the grid (S lists of T frames) and ``{"spacing": (dz, dy, dx), "meta": {direction,
    origin, frame_order, trigger_times_ms or frame_times_ms}, "order": key}``: frame times are
    trigger delays, or clock times in ms from the first frame (never times of day).
    """
    first = frames[0]
    for frame in frames:
        _check_frame(frame, first)
    _, _, normal = _axes(first)
    depth = [float(normal @ np.array(f.get("ImagePositionPatient"))) for f in frames]
    slices: list[list[int]] = []
    for i in np.argsort(depth, kind="stable"):
        if slices and depth[i] - depth[slices[-1][0]] <= POSITION_TOL_MM:
            slices[-1].append(i)
        else:
            slices.append([i])
    if normal @ APEX < 0:  # increasing depth runs apex to base: flip to base to apex
        slices = slices[::-1]
    unordered = [[frames[i] for i in members] for members in slices]
    key = frame_order(folder, unordered)
    grid = [_in_time(s, key) for s in unordered]
    counts = [len(s) for s in grid]
    if len(set(counts)) > 1:
        short = next(s for s in grid if len(s) < max(counts))
        raise SourceError(
            folder,
            f"missing instances: slices have {sorted(set(counts))} frames (e.g. the slice of "
            f"{short[0].name} has {len(short)}, not {max(counts)}); every slice needs every frame",
        )
    # Geometry from the base slice's first frame, whatever the file order: scanners round
    # each image's cosines a little differently.
    base = grid[0][0]
    row, col, normal = _axes(base)
    along = normal if normal @ APEX >= 0 else -normal
    centres = [float(along @ np.array(s[0].get("ImagePositionPatient"))) for s in grid]
    dz, gaps = _slice_gap(folder, centres, base, even_gaps)
    dy, dx = base.get("PixelSpacing")
    meta = {
        "direction": [_rounded(along), _rounded(col), _rounded(row)],
        "origin": _rounded(base.get("ImagePositionPatient"), 4),
        **({"slice_gaps_mm": _rounded(gaps, 3)} if gaps else {}),
        **_timing(grid[0], key),
    }
    return grid, {"spacing": (dz, dy, dx), "meta": meta, "order": key}


def _axes(frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col, unit normal): cosines along increasing column (W) and row (H) index."""
    iop = np.array(frame.get("ImageOrientationPatient"))
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if not 0.9 < np.linalg.norm(normal) < 1.1:  # |row x col| = 1 only for perpendicular units
        raise SourceError(frame.path, "ImageOrientationPatient: cosines not perpendicular units")
    return row, col, normal / np.linalg.norm(normal)


def frame_order(folder: Path, slices: Grid) -> str | None:
    """The first of ORDER_KEYS that every frame has and that tells each slice's frames apart.

    A key that is the same for every frame of each slice tells nothing and is passed over: in
    real-time cine every frame has the same TriggerTime and AcquisitionTime orders them. None
    for one frame per slice. SourceError for two frames of a slice at the same time (the first
    key that varies has a repeat and no later key tells them apart) or no key at all.
    """
    if all(len(s) == 1 for s in slices):
        return None
    repeated = None
    for key in ORDER_KEYS:
        values = [[frame.get(key) for frame in s] for s in slices]
        if any(v is None for vs in values for v in vs):
            continue
        distinct = [len(set(vs)) for vs in values]
        if all(n == 1 for n in distinct):
            continue
        if all(n == len(vs) for n, vs in zip(distinct, values)):
            return key
        repeated = repeated or key
    if repeated is None:
        raise SourceError(
            folder,
            "cannot order frames: the images of a slice share TriggerTime, AcquisitionTime and "
            "ContentTime (or lack them) and lack InstanceNumber",
        )
    for s in slices:
        order = sorted(s, key=lambda frame: frame.get(repeated))
        for a, b in itertools.pairwise(order):
            if a.get(repeated) == b.get(repeated):
                raise SourceError(
                    b.path, f"duplicate instance: same position and {repeated} as {a.name}"
                )
    raise AssertionError("unreachable: a repeated key repeats in some slice")


def _in_time(frames: list[Frame], key: str | None) -> list[Frame]:
    return frames if key is None else sorted(frames, key=lambda frame: frame.get(key))


def _timing(frames: list[Frame], key: str | None) -> dict:
    """How the frames were ordered and when they were taken (the first slice's), in ms."""
    if key is None:
        return {}
    meta: dict = {"frame_order": key}
    times = [frame.first(key) for frame in frames]
    if key in TRIGGER_KEYS:
        meta["trigger_times_ms"] = [round(t, 1) for t in times]
    elif key in CLOCK_KEYS:  # times of day identify a visit: keep only the differences
        meta["frame_times_ms"] = [round(t - times[0], 1) for t in times]
    return meta


def _check_frame(frame: Frame, first: Frame) -> None:
    """Every image must carry its geometry and match the first one's plane, size and spacing."""
    where = "" if frame.index is None else f" (frame {frame.index + 1})"
    for keyword, (tag, n) in GEOMETRY.items():
        values = frame.get(keyword)
        if values is None or len(values) != n:
            raise SourceError(
                frame.path,
                f"missing or invalid {keyword} {tag}{where}: needed to place the image in 3D",
            )
    size, first_size = _size(frame), _size(first)
    if size is None:
        raise SourceError(frame.path, "missing Rows (0028,0010) or Columns (0028,0011)")
    if size != first_size:
        raise SourceError(
            frame.path,
            f"image size {size}{where} differs from {first_size} in {first.name} (rows x columns)",
        )
    cosines = (np.array(frame.get("ImageOrientationPatient")), np.array(first.get("ImageOrientationPatient")))  # fmt: skip
    if np.abs(np.subtract(*cosines)).max() > ORIENTATION_TOL:
        raise SourceError(
            frame.path,
            f"inconsistent orientation{where}: not parallel to {first.name}; a stack needs "
            "parallel slices (put other views in their own folder)",
        )
    if not np.allclose(frame.get("PixelSpacing"), first.get("PixelSpacing"), rtol=1e-3):
        raise SourceError(frame.path, f"pixel spacing{where} differs from {first.name}'s")


def _slice_gap(
    folder: Path, centres: list[float], first: Frame, even_gaps: bool = True
) -> tuple[float, list[float]]:
    """(dz, the gaps between neighbouring slices in mm) from the slice positions; for one slice
    the header's spacing (or NaN) and no gaps. Uneven gaps (a slice missing) are refused with
    ``even_gaps``; otherwise dz is their median and the gaps tell the quality check."""
    if len(centres) == 1:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = first.first(keyword)
            if value and value > 0:
                return value, []
        return float("nan"), []
    gaps = np.abs(np.diff(centres))
    if even_gaps and uneven(gaps):
        raise SourceError(
            folder,
            f"uneven slice gaps ({gaps.min():.2f} to {gaps.max():.2f} mm): a slice is "
            "probably missing",
        )
    return (float(gaps.mean()) if not uneven(gaps) else float(np.median(gaps))), gaps.tolist()


def uneven(gaps: Sequence[float]) -> bool:
    """Gaps between neighbouring slices that differ by more than a tenth of their median."""
    gaps = np.asarray(gaps, dtype=float)
    return bool(gaps.size and gaps.max() - gaps.min() > 0.1 * np.median(gaps))


def _size(frame: Frame) -> str | None:
    rows, cols = frame.first("Rows"), frame.first("Columns")
    return f"{int(rows)} x {int(cols)}" if rows and cols else None


def _rounded(values: Sequence[float], digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]
