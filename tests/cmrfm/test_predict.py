"""`cmrfm predict`: label maps come back in the study's own grid (shape, affine, voxel order),
volumes agree with the written labels, DICOM geometry becomes a NIfTI affine, nothing that
identifies a patient reaches an output, and bad inputs fail in one line."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from helpers import DATA
from helpers.dicom import apex_ward, write_stack
from helpers.predict import (
    PACKAGE_PREPROCESS,
    answering,
    drawn_heart,
    heart,
    study_image,
    write_nifti,
)
from helpers.privacy import identity, search_terms
from PIL import Image
from pydicom import config as pydicom_config

from cmrfm.cli import main
from cmrfm.predict import Predictor, predict, prepare
from cmrfm.study import read_study
from data_shards.orientation import canonical_plan
from data_shards.preprocess import PreprocessConfig, preprocess
from data_shards.record import INFARCT, LV, MVO, MYO, RV, Subject
from finetune.package import save_finetuned
from finetune.system import SegFinetuner

PREPROCESS = PACKAGE_PREPROCESS  # the `package` fixture's (conftest)
SHAPES = {  # (S, T, H, W), spacing (dz, dy, dx): finer than the model grid and cropped, or
    "fine": ((4, 5, 60, 64), (8.0, 1.1, 1.25)),  # coarser and padded
    "coarse": ((3, 4, 30, 34), (10.0, 2.0, 2.2)),
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("frames", [1, 5], ids=["3d", "4d"])
def test_label_map_has_the_input_shape_and_affine(tmp_path, package, frames):
    shape = (4, frames, 60, 64)
    spacing = SHAPES["fine"][1]
    affine = write_nifti(tmp_path / "case.nii.gz", study_image(heart(shape, spacing)), spacing)
    main(["predict", str(tmp_path / "case.nii.gz"), "--model", str(package), "--out",
          str(tmp_path / "out")])  # fmt: skip
    src, seg = nib.load(tmp_path / "case.nii.gz"), nib.load(tmp_path / "out" / "case_seg.nii.gz")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    volumes = json.loads((tmp_path / "out" / "volumes.json").read_text())
    assert "scar" not in volumes  # a cine model has no infarct classes
    if frames == 1:  # one frame: no EF to give
        assert volumes["lv"]["ef_percent"] is None and volumes["phases"]["ed"] == 0


@pytest.mark.parametrize("grid", list(SHAPES))
def test_oracle_labels_map_back_onto_the_ground_truth(tmp_path, package, monkeypatch, grid):
    """A model that answers the preprocessed truth must give the truth back in the study's grid:
    this checks the inverse crop/pad, resampling and reorientation."""
    shape, spacing = SHAPES[grid]
    truth = heart(shape, spacing)
    write_nifti(tmp_path / "case.nii.gz", study_image(truth), spacing)
    study = read_study(tmp_path / "case.nii.gz")
    transposed, flipped = canonical_plan(np.array(study.geometry["direction"]))
    assert transposed and flipped  # the inversion has something to undo
    config = PreprocessConfig.from_dict(PREPROCESS, "test")
    labelled = Subject("case", study.image, truth, study.spacing, dict(study.geometry))
    expected = preprocess(labelled, config).label
    assert expected.shape == prepare(study, config).image.shape
    monkeypatch.setattr("finetune.evaluate.predict_study", answering(expected))

    main(["predict", str(tmp_path / "case.nii.gz"), "--model", str(package), "--out",
          str(tmp_path / "out")])  # fmt: skip
    seg = np.asarray(nib.load(tmp_path / "out" / "case_seg.nii.gz").dataobj)  # (X, Y, Z, T)
    truth_xyzt = truth.transpose(3, 2, 0, 1)
    for value in (LV, MYO, RV):
        assert dice(seg == value, truth_xyzt == value) > 0.9, value

    # volumes.json and volumes.csv say what the written label map holds
    volumes = json.loads((tmp_path / "out" / "volumes.json").read_text())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lv = (seg == LV).sum(axis=(0, 1, 2)) * voxel_ml
    rv = (seg == RV).sum(axis=(0, 1, 2)) * voxel_ml
    ed, es = int(np.argmax(lv)), int(np.argmin(lv))
    assert volumes["phases"]["ed"] == ed == 0  # the truth's LV is largest at frame 0
    assert volumes["phases"]["es"] == es
    assert volumes["lv"]["edv_ml"] == pytest.approx(lv[ed])
    assert volumes["lv"]["esv_ml"] == pytest.approx(lv[es])
    assert volumes["lv"]["ef_percent"] == pytest.approx(100 * (lv[ed] - lv[es]) / lv[ed])
    assert volumes["rv"]["sv_ml"] == pytest.approx(rv[ed] - rv[es])
    myo_ed = (seg[..., ed] == MYO).sum() * voxel_ml
    assert volumes["lv"]["mass_g"] == pytest.approx(1.05 * myo_ed)
    with (tmp_path / "out" / "volumes.csv").open() as f:
        rows = {r["ventricle"]: r for r in csv.DictReader(f)}
    for ventricle in ("lv", "rv"):
        for key in ("edv_ml", "esv_ml", "sv_ml", "ef_percent"):
            assert float(rows[ventricle][key]) == pytest.approx(volumes[ventricle][key])
        assert int(rows[ventricle]["ed_frame"]) == ed
    with Image.open(tmp_path / "out" / "overlay.png") as png:
        assert png.width > 100 and png.height > 50
    # the quality section names every check, with the model's (here: certain) entropy judged
    checks = {c["name"]: c for c in volumes["quality"]["checks"]}
    assert set(checks) == {
        "lv_coverage",
        "slice_alignment",
        "slice_gaps",
        "slice_spacing",
        "connected_components",
        "myocardium_surrounds_lv",
        "physiological_ranges",
        "model_uncertainty",
    }
    assert checks["model_uncertainty"]["passed"] is True
    assert checks["slice_spacing"]["passed"] is None  # a NIfTI gives no slice positions
    assert volumes["quality"]["passed"] is all(c["passed"] is not False for c in checks.values())


def test_lge_model_reports_the_scar(tmp_path, monkeypatch):
    """A model with infarct and MVO classes adds the scar (ml, % of the myocardium) to
    volumes.json, measured on the label map it writes."""
    torch.manual_seed(0)
    model = SegFinetuner(backbone="cmr_vit_test", patch_size=8, tubelet=2, feature_size=8,
                         num_classes=6)  # fmt: skip
    lge = save_finetuned(model.eval(), tmp_path / "lge", preprocess=PREPROCESS, frames=2,
                         datasets=["phantom"])  # fmt: skip
    shape, spacing = (3, 1, 60, 64), SHAPES["fine"][1]
    truth = heart(shape, spacing)
    wall = np.argwhere(truth[:2, 0] == MYO)
    septum = wall[wall[:, 2] < np.median(wall[:, 2])]  # half of the wall on two slices
    truth[septum[:, 0], 0, septum[:, 1], septum[:, 2]] = INFARCT
    core = septum[: len(septum) // 4]
    truth[core[:, 0], 0, core[:, 1], core[:, 2]] = MVO
    write_nifti(tmp_path / "lge.nii.gz", study_image(np.minimum(truth, 3)), spacing)
    study = read_study(tmp_path / "lge.nii.gz")
    labelled = Subject("lge", study.image, truth, study.spacing, dict(study.geometry))
    expected = preprocess(labelled, PreprocessConfig.from_dict(PREPROCESS, "test")).label
    monkeypatch.setattr("finetune.evaluate.predict_study", answering(expected))

    main(["predict", str(tmp_path / "lge.nii.gz"), "--model", str(lge), "--out",
          str(tmp_path / "out")])  # fmt: skip
    seg = np.asarray(nib.load(tmp_path / "out" / "lge_seg.nii.gz").dataobj)  # (X, Y, Z)
    scar = json.loads((tmp_path / "out" / "volumes.json").read_text())["scar"]
    counts = {c: int((seg == c).sum()) for c in (MYO, INFARCT, MVO)}
    assert counts[INFARCT] > 0 and counts[MVO] > 0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    assert scar["infarct_ml"] == pytest.approx((counts[INFARCT] + counts[MVO]) * voxel_ml)
    assert scar["mvo_ml"] == pytest.approx(counts[MVO] * voxel_ml)
    assert scar["infarct_pct"] == pytest.approx(
        100 * (counts[INFARCT] + counts[MVO]) / sum(counts.values())
    )


@pytest.mark.parametrize("deidentify", [False, True], ids=["as_is", "deidentified"])
def test_dicom_series_gives_its_geometry_and_no_identifier(tmp_path, package, capsys, deidentify):
    """No identifier reaches an output, but for the DICOM SEG and SR: they belong to the patient
    and carry the source's patient and study references, and none with --deidentify."""
    written: set[str] = set()
    tags = identity(1)
    folder = tmp_path / tags["PatientID"]  # folders are often named by patient id
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")  # identity's invalid UID is part of the point
        paths = write_stack(folder, slices=3, frames=4, shape=(20, 24), **tags)
        written |= set(tags.values())
        for path in paths.values():
            ds = pydicom.dcmread(path)
            written |= {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID}
    out = tmp_path / "out"
    flags = ["--deidentify"] if deidentify else []
    main(["predict", str(folder), "--model", str(package), "--out", str(out), *flags])
    console = capsys.readouterr()

    seg = nib.load(out / "study_seg.nii.gz")
    assert seg.shape == (24, 20, 3, 4)  # (columns, rows, slices, frames)
    ds = pydicom.dcmread(paths[0, 0])
    row, col = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
    dy, dx = (float(v) for v in ds.PixelSpacing)
    to_ras = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(seg.affine[:3, 0], row * dx * to_ras, atol=1e-4)
    np.testing.assert_allclose(seg.affine[:3, 1], col * dy * to_ras, atol=1e-4)
    np.testing.assert_allclose(seg.affine[:3, 2] / np.linalg.norm(seg.affine[:3, 2]),
                               apex_ward(row, col) * to_ras, atol=1e-4)  # fmt: skip
    for k in range(3):  # voxel (0, 0, k) sits where the slice-k image says it does
        position = np.array(pydicom.dcmread(paths[k, 0]).ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(seg.affine @ [0, 0, k, 1], [*(position * to_ras), 1], atol=1e-3)

    terms = set().union(*(search_terms(v) for v in written))
    dicom = {"seg.dcm", "seg_es.dcm", "sr.dcm"}  # the patient's, for PACS
    files = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    found = [(name, data) for name, data in files.items() if deidentify or name not in dicom]
    found += [("stdout", console.out.encode()), ("stderr", console.err.encode())]
    leaks = [(name, term) for name, data in found for term in terms if term.encode() in data]
    assert not leaks, leaks
    assert set(files) == {
        "study_seg.nii.gz", "volumes.json", "volumes.csv", "overlay.png", "curves.csv", "curves.png"
    } | dicom  # fmt: skip
    if not deidentify:
        references = {tags[k] for k in ("PatientName", "PatientID", "StudyInstanceUID")}
        for name in dicom:
            assert {v for v in references if v.encode() in files[name]} == references, name


@pytest.mark.parametrize("what", ["missing_study", "broken_study", "missing_model"])
def test_bad_inputs_fail_in_one_line(tmp_path, package, capsys, what):
    study, model = tmp_path / "case.nii.gz", package
    if what == "broken_study":
        study.write_bytes(b"not a nifti at all")
    elif what == "missing_study":
        study = tmp_path / "absent.nii.gz"
    else:
        write_nifti(study, study_image(heart((2, 2, 20, 20), (8, 2, 2))), (8.0, 2.0, 2.0))
        model = tmp_path / "no_model"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(study), "--model", str(model), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmrfm predict: error:") and "\n" not in err
    assert (model if what == "missing_model" else study).name in err


def test_work_starts_before_the_network_is_built_and_broken_weights_stop_every_study(
    tmp_path, package, capsys
):
    """The config is checked at once and the first study read before the network (Lightning,
    MONAI: seconds of imports) is built; weights that cannot load stop the call, exit 2, in one
    line naming the file, instead of failing each study in turn."""
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(package, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    loaded = Predictor.load(broken)
    assert loaded.network is None  # nothing heavy yet
    shape, spacing = (2, 2, 20, 20), (8.0, 2.0, 2.0)
    studies = [tmp_path / f"{n}.nii.gz" for n in ("a", "b")]
    for study in studies:
        write_nifti(study, study_image(heart(shape, spacing)), spacing)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *map(str, studies), "--model", str(broken), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["study 1 of 2: reading"]  # the second never started
    err = captured.err.strip()
    assert "\n" not in err and "model.safetensors" in err


def test_several_studies_go_on_past_a_broken_one(tmp_path, package, capsys, monkeypatch):
    """One model load for all; each study gets its own folder; a broken study is named in one
    line and the others are still segmented; exit status 1 says something failed."""
    shape, spacing = (3, 4, 30, 34), (10.0, 2.0, 2.2)
    for name in ("a", "c"):
        write_nifti(tmp_path / f"{name}.nii.gz", study_image(heart(shape, spacing)), spacing)
    (tmp_path / "b.nii.gz").write_bytes(b"broken")
    loads = []
    original = Predictor.load
    monkeypatch.setattr(Predictor, "load", lambda *a, **k: loads.append(1) or original(*a, **k))
    studies = [str(tmp_path / f"{n}.nii.gz") for n in ("a", "b", "c")]
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", *studies, "--model", str(package), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1 and len(loads) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["001_a", "003_c"]
    for folder in ("001_a", "003_c"):
        assert (tmp_path / "out" / folder / "volumes.json").is_file()
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert len(err_lines) == 1 and "b.nii.gz" in err_lines[0]
    assert "2 of 3 studies segmented" in captured.out


def test_a_dicom_stack_with_a_slice_missing_is_segmented_and_flagged(tmp_path, package):
    """Uneven slice gaps stop a shard (training labels) but not predict: the study gets every
    output and its quality section names the uneven spacing and where it is."""
    write_stack(tmp_path / "study", slices=5, frames=2, skip=(2,))  # 4 slices, one gap doubled
    volumes = predict(tmp_path / "study", package, tmp_path / "out")
    check = next(c for c in volumes["quality"]["checks"] if c["name"] == "slice_spacing")
    assert check["passed"] is False and check["evidence"]["after_slices"] == [1]
    gaps = check["evidence"]["gaps_mm"]
    assert len(gaps) == 3 and max(gaps) == pytest.approx(2 * min(gaps))
    assert volumes["quality"]["passed"] is False
    assert (tmp_path / "out" / volumes["label_file"]).is_file()


# --- volumes from the written file ------------------------------------------------------------

ACDC_FRAME = DATA / "acdc" / "training" / "patient001" / "patient001_frame01.nii.gz"
SUNNYBROOK_STUDY = DATA / "sunnybrook" / "dicoms" / "SCD0000301"
HEADER_GEOMETRY = ("dim", "pixdim", "xyzt_units", "qform_code", "sform_code", "quatern_b",
                   "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x",
                   "srow_y", "srow_z")  # fmt: skip


def write_acdc_style(path: Path, stwh: np.ndarray, spacing: tuple[float, ...]) -> None:
    """A NIfTI as ACDC releases them: a pure flip affine (steps of 1 mm, sform code 2, no
    qform) and the voxel size only in pixdim."""
    image = nib.Nifti1Image(stwh[:, 0].transpose(2, 1, 0), np.diag([-1.0, -1.0, 1.0, 1.0]))
    image.header.set_zooms(tuple(reversed(spacing)))
    nib.save(image, path)


def study_for(source: str, folder: Path) -> Path:
    """A study of each kind predict reads, written under ``folder`` (or the real one)."""
    spacing = (10.0, 1.64, 1.64)
    if source in ("nifti_3d", "nifti_4d"):
        shape = (4, 1 if source == "nifti_3d" else 5, 60, 64)
        write_nifti(folder / "case.nii.gz", study_image(heart(shape, spacing)), spacing)
        return folder / "case.nii.gz"
    if source == "acdc_style":
        image = study_image(heart((3, 1, 60, 64), spacing)).astype(np.int16)
        write_acdc_style(folder / "case.nii.gz", image, spacing)
        return folder / "case.nii.gz"
    if source == "dicom":
        write_stack(folder / "series", slices=3, frames=4, shape=(40, 44))
        return folder / "series"
    return {"acdc": ACDC_FRAME, "sunnybrook": SUNNYBROOK_STUDY}[source]


def real(source: str, path: Path) -> object:
    why = f"needs {path.relative_to(DATA.parent)}"
    return pytest.param(source, marks=[pytest.mark.realdata,
                                       pytest.mark.skipif(not path.exists(), reason=why)])  # fmt: skip


@pytest.mark.parametrize(
    "source",
    ["nifti_3d", "nifti_4d", "acdc_style", "dicom", real("acdc", ACDC_FRAME),
     real("sunnybrook", SUNNYBROOK_STUDY)],
)  # fmt: skip
def test_volumes_from_the_written_file_equal_volumes_json(tmp_path, package, monkeypatch, source):
    """The label map carries the input's voxel size: nibabel volumes of the written file are
    volumes.json's, and a NIfTI's header geometry (pixdim, units, qform, sform, their codes) is
    the input's exactly (ACDC keeps the voxel size in pixdim beside an unscaled affine)."""
    monkeypatch.setattr("finetune.evaluate.predict_study", drawn_heart)
    study = study_for(source, tmp_path)
    out = tmp_path / "out"
    main(["predict", str(study), "--model", str(package), "--out", str(out)])
    volumes = json.loads((out / "volumes.json").read_text())
    seg = nib.load(out / volumes["label_file"])
    if study.is_file():
        src = nib.load(study)
        for key in HEADER_GEOMETRY:
            np.testing.assert_array_equal(seg.header[key], src.header[key], err_msg=key)
    else:  # DICOM: the voxel size is the series' spacing
        dz, dy, dx = volumes["spacing_mm"]
        np.testing.assert_allclose(seg.header.get_zooms()[:3], (dx, dy, dz), rtol=1e-5)

    data = np.asarray(seg.dataobj)  # (X, Y, Z[, T])
    data = data[..., None] if data.ndim == 3 else data
    unit_mm = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3, "unknown": 1.0}[
        seg.header.get_xyzt_units()[0]
    ]
    voxel_ml = float(np.prod(seg.header.get_zooms()[:3])) * unit_mm**3 / 1000.0
    measured = {
        name: (data == value).sum(axis=(0, 1, 2)) * voxel_ml
        for name, value in (("lv", LV), ("myo", MYO), ("rv", RV))
    }
    for name, ml in measured.items():
        assert ml.min() > 0, name  # the stand-in's heart is in the written map
        np.testing.assert_allclose(ml, volumes["per_frame_ml"][name], rtol=1e-5, err_msg=name)
    ed, es = volumes["phases"]["ed"], volumes["phases"]["es"]
    assert volumes["lv"]["edv_ml"] == pytest.approx(measured["lv"][ed], rel=1e-5)
    assert volumes["lv"]["esv_ml"] == pytest.approx(measured["lv"][es], rel=1e-5)
    assert volumes["rv"]["edv_ml"] == pytest.approx(measured["rv"][ed], rel=1e-5)
    assert volumes["lv"]["mass_g"] == pytest.approx(1.05 * measured["myo"][ed], rel=1e-5)


# --- real data: geometry only, with an untrained model ----------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "mnms2").exists(), reason="needs ../shared/data/mnms2")
def test_real_mnms2_nifti_keeps_its_geometry(tmp_path, package):
    study = DATA / "mnms2" / "001" / "001_SA_ED.nii.gz"
    main(["predict", str(study), "--model", str(package), "--out", str(tmp_path)])
    src, seg = nib.load(study), nib.load(tmp_path / "001_SA_ED_seg.nii.gz")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-4)


