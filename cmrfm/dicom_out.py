"""DICOM out, for PACS: what `cmrfm predict` segmented and measured, as objects a hospital's
archive and viewers take in, written with highdicom.

* ``seg.dcm``: a DICOM Segmentation (binary, one segment per label class found) of the ED
  frame, every slice, each SEG frame referencing the source instance it was segmented on;
  ``seg_es.dcm``, the second instance of the same SEG series, does the ES frame of a cine. One
  SEG cannot hold two time points at one position (highdicom tells frames apart by position
  only: its issues 174 and 369), hence one instance per phase. A study with a series per slice
  gets its instances referenced series by series (highdicom matches frames within a series).
* ``sr.dcm``: a TID 1500 Measurement Report (Comprehensive 3D SR): LV EDV, ESV, SV, EF and
  mass, RV EDV, ESV, SV and EF, and for LGE models infarct and MVO volume and extent (% of the
  LV myocardium), as volumes.json has them; the source images and the SEG as its evidence.

Both belong to the patient and study of the source, so they carry its patient and study
references, unless ``deidentify`` (cmrfm.dicom_deidentify) strips them. What cannot be made
is named under volumes.json ``unavailable`` with the reason, and predict goes on: a reason
names attributes, never their values.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cmrfm import __version__
from cmrfm.dicom_codes import GROUPS, SEGMENTS, code, coding_schemes

SEG_FILE, SEG_ES_FILE, SR_FILE = "seg.dcm", "seg_es.dcm", "sr.dcm"
NEEDS_DICOM = "needs a DICOM input: a SEG and an SR reference the source images"
SEG_SERIES, SR_SERIES = 990, 991  # SeriesNumber of the outputs, after the scanner's series
# What the outputs reference in every source image; without one, nothing can point at it.
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Type 2 patient and study attributes highdicom copies from the source (as attributes, so an
# absent one would raise): an image may lack them, and then they are written empty.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
         "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")  # fmt: skip

# --- the entry point ---------------------------------------------------------------------------


def write_dicom_outputs(
    study: Any,
    label_map: np.ndarray,
    volumes: dict[str, Any],
    out: Path,
    num_classes: int,
    deidentify: bool = False,
) -> None:
    """Write seg.dcm (and seg_es.dcm) and sr.dcm for a DICOM study into ``out``.

    study: cmrfm.study.Study, its ``sources`` the frames [slice][frame] read; label_map
    (S, T, H, W) on the study's grid; volumes: what predict measured (frames, lv, rv, scar).
    Adds the names written to ``volumes["outputs"]`` and, for each file not written, the
    reason to ``volumes["unavailable"]``. Never raises for a study it cannot serve
    (CMRFM_DEBUG=1 lets an unexpected error through).
    """
    written = volumes.setdefault("outputs", [])
    unavailable = volumes.setdefault("unavailable", {})
    if study.kind != "dicom" or not study.sources:
        unavailable[SEG_FILE] = unavailable[SR_FILE] = NEEDS_DICOM
        return
    from data_shards.sources.dicom_frames import quiet_pydicom

    phases = _phases(volumes["phases"], label_map.shape[1])
    # pydicom's warnings and highdicom's log lines quote values (UIDs) from the headers
    with quiet_pydicom(), _quiet_highdicom():
        missing = missing_references(study.sources)
        if missing:
            unavailable[SEG_FILE] = unavailable[SR_FILE] = missing
            return
        segs, reason = _try(lambda: make_segs(study.sources, label_map, phases, num_classes))
        if reason:
            unavailable[SEG_FILE] = reason
        evidence = source_headers(study.sources, phases.values())
        report, why = _try(lambda: make_sr(volumes, evidence, segs or []))
        if why:
            unavailable[SR_FILE] = why
        objects = dict(zip([SEG_FILE, SEG_ES_FILE], segs or []))
        if report is not None:
            objects[SR_FILE] = report
        _, failed = _try(lambda: save(objects, out, deidentify))
        for name in objects:
            if failed:
                unavailable[name] = failed
            else:
                written.append(name)


def save(objects: dict[str, Any], out: Path, deidentify: bool) -> None:
    """Write each dataset as ``out/name``, de-identified first if asked (all with one UID map),
    all or none: a file whose sibling failed is removed."""
    if deidentify and objects:
        from cmrfm.dicom_deidentify import deidentify as strip

        strip(list(objects.values()))
    paths = []
    try:
        for name, dataset in objects.items():
            paths.append(out / name)
            dataset.save_as(paths[-1], enforce_file_format=True)
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        raise


@contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom's log, errors only, for the duration (its warnings may quote header values)."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _phases(chosen: dict[str, Any], n_frames: int) -> dict[str, int]:
    """The frames to segment, by name: ED and ES of a cine (ED alone if they coincide), the one
    frame of a single-frame study (LGE)."""
    if n_frames == 1:
        return {"single frame": 0}
    ed, es = int(chosen["ed"]), int(chosen["es"])
    return {"ED": ed} if es == ed else {"ED": ed, "ES": es}


def _try(build: Any) -> tuple[Any, str | None]:
    """build()'s result and no reason, or None and a reason naming the error's type only: its
    message may quote a header value (a UID, a name), and volumes.json carries no identifier."""
    try:
        return build(), None
    except Unavailable as err:
        return None, str(err)
    except Exception as err:  # highdicom and pydicom raise many types for headers they refuse
        if os.environ.get("CMRFM_DEBUG"):
            raise
        return None, (
            f"highdicom refused the source headers ({type(err).__name__}); "
            "set CMRFM_DEBUG=1 to see why"
        )


class Unavailable(ValueError):
    """An output this study cannot have; the message is the reason (no header values)."""


# --- the source references ---------------------------------------------------------------------


def missing_references(sources: Sequence[Sequence[Any]]) -> str | None:
    """Why the source frames cannot be referenced (an attribute absent, several studies), or
    None when they can."""
    datasets = _distinct(frame.ds for frames in sources for frame in frames)
    for keyword in REQUIRED:
        lacking = sum(not str(ds.get(keyword, "") or "").strip() for ds in datasets)
        if lacking:
            return (
                f"{lacking} of {len(datasets)} source images lack {keyword}: "
                "nothing could reference them"
            )
    if len({str(ds.StudyInstanceUID) for ds in datasets}) > 1:
        return "the source images belong to several studies (StudyInstanceUID differs)"
    if len({str(ds.SOPInstanceUID) for ds in datasets}) < len(datasets):
        return "two source images share one SOPInstanceUID: references would be ambiguous"
    return None


def source_headers(sources: Sequence[Sequence[Any]], frames: Any) -> list[Any]:
    """The distinct source datasets of ``frames`` (every slice), as header-only copies."""
    return [_header(ds) for ds in _distinct(s[t].ds for t in frames for s in sources)]


def _distinct(datasets: Any) -> list[Any]:
    """Datasets in order, each once (the frames of a multi-frame file share one)."""
    seen: dict[int, Any] = {}
    for ds in datasets:
        seen.setdefault(id(ds), ds)
    return list(seen.values())


def _header(ds: Any) -> Any:
    """A copy of ``ds`` without pixel data, and with the Type 2 patient and study attributes
    the image lacks, or holds as a date or time no calendar has (Sunnybrook's birth date
    00000000, study date 20120000), present and empty (the source's dataset stays as read)."""
    from pydicom.dataset import Dataset

    header = Dataset()
    for element in ds:
        if element.tag.group != 0x7FE0:
            header.add(element)
    header.file_meta = getattr(ds, "file_meta", Dataset())
    for keyword in TYPE2:
        if keyword not in header or not _valid_time(header[keyword]):
            setattr(header, keyword, "")
    return header


def _valid_time(element: Any) -> bool:
    """Whether a DA, TM or DT element is empty or parses (highdicom parses them); others: True."""
    from pydicom import valuerep

    kind = {"DA": valuerep.DA, "TM": valuerep.TM, "DT": valuerep.DT}.get(element.VR)
    if kind is None or not element.value:
        return True
    try:
        kind(str(element.value))
    except ValueError:
        return False
    return True


# --- the segmentation --------------------------------------------------------------------------


def make_segs(
    sources: Sequence[Sequence[Any]],
    label_map: np.ndarray,
    phases: dict[str, int],
    num_classes: int,
) -> list[Any]:
    """One hd.seg.Segmentation per phase ({"ED": t, ...}) of label_map (S, T, H, W), in one series,
    with a segment per class of the model found in any of those frames."""
    import highdicom as hd

    _check_frame_of_reference(sources, phases.values())
    frames = list(phases.values())
    classes = [
        c for c in range(1, num_classes) if c in SEGMENTS and (label_map[:, frames] == c).any()
    ]
    if not classes:
        raise Unavailable("no structure segmented at ED or ES: a SEG needs one segment at least")
    series = hd.UID()
    return [
        make_seg(sources, label_map[:, t], t, classes, series, i, f"{phase} (frame {t})")
        for i, (phase, t) in enumerate(phases.items(), start=1)
    ]


def _check_frame_of_reference(sources: Sequence[Sequence[Any]], frames: Any) -> None:
    """A SEG of MR images is placed in their frame of reference: every source image of a
    frame needs one, and the same one."""
    for t in frames:
        uids = [str(s[t].ds.get("FrameOfReferenceUID", "") or "").strip() for s in sources]
        if not all(uids):
            raise Unavailable(
                f"{sum(not u for u in uids)} source images lack FrameOfReferenceUID: a SEG of "
                "MR images is placed in their frame of reference"
            )
        if len(set(uids)) > 1:
            raise Unavailable(
                f"the slices of frame {t} have {len(set(uids))} different FrameOfReferenceUIDs "
                "(an anonymiser's doing?): a SEG needs the one frame of reference they share"
            )


def make_seg(
    sources: Sequence[Sequence[Any]],
    masks: np.ndarray,
    t: int,
    classes: Sequence[int],
    series: str,
    number: int,
    phase: str,
) -> Any:
    """A binary hd.seg.Segmentation of masks (S, H, W) (label values) on the frames ``t`` of
    every slice, placed at their ImagePositionPatient; segment i + 1 is label classes[i].
    SEG frame k references slice k's source instance (and frame, if multi-frame) when the
    slices are one series or one file; with a series per slice highdicom matches no frame
    (it matches within one series) and the SEG references the instances series by series."""
    import highdicom as hd

    planes = [frames[t] for frames in sources]
    _check_multiframe(sources, planes)
    main, further = _split_by_series(planes)
    positions = [
        hd.PlanePositionSequence(
            hd.CoordinateSystemNames.PATIENT, image_position=p.get("ImagePositionPatient")
        )
        for p in planes
    ]
    stacked = np.stack([masks == c for c in classes], axis=-1).astype(np.uint8)  # (S, H, W, n)
    return hd.seg.Segmentation(
        source_images=[_header(ds) for ds in main],
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(i, c) for i, c in enumerate(classes, start=1)],
        series_instance_uid=series,
        series_number=SEG_SERIES,
        sop_instance_uid=hd.UID(),
        instance_number=number,
        manufacturer="cmrfm",
        manufacturer_model_name="cmrfm predict",
        software_versions=__version__,
        device_serial_number="0",
        plane_positions=positions,
        further_source_images=[_header(ds) for ds in further] or None,
        content_label="CMRFM_SEG",
        content_description=f"cmrfm predict: {phase}",
        series_description="cmrfm segmentation",
        coding_schemes=coding_schemes(SEGMENTS[c][2] for c in classes),
    )


