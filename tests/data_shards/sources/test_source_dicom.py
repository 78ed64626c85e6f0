"""The dicom source: stack geometry, rescaling, contours, and every broken input it must report."""

from __future__ import annotations

import json
import shutil
import warnings
from io import StringIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import DATA
from helpers.dicom import (
    APEX,
    BASE_POSITION,
    COLS,
    GAP,
    PIXEL_SPACING,
    ROWS,
    SAX_COL,
    SAX_ROW,
    apex_ward,
    make_dataset,
    pixel_value,
    write,
    write_stack,
)
from helpers.quarantine import quarantined_inputs
from pydicom.uid import generate_uid
from rich.console import Console

from data_shards.convert import QUARANTINE, convert
from data_shards.preprocess import PreprocessConfig
from data_shards.privacy import scrub
from data_shards.record import BACKGROUND, IGNORE, LV, MYO, Subject
from data_shards.sources import SourceError
from data_shards.sources.dicom import dicom

SUNNYBROOK = DATA / "sunnybrook"


def only(items: list) -> Subject:
    assert len(items) == 1, items
    assert isinstance(items[0], Subject), items[0]
    return items[0]


# --- geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("flip_normal", [False, True], ids=["normal_to_apex", "normal_to_base"])
def test_slices_run_base_to_apex_and_frames_by_trigger_time(tmp_path, flip_normal):
    # Swapping row and column cosines flips the normal: the slice order must not depend on it.
    row, col = (SAX_COL, SAX_ROW) if flip_normal else (SAX_ROW, SAX_COL)
    write_stack(tmp_path / "study", row=row, col=col)
    subject = only(list(dicom(tmp_path, salt="s")))
    assert subject.image.shape == (3, 4, ROWS, COLS)
    assert subject.image.dtype == np.float32
    for k in range(3):
        for t in range(4):
            assert subject.image[k, t, 5, 5] == pixel_value(k, t)
            assert subject.image[k, t, 0, 1] == pixel_value(k, t) + 5  # (H, W) = (rows, columns)
    assert subject.spacing == pytest.approx((GAP, *PIXEL_SPACING), abs=1e-3)
    meta = subject.meta
    assert meta["modality"] == "cine" and meta["source"] == "dicom"
    assert meta["trigger_times_ms"] == [12.0, 57.0, 102.0, 147.0]
    direction = np.array(meta["direction"])
    assert direction[0] @ APEX > 0
    np.testing.assert_allclose(direction, [apex_ward(row, col), col, row], atol=1e-5)
    np.testing.assert_allclose(meta["origin"], BASE_POSITION, atol=1e-3)
    for k in range(3):  # origin + k dz S lands on slice k
        expected = BASE_POSITION + k * GAP * apex_ward(row, col)
        np.testing.assert_allclose(meta["origin"] + k * subject.spacing[0] * direction[0], expected, atol=1e-3)  # fmt: skip


def test_frames_fall_back_to_instance_number(tmp_path):
    paths = write_stack(tmp_path / "study", TriggerTime=None)
    subject = only(list(dicom(tmp_path, salt="s")))
    # write_stack numbers instances backwards in time, so this order is frame 3, 2, 1, 0.
    assert [subject.image[0, t, 5, 5] for t in range(4)] == [pixel_value(0, t) for t in (3, 2, 1, 0)]  # fmt: skip
    assert "trigger_times_ms" not in subject.meta
    assert len(paths) == 12


def test_rescale_slope_and_intercept_apply_per_file(tmp_path):
    paths = write_stack(tmp_path / "study", RescaleSlope=2.5, RescaleIntercept=-100)
    ds = pydicom.dcmread(paths[1, 2])
    ds.RescaleSlope = 0.5  # another slope for one image, as scanners do per image
    write(paths[1, 2], ds)
    image = only(list(dicom(tmp_path, salt="s"))).image
    assert image.dtype == np.float32
    assert image[0, 0, 5, 5] == pixel_value(0, 0) * 2.5 - 100
    assert image[1, 2, 5, 5] == pixel_value(1, 2) * 0.5 - 100


