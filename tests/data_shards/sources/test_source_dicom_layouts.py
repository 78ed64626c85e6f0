"""Every DICOM cine layout hospitals export reads to the same (S, T, H, W) study.

Each layout of tests/data_shards/sources/dicom_layouts.py (transfer syntaxes, enhanced multi-frame, one series per
slice or per phase, real-time timing, no trigger times) is built from a synthetic stack, and
from a real Sunnybrook study (four of its slices, all 20 frames) when ../shared/data is
present, and must read pixel for pixel, with the same geometry and frame order, as the study
as written. Then the rules the layouts rely on: frames ordered by the time tag that varies,
series assembled into one stack, studies that are not one stack refused, no time of day
written; and dcm2niix as a reference.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from datetime import timedelta
from io import StringIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_layouts import (
    LAYOUTS,
    REALTIME_FRAME_MS,
    REALTIME_START,
    Study,
    dcm2niix_path,
    jpeg_lossless,
    load_study,
    locate_frames,
    original,
    realtime_per_slice,
    run_dcm2niix,
)
from helpers import DATA
from helpers.dicom import make_dataset, pixel_value, write, write_stack
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from rich.console import Console

from cmrfm.study import lps_to_nifti_affine
from cmrfm.study import read_study as predict_read_study
from data_shards.convert import QUARANTINE, convert
from data_shards.preprocess import PreprocessConfig
from data_shards.record import Subject
from data_shards.sources import SourceError
from data_shards.sources.dicom import dicom
from data_shards.sources.dicom_frames import missing_decoder

SUNNYBROOK_STUDY = DATA / "sunnybrook" / "dicoms" / "SCD0000301"
REAL = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SUNNYBROOK_STUDY.exists(), reason="needs ../shared/data/sunnybrook"),
]
# Enough slices to test their order, few enough to keep this file fast on 2 cores;
# benchmarks/dicom_layouts.py reads both full studies in every layout.
SUNNYBROOK_SLICES = slice(3, 7)
NEEDS_DCM2NIIX = pytest.mark.skipif(
    dcm2niix_path() is None, reason="needs dcm2niix (.venv/bin/pip install dcm2niix)"
)
# The tag each layout's frames must be ordered by.
ORDER = {
    "implicit_vr_little_endian": "TriggerTime",
    "explicit_vr_big_endian": "TriggerTime",
    "deflated_explicit_vr": "TriggerTime",
    "rle_lossless": "TriggerTime",
    "jpeg_lossless_sv1": "TriggerTime",
    "jpeg_ls_lossless": "TriggerTime",
    "jpeg2000_lossless": "TriggerTime",
    "no_trigger_time": "InstanceNumber",
    "instances_reversed": "TriggerTime",
    "realtime_series_per_slice": "AcquisitionTime",
    "series_per_phase": "TriggerTime",
    "enhanced_multiframe": "NominalCardiacTriggerDelayTime",
    "enhanced_realtime_per_slice": "FrameAcquisitionDateTime",
}
REALTIME = {"realtime_series_per_slice", "enhanced_realtime_per_slice"}
# Layouts dcm2niix (v1.0.20260724) writes as one 4D stack in the right order (it orders
# frames by InstanceNumber, and writes nothing for deflated files); see benchmarks/RESULTS.md.
DCM2NIIX_STACKS = sorted(
    set(LAYOUTS) - REALTIME - {"series_per_phase", "deflated_explicit_vr", "instances_reversed"}
    | {"original"}
)


def only(items: list) -> Subject:
    assert len(items) == 1, items
    assert isinstance(items[0], Subject), items[0]
    return items[0]


def read(root: Path) -> Subject | SourceError:
    """The one study under ``root`` (its sub-folder ``study``)."""
    (item,) = dicom(root, salt="s")
    return item


def synthetic_study(folder: Path) -> Study:
    """write_stack's 3 slices x 4 frames (pixel_value(k, t)), as one study of one patient;
    40 x 44 pixels, since JPEG 2000 needs a few for its resolution levels."""
    write_stack(folder, slices=3, frames=4, shape=(40, 44))
    study = load_study(folder)
    uid = generate_uid()
    for number, ds in enumerate((ds for frames in study for ds in frames), start=1):
        ds.StudyInstanceUID = uid
        ds.InstanceNumber = number  # in time order within a slice, as scanners number them
    return study


@dataclass
class Built:
    source: str
    root: Path  # root / layout / "study" holds each layout
    study: Study
    reference: Subject  # the study as written, read by the dicom source
    subjects: dict[str, Subject | SourceError]
    unbuilt: dict[str, str]  # layout: why it could not be built (an encoder not installed)


@pytest.fixture(scope="module", params=["synthetic", pytest.param("sunnybrook", marks=REAL)])
def built(request, tmp_path_factory) -> Built:
    """Every layout of one study, each in root/<layout>/study, read once."""
    root = tmp_path_factory.mktemp(f"layouts_{request.param}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sunnybrook's UIDs are not valid UIDs
        if request.param == "synthetic":
            study = synthetic_study(root / "written")
        else:  # four mid-ventricular slices, every frame: the full studies are benchmarked
            study = load_study(SUNNYBROOK_STUDY)[SUNNYBROOK_SLICES]
        original(study, root / "original" / "study")
        unbuilt = {}
        for name, build in LAYOUTS.items():
            try:
                build(study, root / name / "study")
            except (ImportError, RuntimeError) as err:
                # Only a missing encoder may skip a layout (pydicom: "Unable to compress ...
                # because all plugins are missing dependencies"); decoders are checked below.
                if isinstance(err, RuntimeError) and "Unable to compress" not in str(err):
                    raise
                unbuilt[name] = f"no encoder to build the {name} fixture (pip install 'cmrfm[dev]'): {err}"  # fmt: skip
    subjects = {name: read(root / name) for name in LAYOUTS if name not in unbuilt}
    return Built(request.param, root, study, only([read(root / "original")]), subjects, unbuilt)


def subject_of(built: Built, layout: str) -> Subject | SourceError:
    if layout in built.unbuilt:
        pytest.skip(built.unbuilt[layout])
    return built.subjects[layout]


# --- every layout, the same study ------------------------------------------------------------


def test_the_reference_is_the_study_as_written(built):
    """Slices by position and frames by TriggerTime, checked without the reader's own rules."""
    pixels = np.array([[ds.pixel_array for ds in frames] for frames in built.study])
    image = built.reference.image
    assert image.shape == pixels.shape and image.dtype == np.float32
    assert (image == pixels).all() or (image == pixels[::-1]).all()
    if built.source == "synthetic":
        assert [image[k, t, 5, 5] for k in range(3) for t in range(4)] == [
            pixel_value(k, t) for k in range(3) for t in range(4)
        ]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_reads_as_the_study_as_written(built, layout):
    subject, reference = subject_of(built, layout), built.reference
    assert isinstance(subject, Subject), subject
    np.testing.assert_array_equal(subject.image, reference.image)  # lossless: pixel-identical
    assert subject.spacing == pytest.approx(reference.spacing, abs=1e-6)
    for key in ("direction", "origin", "modality", "split_group"):
        assert subject.meta[key] == reference.meta[key], key
    assert subject.meta["frame_order"] == ORDER[layout]
    if layout in REALTIME:  # one trigger delay for all: the clock orders, ED is unknown
        t = reference.image.shape[1]
        assert subject.meta["frame_times_ms"] == [round(REALTIME_FRAME_MS * i, 1) for i in range(t)]
        assert "trigger_times_ms" not in subject.meta and "ed" not in subject.meta
    elif layout == "no_trigger_time":
        assert "trigger_times_ms" not in subject.meta and subject.meta["ed"] == 0
    else:
        assert subject.meta["trigger_times_ms"] == reference.meta["trigger_times_ms"]
        assert subject.meta["ed"] == 0


