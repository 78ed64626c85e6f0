"""DICOM files -> 2D frames, each with its own plane, pixel spacing, timing and rescale.

A classic MR image file holds one frame and keeps all of that at the top level. An enhanced
(multi-frame) MR file holds many frames and keeps it in functional groups: per frame
(PerFrameFunctionalGroupsSequence) or shared by all (SharedFunctionalGroupsSequence). Either
way every frame comes out as a :class:`Frame`, so stacking and ordering need not care which.

Pixels are decoded by pydicom: native, deflated, big endian and RLE itself, compressed syntaxes
through its decoder plugins (see :data:`DECODER_PACKAGES`; all permissively licensed, all in
cmrfm's dependencies). A file whose transfer syntax no installed plugin decodes is a SourceError
naming the syntax and the package to install.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from data_shards.sources.registry import SourceError

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory: an index, not an image
# Keys that can put the frames of one slice in time order, in order of preference. Trigger
# delays count from the R wave; clock times are times of day (never written out as such);
# the last three are ordinals. FrameNumber is a frame's place in its multi-frame file.
TRIGGER_KEYS = ("TriggerTime", "NominalCardiacTriggerDelayTime")
CLOCK_KEYS = (
    "AcquisitionTime",
    "FrameAcquisitionDateTime",
    "ContentTime",
    "FrameReferenceDateTime",
)
ORDER_KEYS = (*TRIGGER_KEYS, *CLOCK_KEYS, "TemporalPositionIndex", "InstanceNumber", "FrameNumber")
# What to install for each compressed transfer syntax pydicom has decoder plugins for (RLE needs
# nothing: pydicom decodes it itself). All are in cmrfm's dependencies; named when a file's syntax
# has no plugin installed. pylibjpeg-libjpeg (GPLv3) decodes some of these too: not a dependency.
_J2K = "pylibjpeg pylibjpeg-openjpeg"
DECODER_PACKAGES = {
    uids.JPEGBaseline8Bit: "python-gdcm",  # or pillow
    uids.JPEGExtended12Bit: "python-gdcm",  # or pillow, 8-bit only
    uids.JPEGLossless: "python-gdcm",
    uids.JPEGLosslessSV1: "python-gdcm",
    uids.JPEGLSLossless: "pyjpegls",  # or python-gdcm
    uids.JPEGLSNearLossless: "pyjpegls",
    uids.JPEG2000Lossless: _J2K,  # or python-gdcm, or pillow
    uids.JPEG2000: _J2K,
    uids.HTJ2KLossless: _J2K,
    uids.HTJ2KLosslessRPCL: _J2K,
    uids.HTJ2K: _J2K,
}
# Numeric attributes a frame takes from the top level (a multi-frame file: where no functional
# group holds them).
HEADER_KEYS = (
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "SliceThickness",
    "SpacingBetweenSlices",
    "RescaleSlope",
    "RescaleIntercept",
    "InstanceNumber",
)
# Where an enhanced file keeps each frame attribute: (functional group, keyword).
FUNCTIONAL = {
    "ImagePositionPatient": ("PlanePositionSequence", "ImagePositionPatient"),
    "ImageOrientationPatient": ("PlaneOrientationSequence", "ImageOrientationPatient"),
    "PixelSpacing": ("PixelMeasuresSequence", "PixelSpacing"),
    "SpacingBetweenSlices": ("PixelMeasuresSequence", "SpacingBetweenSlices"),
    "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
    "RescaleSlope": ("PixelValueTransformationSequence", "RescaleSlope"),
    "RescaleIntercept": ("PixelValueTransformationSequence", "RescaleIntercept"),
    "NominalCardiacTriggerDelayTime": (
        "CardiacSynchronizationSequence",
        "NominalCardiacTriggerDelayTime",
    ),
    "FrameAcquisitionDateTime": ("FrameContentSequence", "FrameAcquisitionDateTime"),
    "FrameReferenceDateTime": ("FrameContentSequence", "FrameReferenceDateTime"),
    "TemporalPositionIndex": ("FrameContentSequence", "TemporalPositionIndex"),
}


@dataclass
class Frame:
    """One 2D image: a classic file, or frame ``index`` (0-based) of a multi-frame file.

    ``values`` holds the frame's geometry (ImagePositionPatient (3,), ImageOrientationPatient
    (6,), PixelSpacing (dy, dx), Rows, Columns, SliceThickness, SpacingBetweenSlices), rescale
    and ordering keys (ORDER_KEYS, times in ms), each a tuple of floats, absent when unknown.
    """

    path: Path
    ds: Dataset
    index: int | None
    values: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The file's name, and for a multi-frame file the frame's number (from 1)."""
        return self.path.name if self.index is None else f"{self.path.name} frame {self.index + 1}"

    @property
    def series(self) -> str:
        return text(self.ds, "SeriesInstanceUID")

    def get(self, keyword: str) -> tuple[float, ...] | None:
        return self.values.get(keyword)

    def first(self, keyword: str) -> float | None:
        value = self.values.get(keyword)
        return value[0] if value else None


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and logs quote the offending value (a UID, a date): keep them out."""
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        yield


def read_frames(files: Sequence[Path]) -> list[Frame]:
    """Every frame of the image files among ``files``, in file order then frame order."""
    return [frame for path, ds in read_headers(files) for frame in frames_of(path, ds)]


def read_headers(files: Sequence[Path]) -> list[tuple[Path, Dataset]]:
    """Headers of the image files (pixel data deferred); SourceError for a broken file."""
    headers = []
    for path in files:
        if not has_marker(path):
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
        if DICOMDIR_CLASS in (text(ds, "SOPClassUID"), text(file_meta, "MediaStorageSOPClassUID")):
            continue
        if "PixelData" not in ds:
            raise SourceError(
                path,
                "DICOM without pixel data (7FE0,0010): truncated, or not an image; "
                "remove it from the study folder",
            )
        headers.append((path, ds))
    return headers


def frames_of(path: Path, ds: Dataset) -> list[Frame]:
    """The file's frames: one for a classic image, NumberOfFrames for a multi-frame one."""
    n = floats(ds, "NumberOfFrames")
    # Classic: no frame count, or one frame placed at the top level (some exporters leave an
    # empty per-frame sequence or NumberOfFrames 1 in a classic file).
    if n is None or (n[0] <= 1 and "ImagePositionPatient" in ds):
        keys = {**{k: floats(ds, k) for k in HEADER_KEYS}, **_classic_times(ds)}
        return [Frame(path, ds, None, {k: v for k, v in keys.items() if v is not None})]
    count = int(n[0])
    per_frame = _items(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) != count:
        raise SourceError(
            path,
            f"multi-frame DICOM with {count} frames but {len(per_frame)} per-frame functional "
            "groups: the file is damaged; export it again",
        )
    shared = _items(ds, "SharedFunctionalGroupsSequence")[:1]
    frames = []
    for i in range(count):
        groups = [per_frame[i]] if per_frame else []
        frames.append(Frame(path, ds, i, _frame_values(ds, groups + shared, i)))
    return frames


