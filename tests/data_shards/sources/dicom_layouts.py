"""A real single-frame cine study, rewritten into the layouts hospitals export (test fixtures).

Each layout holds the very images of the study (every transfer syntax here is lossless), with
the study's geometry, in files named as PACS exports name them (so file order tells nothing):

* transfer syntaxes: implicit VR little endian, explicit VR big endian (retired, still in old
  archives), deflated, RLE, JPEG lossless (process 14, SV1), JPEG-LS and JPEG 2000 lossless;
* timing: no TriggerTime (frames by InstanceNumber); InstanceNumber against time;
* series: one per slice with a fixed TriggerTime and frames told apart by AcquisitionTime
  (real-time cine), one per cardiac phase;
* enhanced multi-frame MR: one file for the study, frames stored phase by phase, geometry and
  timing in functional groups; one file per slice of real-time cine (as newer scanners export).

Used by tests/data_shards/sources/test_source_dicom_layouts.py and benchmarks/dicom_layouts.py.
"""

from __future__ import annotations

import copy
import datetime
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

Study = list[list[Dataset]]  # [slice][frame], pixel data loaded
REALTIME_TRIGGER_MS = 5.0  # real-time cine: one trigger delay for every frame
REALTIME_FRAME_MS = 48.5  # and frames this far apart in AcquisitionTime
REALTIME_START = datetime.datetime(2024, 1, 5, 10, 15, 30)  # a fixed, made-up time of day
PER_FRAME_TAGS = (  # top-level attributes an enhanced file keeps per frame instead
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "TriggerTime", "SliceLocation", "PerFrameFunctionalGroupsSequence",
    "AcquisitionTime", "ContentTime", "RescaleSlope", "RescaleIntercept",
)  # fmt: skip


def load_study(folder: Path) -> Study:
    """The study's datasets on a [slice][frame] grid: slices by position along the normal,
    frames by TriggerTime (the layouts only need a consistent grid, not base-to-apex)."""
    datasets = [pydicom.dcmread(p) for p in sorted(folder.rglob("*.dcm"))]
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    slices: dict[float, list[Dataset]] = {}
    for ds in datasets:
        depth = round(float(normal @ np.array(ds.ImagePositionPatient, dtype=float)), 2)
        slices.setdefault(depth, []).append(ds)
    return [sorted(slices[d], key=lambda ds: float(ds.TriggerTime)) for d in sorted(slices)]


def _copy(ds: Dataset) -> Dataset:
    """A copy with a new SOPInstanceUID (in file meta too), as every export mints."""
    out = copy.deepcopy(ds)
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return out


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)  # save_as refuses big endian


def _names(n: int, seed: int) -> list[str]:
    """PACS-style file names (hex, no suffix) in no order related to the images."""
    rng = np.random.default_rng(seed)
    return [f"{v:012X}" for v in rng.choice(1 << 40, size=n, replace=False)]


def _each(study: Study, folder: Path, change: Callable[[Dataset], None], seed: int = 0) -> None:
    """Every image, copied, changed in place by ``change`` and saved under a PACS-style name."""
    images = [ds for frames in study for ds in frames]
    for ds, name in zip(images, _names(len(images), seed)):
        out = _copy(ds)
        change(out)
        _save(out, folder / name)


def original(study: Study, folder: Path) -> None:
    """As released: explicit VR little endian, one series, named by instance number."""
    for ds in (ds for frames in study for ds in frames):
        _save(copy.deepcopy(ds), folder / f"{int(ds.InstanceNumber)}.dcm")


def _syntax(uid: UID) -> Callable[[Study, Path], None]:
    def build(study: Study, folder: Path) -> None:
        def change(ds: Dataset) -> None:
            if uid == ExplicitVRBigEndian:  # pydicom writes the header big endian, not pixels
                pixels = ds.pixel_array
                ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
            ds.file_meta.TransferSyntaxUID = uid

        _each(study, folder, change)

    build.__doc__ = f"Transfer syntax {uid.name}."
    return build


