"""ACDC full-cycle 4D cines as a public copy cropped them: a flat folder of ``patientNNN_4d.nii.gz``.

Each file is one patient's short-axis cine, (X, Y, Z, T) in nibabel's order, cropped in-plane
around the heart, unlabelled. The patients are ACDC's own, so a subject gets the id and split
group the ``acdc`` source gives it: the same patient never lands in two splits.

The crop's affine is not used as patient geometry. ACDC's release has none (its affines are bare
flips with 1 mm steps, which ``nifti_io`` rejects), so the axis-aligned affine a cropping tool
wrote cannot be the scanner's; trusting it would flip these cines against the ``acdc`` shards of
the same patients. The voxel order is ACDC's own (the crop of the released frames, not flipped).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from data_shards.record import Subject
from data_shards.sources.acdc import SPLIT_GROUPS
from data_shards.sources.nifti_io import read_nifti
from data_shards.sources.registry import SourceError, register_source

_FILE = re.compile(r"(patient\d{3})_4d\.nii(?:\.gz)?")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
GEOMETRY_NOTE = "affine written by the cropping tool, not the scanner's: orientation not trusted"


@register_source("acdc-cine")
def acdc_cine(
    root: Path | str | None,
    subjects: list[str] | None = None,
    limit: int | None = None,
) -> Iterator[Subject | SourceError]:
    """Yield one unlabelled cine Subject per ``patientNNN_4d.nii[.gz]`` in ``root``, sorted by name.

    Args:
        root: the flat folder of 4D files (e.g. ``../shared/data/acdc_cine``).
        subjects: restrict to these patients (``"patient001"`` or ``"acdc-patient001"``).
        limit: stop after this many files (after ``subjects`` is applied).

    Yields:
        Subject ``acdc-patientNNN`` with image float32 (S, T, H, W), label None, spacing
        (dz, dy, dx) mm from the header, meta without ed/es (not known for these files). Any
        other ``.nii``/``.nii.gz`` file in ``root``, or a file that cannot be read, comes out as
        a SourceError naming it; files of other types are ignored.

    Raises:
        FileNotFoundError: ``root`` is missing, holds no ``patientNNN_4d.nii.gz``, or lacks a
            requested patient.
    """
    if root is None:
        raise ValueError("acdc-cine needs root: the folder that holds patientNNN_4d.nii.gz files")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ACDC cine folder not found")
    niftis = sorted(p for p in root.iterdir() if p.is_file() and p.name.endswith(_NIFTI_SUFFIXES))
    files = [p for p in niftis if _FILE.fullmatch(p.name)]
    if not files:
        hint = " (ACDC's training/ folder of patientNNN/ folders reads with --source acdc)"
        raise FileNotFoundError(f"{root}: no patientNNN_4d.nii.gz files found{hint}")
    if subjects is None:
        paths = niftis  # misnamed NIfTIs too: they come out as errors naming them
    else:
        wanted = {s.removeprefix("acdc-") for s in subjects}
        patient = {p: _FILE.fullmatch(p.name).group(1) for p in files}
        missing = sorted(wanted - set(patient.values()))
        if missing:
            raise FileNotFoundError(f"{root}: requested patients not found: {', '.join(missing)}")
        paths = [p for p in files if patient[p] in wanted]
    if limit is not None:
        paths = paths[: max(0, limit)]
    return (_read_file_or_error(path) for path in paths)


def _read_file_or_error(path: Path) -> Subject | SourceError:
    try:
        return read_cine(path)
    except SourceError as err:
        return err


def read_cine(path: Path) -> Subject:
    """Read one ``patientNNN_4d.nii.gz`` as (S, T, H, W); SourceError naming the file if unusable."""
    match = _FILE.fullmatch(path.name)
    if match is None:
        raise SourceError(
            path,
            "not named patientNNN_4d.nii.gz (or .nii), so its ACDC patient, and with it the "
            "subject id and split, is unknown; rename it or move it out of the folder",
        )
    volume = read_nifti(path, ndims=(4,))
    image = volume.data.astype(np.float32, copy=False)  # (S, T, H, W)
    subject_id = f"acdc-{match.group(1)}"
    meta: dict[str, Any] = {
        "source": "acdc-cine",
        "modality": "cine",
        "frames_source": "4d",
        "n_frames": int(image.shape[1]),
        "split_group": SPLIT_GROUPS.get(subject_id, subject_id),
        "geometry_note": GEOMETRY_NOTE,
    }
    return Subject(subject_id, image, None, volume.spacing, meta)