def test_layouts_are_what_they_claim(built):
    """The fixtures themselves: syntax, files and series per layout (3 slices x 4 frames)."""
    if built.source != "synthetic":
        pytest.skip("checked on the synthetic study")
    expected = {  # layout: (files, series, transfer syntax of the first file)
        "implicit_vr_little_endian": (12, 1, "1.2.840.10008.1.2"),
        "explicit_vr_big_endian": (12, 1, "1.2.840.10008.1.2.2"),
        "deflated_explicit_vr": (12, 1, "1.2.840.10008.1.2.1.99"),
        "rle_lossless": (12, 1, "1.2.840.10008.1.2.5"),
        "jpeg_lossless_sv1": (12, 1, "1.2.840.10008.1.2.4.70"),
        "jpeg_ls_lossless": (12, 1, "1.2.840.10008.1.2.4.80"),
        "jpeg2000_lossless": (12, 1, "1.2.840.10008.1.2.4.90"),
        "no_trigger_time": (12, 1, "1.2.840.10008.1.2.1"),
        "instances_reversed": (12, 1, "1.2.840.10008.1.2.1"),
        "realtime_series_per_slice": (12, 3, "1.2.840.10008.1.2.1"),
        "series_per_phase": (12, 4, "1.2.840.10008.1.2.1"),
        "enhanced_multiframe": (1, 1, "1.2.840.10008.1.2.1"),
        "enhanced_realtime_per_slice": (3, 3, "1.2.840.10008.1.2.1"),
    }
    assert set(expected) == set(LAYOUTS)
    for layout, (n_files, n_series, syntax) in expected.items():
        if layout in built.unbuilt:
            continue
        files = sorted(p for p in (built.root / layout).rglob("*") if p.is_file())
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        assert len(files) == n_files, layout
        assert len({ds.SeriesInstanceUID for ds in headers}) == n_series, layout
        assert headers[0].file_meta.TransferSyntaxUID == syntax, layout
        if layout == "no_trigger_time":
            assert not any("TriggerTime" in ds for ds in headers)
        if layout == "realtime_series_per_slice":
            assert {float(ds.TriggerTime) for ds in headers} == {5.0}