def _frame_values(ds: Dataset, groups: list[Dataset], index: int) -> dict:
    """A multi-frame file's frame ``index``: functional groups first (per-frame before shared),
    then the top level (older multi-frame files keep one geometry there for every frame)."""
    values: dict[str, tuple[float, ...] | None] = {}
    for keyword in (*HEADER_KEYS, *FUNCTIONAL):
        found = None
        if keyword in FUNCTIONAL:
            sequence, inner = FUNCTIONAL[keyword]
            for group in groups:
                items = _items(group, sequence)
                found = _value(items[0], inner) if items else None
                if found is not None:
                    break
        values[keyword] = found if found is not None else _value(ds, keyword)
    values["FrameNumber"] = (float(index + 1),)
    return {k: v for k, v in values.items() if v is not None}


def _value(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
    """A numeric value, or a DA/TM/DT time converted to ms."""
    if keyword.endswith("DateTime"):
        ms = datetime_ms(text(ds, keyword))
        return None if ms is None else (ms,)
    return floats(ds, keyword)


def _classic_times(ds: Dataset) -> dict[str, tuple[float, ...] | None]:
    """TriggerTime (ms from the R wave) and the clock times in ms (with their date, if any)."""
    times: dict[str, tuple[float, ...] | None] = {"TriggerTime": floats(ds, "TriggerTime")}
    for keyword in ("AcquisitionTime", "ContentTime"):
        ms = time_ms(text(ds, keyword))
        day = date_ms(text(ds, keyword.replace("Time", "Date")))
        times[keyword] = None if ms is None else (ms + (day or 0.0),)
    return times


def time_ms(value: str) -> float | None:
    """TM ``hhmmss.ffffff`` (or the old ``hh:mm:ss``) -> ms since midnight; None if invalid."""
    value = value.replace(":", "").strip()
    try:
        hours = int(value[0:2])
        minutes = int(value[2:4]) if len(value) >= 4 else 0
        seconds = float(value[4:]) if len(value) > 4 else 0.0
    except ValueError:
        return None
    if not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 61):
        return None
    return ((hours * 60 + minutes) * 60 + seconds) * 1000.0


