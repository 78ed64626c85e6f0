"""ACDC (MICCAI 2017) as released: ``patientNNN/`` folders with Info.cfg and ED/ES NIfTI frames.

Each patient folder holds ``Info.cfg`` (``ED: 1``, ``ES: 12``, ``Group: DCM``, ``Height: 184.0``,
``NbFrame: 30``, ``Weight: 95.0``), ``patientNNN_frameFF.nii.gz`` for the ED and ES frames (3D,
(X, Y, Z) in nibabel's order) and ``patientNNN_frameFF_gt.nii.gz`` with 0 background, 1 RV,
2 myocardium, 3 LV. Where ``patientNNN_4d.nii.gz`` (X, Y, Z, T) is kept, the subject is the
whole cine, labelled at ED and ES only; the ED/ES files then serve as its consistency check.
Group, Height and Weight may be missing from Info.cfg: meta then records them as None (unknown).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_shards.record import BACKGROUND, IGNORE, LV, MYO, RV, Subject
from data_shards.sources.nifti_io import NiftiVolume, frames_equal, read_nifti
from data_shards.sources.registry import SourceError, register_source

# ACDC label -> ours. Anything outside 0..3 is rejected before the lookup.
ACDC_TO_OURS = {0: BACKGROUND, 1: RV, 2: MYO, 3: LV}
_LUT = np.full(256, IGNORE, dtype=np.uint8)
for _acdc, _ours in ACDC_TO_OURS.items():
    _LUT[_acdc] = _ours

# Patients 074 and 076 are the same images released twice: they must land in the same split.
SPLIT_GROUPS = {"acdc-patient076": "acdc-patient074"}

INFO_KEYS = {"ED": int, "ES": int, "Group": str, "Height": float, "NbFrame": int, "Weight": float}
# What a patient converts without: recorded as unknown (None). ED and ES place the label maps.
OPTIONAL_INFO = frozenset({"Group", "Height", "Weight"})
_UNKNOWN = frozenset({"", "na", "n/a", "nan", "none", "unknown", "?"})
_PATIENT = re.compile(r"patient\d+")


@register_source("acdc")
def acdc(
    root: Path | str | None,
    subjects: list[str] | None = None,
    limit: int | None = None,
    cine_4d: bool = True,
) -> Iterator[Subject | SourceError]:
    """Yield one Subject per patient folder under ``root``, sorted by name.

    Args:
        root: the folder holding ``patientNNN/`` (e.g. ``.../acdc/training``).
        subjects: restrict to these patients (``"patient001"`` or ``"acdc-patient001"``).
        limit: stop after this many patients (after ``subjects`` is applied).
        cine_4d: use ``patientNNN_4d.nii.gz`` where present (see Yields); False reads ED/ES only.

    Yields:
        Subject with image float32 (S, 2, H, W), frames [ED, ES], meta ed 0, es 1; or, from a
        ``_4d`` file, the whole cine (S, T, H, W) with meta ed/es = Info.cfg's ED - 1, ES - 1.
        label uint8 of the image's shape in our convention, IGNORE on frames without ``_gt``
        file (None when neither ED nor ES has one); spacing (dz, dy, dx) mm; meta
        ``frames_source`` "4d" or "ed_es" (plus ``frames_note`` when a 4D file was rejected).
        A patient that cannot be read comes out as a SourceError.

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
    return (_read_patient_or_error(folder, cine_4d) for folder in folders)


def _read_patient_or_error(folder: Path, cine_4d: bool = True) -> Subject | SourceError:
    try:
        return read_patient(folder, cine_4d=cine_4d)
    except SourceError as err:
        return err


def read_patient(folder: Path, cine_4d: bool = True) -> Subject:
    """Read one ``patientNNN/`` folder; raises SourceError naming the file and the problem."""
    name = folder.name
    info = read_info(folder / "Info.cfg")
    ed, es = info["ED"], info["ES"]
    if ed == es:
        raise SourceError(folder / "Info.cfg", f"ED and ES are the same frame ({ed})")

    frames, label_maps = [], []
    for frame in (ed, es):
        path = folder / f"{name}_frame{frame:02d}.nii.gz"
        volume = _read_frame(path)
        gt_path = folder / f"{name}_frame{frame:02d}_gt.nii.gz"
        label = None
        if gt_path.exists():
            gt = _read_frame(gt_path)
            if gt.data.shape != volume.data.shape:
                raise SourceError(
                    gt_path, f"label shape {gt.data.shape} != image shape {volume.data.shape}"
                )
            label = _map_labels(gt.data, gt_path)
        frames.append(volume)
        label_maps.append(label)

    first, second = frames
    if first.data.shape != second.data.shape:
        raise SourceError(
            folder, f"ED frame shape {first.data.shape} != ES frame shape {second.data.shape}"
        )
    if not np.allclose(first.spacing, second.spacing, rtol=1e-3):
        raise SourceError(
            folder,
            f"ED voxel size {first.spacing} != ES voxel size {second.spacing} mm (dz, dy, dx)",
        )

    meta: dict = {}
    cine, note = None, None
    cine_path = folder / f"{name}_4d.nii.gz"
    if cine_4d and cine_path.exists():
        cine, note = _read_cine(cine_path, first, second, ed, es)
    if cine is not None:
        image = cine.data.astype(np.float32, copy=False)  # (S, T, H, W)
        at = (ed - 1, es - 1)
        meta |= {"ed": at[0], "es": at[1], "frames_source": "4d"}
    else:
        image = np.concatenate([f.data for f in frames], axis=1).astype(np.float32, copy=False)
        at = (0, 1)
        meta |= {"ed": 0, "es": 1, "frames_source": "ed_es"}
    label = None
    if any(lab is not None for lab in label_maps):
        label = np.full(image.shape, IGNORE, dtype=np.uint8)
        for t, lab in zip(at, label_maps, strict=True):
            if lab is not None:
                label[:, t] = lab[:, 0]

    subject_id = f"acdc-{name}"
    meta = {
        "source": "acdc",
        "modality": "cine",
        **meta,
        "ed_frame": ed,
        "es_frame": es,
        "n_frames": info["NbFrame"],
        "group": info["Group"],
        "height": info["Height"],
        "weight": info["Weight"],
        "split_group": SPLIT_GROUPS.get(subject_id, subject_id),
        **first.geometry_meta(),
    }
    if note:
        meta["frames_note"] = note
    return Subject(subject_id, image, label, first.spacing, meta)


