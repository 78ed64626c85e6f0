"""DICOM out of `cmrfm predict` (cmrfm/dicom_out.py, cmrfm/dicom_deidentify.py): every SEG frame
holds the label map of the very source instance it references, one segment per class, in every
series layout; the SR's TID 1500 measurements are volumes.json's; dciodvfy finds no error in
either; --deidentify leaves none of the source's references and keeps the SEG and SR pointing at
each other; a study that cannot have them gets every other output and the reason."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from helpers import ROOT
from helpers.dicom import BASE_POSITION, GAP, apex_ward, write_stack
from helpers.predict import PACKAGE_PREPROCESS, heart, study_image, write_nifti
from helpers.privacy import identity, search_terms
from pydicom import config as pydicom_config
from pydicom.uid import generate_uid

from cmrfm.cli import main
from cmrfm.dicom_out import NEEDS_DICOM, SEG_ES_FILE, SEG_FILE, SR_FILE
from data_shards.record import INFARCT, LV, MVO, MYO, RV
from finetune.package import save_finetuned
from finetune.system import SegFinetuner

SLICES, FRAMES, SHAPE = 3, 4, (44, 48)  # not square: a swapped row and column shows
NAMES = {LV: "LV cavity", MYO: "LV myocardium", RV: "RV cavity", INFARCT: "Infarct", MVO: "MVO"}
CACHED = ROOT / ".cache" / "dicom3tools" / "usr" / "bin" / "dciodvfy"
DCIODVFY = shutil.which("dciodvfy") or (str(CACHED) if CACHED.exists() else None)
NEEDS_DCIODVFY = pytest.mark.skipif(
    DCIODVFY is None,
    reason="needs dciodvfy: run `make dicom3tools` (Debian's dicom3tools into .cache/dicom3tools)",
)
LAYOUTS = ROOT / "tests" / "data_shards" / "sources" / "dicom_layouts.py"


def source_tags(n: int = 1) -> dict[str, str]:
    """identity(n) with a valid SeriesInstanceUID (dciodvfy would rightly flag identity's)."""
    return {**identity(n), "SeriesInstanceUID": generate_uid(), "PatientSex": "F"}


def write_study(folder: Path, layout: str, frames: int = FRAMES, **tags) -> dict:
    """A cine stack (slice k, frame t) -> path, as one series, a series per slice (each in a
    sub-folder) or a series per cardiac phase."""
    if layout == "one_series":
        return write_stack(folder, SLICES, frames, shape=SHAPE, **tags)
    paths: dict = {}
    if layout == "series_per_slice":
        for k in range(SLICES):
            others = tuple(i for i in range(SLICES) if i != k)
            tags["SeriesInstanceUID"] = generate_uid()
            paths |= write_stack(folder / f"s{k}", SLICES, frames, shape=SHAPE, skip=others,
                                 seed=k, **tags)  # fmt: skip
        return paths
    paths = write_stack(folder, SLICES, frames, shape=SHAPE, **tags)
    phases = [generate_uid() for _ in range(frames)]
    for (_, t), path in paths.items():
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = phases[t]
        ds.save_as(path)
    return paths


def sliced_heart(model, image: np.ndarray, frames: int, batch: int = 16, entropy: bool = False):
    """A stand-in for finetune.evaluate.predict_study that draws, on the model's grid, an LV
    disc, a myocardial ring and an RV that differ from slice to slice and frame to frame (a
    SEG frame matched to the wrong instance would show), largest at frame 0."""
    s, t, size = image.shape[0], image.shape[1], image.shape[2]
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    labels = np.zeros(image.shape, np.uint8)
    for k in range(s):
        for f in range(t):
            r = 7.0 - 2.0 * np.sin(np.pi * f / t) - 1.0 * k
            labels[k, f, np.hypot(y - k, x + 14) < r - 1.5] = RV
            labels[k, f, np.hypot(y, x) < r + 3] = MYO
            labels[k, f, np.hypot(y, x) < r] = LV
    return (labels, np.zeros((s, t), np.float32)) if entropy else labels


def lge_heart(model, image: np.ndarray, frames: int, batch: int = 16, entropy: bool = False):
    """sliced_heart with an infarct in half of the wall and MVO in its core (LGE models)."""
    labels = sliced_heart(model, image, frames)
    size = image.shape[2]
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    wall = labels == MYO
    labels[wall & (x < 0)] = INFARCT
    labels[wall & (x < -6) & (np.abs(y) < 3)] = MVO
    return (labels, np.zeros(image.shape[:2], np.float32)) if entropy else labels


def run_predict(study: Path, model: Path, out: Path, stand_in, *flags: str) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("finetune.evaluate.predict_study", stand_in)
        main(["predict", str(study), "--model", str(model), "--out", str(out), *flags])
    return json.loads((out / "volumes.json").read_text())


def labels_of(out: Path) -> np.ndarray:
    """(S, T, H, W) labels from the NIfTI predict wrote, (X, Y, Z[, T]) = (W, H, S[, T])."""
    data = np.asarray(nib.load(out / "study_seg.nii.gz").dataobj)
    data = data[..., None] if data.ndim == 3 else data
    return data.transpose(2, 3, 1, 0)


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def segment_numbers(seg: hd.seg.Segmentation) -> dict[str, int]:
    return {seg.get_segment_description(n).segment_label: n for n in seg.segment_numbers}


def measurements(sr_path: Path) -> dict[tuple[str, str], tuple[float, str]]:
    """(finding's meaning, measurement's meaning) -> (value, UCUM unit) of a TID 1500 report."""
    report = hd.sr.srread(sr_path).content
    found = {}
    for group in report.get_image_measurement_groups():
        for m in group.get_measurements():
            found[group.finding_type.meaning, m.name.meaning] = (m.value, m.unit.value)
    return found


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """dciodvfy's errors and warnings for one file."""
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warn")]


@pytest.fixture(scope="module")
def cine(tmp_path_factory, package) -> dict:
    """One cine study (one series), predicted as it is and with --deidentify."""
    root = tmp_path_factory.mktemp("cine")
    tags = source_tags()
    paths = write_study(root / "study", "one_series", **tags)
    outs = {flag: root / f"out{flag}" for flag in ("", "--deidentify")}
    volumes = {
        flag: run_predict(root / "study", package, out, sliced_heart, *([flag] if flag else []))
        for flag, out in outs.items()
    }
    return {"paths": paths, "tags": tags, "outs": outs, "volumes": volumes}


def masks_by_position(seg: hd.seg.Segmentation) -> dict[tuple[tuple[float, ...], int], np.ndarray]:
    """(ImagePositionPatient rounded to 0.01 mm, segment number) -> that SEG frame's mask."""
    found = {}
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = item.PlanePositionSequence[0].ImagePositionPatient
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        found[tuple(round(float(v), 2) for v in position), int(number)] = seg.pixel_array[i]
    return found


@pytest.mark.parametrize("layout", ["one_series", "series_per_slice", "series_per_phase"])
def test_seg_frames_hold_the_labels_of_the_instance_they_reference(tmp_path, package, layout):
    """Each SEG frame, found by its position and by the source instance it references, holds
    that instance's label map, class by class. With a series per slice highdicom references the
    instances series by series, not frame by frame: there the position says which."""
    paths = write_study(tmp_path / "study", layout, **source_tags())
    out = tmp_path / "out"
    volumes = run_predict(tmp_path / "study", package, out, sliced_heart)
    assert volumes["outputs"] == [SEG_FILE, SEG_ES_FILE, SR_FILE]
    assert SEG_FILE not in volumes["unavailable"]
    labels = labels_of(out)
    ed, es = volumes["phases"]["ed"], volumes["phases"]["es"]
    assert ed != es and not np.array_equal(labels[0, ed], labels[1, ed])  # a test with teeth
    for name, t in ((SEG_FILE, ed), (SEG_ES_FILE, es)):
        seg = hd.seg.segread(out / name)
        numbers = segment_numbers(seg)
        assert set(numbers) == {NAMES[LV], NAMES[MYO], NAMES[RV]}
        order = [numbers[NAMES[c]] for c in (LV, MYO, RV)]
        sources = {k: pydicom.dcmread(paths[k, t], stop_before_pixels=True) for k in range(SLICES)}
        # this phase's instance of every slice, none of another phase
        referenced = {
            item.ReferencedSOPInstanceUID
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        assert referenced == {str(ds.SOPInstanceUID) for ds in sources.values()}
        by_position = masks_by_position(seg)
        for k, ds in sources.items():
            where = tuple(round(float(v), 2) for v in ds.ImagePositionPatient)
            per_instance = None
            if layout != "series_per_slice":
                (per_instance,) = seg.get_pixels_by_source_instance(
                    [str(ds.SOPInstanceUID)], segment_numbers=order
                )
            for i, value in enumerate((LV, MYO, RV)):
                truth = labels[k, t] == value
                empty = np.zeros_like(truth)  # an empty frame is left out
                mask = by_position.get((where, order[i]), empty)
                np.testing.assert_array_equal(mask, truth, err_msg=f"{name} slice {k}")
                if per_instance is not None:
                    np.testing.assert_array_equal(per_instance[..., i], truth, err_msg=name)
        if DCIODVFY is not None:
            assert not dciodvfy(out / name)[0], (layout, name)


def test_seg_and_sr_carry_the_source_patient_and_study(cine):
    out, tags = cine["outs"][""], cine["tags"]
    source = pydicom.dcmread(cine["paths"][0, 0])
    for name in (SEG_FILE, SEG_ES_FILE, SR_FILE):
        ds = pydicom.dcmread(out / name)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID",
                        "AccessionNumber", "StudyID", "StudyDate"):  # fmt: skip
            assert str(ds.get(keyword)) == str(source.get(keyword)) == str(tags[keyword]), keyword
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID  # a series of its own
    seg, seg_es = (pydicom.dcmread(out / n) for n in (SEG_FILE, SEG_ES_FILE))
    assert seg.SeriesInstanceUID == seg_es.SeriesInstanceUID  # one SEG series, two instances
    assert (seg.InstanceNumber, seg_es.InstanceNumber) == (1, 2)
    assert seg.FrameOfReferenceUID == tags["FrameOfReferenceUID"]


def test_sr_reports_the_volumes_of_volumes_json_and_its_evidence(cine):
    out, volumes = cine["outs"][""], cine["volumes"][""]
    found = measurements(out / SR_FILE)
    lv, rv = volumes["lv"], volumes["rv"]
    expected = {
        ("Left ventricle", "Left Ventricular ED Volume"): (lv["edv_ml"], "ml"),
        ("Left ventricle", "Left Ventricular ES Volume"): (lv["esv_ml"], "ml"),
        ("Left ventricle", "Stroke Volume"): (lv["sv_ml"], "ml"),
        ("Left ventricle", "Left ventricular ejection fraction by MR"): (lv["ef_percent"], "%"),
        ("Left ventricle", "Left Ventricle Mass"): (lv["mass_g"], "g"),
        ("Right ventricle", "Right Ventricular ED Volume"): (rv["edv_ml"], "ml"),
        ("Right ventricle", "Right Ventricular ES Volume"): (rv["esv_ml"], "ml"),
        ("Right ventricle", "RV Stroke Volume"): (rv["sv_ml"], "ml"),
        ("Right ventricle", "Right ventricular ejection fraction by MR"): (rv["ef_percent"], "%"),
    }
    assert set(found) == set(expected)  # a cine model: no infarct group
    for key, (value, unit) in expected.items():
        assert value is not None and value > 0, key
        assert found[key][0] == pytest.approx(value, rel=1e-12), key
        assert found[key][1] == unit, key
    sr = hd.sr.srread(out / SR_FILE)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    ed, es = volumes["phases"]["ed"], volumes["phases"]["es"]
    sources = {uid_of(cine["paths"][k, t]) for k in range(SLICES) for t in (ed, es)}
    segs = {pydicom.dcmread(out / n).SOPInstanceUID for n in (SEG_FILE, SEG_ES_FILE)}
    assert evidence == sources | segs


@NEEDS_DCIODVFY
@pytest.mark.parametrize("flag", ["", "--deidentify"], ids=["as_is", "deidentified"])
def test_dciodvfy_finds_no_error(cine, flag):
    for name in (SEG_FILE, SEG_ES_FILE, SR_FILE):
        errors, warned = dciodvfy(cine["outs"][flag] / name)
        for line in warned:  # shown with -s, and in the report of a failure
            print(f"dciodvfy {name} ({flag or 'as is'}): {line}")
        assert not errors, (name, errors)


def test_deidentify_strips_every_source_reference_and_keeps_the_links(cine):
    plain, out = cine["outs"][""], cine["outs"]["--deidentify"]
    written = set(cine["tags"].values()) - {"F"}
    written |= {uid_of(p) for p in cine["paths"].values()}
    written |= {str(pydicom.dcmread(plain / n).SOPInstanceUID) for n in (SEG_FILE, SR_FILE)}
    terms = set().union(*(search_terms(v) for v in written))
    files = {n: (out / n).read_bytes() for n in (SEG_FILE, SEG_ES_FILE, SR_FILE)}
    leaks = [(name, t) for name, data in files.items() for t in terms if t.encode() in data]
    assert not leaks, leaks
    seg, seg_es, sr = (pydicom.dcmread(out / n) for n in (SEG_FILE, SEG_ES_FILE, SR_FILE))
    for ds in (seg, seg_es, sr):
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert (str(ds.PatientName), ds.PatientID, ds.StudyDate) == ("", "", "")
    assert seg.StudyInstanceUID == seg_es.StudyInstanceUID == sr.StudyInstanceUID
    # the SR's evidence still names the (new) SEG instances and the instances they reference
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    referenced = {
        uids[2] for name in (SEG_FILE, SEG_ES_FILE) for uids in hd.seg.segread(out / name)
        .get_source_image_uids()
    }  # fmt: skip
    assert len(referenced) == 2 * SLICES
    assert evidence == referenced | {seg.SOPInstanceUID, seg_es.SOPInstanceUID}
    for name in (SEG_FILE, SEG_ES_FILE):  # the same masks as the SEG with the references
        np.testing.assert_array_equal(
            hd.seg.segread(out / name).pixel_array, hd.seg.segread(plain / name).pixel_array
        )
    assert measurements(out / SR_FILE) == measurements(plain / SR_FILE)


def test_lge_model_segments_and_reports_the_infarct(tmp_path):
    torch.manual_seed(0)
    model = SegFinetuner(backbone="cmr_vit_test", patch_size=8, tubelet=2, feature_size=8,
                         num_classes=6)  # fmt: skip
    lge = save_finetuned(model.eval(), tmp_path / "lge", preprocess=PACKAGE_PREPROCESS, frames=2,
                         datasets=["phantom"])  # fmt: skip
    paths = write_study(tmp_path / "study", "one_series", frames=1, **source_tags())
    out = tmp_path / "out"
    volumes = run_predict(tmp_path / "study", lge, out, lge_heart)
    assert volumes["outputs"] == [SEG_FILE, SR_FILE]  # one frame: no ES instance
    labels = labels_of(out)
    seg = hd.seg.segread(out / SEG_FILE)
    numbers = segment_numbers(seg)
    assert set(numbers) == {NAMES[c] for c in (LV, MYO, RV, INFARCT, MVO)}
    for k in range(SLICES):
        (pixels,) = seg.get_pixels_by_source_instance([uid_of(paths[k, 0])])
        for value in (LV, MYO, RV, INFARCT, MVO):
            index = seg.segment_numbers.index(numbers[NAMES[value]])
            np.testing.assert_array_equal(pixels[..., index], labels[k, 0] == value)
    found, scar = measurements(out / SR_FILE), volumes["scar"]
    assert scar["infarct_ml"] > scar["mvo_ml"] > 0
    assert found["Infarct", "Volume"] == (pytest.approx(scar["infarct_ml"]), "ml")
    assert found["Infarct", "Extent"] == (pytest.approx(scar["infarct_pct"]), "%")
    assert found["Microvascular obstruction", "Volume"] == (pytest.approx(scar["mvo_ml"]), "ml")
    assert ("Left ventricle", "Left Ventricular ED Volume") in found
    assert ("Left ventricle", "Stroke Volume") not in found  # one frame: no SV, no EF
    if DCIODVFY is not None:
        for name in (SEG_FILE, SR_FILE):
            errors, warned = dciodvfy(out / name)
            print(*(f"dciodvfy {name} (LGE): {line}" for line in warned), sep="\n")
            assert not errors, (name, errors)


def test_a_nifti_input_names_seg_and_sr_unavailable(tmp_path, package):
    spacing = (8.0, 1.5, 1.5)
    write_nifti(tmp_path / "case.nii.gz", study_image(heart((3, 2, 30, 34), spacing)), spacing)
    volumes = run_predict(tmp_path / "case.nii.gz", package, tmp_path / "out", sliced_heart)
    assert volumes["outputs"] == []
    assert volumes["unavailable"][SEG_FILE] == volumes["unavailable"][SR_FILE] == NEEDS_DICOM
    assert not list((tmp_path / "out").glob("*.dcm"))


OTHER_OUTPUTS = {"study_seg.nii.gz", "volumes.json", "volumes.csv", "overlay.png", "curves.csv",
                 "curves.png"}  # fmt: skip


@pytest.mark.parametrize(
    ("fault", "missing", "reason"),
    [
        ("SOPInstanceUID", {SEG_FILE, SR_FILE}, "lack SOPInstanceUID"),
        ("StudyInstanceUID", {SEG_FILE, SR_FILE}, "lack StudyInstanceUID"),
        ("FrameOfReferenceUID", {SEG_FILE}, "lack FrameOfReferenceUID"),
        ("FrameOfReferenceUID per image", {SEG_FILE}, "different FrameOfReferenceUIDs"),
    ],
)
def test_a_study_lacking_a_reference_gets_every_other_output(tmp_path, package, fault, missing,
                                                             reason):  # fmt: skip
    """Absent references (or, as in Sunnybrook's release, a frame of reference per image):
    every other output, and the reason for each DICOM output missing."""
    tags = source_tags() | ({} if " " in fault else {fault: None})
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")  # pydicom warns of the file meta's dangling UID
        paths = write_study(tmp_path / "study", "one_series", **tags)
    if fault == "FrameOfReferenceUID per image":
        for path in paths.values():
            ds = pydicom.dcmread(path)
            ds.FrameOfReferenceUID = generate_uid()
            ds.save_as(path)
    out = tmp_path / "out"
    volumes = run_predict(tmp_path / "study", package, out, sliced_heart)
    for name in missing:
        assert reason in volumes["unavailable"][name], volumes["unavailable"]
    written = {SR_FILE} - missing if SEG_FILE in missing else {SEG_FILE, SEG_ES_FILE, SR_FILE}
    assert {p.name for p in out.iterdir()} == OTHER_OUTPUTS | written
    assert set(volumes["outputs"]) == written


def enhanced_study(tmp_path: Path, frames: int, shared_orientation: bool) -> Path:
    """The stack as one enhanced MR file (tests/data_shards/sources/dicom_layouts.py), its
    orientation per frame as that layout writes it, or moved to the shared groups."""
    spec = importlib.util.spec_from_file_location("dicom_layouts", LAYOUTS)
    layouts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layouts)
    write_study(tmp_path / "single", "one_series", frames=frames, **source_tags())
    layouts.enhanced(layouts.load_study(tmp_path / "single"), tmp_path / "enhanced")
    if shared_orientation:
        (path,) = (tmp_path / "enhanced").iterdir()
        ds = pydicom.dcmread(path)
        per_frame = ds.PerFrameFunctionalGroupsSequence
        ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = per_frame[0].PlaneOrientationSequence  # fmt: skip
        for item in per_frame:
            del item.PlaneOrientationSequence
        ds.save_as(path)
    return tmp_path / "enhanced"