@pytest.mark.realdata
@pytest.mark.skipif(not (DATA / "sunnybrook").exists(), reason="needs ../shared/data/sunnybrook")
def test_real_sunnybrook_dicom_keeps_its_geometry_and_drops_its_id(tmp_path, package, capsys):
    folder = DATA / "sunnybrook" / "dicoms" / "SCD0000301"
    main(["predict", str(folder), "--model", str(package), "--out", str(tmp_path)])
    seg = nib.load(tmp_path / "study_seg.nii.gz")
    assert seg.shape == (256, 256, 10, 20)
    first = pydicom.dcmread(sorted(folder.rglob("*.dcm"))[0], stop_before_pixels=True)
    assert np.linalg.norm(seg.affine[:3, 0]) == pytest.approx(float(first.PixelSpacing[1]), 1e-3)
    dicom = {"seg.dcm", "seg_es.dcm", "sr.dcm"}  # the patient's, for PACS: they carry the id
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    outputs = b"".join(p.read_bytes() for p in files if p.name not in dicom)
    outputs += capsys.readouterr().out.encode()
    for value in (folder.name, str(first.PatientName), str(first.PatientID)):
        assert value.encode() not in outputs
    # Its anonymiser gave every image a frame of reference of its own: no SEG, an SR
    unavailable = json.loads((tmp_path / "volumes.json").read_text())["unavailable"]
    assert "different FrameOfReferenceUIDs" in unavailable["seg.dcm"]
    assert str(first.PatientID).encode() in (tmp_path / "sr.dcm").read_bytes()