def _read_cine(
    path: Path, ed_frame: NiftiVolume, es_frame: NiftiVolume, ed: int, es: int
) -> tuple[NiftiVolume | None, str | None]:
    """The 4D cine if it is the ED/ES frames' own acquisition, else None and why not.

    A damaged or mismatched 4D file must not cost the patient its labelled frames, so every
    problem here becomes a note and the caller falls back to the ED/ES files.
    """
    try:
        cine = read_nifti(path, ndims=(4,))
    except SourceError as err:
        return None, f"{path.name} not used: {err.reason}"
    s, t, h, w = cine.data.shape
    frame_shape = ed_frame.data.shape[:1] + ed_frame.data.shape[2:]
    if (s, h, w) != frame_shape:
        return None, f"{path.name} not used: (S, H, W) {(s, h, w)} != ED/ES frames' {frame_shape}"
    if not np.allclose(cine.spacing, ed_frame.spacing, rtol=1e-3):
        return None, (
            f"{path.name} not used: voxel size {cine.spacing} != ED/ES frames' "
            f"{ed_frame.spacing} mm (dz, dy, dx)"
        )
    if max(ed, es) > t:
        return None, f"{path.name} not used: {t} frames, but Info.cfg says ED {ed}, ES {es}"
    for key, frame, volume in (("ED", ed, ed_frame), ("ES", es, es_frame)):
        if not frames_equal(cine.data[:, frame - 1], volume.data[:, 0]):
            return None, (
                f"{path.name} not used: its frame {frame} differs from the {key} file "
                f"{volume.path.name}"
            )
    return cine, None


def read_info(path: Path) -> dict[str, int | float | str | None]:
    """Parse Info.cfg (``Key: value`` lines) into typed values; SourceError if unusable.

    Group, Height and Weight may be missing or empty (or NA, unknown, ...): None, unknown. A
    value that is given but not a number is still an error, as is a missing ED, ES or NbFrame.
    """
    try:
        text = path.read_text()
    except OSError as err:
        raise SourceError(path, f"cannot read Info.cfg ({err.strerror or err})") from None
    raw = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            raw[key.strip()] = value.strip()
    missing = [key for key in INFO_KEYS if key not in raw and key not in OPTIONAL_INFO]
    if missing:
        raise SourceError(path, f"missing keys {missing} (expected {list(INFO_KEYS)})")
    info: dict[str, int | float | str | None] = {}
    for key, kind in INFO_KEYS.items():
        if key in OPTIONAL_INFO and raw.get(key, "").lower() in _UNKNOWN:
            info[key] = None
            continue
        try:
            info[key] = kind(raw[key])
        except ValueError:
            raise SourceError(path, f"{key}: {raw[key]!r} is not a valid {kind.__name__}") from None
    if info["ED"] < 1 or info["ES"] < 1:
        raise SourceError(
            path, f"ED/ES frame numbers are 1-based, got ED {info['ED']}, ES {info['ES']}"
        )
    return info


def _read_frame(path: Path) -> NiftiVolume:
    """One ED/ES frame or label: data (S, 1, H, W); SourceError naming the file if unusable."""
    if not path.exists():
        raise SourceError(path, "file not found (frame number from Info.cfg)")
    return read_nifti(path, ndims=(3,))


def _map_labels(label: np.ndarray, path: Path) -> np.ndarray:
    values = np.unique(label)
    bad = [v.item() for v in values if v not in ACDC_TO_OURS]
    if bad:
        raise SourceError(path, f"label values {bad} outside ACDC's 0..3 (0 bg, 1 RV, 2 MYO, 3 LV)")
    return _LUT[label.astype(np.uint8)]