def date_ms(value: str) -> float | None:
    """DA ``YYYYMMDD`` -> ms since 1970-01-01 (so clock times may cross midnight); None if not."""
    try:
        day = datetime.date(int(value[0:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None
    return float((day - datetime.date(1970, 1, 1)).days) * 86_400_000.0


def datetime_ms(value: str) -> float | None:
    """DT ``YYYYMMDDhhmmss.ffffff[&zzzz]`` -> ms (date and time; the UTC offset is dropped)."""
    value = value.strip().split("+")[0].split("-")[0]
    if len(value) < 10:
        return None
    day, clock = date_ms(value[:8]), time_ms(value[8:])
    return None if day is None or clock is None else day + clock


def decode(frames: Sequence[Frame]) -> list[np.ndarray]:
    """(H, W) float32 of each frame after its RescaleSlope/Intercept; each file decoded once."""
    decoded: dict[Path, np.ndarray] = {}
    images = []
    for frame in frames:
        if frame.index is None:
            pixels = _file_pixels(frame)
        else:  # a multi-frame file: decode it once, for all of its frames
            if frame.path not in decoded:
                decoded[frame.path] = _file_pixels(frame)
            pixels = _nth(frame, decoded[frame.path])
        slope = frame.first("RescaleSlope") or 1.0
        intercept = frame.first("RescaleIntercept") or 0.0
        image = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
        if text(frame.ds, "PhotometricInterpretation") == "MONOCHROME1":  # bright = low signal
            image = -image
        images.append(image)
    return images


def _file_pixels(frame: Frame) -> np.ndarray:
    """The file's pixel array: (H, W) for one frame, (N, H, W) for several."""
    if floats(frame.ds, "SamplesPerPixel") not in (None, (1.0,)):
        raise SourceError(frame.path, "colour image: this source reads greyscale MR images")
    syntax = transfer_syntax(frame.ds)
    if syntax is not None and (missing := missing_decoder(syntax)):
        raise SourceError(frame.path, missing)
    try:
        return frame.ds.pixel_array
    except Exception as err:  # pydicom and its decoders raise many types
        reason = f"unreadable pixel data ({type(err).__name__}: {err})"
        if syntax is not None:
            reason += f"; transfer syntax {syntax.name}"
        raise SourceError(frame.path, reason) from None


def transfer_syntax(ds: Dataset) -> uids.UID | None:
    """The file's TransferSyntaxUID (file meta), or None when it has none."""
    value = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return None if not value else uids.UID(str(value))


def missing_decoder(syntax: uids.UID) -> str | None:
    """Why pixels in ``syntax`` cannot be decoded here (what to install), or None if they can."""
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:  # no plugin of pydicom's decodes it (e.g. MPEG, JPEG XL)
        return (
            f"transfer syntax {syntax.name}: pydicom has no decoder for it; "
            "export the study in an uncompressed transfer syntax"
        )
    if decoder.is_available:
        return None
    package = DECODER_PACKAGES.get(syntax, "pylibjpeg pylibjpeg-openjpeg python-gdcm pyjpegls")
    return f"no decoder installed for transfer syntax {syntax.name}: pip install {package}"


def _nth(frame: Frame, pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2 and frame.index == 0:
        return pixels
    if pixels.ndim != 3 or frame.index >= len(pixels):
        raise SourceError(frame.path, f"{frame.name}: pixel data holds fewer frames")
    return pixels[frame.index]


def has_marker(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value: treat as absent
        return ""
    return "" if value is None else str(value).strip()


def floats(ds: Dataset, keyword: str) -> tuple[float, ...] | None:
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


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    try:
        return list(ds.get(keyword) or [])
    except Exception:  # a malformed sequence: treat as absent
        return []