@pytest.mark.parametrize(
    ("frames", "shared", "reason"),
    [
        (FRAMES, True, "several time points of a slice"),
        (1, False, "keeps ImageOrientationPatient per frame"),
        (1, True, None),
    ],
    ids=["cine", "lge_orientation_per_frame", "lge"],
)
def test_a_multiframe_study_gets_a_seg_or_the_reason(tmp_path, package, frames, shared, reason):
    """One enhanced MR file: an LGE's SEG frames reference the file's frame at their position;
    a cine's would reference every time point there, so it gets none, nor does a file that
    keeps its orientation per frame; the SR references the file either way."""
    folder = enhanced_study(tmp_path, frames, shared)
    out = tmp_path / "out"
    volumes = run_predict(folder, package, out, sliced_heart)
    assert measurements(out / SR_FILE)
    if reason:
        assert reason in volumes["unavailable"][SEG_FILE]
        assert volumes["outputs"] == [SR_FILE]
        return
    assert volumes["outputs"] == [SEG_FILE, SR_FILE]
    (path,) = folder.iterdir()
    source = pydicom.dcmread(path)
    where = {
        i + 1: tuple(round(float(v), 2) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        for i, item in enumerate(source.PerFrameFunctionalGroupsSequence)
    }
    seg = hd.seg.segread(out / SEG_FILE)
    labels, numbers = labels_of(out), segment_numbers(seg)
    by_position = masks_by_position(seg)
    for item in seg.PerFrameFunctionalGroupsSequence:  # each frame at its source frame's place
        (ref,) = item.DerivationImageSequence[0].SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        position = item.PlanePositionSequence[0].ImagePositionPatient
        assert where[int(ref.ReferencedFrameNumber)] == tuple(round(float(v), 2) for v in position)
    for position in set(where.values()):
        k = round(float((np.array(position) - BASE_POSITION) @ apex_ward()) / GAP)  # from base
        for value in (LV, MYO, RV):
            truth = labels[k, 0] == value
            mask = by_position.get((position, numbers[NAMES[value]]), np.zeros_like(truth))
            np.testing.assert_array_equal(mask, truth)


def test_an_unexpected_refusal_is_named_without_its_message(tmp_path, package, monkeypatch):
    """highdicom's messages may quote header values: the reason names the error's type only,
    and the other DICOM output is still written."""
    tags = source_tags()
    write_study(tmp_path / "study", "one_series", **tags)

    def refuse(*args, **kwargs):
        raise RuntimeError(f"bad value {tags['PatientID']}")

    monkeypatch.setattr("cmrfm.dicom_out.make_sr", refuse)
    monkeypatch.delenv("CMRFM_DEBUG", raising=False)
    volumes = run_predict(tmp_path / "study", package, tmp_path / "out", sliced_heart)
    assert volumes["outputs"] == [SEG_FILE, SEG_ES_FILE]
    reason = volumes["unavailable"][SR_FILE]
    assert "RuntimeError" in reason and tags["PatientID"] not in reason
