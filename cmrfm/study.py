"""A study as `cmrfm predict` reads and writes it: a NIfTI file (3D or 4D) or a DICOM study
folder read into (S, T, H, W) with its spacing and geometry, and a label map written back in the
input's own grid and header. Nothing from a DICOM header that identifies a person is kept but
the frames for the SEG and SR (``Study.sources``, in memory only); outputs are named "study"."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm.cycle import FrameTimes, dicom_frame_times, nifti_frame_times

DICOM_NAME = "study"  # DICOM folder names are often patient ids: never reuse them
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Study:
    """One study as read: image (S, T, H, W) float32, spacing (dz, dy, dx) mm, LPS geometry.

    ``affine`` (4, 4) is the RAS affine of the output NIfTI, whose array is (X, Y, Z[, T]) =
    (W, H, S[, T]); ``shape`` is that array's shape (the input file's own, for a NIfTI).
    """

    name: str
    kind: str  # "nifti" or "dicom"
    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    shape: tuple[int, ...]
    geometry: dict[str, Any] = field(default_factory=dict)  # direction, origin (LPS) if known
    header: Any = None  # the input's NIfTI header, copied into the output
    times: FrameTimes = field(default_factory=lambda: FrameTimes(None, "not given"))
    # DICOM: the frames read, [slice][frame] (file, header with identifiers): in memory only,
    # for the SEG and SR (cmrfm.dicom_out), which belong to the patient
    sources: Any = None
    geometry_note: str | None = None  # why the file's orientation is not used, if it is not


# --- reading -----------------------------------------------------------------------------------


def read_study(path: Path | str, affine_space: str | None = None) -> Study:
    """A NIfTI file (3D: one frame; 4D: a cine) or a folder holding one DICOM study (one
    series, or one series per slice or per phase, in sub-folders or not).

    Raises FileNotFoundError for a missing path or a folder without DICOM, SourceError
    (data_shards.sources) for an unreadable one, ValueError for several studies in one folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: study not found (give a .nii/.nii.gz file or a DICOM folder)"
        )
    if path.is_dir():
        return _read_dicom(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise FileNotFoundError(
            f"{path}: not a NIfTI file (.nii/.nii.gz); for DICOM give the folder of the series"
        )
    return _read_nifti(path, affine_space)


def _read_nifti(path: Path, affine_space: str | None) -> Study:
    import nibabel as nib

    from data_shards.sources.nifti import MNMS_GROUPING
    from data_shards.sources.nifti_io import read_nifti

    name = path.name[: -len(".nii.gz")] if path.name.lower().endswith(".gz") else path.stem
    if affine_space is None:  # as the nifti source decides: M&Ms-2 files hold LPS affines
        affine_space = "lps" if re.fullmatch(MNMS_GROUPING, name, re.I) else "ras"
    volume = read_nifti(path, affine_space=affine_space)  # SourceError naming the file
    img = nib.load(path)
    step, unit = float(img.header["pixdim"][4]), img.header.get_xyzt_units()[1]
    return Study(
        name=name,
        kind="nifti",
        image=volume.data.astype(np.float32, copy=False),
        spacing=volume.spacing,
        affine=np.asarray(img.affine, dtype=np.float64),
        shape=tuple(int(n) for n in img.shape),
        geometry=volume.geometry_meta(),
        header=img.header,
        times=nifti_frame_times(step, unit, volume.data.shape[1]),
        geometry_note=volume.geometry_note,
    )


def _read_dicom(folder: Path) -> Study:
    from data_shards.sources import SourceError
    from data_shards.sources.dicom import find_studies, read_study_frames

    studies = find_studies(folder)  # FileNotFoundError when there is no DICOM at all
    # The salt only feeds the source's pseudonymous subject id, which predict never writes.
    try:  # sub-folders may be the series of one study (one per slice, say): read them as one
        # uneven gaps (a slice missing) are kept and flagged by the quality check, not refused
        subject, grid = read_study_frames(folder, salt="cmrfm-predict", even_gaps=False)
    except SourceError as err:
        if len(studies) == 1:
            raise
        raise ValueError(
            f"{folder}: its {len(studies)} sub-folders do not make one study ({err.reason}); "
            "give the folder of one study"
        ) from None
    s, t, h, w = subject.image.shape
    geometry = {
        k: subject.meta[k] for k in ("direction", "origin", "slice_gaps_mm") if k in subject.meta
    }
    return Study(
        name=DICOM_NAME,
        kind="dicom",
        image=subject.image,
        spacing=tuple(float(v) for v in subject.spacing),
        affine=lps_to_nifti_affine(geometry["direction"], geometry["origin"], subject.spacing),
        shape=(w, h, s, t) if t > 1 else (w, h, s),
        geometry=geometry,
        times=dicom_frame_times(subject.meta, t),
        sources=grid,
    )


def lps_to_nifti_affine(
    direction: Any, origin: Any, spacing: tuple[float, float, float]
) -> np.ndarray:
    """RAS affine (4, 4) of an (X=W, Y=H, Z=S) array from LPS direction rows [S, H, W], origin
    and spacing (dz, dy, dx); an unknown dz (one slice) counts as 1 mm."""
    d = np.asarray(direction, dtype=np.float64)
    dz, dy, dx = (float(v) for v in spacing)
    dz = dz if math.isfinite(dz) and dz > 0 else 1.0
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = d[2] * dx, d[1] * dy, d[0] * dz
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    affine[:2] *= -1.0  # LPS -> RAS: x and y change sign (the last row stays 0 0 0 1)
    affine[3] = (0.0, 0.0, 0.0, 1.0)
    return affine


# --- preprocessing and its inverse -------------------------------------------------------------


def write_labels(study: Study, label_map: np.ndarray, out: Path) -> Path:
    """``<name>_seg.nii.gz``: label_map (S, T, H, W) in the input's array shape and geometry.

    A NIfTI input's header is copied as it is: pixdim, units, qform and sform with their codes.
    Passing no affine keeps nibabel from rewriting them; an affine would set pixdim from its
    column norms, and ACDC's release (unscaled affine, voxel size only in pixdim) would come
    out 1 x 1 x 1 mm. A DICOM study gets the affine of its geometry, scaled by the spacing.
    """
    import nibabel as nib

    data = label_map.transpose(3, 2, 0, 1).reshape(study.shape)  # (W, H, S, T) = (X, Y, Z, T)
    if study.header is not None:
        header = study.header.copy()
        header.set_data_dtype(np.uint8)
        kind = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        image = kind(data, None, header=header)
        image.header.set_slope_inter(1.0, 0.0)
    else:
        image = nib.Nifti1Image(data, study.affine)
        image.header.set_xyzt_units("mm", "msec")
        if study.times.ms is not None and len(study.times.ms) > 1:  # else pixdim[4] 1 "ms"
            image.header["pixdim"][4] = float(np.median(np.diff(study.times.ms)))
        image.set_qform(study.affine, code=1)
        image.set_sform(study.affine, code=1)
    path = out / f"{study.name}_seg.nii.gz"
    nib.save(image, path)
    return path
