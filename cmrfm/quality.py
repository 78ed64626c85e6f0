"""Quality and coverage alerts for a segmented study, each check named with its evidence.

What cvi42 or Medis warn about before a reader trusts the numbers: the LV not covered from base
to apex, slices shifted against each other (breath-holds) or missing, anatomy that cannot be
right (no myocardium around the cavity, scattered pieces, volumes or EF outside what a heart
does), and a model that was unsure. Each check returns ``passed`` True, False, or None when
the study cannot show it (one frame, no LV found), with the numbers it judged by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from data_shards.record import LV, MYO, RV

# Limits (adults, cine SSFP); beyond them a value is more likely an error than a patient.
# LV EDV 30-500 ml, EF 5-85 % (severe failure to hyperdynamic), LV mass 30-400 g.
RANGES = {
    "lv.edv_ml": (30.0, 500.0),
    "lv.ef_percent": (5.0, 85.0),
    "lv.mass_g": (30.0, 400.0),
    "rv.edv_ml": (30.0, 500.0),
    "rv.ef_percent": (5.0, 85.0),
}
MAX_SHIFT_MM = 7.0  # LV cavity centre moving more between neighbouring slices: misaligned
MIN_SURROUND = 0.5  # share of the cavity's rim that must touch myocardium, in a slice
MIN_LARGEST = 0.95  # share of a structure's voxels in its largest connected piece
MAX_ENTROPY = 0.35  # mean normalised entropy over a slice's heart pixels: the model is unsure


def check(name: str, passed: bool | None, message: str, **evidence: Any) -> dict[str, Any]:
    """One check's result: name, passed (None: not applicable), a sentence, the evidence."""
    return {"name": name, "passed": passed, "message": message, "evidence": evidence}