def test_no_time_of_day_reaches_meta(built):
    """Clock times identify a visit: only their differences are written."""
    for layout in REALTIME:
        text = json.dumps(subject_of(built, layout).meta)
        for form in ("%H%M%S", "%H:%M:%S", "%H%M"):
            assert REALTIME_START.strftime(form) not in text, layout


def test_predict_reads_a_study_folder_of_series_folders_with_the_same_reader(built):
    """cmrfm predict takes the folder of one study: here one sub-folder per slice series."""
    study = predict_read_study(built.root / "realtime_series_per_slice" / "study")
    np.testing.assert_array_equal(study.image, built.reference.image)
    assert study.geometry["direction"] == built.reference.meta["direction"]


# --- decoders -----------------------------------------------------------------------------------

LAYOUT_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
]
# pydicom's pylibjpeg plugin decodes JPEG and JPEG-LS through pylibjpeg-libjpeg (GPLv3, not a
# dependency): it must never be the only decoder of a syntax.
GPL_ONLY = {"pylibjpeg": {JPEGLosslessSV1, JPEGLSLossless}}


@pytest.mark.parametrize("syntax", LAYOUT_SYNTAXES, ids=lambda uid: uid.keyword)
def test_every_layout_syntax_has_a_permissive_decoder_installed(syntax):
    """Fails (never skips) when a decoder is missing, even where no encoder built the layout."""
    assert missing_decoder(syntax) is None
    decoder = get_decoder(syntax)
    plugins = {p for p in decoder.available_plugins if syntax not in GPL_ONLY.get(p, ())}
    assert decoder.is_native or plugins, decoder.available_plugins