def test_single_image_is_lge_with_header_slice_thickness(tmp_path):
    write(tmp_path / "study" / "x.dcm", make_dataset(np.ones((ROWS, COLS)), BASE_POSITION))
    subject = only(list(dicom(tmp_path, salt="s")))
    assert subject.image.shape == (1, 1, ROWS, COLS)
    assert subject.meta["modality"] == "lge" and subject.meta["ed"] == subject.meta["es"] == 0
    assert subject.spacing == pytest.approx((GAP, *PIXEL_SPACING))


def test_localiser_beside_a_cine_stack_is_left_out(tmp_path):
    write_stack(tmp_path / "study")
    localiser = make_dataset(np.ones((ROWS, COLS)), BASE_POSITION, series="1.2.3.9")
    write(tmp_path / "study" / "localiser.dcm", localiser)
    assert only(list(dicom(tmp_path, salt="s"))).image.shape == (3, 4, ROWS, COLS)


def test_root_that_is_one_study_and_limit(tmp_path):
    write_stack(tmp_path / "a")
    write_stack(tmp_path / "b")
    assert only(list(dicom(tmp_path / "a", salt="s"))).image.shape[:2] == (3, 4)
    assert len(list(dicom(tmp_path, salt="s"))) == 2
    assert len(list(dicom(tmp_path, salt="s", limit=1))) == 1


def test_subject_ids_are_salted_hashes_and_split_by_patient(tmp_path):
    write_stack(tmp_path / "a", PatientID="same")
    write_stack(tmp_path / "b", PatientID="same", SeriesInstanceUID="1.2.3.7")
    a, b = dicom(tmp_path, salt="s")
    assert a.subject != b.subject  # two stacks of one patient stay two subjects
    assert a.meta["split_group"] == b.meta["split_group"]  # ... in one split
    assert a.subject.startswith("dicom-") and len(a.subject) == len("dicom-") + 12
    assert [s.subject for s in dicom(tmp_path, salt="s")] == [a.subject, b.subject]
    assert {s.subject for s in dicom(tmp_path, salt="other")}.isdisjoint({a.subject, b.subject})


@pytest.mark.parametrize("make", ["missing", "empty", "no_dicom"])
def test_missing_or_empty_root_raises(tmp_path, make):
    root = tmp_path / "root"
    if make != "missing":
        root.mkdir()
    if make == "no_dicom":
        (root / "study").mkdir()
        (root / "study" / "notes.txt").write_text("nothing here")
    with pytest.raises(FileNotFoundError, match="root"):
        dicom(root, salt="s")


# --- broken inputs, through convert ---------------------------------------------------------


def _truncate(path: Path, keep: int | None = None, cut: int = 0) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep is not None else data[:-cut])


def _edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    write(path, ds)


def _no_pixels(folder: Path) -> tuple[Path, str]:
    path = write_stack(folder)[1, 1]
    _edit(path, PixelData=None)
    return path, "without pixel data"


def _truncated_pixels(folder: Path) -> tuple[Path, str]:
    path = write_stack(folder)[2, 3]
    _truncate(path, cut=50)
    return path, "unreadable pixel data"


def _truncated_header(folder: Path) -> tuple[Path, str]:
    path = write_stack(folder)[0, 2]
    _truncate(path, keep=200)  # the DICM marker survives, the image does not
    return path, "without pixel data"


def _not_dicom(folder: Path) -> tuple[Path, str]:
    write_stack(folder)
    path = folder / "zz_export.dcm"
    path.write_text("this export failed\n")
    return path, "not a DICOM file"


def _mixed_series(folder: Path) -> tuple[Path, str]:
    write_stack(folder / "one", SeriesDescription="SA cine")
    write_stack(folder / "two", SeriesDescription="SA cine again")
    problem = "mixed series: 2 series (image counts [12, 12]), 2 of them cine stacks"
    return folder, problem


def _missing_instance(folder: Path) -> tuple[Path, str]:
    write_stack(folder)[1, 3].unlink()
    return folder, "missing instances"


def _duplicate_instance(folder: Path) -> tuple[Path, str]:
    original = write_stack(folder)[2, 1]
    copy = folder / "zz_copy.dcm"  # sorts after every original
    shutil.copy(original, copy)
    _edit(copy, SOPInstanceUID=generate_uid())
    return copy, f"duplicate instance: same position and TriggerTime as {original.name}"