def _compressed(uid: UID) -> Callable[[Study, Path], None]:
    def build(study: Study, folder: Path) -> None:
        _each(study, folder, lambda ds: ds.compress(uid))

    build.__doc__ = f"Pixels compressed by pydicom's encoder: {uid.name}."
    return build


def jpeg_lossless(study: Study, folder: Path) -> None:
    """JPEG lossless, process 14, first-order prediction (SV1), as libjpeg-turbo encodes it."""
    import imagecodecs  # pydicom cannot encode process 14

    def change(ds: Dataset) -> None:
        pixels = ds.pixel_array
        if pixels.min() < 0:
            raise ValueError("JPEG lossless layout: the study has negative pixel values")
        frame = imagecodecs.jpeg8_encode(pixels.astype(np.uint16), lossless=True, predictor=1)
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1

    _each(study, folder, change)


def no_trigger_time(study: Study, folder: Path) -> None:
    """TriggerTime removed from every image: only InstanceNumber orders the frames."""
    _each(study, folder, lambda ds: delattr(ds, "TriggerTime"))


def instances_reversed(study: Study, folder: Path) -> None:
    """InstanceNumber running against time in each slice (renumbered by a PACS or an
    anonymiser); TriggerTime still right."""
    t_count = len(study[0])
    names = iter(_names(len(study) * t_count, 5))
    for k, frames in enumerate(study):
        for t, ds in enumerate(frames):
            out = _copy(ds)
            out.InstanceNumber = k * t_count + (t_count - t)
            _save(out, folder / next(names))


def _clock(ms: float) -> str:
    """A made-up time of day ``ms`` after REALTIME_START, as TM."""
    return (REALTIME_START + datetime.timedelta(milliseconds=ms)).strftime("%H%M%S.%f")


def realtime_per_slice(study: Study, folder: Path) -> None:
    """Real-time cine: each slice its own series (own sub-folder), every frame TriggerTime 5 ms,
    frames numbered from 1 in each series and timed by AcquisitionTime/ContentTime."""
    t_count = len(study[0])
    names = iter(_names(len(study) * t_count, 1))
    for k, frames in enumerate(study):
        series, number = generate_uid(), 20 + k
        for t, ds in enumerate(frames):
            out = _copy(ds)
            out.SeriesInstanceUID, out.SeriesNumber = series, number
            out.SeriesDescription = "SAX real-time"
            out.TriggerTime, out.InstanceNumber = REALTIME_TRIGGER_MS, t + 1
            out.AcquisitionTime = out.ContentTime = _clock((k * t_count + t) * REALTIME_FRAME_MS)
            _save(out, folder / f"S{number:04d}" / next(names))


def series_per_phase(study: Study, folder: Path) -> None:
    """Each cardiac phase its own series holding every slice (numbered from 1 per series)."""
    names = iter(_names(sum(map(len, study)), 2))
    for t in range(len(study[0])):
        series, number = generate_uid(), 100 + t
        for k, frames in enumerate(study):
            out = _copy(frames[t])
            out.SeriesInstanceUID, out.SeriesNumber, out.InstanceNumber = series, number, k + 1
            _save(out, folder / next(names))


def _frame_groups(ds: Dataset, k: int, t: int, trigger: float, acquired: str) -> Dataset:
    """One item of PerFrameFunctionalGroupsSequence: the frame's plane, timing and place
    (orientation per frame, as some scanners write it: each image's cosines are rounded a
    little differently)."""
    position = Dataset()
    position.ImagePositionPatient = ds.ImagePositionPatient
    orientation = Dataset()
    orientation.ImageOrientationPatient = ds.ImageOrientationPatient
    content = Dataset()
    content.StackID = "1"
    content.InStackPositionNumber = k + 1
    content.TemporalPositionIndex = t + 1
    content.FrameAcquisitionDateTime = acquired
    content.DimensionIndexValues = [k + 1, t + 1]
    cardiac = Dataset()
    cardiac.NominalCardiacTriggerDelayTime = trigger
    item = Dataset()
    item.PlanePositionSequence = Sequence([position])
    item.PlaneOrientationSequence = Sequence([orientation])
    item.FrameContentSequence = Sequence([content])
    item.CardiacSynchronizationSequence = Sequence([cardiac])
    return item