def _written_study(folder: Path, **tags) -> Study:
    """write_stack's study (written beside ``folder``, then removed), to rewrite into a layout."""
    written = folder.parent / f"{folder.name}_written"
    write_stack(written, **tags)
    study = load_study(written)
    shutil.rmtree(written)
    return study


def test_a_syntax_whose_decoder_is_not_installed_names_it_and_the_package(tmp_path, monkeypatch):
    pytest.importorskip("imagecodecs", reason="no encoder for the fixture: pip install imagecodecs")
    jpeg_lossless(_written_study(tmp_path / "study"), tmp_path / "study")
    monkeypatch.setattr(get_decoder(JPEGLosslessSV1), "_available", {})  # python-gdcm missing
    error = next(dicom(tmp_path, salt="s"))
    assert isinstance(error, SourceError) and error.path.parent == tmp_path / "study"
    assert error.reason == (
        "no decoder installed for transfer syntax JPEG Lossless, Non-Hierarchical, First-Order "
        "Prediction (Process 14 [Selection Value 1]): pip install python-gdcm"
    )


def test_a_syntax_pydicom_cannot_decode_is_named(tmp_path):
    study = _written_study(tmp_path / "study")
    for k, ds in enumerate(ds for frames in study for ds in frames):
        ds.PixelData = encapsulate([ds.PixelData])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        write(tmp_path / "study" / f"{k}.dcm", ds)
    error = next(dicom(tmp_path, salt="s"))
    assert isinstance(error, SourceError), error
    assert error.reason == (
        "transfer syntax MPEG2 Main Profile / Main Level: pydicom has no decoder for it; "
        "export the study in an uncompressed transfer syntax"
    )


# --- ordering frames ---------------------------------------------------------------------------


def _tm(ms: float) -> str:
    """A time of day ``ms`` after 10:15:30, as TM."""
    return (REALTIME_START + timedelta(milliseconds=ms)).strftime("%H%M%S.%f")


@pytest.mark.parametrize(
    ("triggers", "varying", "constant"),
    [
        ([5.0] * 4, "AcquisitionTime", None),  # real-time: one trigger delay for every frame
        ([5.0] * 4, "ContentTime", "AcquisitionTime"),  # acquisition time per series only
        ([12.0, 57.0, 12.0, 57.0], "AcquisitionTime", None),  # trigger delays repeat per beat
    ],
    ids=["acquisition_time", "content_time", "repeating_triggers"],
)
def test_frames_follow_the_first_time_tag_that_tells_them_apart(tmp_path, triggers, varying, constant):  # fmt: skip
    # write_stack numbers instances backwards in time: InstanceNumber order would reverse time.
    paths = write_stack(tmp_path / "study")
    for (k, t), path in paths.items():
        ds = pydicom.dcmread(path)
        ds.TriggerTime = triggers[t]
        setattr(ds, varying, _tm(45.0 * t + 1000.0 * k))
        if constant:
            setattr(ds, constant, _tm(0.0))
        write(path, ds)
    subject = only(list(dicom(tmp_path, salt="s")))
    assert [[subject.image[k, t, 5, 5] for t in range(4)] for k in range(3)] == [
        [pixel_value(k, t) for t in range(4)] for k in range(3)
    ]
    assert subject.meta["frame_order"] == varying
    assert subject.meta["frame_times_ms"] == [0.0, 45.0, 90.0, 135.0]  # from the first frame
    assert "ed" not in subject.meta


def test_a_classic_file_saying_one_frame_is_still_classic(tmp_path):
    """Some exporters write NumberOfFrames 1 (or an empty per-frame sequence, as Sunnybrook's
    files hold) into single-frame files: their top-level TriggerTime still orders them."""
    write_stack(tmp_path / "study", NumberOfFrames=1)
    subject = only(list(dicom(tmp_path, salt="s")))
    assert subject.meta["frame_order"] == "TriggerTime"
    assert subject.image[0, 3, 5, 5] == pixel_value(0, 3)


