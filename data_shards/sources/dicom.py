"""Folders of single-frame DICOM files (e.g. Sunnybrook) -> cine or LGE Subjects, with contours.

Every immediate sub-folder of ``root`` that holds DICOM files is one study (files at any depth,
any names); if ``root`` itself holds DICOM files, it is the one study. A file is DICOM when it
has the ``DICM`` marker at byte 128. Other files (notes, thumbnails) are skipped, and so is
DICOMDIR, but a ``.dcm``/``.dicom``/``.ima`` file without the marker is reported as broken.

Sunnybrook contours (``IM-0001-NNNN-icontour-manual.txt``, NNNN the InstanceNumber, lines ``x y``
in pixels) become labels when ``contours`` is given or ``root`` is laid out like Sunnybrook.

Nothing that identifies a patient (names, ids, dates, UIDs, institution, ...) reaches a Subject
or an error message: ids are salted hashes (:mod:`data_shards.privacy`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from data_shards.privacy import anonymous_id, default_salt
from data_shards.record import Subject
from data_shards.sources import SourceError, register_source
from data_shards.sources.contours import (
    contour_folder,
    contour_labels,
    diagnosis_group,
    read_link,
    sunnybrook_layout,
    unmatched_contours,
)

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory: an index, not an image
POSITION_TOL_MM = 0.05  # images closer than this along the slice normal share a slice
ORIENTATION_TOL = 1e-3  # larger differences in direction cosines mean another plane
# The LV long axis runs from base to apex towards the patient's left, front and feet (LPS).
APEX_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
GEOMETRY = {  # keyword: (tag, number of values)
    "PixelSpacing": ("(0028,0030)", 2),
    "ImageOrientationPatient": ("(0020,0037)", 6),
    "ImagePositionPatient": ("(0020,0032)", 3),
}

Files = list[tuple[Path, Dataset]]


@register_source("dicom")
def dicom(
    root: Path | str | None,
    salt: str | None = None,
    contours: Path | str | None = None,
    link: Path | str | None = None,
    limit: int | None = None,
) -> Iterator[Subject | SourceError]:
    """Yield one Subject per study folder under ``root``, in sorted folder order.

    Args:
        root: a folder of study folders (or one study folder) of single-frame DICOM files;
            Sunnybrook's top folder or its ``dicoms/`` also work and bring their contours.
        salt: secret for the subject ids (default: the machine's, see data_shards.privacy).
        contours: folder with one contour folder per study (named as the study folder, or as
            ``link`` maps it), or, for a single study, the folder holding ``i-contours/``.
        link: CSV of ``study folder,contour folder`` rows (Sunnybrook's link.csv). Contour
            folders that neither link nor a study folder's name matches are not guessed from
            instance numbers (every Sunnybrook study numbers its images from 1): a warning names
            them, and the unlabelled studies say so in meta ``contours_note``.
        limit: stop after this many studies.

    Yields:
        Subject with image float32 (S, T, H, W) after RescaleSlope/Intercept, slices base to apex
        along the normal, frames by TriggerTime (else InstanceNumber); spacing (dz, dy, dx) mm;
        modality "cine" (T > 1) or "lge" (T = 1, a single image included). With contours,
        label uint8 (S, T, H, W): LV 1, MYO 2, background 0 at ED and ES, IGNORE where unknown
        (see ``contours.contour_labels``). A study that cannot be read comes out as a SourceError.

    Raises:
        FileNotFoundError: ``root``, ``contours`` or ``link`` is missing, or no DICOM is found.
    """
    if root is None:
        raise ValueError("dicom needs root: a folder of study folders of DICOM files")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: DICOM root folder not found")
    root, contours, link = sunnybrook_layout(root, contours, link)
    found = find_studies(root)
    studies = found if limit is None else found[: max(0, limit)]
    if link is not None and contours is None:
        raise ValueError(f"{link}: a link file needs contours, the folder it points into")
    if contours is not None and not contours.is_dir():
        raise FileNotFoundError(f"{contours}: contour folder not found")
    names = read_link(link) if link is not None else {}
    salt = default_salt() if salt is None else salt
    single = len(studies) == 1
    folders = [contour_folder(s, contours, names, single) for s in studies]
    note = None
    if contours is not None:  # studies left out by limit still own their contours
        others = [contour_folder(s, contours, names, False) for s in found[len(studies) :]]
        note = _unmatched_note(contours, link, folders, others)
    return (_read_study_or_error(s, salt, c, note) for s, c in zip(studies, folders))


def _unmatched_note(
    contours: Path, link: Path | None, folders: list[Path | None], others: list[Path | None]
) -> str | None:
    """Warn about contour folders that no study (``folders``: those read, ``others``: those
    beyond the limit) was matched to; returns the note for the unlabelled studies, or None."""
    unmatched = unmatched_contours(contours, folders + others)
    if not unmatched:
        return None
    names = ", ".join(folder.name for folder in unmatched[:5])
    names += f", ... ({len(unmatched)} in all)" if len(unmatched) > 5 else ""
    why = f"no row in {link.name}" if link is not None else "no link.csv"
    unlabelled = sum(folder is None for folder in folders)
    warnings.warn(
        f"{contours}: contour folders not used ({names}): {why} and no study folder of the same "
        f"name, so {unlabelled} of {len(folders)} studies convert unlabelled. Add "
        "'study folder,contour folder' rows to a link.csv beside dicoms/ (or give it as the "
        "dicom source's link option).",
        stacklevel=3,
    )
    return f"contours under {contours.name}/ matched no study ({why}): {names}"


def find_studies(root: Path) -> list[Path]:
    """``[root]`` if it directly holds DICOM files, else its (non-hidden) sub-folders, sorted.

    A sub-folder without any DICOM file stays in the list: reading it yields a SourceError, so
    an empty or mis-filled study shows up in quarantine.json instead of vanishing.
    """
    if any(_looks_dicom(p) for p in _files(root, recursive=False)):
        return [root]
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not any(any(map(_looks_dicom, _files(d))) for d in folders):
        raise FileNotFoundError(
            f"{root}: no DICOM files found (expected one folder of .dcm files per study)"
        )
    return folders


def _read_study_or_error(
    folder: Path, salt: str, contour_folder: Path | None, note: str | None = None
) -> Subject | SourceError:
    """The study, or its SourceError; ``note`` goes to meta ``contours_note`` if unlabelled."""
    try:
        subject = read_study(folder, salt, contour_folder)
    except SourceError as err:
        return err
    if note and subject.label is None:
        subject.meta["contours_note"] = note
    return subject


def read_study(folder: Path, salt: str, contour_folder: Path | None = None) -> Subject:
    """Read one study folder; raises SourceError naming the file or folder and the problem."""
    files = _files(folder)
    if not any(map(_looks_dicom, files)):
        found = f"{len(files)} files, none of them DICOM" if files else "it is empty"
        raise SourceError(folder, f"no DICOM files in this study folder ({found})")
    with _quiet_pydicom():
        series = choose_series(folder, read_headers(files))
        patients = {_text(ds, "PatientID") for _, ds in series}
        if len(patients) > 1:
            raise SourceError(folder, f"one series holds {len(patients)} different PatientIDs")
        grid, geometry = arrange(folder, series)
        image = np.stack([[read_pixels(path, ds) for path, ds in frames] for frames in grid])
    t = image.shape[1]
    first = grid[0][0][1]
    # One patient may have several stacks (one folder each): the split follows the patient.
    patient = patients.pop() or folder.name
    stack = _text(first, "SeriesInstanceUID") or folder.name
    meta = {
        "source": "dicom",
        "modality": "cine" if t > 1 else "lge",
        "ed": 0,  # ECG-triggered cine starts at the R wave, i.e. at end-diastole
        **({"es": 0} if t == 1 else {}),
        "split_group": anonymous_id(patient, salt, "dicom"),
        **geometry["meta"],
        **_scanner(first),
    }
    label = None
    if contour_folder is not None:
        if not contour_folder.is_dir():
            raise SourceError(contour_folder, "contour folder named in the link file not found")
        label, meta["ed"], meta["es"] = contour_labels(
            contour_folder, _instances(folder, grid), image.shape
        )
        meta["label_classes"] = ["background", "lv", "myo"]  # RV is not told from background
        group = diagnosis_group(contour_folder)
        if group:
            meta["group"] = group
    subject_id = anonymous_id(f"{patient}\x00{stack}", salt, "dicom")
    return Subject(subject_id, image, label, geometry["spacing"], meta)


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and logs quote the offending value (a UID, a date): keep them out."""
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        yield


def read_headers(files: Sequence[Path]) -> Files:
    """Headers of the image files (pixel data deferred); SourceError for a broken file."""
    headers = []
    for path in files:
        if not _has_marker(path):
            if path.suffix.lower() in DICOM_SUFFIXES:
                raise SourceError(
                    path,
                    "not a DICOM file: no 'DICM' marker at byte 128 (truncated, or not DICOM "
                    "despite its name); remove it or export it again",
                )
            continue  # notes, thumbnails, .csv: not part of the image series
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, defer_size="2 KB")  # pixels are read later, once chosen
        except Exception as err:  # pydicom raises many types for a damaged file
            raise SourceError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from None
        file_meta = getattr(ds, "file_meta", Dataset())
        if DICOMDIR_CLASS in (
            _text(ds, "SOPClassUID"),
            _text(file_meta, "MediaStorageSOPClassUID"),
        ):
            continue
        if "PixelData" not in ds:
            raise SourceError(
                path,
                "DICOM without pixel data (7FE0,0010): truncated, or not an image; "
                "remove it from the study folder",
            )
        headers.append((path, ds))
    return headers


def choose_series(folder: Path, headers: Files) -> Files:
    """The one series to read: the only one, or the only short-axis cine stack among several."""
    if not headers:
        raise SourceError(folder, "no DICOM images in this folder")
    groups: dict[str, Files] = {}
    for path, ds in headers:
        groups.setdefault(_text(ds, "SeriesInstanceUID"), []).append((path, ds))
    if len(groups) == 1:
        return headers
    stacks = [files for files in groups.values() if _is_cine_stack(files)]
    if len(stacks) == 1:  # localisers and long-axis views beside it are left out
        return stacks[0]
    ranked = sorted(groups.values(), key=len, reverse=True)
    descriptions = [_text(files[0][1], "SeriesDescription") or "(none)" for files in ranked]
    raise SourceError(
        folder,
        f"mixed series: {len(groups)} series (descriptions {descriptions}, counts "
        f"{[len(f) for f in ranked]}), {len(stacks)} of them cine stacks, so the short-axis "
        "cine is ambiguous; put one series per folder",
    )


def _is_cine_stack(files: Files) -> bool:
    """Several slice positions and several trigger times: a cine stack, not a localiser."""
    positions = {tuple(np.round(p, 1)) for p in _values(files, "ImagePositionPatient")}
    times = set(_values(files, "TriggerTime"))
    return len(positions) > 1 and len(times) > 1


def arrange(folder: Path, series: Files) -> tuple[list[Files], dict]:
    """Files on an (S, T) grid, slices base to apex and frames in time, and the geometry.

    Returns the grid (S lists of T files) and ``{"spacing": (dz, dy, dx), "meta": {direction,
    origin, trigger_times_ms}}``.
    """
    first_path, first = series[0]
    for path, ds in series:
        _check_image(path, ds, first_path, first)
    iop = np.array(_floats(first, "ImageOrientationPatient"))
    row, col = iop[:3], iop[3:]  # along increasing column (W) and increasing row (H) index
    normal = np.cross(row, col)
    if not 0.9 < np.linalg.norm(normal) < 1.1:  # |row x col| = 1 only for perpendicular units
        raise SourceError(first_path, "ImageOrientationPatient: cosines not perpendicular units")
    normal /= np.linalg.norm(normal)
    depth = [float(normal @ np.array(_floats(ds, "ImagePositionPatient"))) for _, ds in series]
    slices: list[list[int]] = []
    for i in np.argsort(depth, kind="stable"):
        if slices and depth[i] - depth[slices[-1][0]] <= POSITION_TOL_MM:
            slices[-1].append(i)
        else:
            slices.append([i])
    along = normal
    if normal @ APEX_LPS < 0:  # increasing depth runs apex to base: flip to base to apex
        slices, along = slices[::-1], -normal
    by_time = all(_floats(ds, "TriggerTime") for _, ds in series)
    grid = [_frames(folder, [series[i] for i in members], by_time) for members in slices]
    counts = [len(frames) for frames in grid]
    if len(set(counts)) > 1:
        short = next(frames for frames in grid if len(frames) < max(counts))
        raise SourceError(
            folder,
            f"missing instances: slices have {sorted(set(counts))} frames (e.g. the slice of "
            f"{short[0][0].name} has {len(short)}, not {max(counts)}); every slice needs every frame",
        )
    centres = [depth[members[0]] for members in slices]
    dz = _slice_gap(folder, centres, first)
    dy, dx = _floats(first, "PixelSpacing")
    meta = {
        "direction": [_rounded(along), _rounded(col), _rounded(row)],
        "origin": _rounded(_floats(grid[0][0][1], "ImagePositionPatient"), 4),
    }
    if by_time and counts[0] > 1:
        meta["trigger_times_ms"] = [round(_floats(ds, "TriggerTime")[0], 1) for _, ds in grid[0]]
    return grid, {"spacing": (dz, dy, dx), "meta": meta}


def _check_image(path: Path, ds: Dataset, first_path: Path, first: Dataset) -> None:
    """Every image must carry its geometry and match the first one's plane, size and spacing."""
    for keyword, (tag, n) in GEOMETRY.items():
        values = _floats(ds, keyword)
        if values is None or len(values) != n:
            raise SourceError(
                path, f"missing or invalid {keyword} {tag}: needed to place the image in 3D"
            )
    if _floats(ds, "NumberOfFrames") not in (None, (1.0,)):
        raise SourceError(path, "multi-frame DICOM: this source reads one image per file")
    size, first_size = (_size(d) for d in (ds, first))
    if size is None:
        raise SourceError(path, "missing Rows (0028,0010) or Columns (0028,0011)")
    if size != first_size:
        raise SourceError(
            path,
            f"image size {size} differs from {first_size} in {first_path.name} (rows x columns)",
        )
    pairs = {k: (np.array(_floats(ds, k)), np.array(_floats(first, k))) for k in GEOMETRY}
    if np.abs(np.subtract(*pairs["ImageOrientationPatient"])).max() > ORIENTATION_TOL:
        raise SourceError(
            path,
            f"inconsistent orientation: not parallel to {first_path.name}; a stack needs "
            "parallel slices (put other views in their own folder)",
        )
    if not np.allclose(*pairs["PixelSpacing"], rtol=1e-3):
        raise SourceError(path, f"pixel spacing differs from {first_path.name}'s")


def _frames(folder: Path, files: Files, by_time: bool) -> Files:
    """One slice's files in time order; SourceError for two images at the same time."""
    keyword = "TriggerTime" if by_time else "InstanceNumber"
    keys = [_floats(ds, keyword) for _, ds in files]
    if len(files) > 1 and not all(keys):
        raise SourceError(folder, "cannot order frames: images lack TriggerTime and InstanceNumber")
    order = sorted(range(len(files)), key=lambda i: keys[i] or (0.0,))
    for a, b in itertools.pairwise(order):
        if keys[a] == keys[b]:
            raise SourceError(
                files[b][0],
                f"duplicate instance: same position and {keyword} as {files[a][0].name}",
            )
    return [files[i] for i in order]


def _slice_gap(folder: Path, centres: list[float], first: Dataset) -> float:
    """dz from the slice positions; for one slice the header's spacing, else NaN."""
    if len(centres) == 1:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _floats(first, keyword)
            if value and value[0] > 0:
                return value[0]
        return float("nan")
    gaps = np.abs(np.diff(centres))
    if gaps.max() - gaps.min() > 0.1 * np.median(gaps):
        raise SourceError(
            folder,
            f"uneven slice gaps ({gaps.min():.2f} to {gaps.max():.2f} mm): a slice is "
            "probably missing",
        )
    return float(gaps.mean())


def read_pixels(path: Path, ds: Dataset) -> np.ndarray:
    """(H, W) float32 after RescaleSlope and RescaleIntercept."""
    if _floats(ds, "SamplesPerPixel") not in (None, (1.0,)):
        raise SourceError(path, "colour image: this source reads greyscale MR images")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom and its decoders raise many types
        raise SourceError(path, f"unreadable pixel data ({type(err).__name__}: {err})") from None
    slope = (_floats(ds, "RescaleSlope") or (1.0,))[0]
    intercept = (_floats(ds, "RescaleIntercept") or (0.0,))[0]
    image = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":  # bright means low signal
        image = -image
    return image


def _instances(folder: Path, grid: list[Files]) -> dict[int, tuple[int, int]]:
    """InstanceNumber -> (slice, frame): how contour files name their image."""
    where: dict[int, tuple[int, int]] = {}
    for s, frames in enumerate(grid):
        for t, (path, ds) in enumerate(frames):
            number = _floats(ds, "InstanceNumber")
            if number is None:
                raise SourceError(path, "no InstanceNumber (0020,0013): contours cannot be matched")
            if int(number[0]) in where:
                raise SourceError(path, "InstanceNumber repeats: contours cannot be matched")
            where[int(number[0])] = (s, t)
    return where


def _scanner(ds: Dataset) -> dict:
    """Manufacturer and field strength: kit, not people; nothing else from the header."""
    meta: dict = {}
    if _text(ds, "Manufacturer"):
        meta["manufacturer"] = _text(ds, "Manufacturer")
    strength = _floats(ds, "MagneticFieldStrength")
    if strength:
        meta["field_strength_t"] = strength[0]
    return meta


def _size(ds: Dataset) -> str | None:
    rows, cols = _floats(ds, "Rows"), _floats(ds, "Columns")
    return f"{int(rows[0])} x {int(cols[0])}" if rows and cols else None


def _files(folder: Path, recursive: bool = True) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    visible = (
        p for p in paths if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return sorted(p for p in visible if p.is_file())


def _looks_dicom(path: Path) -> bool:
    return _has_marker(path) or path.suffix.lower() in DICOM_SUFFIXES


def _has_marker(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value: treat as absent
        return ""
    return "" if value is None else str(value).strip()


def _floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    """The element's values as floats; None when absent, empty, non-numeric or non-finite."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
        out = tuple(float(v) for v in values)
    except Exception:  # pydicom raises many types for a malformed value
        return None
    return out if out and all(np.isfinite(out)) else None


def _values(files: Files, keyword: str) -> list:
    return [v for v in (_floats(ds, keyword) for _, ds in files) if v is not None]


def _rounded(values: Sequence[float], digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]