def _shared_groups(ds: Dataset) -> Dataset:
    """SharedFunctionalGroupsSequence item: frame type, echo, pixel measures, rescale."""
    frame_type = Dataset()
    frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    frame_type.PixelPresentation, frame_type.VolumetricProperties = "MONOCHROME", "VOLUME"
    frame_type.VolumeBasedCalculationTechnique, frame_type.ComplexImageComponent = (
        "NONE",
        "MAGNITUDE",
    )
    frame_type.AcquisitionContrast = "UNKNOWN"
    echo = Dataset()
    echo.EffectiveEchoTime = ds.get("EchoTime", 1.0)
    measures = Dataset()
    measures.PixelSpacing = ds.PixelSpacing
    measures.SliceThickness = ds.SliceThickness
    measures.SpacingBetweenSlices = ds.get("SpacingBetweenSlices", ds.SliceThickness)
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 1, 0, "US"
    item = Dataset()
    item.MRImageFrameTypeSequence = Sequence([frame_type])
    item.MREchoSequence = Sequence([echo])
    item.PixelMeasuresSequence = Sequence([measures])
    item.PixelValueTransformationSequence = Sequence([transform])
    return item


def _enhanced(images: list[tuple[int, int, Dataset, float, str]], number: int) -> Dataset:
    """One enhanced MR file, a series of its own (SeriesNumber ``number``), of ``images``
    ((slice, phase, dataset, trigger ms, DT acquired)) stored in the order given."""
    first = images[0][2]
    out = _copy(first)
    for keyword in PER_FRAME_TAGS:
        if keyword in out:
            delattr(out, keyword)
    out.SOPClassUID = out.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    out.SeriesInstanceUID, out.SeriesNumber, out.InstanceNumber = generate_uid(), number, 1
    out.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    out.NumberOfFrames = len(images)
    index = Dataset()  # frames are indexed by (place in stack, temporal position)
    index.DimensionIndexPointer, index.FunctionalGroupPointer = 0x00209057, 0x00209111
    time_index = Dataset()
    time_index.DimensionIndexPointer, time_index.FunctionalGroupPointer = 0x00209128, 0x00209111
    organisation = Dataset()
    organisation.DimensionOrganizationUID = generate_uid()
    for item in (index, time_index):
        item.DimensionOrganizationUID = organisation.DimensionOrganizationUID
    out.DimensionOrganizationSequence = Sequence([organisation])
    out.DimensionIndexSequence = Sequence([index, time_index])
    out.SharedFunctionalGroupsSequence = Sequence([_shared_groups(first)])
    out.PerFrameFunctionalGroupsSequence = Sequence(
        [_frame_groups(ds, k, t, trigger, acquired) for k, t, ds, trigger, acquired in images]
    )
    out.PixelData = b"".join(_little_endian(ds) for _, _, ds, _, _ in images)
    return out


def _little_endian(ds: Dataset) -> bytes:
    pixels = ds.pixel_array
    return pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def enhanced(study: Study, folder: Path) -> None:
    """One enhanced multi-frame file for the whole study, frames stored phase by phase."""
    date = REALTIME_START.strftime("%Y%m%d")
    images = [
        (k, t, study[k][t], float(study[k][t].TriggerTime),
         f"{date}{_clock(k * 1000.0)}")  # one acquisition (breath-hold) per slice: same per slice
        for t in range(len(study[0]))
        for k in range(len(study))
    ]  # fmt: skip
    _save(_enhanced(images, 301), folder / _names(1, 3)[0])