def test_frames_no_tag_tells_apart_cannot_be_ordered(tmp_path):
    write_stack(tmp_path / "study", TriggerTime=5.0, InstanceNumber=None)
    error = next(dicom(tmp_path, salt="s"))
    assert isinstance(error, SourceError) and error.path == tmp_path / "study"
    assert "cannot order frames" in error.reason


# --- assembling series, and refusing what is not one stack ------------------------------------


def _realtime_study(folder: Path, **tags) -> Path:
    """write_stack's study as one series per slice (sub-folders S0020...), real-time timed."""
    realtime_per_slice(_written_study(folder, **tags), folder)
    return folder


def _edit_series(folder: Path, **tags) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.is_file())
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        write(path, ds)
    return paths


def _resize(folder: Path) -> None:
    for path in _edit_series(folder, Rows=8, Columns=8):
        ds = pydicom.dcmread(path)
        ds.PixelData = np.zeros((8, 8), "<i2").tobytes()
        write(path, ds)


def _repeat(folder: Path) -> None:
    copy = folder.with_name("S0099")
    shutil.copytree(folder, copy)
    uid = generate_uid()
    for path in sorted(copy.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.AcquisitionTime = _tm(60_000.0 + float(ds.InstanceNumber))
        write(path, ds)


def _fewer_frames(folder: Path) -> None:
    sorted(folder.iterdir())[0].unlink()


def _phase_series_beside(folder: Path) -> None:
    """A series holding every slice at one time, beside the per-slice series."""
    uid = generate_uid()
    for k in range(3):
        position = [float(v) for v in pydicom.dcmread(next(folder.parent.glob(f"S00{20 + k}/*"))).ImagePositionPatient]  # fmt: skip
        ds = make_dataset(np.ones((10, 12)), np.array(position), trigger=5.0, instance=k + 1)
        ds.SeriesInstanceUID = uid
        write(folder.parent / "phase" / f"{k}.dcm", ds)


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (
            lambda f: _resize(f),
            "mixed series: 3 series in 2 different planes, image sizes or pixel spacings (2 of 10 x 12 at 1.5x1.25 mm, 1 of 8 x 8 at 1.5x1.25 mm)",
        ),
        (
            lambda f: _edit_series(f, ImageOrientationPatient=[1, 0, 0, 0, 1, 0]),
            "mixed series: 3 series in 2 different planes",
        ),
        (
            lambda f: _edit_series(f, PixelSpacing=[1.0, 1.0]),
            "mixed series: 3 series in 2 different planes, image sizes or pixel spacings (2 of 10 x 12 at 1.5x1.25 mm, 1 of 10 x 12 at 1x1 mm)",
        ),
        (_repeat, "two series hold the same slice position (a repeated acquisition?)"),
        (_fewer_frames, "missing instances: slices have [3, 4] frames"),
        (
            _phase_series_beside,
            "mixed series: 3 series of one slice each beside 1 series of several slices",
        ),
    ],
    ids=["size", "orientation", "spacing", "repeated_slice", "frame_count", "slice_and_phase"],
)
def test_series_that_are_not_one_stack_are_refused(tmp_path, breakage, problem):
    study = _realtime_study(tmp_path / "study", SeriesDescription="Quixote1 Alonso SAX")
    breakage(study / "S0021")
    error = next(dicom(tmp_path, salt="s"))
    assert isinstance(error, SourceError), error
    assert problem in error.reason
    assert error.path == study or error.path.is_relative_to(study)
    for value in ("Quixote1", "Alonso", "anon", "1.2.826"):  # no header value in the reason
        assert value not in error.reason


