"""ACDC (MICCAI 2017) as released: ``patientNNN/`` folders with Info.cfg and ED/ES NIfTI frames.

Each patient folder holds ``Info.cfg`` (``ED: 1``, ``ES: 12``, ``Group: DCM``, ``Height: 184.0``,
``NbFrame: 30``, ``Weight: 95.0``), ``patientNNN_frameFF.nii.gz`` for the ED and ES frames (3D,
(X, Y, Z) in nibabel's order) and ``patientNNN_frameFF_gt.nii.gz`` with 0 background, 1 RV,
2 myocardium, 3 LV. Any ``_4d.nii.gz`` is ignored: only ED and ES carry labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from data_shards.record import BACKGROUND, IGNORE, LV, MYO, RV, Subject
from data_shards.sources import SourceError, register_source

# ACDC label -> ours. Anything outside 0..3 is rejected before the lookup.
ACDC_TO_OURS = {0: BACKGROUND, 1: RV, 2: MYO, 3: LV}
_LUT = np.full(256, IGNORE, dtype=np.uint8)
for _acdc, _ours in ACDC_TO_OURS.items():
    _LUT[_acdc] = _ours

# Patients 074 and 076 are the same images released twice: they must land in the same split.
SPLIT_GROUPS = {"acdc-patient076": "acdc-patient074"}

INFO_KEYS = {"ED": int, "ES": int, "Group": str, "Height": float, "NbFrame": int, "Weight": float}
_PATIENT = re.compile(r"patient\d+")


@register_source("acdc")
def acdc(
    root: Path | str | None,
    subjects: list[str] | None = None,
    limit: int | None = None,
) -> Iterator[Subject | SourceError]:
    """Yield one Subject per patient folder under ``root``, sorted by name.

    Args:
        root: the folder holding ``patientNNN/`` (e.g. ``.../acdc/training``).
        subjects: restrict to these patients (``"patient001"`` or ``"acdc-patient001"``).
        limit: stop after this many patients (after ``subjects`` is applied).

    Yields:
        Subject with image float32 (S, 2, H, W), frames [ED, ES]; label uint8 (S, 2, H, W) in our
        convention, IGNORE for a frame without ``_gt`` file (None when neither has one);
        spacing (dz, dy, dx) mm. A patient that cannot be read comes out as a SourceError.

    Raises:
        FileNotFoundError: ``root`` is missing, holds no patient folder, or lacks a requested one.
    """
    if root is None:
        raise ValueError("acdc needs root: the folder that holds the patientNNN/ folders")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: ACDC root folder not found")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _PATIENT.fullmatch(p.name))
    if not folders:
        raise FileNotFoundError(f"{root}: no patientNNN/ folders found (is this ACDC's training/?)")
    if subjects is not None:
        wanted = {s.removeprefix("acdc-") for s in subjects}
        missing = sorted(wanted - {p.name for p in folders})
        if missing:
            raise FileNotFoundError(f"{root}: requested patients not found: {', '.join(missing)}")
        folders = [p for p in folders if p.name in wanted]
    if limit is not None:
        folders = folders[: max(0, limit)]
    return (_read_patient_or_error(folder) for folder in folders)


def _read_patient_or_error(folder: Path) -> Subject | SourceError:
    try:
        return read_patient(folder)
    except SourceError as err:
        return err


def read_patient(folder: Path) -> Subject:
    """Read one ``patientNNN/`` folder; raises SourceError naming the file and the problem."""
    name = folder.name
    info = read_info(folder / "Info.cfg")
    ed, es = info["ED"], info["ES"]
    if ed == es:
        raise SourceError(folder / "Info.cfg", f"ED and ES are the same frame ({ed})")

    images, labels, zooms = [], [], []
    for frame in (ed, es):
        path = folder / f"{name}_frame{frame:02d}.nii.gz"
        image, zoom = _read_nifti(path)
        if not np.isfinite(image).all():
            n_bad = int(image.size - np.count_nonzero(np.isfinite(image)))
            raise SourceError(path, f"{n_bad} non-finite voxels (NaN/Inf)")
        gt_path = folder / f"{name}_frame{frame:02d}_gt.nii.gz"
        label = None
        if gt_path.exists():
            label, _ = _read_nifti(gt_path)
            if label.shape != image.shape:
                raise SourceError(
                    gt_path, f"label shape {label.shape} != image shape {image.shape}"
                )
            label = _map_labels(label, gt_path)
        images.append(image.astype(np.float32, copy=False))
        labels.append(label)
        zooms.append(zoom)

    if images[0].shape != images[1].shape:
        raise SourceError(
            folder, f"ED frame shape {images[0].shape} != ES frame shape {images[1].shape}"
        )
    if not np.allclose(zooms[0], zooms[1], rtol=1e-3):
        raise SourceError(folder, f"ED voxel size {zooms[0]} != ES voxel size {zooms[1]} mm")

    image = np.stack(images, axis=1)  # (S, 2, H, W)
    label = None
    if any(lab is not None for lab in labels):
        unlabelled = np.full(images[0].shape, IGNORE, dtype=np.uint8)
        label = np.stack([unlabelled if lab is None else lab for lab in labels], axis=1)

    subject_id = f"acdc-{name}"
    dx, dy, dz = zooms[0]
    meta = {
        "source": "acdc",
        "modality": "cine",
        "ed": 0,
        "es": 1,
        "ed_frame": ed,
        "es_frame": es,
        "n_frames": info["NbFrame"],
        "group": info["Group"],
        "height": info["Height"],
        "weight": info["Weight"],
        "split_group": SPLIT_GROUPS.get(subject_id, subject_id),
    }
    return Subject(subject_id, image, label, (dz, dy, dx), meta)


def read_info(path: Path) -> dict[str, int | float | str]:
    """Parse Info.cfg (``Key: value`` lines) into typed values; SourceError if unusable."""
    try:
        text = path.read_text()
    except OSError as err:
        raise SourceError(path, f"cannot read Info.cfg ({err.strerror or err})") from None
    raw = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            raw[key.strip()] = value.strip()
    missing = [key for key in INFO_KEYS if key not in raw]
    if missing:
        raise SourceError(path, f"missing keys {missing} (expected {list(INFO_KEYS)})")
    info = {}
    for key, kind in INFO_KEYS.items():
        try:
            info[key] = kind(raw[key])
        except ValueError:
            raise SourceError(path, f"{key}: {raw[key]!r} is not a valid {kind.__name__}") from None
    if info["ED"] < 1 or info["ES"] < 1:
        raise SourceError(
            path, f"ED/ES frame numbers are 1-based, got ED {info['ED']}, ES {info['ES']}"
        )
    return info


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Voxels as (S, H, W) = nibabel's (X, Y, Z) reversed, and the (dx, dy, dz) voxel size."""
    if not path.exists():
        raise SourceError(path, "file not found (frame number from Info.cfg)")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as err:  # nibabel/gzip/zlib raise many types for a damaged file
        raise SourceError(path, f"unreadable NIfTI ({type(err).__name__}: {err})") from None
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise SourceError(path, f"voxel size {zooms} mm must be finite and positive")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SourceError(path, f"expected a 3D volume (X, Y, Z), got shape {data.shape}")
    return np.ascontiguousarray(data.transpose(2, 1, 0)), zooms


def _map_labels(label: np.ndarray, path: Path) -> np.ndarray:
    values = np.unique(label)
    bad = [v.item() for v in values if v not in ACDC_TO_OURS]
    if bad:
        raise SourceError(path, f"label values {bad} outside ACDC's 0..3 (0 bg, 1 RV, 2 MYO, 3 LV)")
    return _LUT[label.astype(np.uint8)]