def enhanced_realtime_per_slice(study: Study, folder: Path) -> None:
    """Real-time cine as enhanced files: one file and series per slice, every frame's trigger
    delay 5 ms, frames timed by FrameAcquisitionDateTime."""
    t_count = len(study[0])
    names = iter(_names(len(study), 4))
    date = REALTIME_START.strftime("%Y%m%d")
    for k, frames in enumerate(study):
        images = [
            (k, t, ds, REALTIME_TRIGGER_MS, date + _clock((k * t_count + t) * REALTIME_FRAME_MS))
            for t, ds in enumerate(frames)
        ]
        _save(_enhanced(images, 40 + k), folder / next(names))


LAYOUTS: dict[str, Callable[[Study, Path], None]] = {
    "implicit_vr_little_endian": _syntax(ImplicitVRLittleEndian),
    "explicit_vr_big_endian": _syntax(ExplicitVRBigEndian),
    "deflated_explicit_vr": _syntax(DeflatedExplicitVRLittleEndian),
    "rle_lossless": _compressed(RLELossless),
    "jpeg_lossless_sv1": jpeg_lossless,
    "jpeg_ls_lossless": _compressed(JPEGLSLossless),
    "jpeg2000_lossless": _compressed(JPEG2000Lossless),
    "no_trigger_time": no_trigger_time,
    "instances_reversed": instances_reversed,
    "realtime_series_per_slice": realtime_per_slice,
    "series_per_phase": series_per_phase,
    "enhanced_multiframe": enhanced,
    "enhanced_realtime_per_slice": enhanced_realtime_per_slice,
}


# --- dcm2niix, as a reference ----------------------------------------------------------------


def dcm2niix_path() -> str | None:
    """The dcm2niix executable (the PyPI wheel puts it beside the interpreter), or None."""
    return shutil.which("dcm2niix", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))  # fmt: skip


def run_dcm2niix(study: Path, out: Path) -> list[Path]:
    """dcm2niix with strict options: NIfTI only (no JSON sidecar, which holds header values),
    files named by series number only (by default names hold the patient's folder and protocol),
    its defaults file ignored. ``out`` must be a temporary folder: the NIfTI description still
    holds the acquisition time. Returns the files written, sorted."""
    executable = dcm2niix_path()
    if executable is None:
        raise FileNotFoundError("dcm2niix not found: pip install dcm2niix")
    out.mkdir(parents=True, exist_ok=True)
    command = [executable, "-g", "i", "-b", "n", "-f", "s%s", "-z", "n", "-o", str(out), str(study)]  # fmt: skip
    subprocess.run(command, capture_output=True, check=False, timeout=300)
    return sorted(out.glob("*.nii"))


def locate_frames(volumes: list[np.ndarray], reference: np.ndarray) -> list[np.ndarray | None]:
    """Where each frame of each dcm2niix volume (X, Y, Z[, T]) sits in ``reference`` (S, T, H, W):
    an (Z, T, 2) array of (slice, frame) per volume, or None when a frame is not found there.

    dcm2niix may transpose and flip the plane (and store slices either way): the in-plane
    variant is the one under which the volume's first frame is found in the reference.
    """
    index = {frame.astype(np.int32).tobytes(): (s, t) for (s, t), frame in _frames(reference)}
    found: list[np.ndarray | None] = []
    for volume in volumes:
        data = np.asarray(volume)
        data = data.reshape(*data.shape[:3], -1).transpose(2, 3, 1, 0)  # (Z, T, Y, X)
        place = None
        for variant in _plane_variants(data):
            where = [index.get(f.astype(np.int32).tobytes()) for _, f in _frames(variant)]
            if where[0] is not None:
                place = None if None in where else np.array(where).reshape(*variant.shape[:2], 2)
                break
        found.append(place)
    return found


def _frames(image: np.ndarray) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    for s in range(image.shape[0]):
        for t in range(image.shape[1]):
            yield (s, t), image[s, t]


def _plane_variants(data: np.ndarray) -> Iterator[np.ndarray]:
    for transposed in (False, True):
        plane = data.swapaxes(2, 3) if transposed else data
        for flips in ((), (2,), (3,), (2, 3)):
            yield np.flip(plane, flips) if flips else plane