def _orientation(folder: Path) -> tuple[Path, str]:
    path = write_stack(folder)[1, 0]
    _edit(path, ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    return path, "inconsistent orientation"


def _no_spacing(folder: Path) -> tuple[Path, str]:
    path = write_stack(folder)[0, 3]
    _edit(path, PixelSpacing=None)
    return path, "missing or invalid PixelSpacing"


def _no_position(folder: Path) -> tuple[Path, str]:
    path = write_stack(folder)[2, 2]
    _edit(path, ImagePositionPatient=None)
    return path, "missing or invalid ImagePositionPatient"


def _image_size(folder: Path) -> tuple[Path, str]:
    paths = write_stack(folder)
    ds = pydicom.dcmread(paths[1, 1])
    ds.Rows, ds.Columns = 8, 8
    ds.PixelData = np.zeros((8, 8), "<i2").tobytes()
    write(paths[1, 1], ds)
    return paths[1, 1], "image size"


def _missing_slice(folder: Path) -> tuple[Path, str]:
    write_stack(folder, slices=4, skip=(2,))
    return folder, "uneven slice gaps"


def _empty_study(folder: Path) -> tuple[Path, str]:
    folder.mkdir()
    return folder, "no DICOM files in this study folder (it is empty)"


def _only_other_files(folder: Path) -> tuple[Path, str]:
    folder.mkdir()
    (folder / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    return folder, "no DICOM files in this study folder (1 files, none of them DICOM)"


BREAKAGES = {
    "empty_study": _empty_study,
    "only_other_files": _only_other_files,
    "no_pixels": _no_pixels,
    "truncated_pixels": _truncated_pixels,
    "truncated_header": _truncated_header,
    "not_dicom": _not_dicom,
    "mixed_series": _mixed_series,
    "missing_instance": _missing_instance,
    "duplicate_instance": _duplicate_instance,
    "orientation": _orientation,
    "no_spacing": _no_spacing,
    "no_position": _no_position,
    "image_size": _image_size,
    "missing_slice": _missing_slice,
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[dict, list[dict], dict[str, tuple[Path, str]], Path]:
    """One root with two good studies (one with stray non-image files) and every breakage;
    quarantine entries come with the local path each names (found again by its keyed id)."""
    root = tmp_path_factory.mktemp("dicom_root")
    write_stack(root / "good")
    write_stack(root / "good_with_strays")
    (root / "good_with_strays" / "notes.txt").write_text("scanned on a Tuesday\n")
    (root / "good_with_strays" / ".DS_Store").write_bytes(b"\x00\x01junk")
    dicomdir = make_dataset(np.ones((2, 2)), BASE_POSITION, PixelData=None)
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    write(root / "good_with_strays" / "DICOMDIR", dicomdir)
    expected = {name: make(root / name) for name, make in BREAKAGES.items()}
    out = tmp_path_factory.mktemp("dicom_out")
    console = Console(file=StringIO(), width=120)
    config = PreprocessConfig(spacing=1.5, size=16)
    manifest = convert("dicom", root, out, preprocess_config=config, console=console)
    quarantine = json.loads((out / QUARANTINE).read_text())
    for entry, path in zip(quarantine, quarantined_inputs(out, root), strict=True):
        entry["path"] = path
    return manifest, quarantine, expected, root


def test_good_studies_convert_despite_broken_ones(converted):
    manifest, quarantine, expected, _ = converted
    assert len(manifest["samples"]) == 2  # good and good_with_strays
    assert manifest["quarantined"] == len(quarantine) == len(expected)


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_study_is_quarantined_naming_file_and_problem(converted, breakage):
    _, quarantine, expected, root = converted
    path, problem = expected[breakage]
    entries = [e for e in quarantine if e["path"] == path]
    assert len(entries) == 1, quarantine
    # The reason as written: local names (the file's, its neighbours') replaced by its keyed id.
    assert scrub(problem, path, root, entries[0]["input"]) in entries[0]["reason"]


# --- contours (Sunnybrook layout) -------------------------------------------------------------

CONTOUR_SHAPE = (14, 16)  # H, W
RECTANGLES = {  # (x0, x1, y0, y1) on pixel edges: pixel centres are never on the boundary
    "ed_i": (3.5, 10.5, 4.5, 8.5),  # columns 4..10, rows 5..8
    "ed_o": (1.5, 12.5, 2.5, 10.5),  # columns 2..12, rows 3..10
    "es_i": (5.5, 8.5, 5.5, 7.5),  # columns 6..8, rows 6..7
}
ED, ES = 2, 0  # the smaller cavity comes first in time: ED must come from area, not order


def _box(name: str) -> np.ndarray:
    x0, x1, y0, y1 = RECTANGLES[name]
    mask = np.zeros(CONTOUR_SHAPE, bool)
    mask[int(y0 + 0.5) : int(y1 + 0.5), int(x0 + 0.5) : int(x1 + 0.5)] = True
    return mask


def _write_contour(folder: Path, instance: int, kind: str, name: str) -> Path:
    x0, x1, y0, y1 = RECTANGLES[name]
    path = folder / f"{kind}-contours" / f"IM-0001-{instance:04d}-{kind}contour-manual.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))  # fmt: skip
    return path


def _instance(k: int, t: int, frames: int = 4) -> int:
    return k * frames + (frames - t)  # write_stack's numbering


@pytest.fixture
def sunnybrook_like(tmp_path) -> Path:
    """root/dicoms/study_x, root/contourfiles/SC-HF-I-9 (i at ED and ES, o at ED), link.csv."""
    root = tmp_path / "sunny"
    write_stack(root / "dicoms" / "study_x", shape=CONTOUR_SHAPE)
    contours = root / "contourfiles" / "SC-HF-I-9"
    for k in (0, 1, 2):
        _write_contour(contours, _instance(k, ED), "i", "ed_i")
    for k in (0, 1):  # slice 2 has no epicardium at ED
        _write_contour(contours, _instance(k, ED), "o", "ed_o")
    for k in (0, 2):  # slice 1 has no contour at ES
        _write_contour(contours, _instance(k, ES), "i", "es_i")
    (root / "link.csv").write_text("patient_id,original_id\nstudy_x,SC-HF-I-9\n")
    return root


def test_contours_become_labels_with_ignore_where_unknown(sunnybrook_like):
    subject = only(list(dicom(sunnybrook_like, salt="s")))
    label, meta = subject.label, subject.meta
    assert label.shape == subject.image.shape and label.dtype == np.uint8
    assert (meta["ed"], meta["es"]) == (ED, ES)
    assert meta["group"] == "HF-I"
    lv, ring = _box("ed_i"), _box("ed_o") & ~_box("ed_i")
    for k in (0, 1):  # both contours: every pixel known
        expected = np.full(CONTOUR_SHAPE, BACKGROUND)
        expected[ring], expected[lv] = MYO, LV
        np.testing.assert_array_equal(label[k, ED], expected)
    # Endocardium only: the myocardium is unknown, so everything but the cavity is IGNORE.
    np.testing.assert_array_equal(label[2, ED], np.where(lv, LV, IGNORE))
    np.testing.assert_array_equal(label[0, ES], np.where(_box("es_i"), LV, IGNORE))
    assert (label[1, ES] == IGNORE).all()  # no contour on this slice
    for t in (1, 3):
        assert (label[:, t] == IGNORE).all()  # frames without ground truth


def test_sunnybrook_layout_is_found_from_dicoms_folder_or_given(sunnybrook_like):
    top = only(list(dicom(sunnybrook_like, salt="s")))
    inner = only(list(dicom(sunnybrook_like / "dicoms", salt="s")))
    given = only(list(dicom(sunnybrook_like / "dicoms", salt="s",
                            contours=sunnybrook_like / "contourfiles",
                            link=sunnybrook_like / "link.csv")))  # fmt: skip
    for other in (inner, given):
        assert other.subject == top.subject
        np.testing.assert_array_equal(other.label, top.label)


@pytest.mark.parametrize("start", ["top", "dicoms", "link_without_row"])
def test_contours_no_link_matches_are_named_not_silently_dropped(sunnybrook_like, start):
    """Without a link.csv row (or file) the contour folder is not guessed from instance numbers
    (every Sunnybrook study numbers its images from 1): a warning names it, the study is
    unlabelled and says why in meta."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # linked: nothing to report
        assert only(list(dicom(sunnybrook_like, salt="s"))).label is not None
    link = sunnybrook_like / "link.csv"
    if start == "link_without_row":
        link.write_text("patient_id,original_id\nstudy_y,SC-HF-I-9\n")
    else:
        link.unlink()
    root = sunnybrook_like / "dicoms" if start == "dicoms" else sunnybrook_like
    why = "no row in link.csv" if start == "link_without_row" else "no link.csv"
    with pytest.warns(UserWarning, match=rf"contour folders not used \(SC-HF-I-9\): {why}") as got:
        subject = only(list(dicom(root, salt="s")))
    assert str(sunnybrook_like / "contourfiles") in str(got[0].message)
    assert subject.label is None
    assert subject.meta["contours_note"] == (
        f"contours under contourfiles/ matched no study ({why}): SC-HF-I-9"
    )


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        ("unknown_instance", "instance 999 is not in the DICOM series"),
        ("bad_line", "line 2: expected 'x y'"),
        ("off_image", "points outside the 16 x 14 image"),
    ],
)
def test_contour_errors_name_the_contour_file(sunnybrook_like, breakage, problem):
    folder = sunnybrook_like / "contourfiles" / "SC-HF-I-9"
    path = _write_contour(folder, 999 if breakage == "unknown_instance" else 1, "o", "ed_o")
    if breakage == "bad_line":
        path.write_text("1.5 2.5\n3.0,4.0\n5 6\n")
    if breakage == "off_image":
        path.write_text("1 1\n40 1\n40 5\n")
    error = next(dicom(sunnybrook_like, salt="s"))
    assert isinstance(error, SourceError)
    assert error.path == path and problem in error.reason


# --- real data ----------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not SUNNYBROOK.exists(), reason="needs ../shared/data/sunnybrook")
def test_real_sunnybrook_converts_both_subjects_with_labels(tmp_path):
    console = Console(file=StringIO(), width=120)
    manifest = convert("dicom", SUNNYBROOK, tmp_path, preprocess_config=PreprocessConfig(),
                       source_options={"salt": "s"}, console=console)  # fmt: skip
    assert json.loads((tmp_path / QUARANTINE).read_text()) == []
    samples = manifest["samples"]
    # SCD0000301 has 10 slices, SCD0000401 11 (220 files); both 20 phases.
    assert sorted(s["shape"][:2] for s in samples) == [[10, 20], [11, 20]]
    assert all(s["has_label"] and s["modality"] == "cine" for s in samples)


@pytest.mark.realdata
@pytest.mark.skipif(not SUNNYBROOK.exists(), reason="needs ../shared/data/sunnybrook")
def test_real_sunnybrook_contours_sit_on_the_bright_blood_pool():
    for subject in dicom(SUNNYBROOK, salt="s"):
        assert isinstance(subject, Subject), subject
        label, ed, es = subject.label, subject.meta["ed"], subject.meta["es"]
        assert set(np.unique(label)) == {BACKGROUND, LV, MYO, IGNORE}
        assert (label[:, es] == LV).sum() < (label[:, ed] == LV).sum()  # ES: the smaller cavity
        assert not (label[:, es] == MYO).any()  # no epicardium at ES
        image = subject.image[:, ed]
        lv, myo = label[:, ed] == LV, label[:, ed] == MYO
        # Cine (bSSFP) blood is about 2-3x brighter than myocardium; with x and y swapped the
        # same masks fall off the cavity and the contrast collapses.
        contrast = image[lv].mean() / image[myo].mean()
        swapped = image.swapaxes(1, 2)
        assert contrast > 1.5
        assert contrast > 1.3 * swapped[lv].mean() / swapped[myo].mean()


def test_link_without_contours_and_missing_contours_fail_early(tmp_path):
    write_stack(tmp_path / "study")
    (tmp_path / "link.csv").write_text("study,case\n")
    with pytest.raises(ValueError, match="needs contours"):
        dicom(tmp_path, salt="s", link=tmp_path / "link.csv")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        dicom(tmp_path, salt="s", contours=tmp_path / "nowhere")


def test_one_series_of_two_patients_is_an_error(tmp_path):
    paths = write_stack(tmp_path / "study")
    _edit(paths[2, 0], PatientID="someone else")
    error = next(dicom(tmp_path, salt="s"))
    assert isinstance(error, SourceError) and error.path == tmp_path / "study"
    assert "2 different PatientIDs" in error.reason and "someone" not in error.reason