def _split_by_series(planes: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The planes' datasets as highdicom's source images (the first plane's multi-frame file,
    or the single-frame images of its series) and further source images (the rest: other
    series, as when each slice is a series of its own)."""
    first = planes[0]
    if first.index is not None:
        main = [first.ds]
    else:
        series = first.ds.get("SeriesInstanceUID")
        main = _distinct(
            p.ds for p in planes if p.index is None and p.ds.get("SeriesInstanceUID") == series
        )
    return main, [ds for ds in _distinct(p.ds for p in planes) if all(ds is not m for m in main)]


def _check_multiframe(sources: Sequence[Sequence[Any]], planes: Sequence[Any]) -> None:
    """Refuse what highdicom cannot reference in a multi-frame source file: other time points
    of a slice in it (it matches frames by position only, so it would reference them all), or
    an orientation kept per frame (it reads the shared one)."""
    chosen = {id(p) for p in planes}
    files = {id(p.ds): p.ds for p in planes if p.index is not None}
    others = (f for frames in sources for f in frames if id(f) not in chosen)
    if any(id(f.ds) in files for f in others):
        raise Unavailable(
            "a multi-frame source file holds several time points of a slice: a SEG frame "
            "cannot reference one of them (highdicom matches frames by position); export "
            "the cine as single-frame images"
        )
    for ds in files.values():
        shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
        if shared is None or "PlaneOrientationSequence" not in shared:
            raise Unavailable(
                "the multi-frame source file keeps ImageOrientationPatient per frame, not in "
                "its shared functional groups, where highdicom reads it for a SEG"
            )


def _segment(number: int, label: int) -> Any:
    """hd.seg.SegmentDescription of label class ``label`` as segment ``number``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    name, category, kind = SEGMENTS[label]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="cmrfm", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=code(category),
        segmented_property_type=code(kind),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


# --- the measurement report --------------------------------------------------------------------


def make_sr(volumes: dict[str, Any], evidence: Sequence[Any], segs: Sequence[Any]) -> Any:
    """hd.sr.Comprehensive3DSR holding a TID 1500 Measurement Report of ``volumes``: one TID
    1501 group per structure (LV, RV, infarct, MVO) with its finite values; evidence: the
    source headers measured on and the SEG instances."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    groups = [_group(spec, volumes) for spec in GROUPS]  # None for a group without values
    if not any(groups):
        raise Unavailable("no finite measurement to report")
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(), name="cmrfm", manufacturer_name="cmrfm", model_name="cmrfm predict"
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.CardiacMRI,
        imaging_measurements=[g for g in groups if g],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*evidence, *segs],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="cmrfm",
        series_description="cmrfm measurements",
        coding_schemes=coding_schemes(spec[1] for spec, group in zip(GROUPS, groups) if group),
    )


def _group(spec: tuple, volumes: dict[str, Any]) -> Any:
    """One TID 1501 group from GROUPS' ``spec``, or None when it has no finite value."""
    import highdicom as hd

    name, finding, site, section, measures = spec
    values = volumes.get(section) or {}
    measurements = [
        hd.sr.Measurement(name=code(concept), value=float(values[key]), unit=code(unit))
        for key, concept, unit in measures
        if _is_finite(values.get(key))
    ]
    if not measurements:
        return None
    sites = [hd.sr.FindingSite(anatomic_location=code(site))] if site else None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name),
        finding_type=code(finding),
        finding_sites=sites,
        measurements=measurements,
    )


def _is_finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