def test_several_cine_stacks_are_refused_without_their_descriptions(tmp_path):
    write_stack(tmp_path / "study" / "one", SeriesDescription="Quixote1 SAX cine")
    write_stack(tmp_path / "study" / "two", SeriesDescription="Quixote1 SAX cine again")
    error = next(dicom(tmp_path, salt="s"))
    assert isinstance(error, SourceError) and "2 of them cine stacks" in error.reason
    assert "Quixote1" not in error.reason


def test_a_root_of_series_folders_is_read_per_folder_with_a_warning(built):
    """The root's sub-folders are studies: series folders of one study given as the root are
    read one by one, and a warning says how to read them as one stack."""
    study = built.root / "realtime_series_per_slice" / "study"
    with pytest.warns(UserWarning, match="sub-folders hold series of one study"):
        subjects = list(dicom(study, salt="s"))
    assert len(subjects) == built.reference.image.shape[0]
    assert all(s.image.shape[0] == 1 for s in subjects)


def test_shard_converts_a_real_time_study(tmp_path):
    """The defect: every per-slice series was quarantined as a duplicate instance."""
    _realtime_study(tmp_path / "root" / "study")
    manifest = convert("dicom", tmp_path / "root", tmp_path / "out",
                       preprocess_config=PreprocessConfig(spacing=1.5, size=16),
                       console=Console(file=StringIO()))  # fmt: skip
    assert json.loads((tmp_path / "out" / QUARANTINE).read_text()) == []
    (sample,) = manifest["samples"]
    assert sample["shape"][:2] == [3, 4] and sample["modality"] == "cine"


# --- enhanced multi-frame errors ---------------------------------------------------------------


def test_enhanced_frame_without_position_names_file_and_frame(built):
    if built.source != "synthetic":
        pytest.skip("checked on the synthetic study")
    folder = built.root / "broken_enhanced" / "study"
    shutil.copytree(built.root / "enhanced_multiframe" / "study", folder)
    (path,) = folder.iterdir()
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[5].PlanePositionSequence
    write(path, ds)
    error = read(folder.parent)
    assert isinstance(error, SourceError) and error.path == path
    assert "missing or invalid ImagePositionPatient (0020,0032) (frame 6)" in error.reason


# --- dcm2niix as a reference -------------------------------------------------------------------


@NEEDS_DCM2NIIX
@pytest.mark.parametrize("layout", DCM2NIIX_STACKS)
def test_dcm2niix_stacks_the_same_pixels_in_the_same_place(built, layout, tmp_path):
    """Where dcm2niix writes one 4D stack, it holds our pixels in our order, and its affine is
    ours (cmrfm predict's) once its flips of the array are undone: an independent check of
    slice order, direction, origin and spacing. Its outputs stay in tmp_path."""
    if layout in built.unbuilt:
        pytest.skip(built.unbuilt[layout])
    (nifti,) = run_dcm2niix(built.root / layout / "study", tmp_path)
    theirs = nib.load(nifti)
    reference = built.reference
    data = np.asarray(theirs.dataobj)  # (X, Y, Z, T)
    (place,) = locate_frames([data], reference.image)
    assert place is not None, "dcm2niix holds other pixels"
    t = reference.image.shape[1]
    assert (place[..., 1] == np.arange(t)).all()  # frames in time order
    ours = reference.image.transpose(3, 2, 0, 1)  # (W, H, S, T), as predict writes it
    flips = next(f for f in _flip_sets() if np.array_equal(np.flip(ours, f), data))
    affine = lps_to_nifti_affine(reference.meta["direction"], reference.meta["origin"], reference.spacing)  # fmt: skip
    for axis in flips:  # index i -> n - 1 - i along each flipped axis
        affine[:3, 3] += affine[:3, axis] * (data.shape[axis] - 1)
        affine[:3, axis] *= -1
    np.testing.assert_allclose(theirs.affine, affine, atol=2e-3)


def _flip_sets() -> list[tuple[int, ...]]:
    return [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
