"""Folders of DICOM files (e.g. Sunnybrook) -> cine or LGE Subjects, with contours.

Every immediate sub-folder of ``root`` that holds DICOM files is one study (files at any depth,
any names); if ``root`` itself holds DICOM files, it is the one study. A file is DICOM when it
has the ``DICM`` marker at byte 128. Other files (notes, thumbnails) are skipped, and so is
DICOMDIR, but a ``.dcm``/``.dicom``/``.ima`` file without the marker is reported as broken.

A study may be exported as single-frame or enhanced multi-frame files, in any transfer syntax
pydicom decodes (RLE and deflated itself; JPEG lossless with python-gdcm, JPEG-LS with pyjpegls,
JPEG 2000 with pylibjpeg-openjpeg), as one series or as one series per slice (real-time cine)
or per cardiac phase: :mod:`.dicom_frames` reads the frames, :mod:`.dicom_series` puts them on
one (S, T) grid.

Sunnybrook contours (``IM-0001-NNNN-icontour-manual.txt``, NNNN the InstanceNumber, lines ``x y``
in pixels) become label maps when ``contours`` is given or ``root`` is laid out like Sunnybrook.

Nothing that identifies a patient (names, ids, dates, UIDs, institution, ...) reaches a Subject
or an error message: ids are salted hashes (:mod:`data_shards.privacy`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from data_shards.privacy import anonymous_id, default_salt
from data_shards.record import Subject
from data_shards.sources.contours import (
    contour_folder,
    contour_labels,
    diagnosis_group,
    read_link,
    sunnybrook_layout,
    unmatched_contours,
)
from data_shards.sources.dicom_frames import (
    CLOCK_KEYS,
    DICOM_SUFFIXES,
    decode,
    floats,
    has_marker,
    quiet_pydicom,
    read_frames,
    text,
)
from data_shards.sources.dicom_series import Grid, arrange, choose_frames
from data_shards.sources.registry import SourceError, register_source


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
        root: a folder of study folders (or one study folder) of DICOM files; a study folder
            may hold one sub-folder per series (a warning says so when the root's own
            sub-folders look like the series of one study). Sunnybrook's top folder or its
            ``dicoms/`` also work and bring their contours.
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
        along the normal, frames by the first time tag that varies (TriggerTime,
        AcquisitionTime, ContentTime; their enhanced equivalents), else InstanceNumber: meta
        ``frame_order`` names it, ``trigger_times_ms`` or ``frame_times_ms`` (ms from the first
        frame) give the times. Spacing (dz, dy, dx) mm; modality "cine" (T > 1) or "lge"
        (T = 1, a single image included); ``ed`` 0 unless the frames were ordered by clock time
        (real-time cine, not ECG-triggered: ED unknown). With contours,
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
    _warn_if_series_of_one_study(root, found)
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


def _warn_if_series_of_one_study(root: Path, studies: list[Path]) -> None:
    """Warn when every study folder's first image has one StudyInstanceUID: the root is then
    probably one study exported as a folder per series (per slice, say), read slice by slice."""
    if len(studies) < 2:
        return
    uids = set()
    with quiet_pydicom():
        for folder in studies:
            path = next((p for p in _files(folder) if has_marker(p)), None)
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            except Exception:  # unreadable or absent: reading the study will say why
                return
            uids.add(text(ds, "StudyInstanceUID"))
            if len(uids) > 1 or "" in uids:
                return
    warnings.warn(
        f"{root}: its {len(studies)} sub-folders hold series of one study (one "
        "StudyInstanceUID), yet each is read as a study of its own. If they are the slices or "
        "phases of one stack, move them into one folder under the root: the root's sub-folders "
        "are the studies.",
        stacklevel=3,
    )


def _read_study_or_error(
    folder: Path, salt: str, contour_folder: Path | None, note: str | None = None
) -> Subject | SourceError:
    """The study, or its SourceError; ``note`` goes to meta ``contours_note`` if unlabelled."""
    try:
        subject = read_dicom_study(folder, salt, contour_folder)
    except SourceError as err:
        return err
    if note and subject.label is None:
        subject.meta["contours_note"] = note
    return subject


def read_dicom_study(folder: Path, salt: str, contour_folder: Path | None = None) -> Subject:
    """Read one study folder; raises SourceError naming the file or folder and the problem."""
    return read_study_frames(folder, salt, contour_folder)[0]


def read_study_frames(
    folder: Path, salt: str, contour_folder: Path | None = None, even_gaps: bool = True
) -> tuple[Subject, Grid]:
    """read_dicom_study, and the frames read on the Subject's (slice, frame) grid: each one's file
    and header (pixel data dropped once decoded), identifiers included. Only for outputs that
    belong to the patient, as cmrfm.dicom_out's SEG and SR; never for a Subject or a shard.
    even_gaps: refuse uneven slice gaps (shards); False keeps the stack, with its gaps in
    meta["slice_gaps_mm"], for predict to flag."""
    files = _files(folder)
    if not any(map(_looks_dicom, files)):
        found = f"{len(files)} files, none of them DICOM" if files else "it is empty"
        raise SourceError(folder, f"no DICOM files in this study folder ({found})")
    with quiet_pydicom():
        frames = choose_frames(folder, read_frames(files))
        patients = {text(frame.ds, "PatientID") for frame in frames}
        if len(patients) > 1:
            raise SourceError(
                folder, f"the images of this study hold {len(patients)} different PatientIDs"
            )
        grid, geometry = arrange(folder, frames, even_gaps)
        s, t = len(grid), len(grid[0])
        image = np.stack(decode([frame for slice_ in grid for frame in slice_]))
        image = image.reshape(s, t, *image.shape[1:])
        for frame in frames:  # decoded: headers need not hold the pixels any longer
            if "PixelData" in frame.ds:
                del frame.ds.PixelData
    first = grid[0][0].ds
    # One patient may have several stacks (one folder each): the split follows the patient.
    patient = patients.pop() or folder.name
    stack = text(first, "SeriesInstanceUID") or folder.name
    # ECG-triggered cine starts at the R wave, i.e. at end-diastole; real-time cine (ordered by
    # clock time) starts anywhere in the cycle.
    gated = geometry["order"] not in CLOCK_KEYS
    meta = {
        "source": "dicom",
        "modality": "cine" if t > 1 else "lge",
        **({"ed": 0} if gated else {}),
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
            contour_folder, _instances(grid), image.shape
        )
        meta["label_classes"] = ["background", "lv", "myo"]  # RV is not told from background
        group = diagnosis_group(contour_folder)
        if group:
            meta["group"] = group
    subject_id = anonymous_id(f"{patient}\x00{stack}", salt, "dicom")
    return Subject(subject_id, image, label, geometry["spacing"], meta), grid


def _instances(grid: Grid) -> dict[int, tuple[int, int]]:
    """InstanceNumber -> (slice, frame): how contour files name their image."""
    where: dict[int, tuple[int, int]] = {}
    for s, frames in enumerate(grid):
        for t, frame in enumerate(frames):
            number = frame.first("InstanceNumber")
            if number is None:
                raise SourceError(
                    frame.path, "no InstanceNumber (0020,0013): contours cannot be matched"
                )
            if int(number) in where:
                raise SourceError(frame.path, "InstanceNumber repeats: contours cannot be matched")
            where[int(number)] = (s, t)
    return where


def _scanner(ds: Dataset) -> dict:
    """Manufacturer and field strength: kit, not people; nothing else from the header."""
    meta: dict = {}
    if text(ds, "Manufacturer"):
        meta["manufacturer"] = text(ds, "Manufacturer")
    strength = floats(ds, "MagneticFieldStrength")
    if strength:
        meta["field_strength_t"] = strength[0]
    return meta


def _files(folder: Path, recursive: bool = True) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    visible = (
        p for p in paths if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return sorted(p for p in visible if p.is_file())


def _looks_dicom(path: Path) -> bool:
    return has_marker(path) or path.suffix.lower() in DICOM_SUFFIXES