def quality_report(
    label_map: np.ndarray,
    spacing: Sequence[float],
    phases: Mapping[str, int],
    volumes: Mapping[str, Mapping[str, Any]],
    entropy: np.ndarray | None = None,
    slice_gaps_mm: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Every check on label_map (S, T, H, W) with spacing (dz, dy, dx) mm, phases {ed, es} (frame indices),
    volumes {"lv": {...}, "rv": {...}} as ventricular_volumes gives them, the model's mean
    normalised entropy per (slice, frame) (S, T) and the gaps between neighbouring slices
    (from DICOM positions) when known. ``passed`` is False when any check failed."""
    ed, es = int(phases["ed"]), int(phases["es"])
    checks = [
        lv_coverage(label_map[:, ed]),
        slice_alignment(label_map[:, ed], spacing),
        slice_gaps(label_map[:, ed]),
        slice_spacing(slice_gaps_mm, float(spacing[0])),
        myocardium_surrounds_lv(label_map, sorted({ed, es})),
        connected_components(label_map, sorted({ed, es})),
        physiological_ranges(volumes),
        model_uncertainty(entropy),
    ]
    return {"passed": not any(c["passed"] is False for c in checks), "checks": checks}


def _lv_slices(stack: np.ndarray) -> np.ndarray:
    """Indices of the slices of stack (S, H, W) that hold LV cavity."""
    return np.flatnonzero((stack == LV).reshape(len(stack), -1).any(axis=1))


def lv_coverage(stack: np.ndarray) -> dict[str, Any]:
    """Cavity on the first or last slice of the ED stack (S, H, W): the stack stops inside the LV,
    so base or apex is cut off and the volumes are too small."""
    name = "lv_coverage"
    found = _lv_slices(stack)
    if found.size == 0:
        return check(name, None, "no LV cavity found at ED", lv_slices=[])
    ends = [int(z) for z in (0, len(stack) - 1) if z in set(found.tolist())]
    evidence = {"lv_slices": [int(found[0]), int(found[-1])], "slices": len(stack)}
    if ends:
        where = " and ".join("first" if z == 0 else "last" for z in ends)
        return check(name, False, f"LV cavity on the {where} slice: the stack does not cover "
                     "the LV from base to apex", cut_at=ends, **evidence)  # fmt: skip
    return check(name, True, "the LV lies inside the stack", **evidence)


def slice_alignment(stack: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """The LV cavity's centre moving more than MAX_SHIFT_MM in-plane between neighbouring slices
    of the ED stack (S, H, W): slices from different breath-holds, misaligned."""
    name = "slice_alignment"
    found = _lv_slices(stack)
    if found.size < 2:
        return check(name, None, "fewer than two slices with LV cavity", lv_slices=found.tolist())
    dy, dx = float(spacing[1]), float(spacing[2])
    centres = np.array([ndimage.center_of_mass(stack[z] == LV) for z in found])  # (n, 2) pixels
    shifts = np.hypot(np.diff(centres[:, 0]) * dy, np.diff(centres[:, 1]) * dx)  # mm
    worst = int(np.argmax(shifts))
    evidence = {"max_shift_mm": round(float(shifts[worst]), 1), "limit_mm": MAX_SHIFT_MM,
                "between_slices": [int(found[worst]), int(found[worst + 1])]}  # fmt: skip
    if shifts[worst] > MAX_SHIFT_MM:
        return check(name, False, "the LV cavity jumps between neighbouring slices: slices "
                     "misaligned (breath-holds?)", **evidence)  # fmt: skip
    return check(name, True, "neighbouring slices line up", **evidence)


def slice_gaps(stack: np.ndarray) -> dict[str, Any]:
    """Slices without LV cavity between slices with it, in the ED stack (S, H, W): a slice
    missing, blank or not segmented, so the volume has a hole."""
    name = "slice_gaps"
    found = _lv_slices(stack)
    if found.size == 0:
        return check(name, None, "no LV cavity found at ED", empty_slices=[])
    empty = sorted(set(range(int(found[0]), int(found[-1]) + 1)) - set(found.tolist()))
    if empty:
        return check(name, False, "slices inside the LV without cavity: a slice is missing or "
                     "was not segmented", empty_slices=empty)  # fmt: skip
    return check(name, True, "no empty slice inside the LV", empty_slices=[])


def slice_spacing(gaps_mm: Sequence[float] | None, dz: float) -> dict[str, Any]:
    """Gaps between neighbouring slices (from the DICOM slice positions) that differ by more
    than a tenth of their median: a slice is missing or the stack mixes spacings, and the
    volumes, computed with one spacing dz, are off there."""
    from data_shards.sources.dicom_series import uneven

    name = "slice_spacing"
    if not gaps_mm:
        return check(name, None, "slice positions not known (NIfTI, or one slice): one "
                     "spacing assumed", spacing_mm=dz)  # fmt: skip
    gaps = np.asarray(gaps_mm, dtype=float)
    median = float(np.median(gaps))
    odd = [int(i) for i in np.flatnonzero(np.abs(gaps - median) > 0.1 * median)]
    evidence = {"gaps_mm": [round(float(g), 2) for g in gaps], "volumes_use_mm": round(dz, 2)}
    if uneven(gaps):
        return check(name, False, f"uneven slice spacing ({gaps.min():.1f} to {gaps.max():.1f} "
                     "mm): a slice is missing or spacings are mixed; volumes use one spacing",
                     after_slices=odd, **evidence)  # fmt: skip
    return check(name, True, "slices evenly spaced", **evidence)


def myocardium_surrounds_lv(label_map: np.ndarray, frames: Sequence[int]) -> dict[str, Any]:
    """In most slices with LV cavity (at the given frames of label_map (S, T, H, W)), at least
    MIN_SURROUND of the cavity's rim touches myocardium; otherwise the anatomy is implausible."""
    name = "myocardium_surrounds_lv"
    shares = []
    for t in frames:
        for z in range(label_map.shape[0]):
            cavity = label_map[z, t] == LV
            if not cavity.any():
                continue
            rim = cavity & ~ndimage.binary_erosion(cavity)
            outside = ndimage.binary_dilation(rim) & ~cavity  # the ring just outside the cavity
            touching = outside & (label_map[z, t] == MYO)
            shares.append(touching.sum() / max(int(outside.sum()), 1))
    if not shares:
        return check(name, None, "no LV cavity found", slices=0)
    good = float(np.mean(np.asarray(shares) >= MIN_SURROUND))
    evidence = {"slices": len(shares), "share_surrounded": round(good, 2),
                "min_rim_share": MIN_SURROUND}  # fmt: skip
    if good < 0.5:
        return check(name, False, "myocardium does not surround the LV cavity in most slices",
                     **evidence)  # fmt: skip
    return check(name, True, "myocardium surrounds the LV cavity", **evidence)


def connected_components(label_map: np.ndarray, frames: Sequence[int]) -> dict[str, Any]:
    """LV, MYO and RV each one piece in 3D (slices stacked) at the given frames: at least
    MIN_LARGEST of a structure's voxels in its largest 26-connected component."""
    name = "connected_components"
    structure = np.ones((3, 3, 3), bool)
    worst: dict[str, Any] = {}
    for t in frames:
        for label, part in ((LV, "lv"), (MYO, "myo"), (RV, "rv")):
            mask = label_map[:, t] == label
            total = int(mask.sum())
            if total == 0:
                continue
            pieces, n = ndimage.label(mask, structure)
            largest = int(np.bincount(pieces.ravel())[1:].max())
            share = largest / total
            if not worst or share < worst["largest_share"]:
                worst = {"structure": part, "frame": int(t), "pieces": int(n),
                         "largest_share": round(share, 3)}  # fmt: skip
    if not worst:
        return check(name, None, "no structure found")
    if worst["largest_share"] < MIN_LARGEST:
        return check(name, False, f"{worst['structure'].upper()} falls apart into "
                     f"{worst['pieces']} pieces at frame {worst['frame']}", **worst,
                     min_share=MIN_LARGEST)  # fmt: skip
    return check(name, True, "each structure is one piece", **worst, min_share=MIN_LARGEST)


def physiological_ranges(volumes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """LV and RV volumes, EF and LV mass inside RANGES (values that are None are skipped)."""
    name = "physiological_ranges"
    outside, judged = {}, {}
    for key, (lo, hi) in RANGES.items():
        side, field = key.split(".")
        value = (volumes.get(side) or {}).get(field)
        if value is None:
            continue
        judged[key] = round(float(value), 1)
        if not lo <= value <= hi:
            outside[key] = {"value": round(float(value), 1), "range": [lo, hi]}
    if not judged:
        return check(name, None, "no volume to judge")
    if outside:
        listed = ", ".join(f"{k} {v['value']} (expected {v['range'][0]:g}-{v['range'][1]:g})"
                           for k, v in outside.items())  # fmt: skip
        return check(name, False, f"outside physiological ranges: {listed}", outside=outside)
    return check(name, True, "volumes, EF and mass within physiological ranges", values=judged)


def model_uncertainty(entropy: np.ndarray | None) -> dict[str, Any]:
    """Mean normalised entropy (0: certain, 1: uniform) of the model's class probabilities over
    each slice's heart pixels, (S, T); any slice above MAX_ENTROPY at any frame fails."""
    name = "model_uncertainty"
    if entropy is None:
        return check(name, None, "the model's probabilities were not kept")
    per_slice = np.nanmax(entropy, axis=1)  # the most uncertain frame of each slice
    worst = int(np.nanargmax(per_slice))
    evidence = {"per_slice": [round(float(v), 3) for v in per_slice],
                "worst_slice": worst, "limit": MAX_ENTROPY}  # fmt: skip
    unsure = [int(z) for z in np.flatnonzero(per_slice > MAX_ENTROPY)]
    if unsure:
        return check(name, False, f"the model is unsure on slices {unsure}", unsure=unsure,
                     **evidence)  # fmt: skip
    return check(name, True, "the model is confident on every slice", **evidence)
