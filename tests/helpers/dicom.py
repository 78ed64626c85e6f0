"""Single-frame MR DICOM files and shuffled cine stacks with a known short-axis geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

# A short-axis-like plane: rows run left-posterior, columns mostly towards the feet.
SAX_ROW = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)


SAX_COL = np.array([-0.3, 0.3, -np.sqrt(1.0 - 0.18)])


# The heart's apex lies left (+x), anterior (-y) and inferior (-z) in LPS.
APEX = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)


BASE_POSITION = np.array([-30.0, -200.0, 110.0])


ROWS, COLS = 10, 12  # H, W: not square, so swapped axes show


PIXEL_SPACING = (1.5, 1.25)  # DICOM order: (between rows = dy, between columns = dx)


GAP = 8.0


def apex_ward(row: np.ndarray = SAX_ROW, col: np.ndarray = SAX_COL) -> np.ndarray:
    """The slice normal, signed to point from base to apex."""
    normal = np.cross(row, col)
    return normal if normal @ APEX > 0 else -normal


def make_dataset(
    pixels: np.ndarray,
    position: np.ndarray,
    *,
    trigger: float | None = None,
    instance: int | None = None,
    series: str = "1.2.826.0.1.3680043.8.498.1",
    row: np.ndarray = SAX_ROW,
    col: np.ndarray = SAX_COL,
    **tags,
) -> Dataset:
    """One single-frame MR image; ``tags`` set (or, with None, remove) any header keyword."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series
    ds.Modality = "MR"
    ds.PatientID = "anon"
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row, *col)]
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.SliceThickness = GAP
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    if trigger is not None:
        ds.TriggerTime = trigger
    if instance is not None:
        ds.InstanceNumber = instance
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write(path: Path, ds: Dataset) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def pixel_value(k: int, t: int) -> int:
    return 100 * k + 10 * t


def write_stack(
    folder: Path,
    slices: int = 3,
    frames: int = 4,
    *,
    shape: tuple[int, int] = (ROWS, COLS),
    row: np.ndarray = SAX_ROW,
    col: np.ndarray = SAX_COL,
    seed: int = 0,
    skip: tuple[int, ...] = (),
    **tags,
) -> dict[tuple[int, int], Path]:
    """A cine stack, slice k (from base) and frame t holding pixel_value(k, t), in shuffled files.

    File names are a random permutation, half the files sit in a sub-folder, and instance
    numbers run backwards in time within a slice, so only geometry and TriggerTime can order
    the images. Pixel (0, 1) is 5 brighter, to tell rows from columns. Slices in ``skip`` are
    left out. Returns the path of each (k, t).
    """
    tags.setdefault("SeriesInstanceUID", generate_uid())  # each stack its own series
    rng = np.random.default_rng(seed)
    names = rng.permutation(slices * frames)
    step = GAP * apex_ward(row, col)
    paths = {}
    for k in range(slices):
        for t in range(frames):
            if k in skip:
                continue
            pixels = np.full(shape, pixel_value(k, t), np.int16)
            pixels[0, 1] += 5
            i = k * frames + t
            name = f"{names[i]:03d}.dcm"
            path = folder / ("nested" if names[i] % 2 else "") / name
            instance = k * frames + (frames - t)  # backwards in time
            ds = make_dataset(
                pixels,
                BASE_POSITION + k * step,
                trigger=12.0 + 45.0 * t,
                instance=instance,
                row=row,
                col=col,
                **tags,
            )
            paths[k, t] = write(path, ds)
    return paths
