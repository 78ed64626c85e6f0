"""Sources: the registry, a contract every source keeps, and ACDC's tricky parts on a fake folder."""

from __future__ import annotations

import gzip
import math
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import DATA
from helpers.acdc_cine import write_cine
from helpers.dicom import write_stack
from PIL import Image

from data_shards.record import BACKGROUND, IGNORE, LABEL_NAMES, LV, MYO, RV, Subject
from data_shards.sources import SOURCES, SourceError, get_source, register_source
from data_shards.sources.acdc import acdc

REAL_ACDC = DATA / "acdc" / "training"

# Fake volumes: (X, Y, Z) as nibabel stores them, deliberately not square.
SHAPE_XYZ = (12, 10, 3)
ZOOMS = (1.25, 1.5, 8.0)  # dx, dy, dz
INFO = {"ED": 1, "ES": 5, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0}


def write_nifti(path: Path, data: np.ndarray, zooms=ZOOMS) -> None:
    img = nib.Nifti1Image(data, affine=np.diag([*zooms, 1.0]))
    img.header.set_zooms(zooms)
    nib.save(img, path)


def acdc_label() -> np.ndarray:
    """(X, Y, Z) ACDC labels: RV (1), myocardium (2) and LV (3) at known voxels."""
    gt = np.zeros(SHAPE_XYZ, np.uint8)
    gt[1, 2, 0] = 3  # LV
    gt[4, 7, 1] = 2  # myocardium
    gt[10, 0, 2] = 1  # RV
    return gt


def make_patient(root: Path, name: str, info=None, ed_value=100.0, es_value=200.0, gt=("ED", "ES")):
    """A patient folder like ACDC's; image voxels are ed_value / es_value so order is visible."""
    folder = root / name
    folder.mkdir(parents=True)
    info = {**INFO, **(info or {})}
    (folder / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    for key, value in (("ED", ed_value), ("ES", es_value)):
        stem = f"{name}_frame{info[key]:02d}"
        image = np.full(SHAPE_XYZ, value, np.float32)
        image[0, 0, 0] = value + 1  # a marker at X = 0, Y = 0, Z = 0
        write_nifti(folder / f"{stem}.nii.gz", image)
        if key in gt:
            write_nifti(folder / f"{stem}_gt.nii.gz", acdc_label())
    return folder


@pytest.fixture
def acdc_root(tmp_path: Path) -> Path:
    root = tmp_path / "training"
    make_patient(root, "patient001")
    make_patient(root, "patient002", info={"ED": 10, "ES": 3, "Group": "HCM"})  # ED after ES
    bad = make_patient(root, "patient003")  # truncated gzip
    es_file = bad / "patient003_frame05.nii.gz"
    data = es_file.read_bytes()
    es_file.write_bytes(data[: len(data) // 2])
    bad = make_patient(root, "patient004")  # a label value ACDC does not have
    gt = acdc_label()
    gt[5, 5, 1] = 7
    write_nifti(bad / "patient004_frame05_gt.nii.gz", gt)
    make_patient(root, "patient005", gt=("ED",))  # ES never annotated
    (root / "MANDATORY_CITATION.md").write_text("cite")  # files beside folders are ignored
    return root


def by_name(items):
    return {(i.subject if isinstance(i, Subject) else Path(i.path).parent.name): i for i in items}


# --- registry -------------------------------------------------------------------------------


def test_builtin_sources_are_registered():
    assert {"acdc", "phantom"} <= set(SOURCES)
    assert get_source("acdc") is acdc


@pytest.mark.parametrize("error", [KeyError, ValueError])
def test_unknown_source_lists_known_names(error):
    with pytest.raises(error) as info:
        get_source("ukbb")
    message = str(info.value)
    assert "ukbb" in message and "acdc" in message and "phantom" in message


def test_registering_a_taken_name_fails():
    with pytest.raises(ValueError, match="acdc"):
        register_source("acdc")(lambda root: iter(()))


def test_source_error_message_and_pickle(tmp_path):
    err = SourceError(tmp_path / "x.nii.gz", "truncated")
    assert str(err) == f"{tmp_path / 'x.nii.gz'}: truncated"
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.reason, str(again)) == (err.path, err.reason, str(err))


# --- the contract every registered source keeps ----------------------------------------------


@pytest.fixture
def source_kwargs(acdc_root, tmp_path):
    """Small, fast arguments per source; a new source must add itself here."""
    npz_root, emidec_root = tmp_path / "npz", tmp_path / "emidec"
    npz_root.mkdir()
    np.savez(npz_root / "a.npz", cine=np.ones((2, 3, 8, 8)), spacing=np.array([1.5, 1.5]), ed=0)
    for folder in ("train", "trainannot"):
        (emidec_root / folder).mkdir(parents=True)
        for s in range(2):  # a mask doubles as an image: values 0 and 1 are both valid
            Image.fromarray(np.full((8, 8), s, np.uint8)).save(
                emidec_root / folder / f"Case_P001_slice{s:03d}.png"
            )
    for n in (1, 2):
        write_stack(tmp_path / "dicom" / f"study{n}", slices=2, frames=3, PatientID=f"P{n}")
    for name in ("patient001", "patient002"):
        write_cine(tmp_path / "acdc_cine", name)
    return {
        "dicom": {"root": tmp_path / "dicom", "salt": "contract"},
        "npz": {"root": npz_root},
        "lge-slices": {"root": emidec_root},
        "acdc": {"root": acdc_root, "subjects": ["patient001", "patient005"]},
        "acdc-cine": {"root": tmp_path / "acdc_cine"},
        "phantom": {"root": None, "n": 2, "slices": 2, "frames": 3, "size": 32},
        "nifti": {"root": acdc_root / "patient001", "label_map": "acdc"},
    }


def test_every_source_has_contract_arguments(source_kwargs):
    assert set(source_kwargs) == set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_source_contract(name, source_kwargs):
    items = list(get_source(name)(**source_kwargs[name]))
    assert items
    for subject in items:
        assert isinstance(subject, Subject), subject
        assert subject.image.ndim == 4 and np.isfinite(subject.image).all()
        t = subject.image.shape[1]
        if subject.label is not None:
            assert subject.label.dtype == np.uint8
            assert set(np.unique(subject.label)) <= {*LABEL_NAMES, IGNORE}
        dz, dy, dx = subject.spacing
        assert all(math.isnan(v) or v > 0 for v in (dz, dy, dx))  # NaN: unknown
        assert subject.meta["source"] == name
        assert subject.meta["modality"] in ("cine", "lge")
        assert subject.meta["split_group"]
        if "ed" in subject.meta:  # absent where unknown (unlabelled cine), never guessed
            assert 0 <= subject.meta["ed"] < t
    # A stable order (hashed ids need not sort) and unique ids, so resume can skip by id.
    ids = [s.subject for s in items]
    assert len(set(ids)) == len(ids)
    assert [s.subject for s in get_source(name)(**source_kwargs[name])] == ids


# --- ACDC ------------------------------------------------------------------------------------


def test_acdc_good_patients_convert(acdc_root):
    items = by_name(acdc(acdc_root))
    subject = items["acdc-patient001"]
    assert subject.image.shape == subject.label.shape == (3, 2, 10, 12)  # (Z, 2, Y, X)
    assert subject.image.dtype == np.float32
    assert subject.spacing == (8.0, 1.5, 1.25)  # (dz, dy, dx)
    assert subject.meta == {
        "source": "acdc",
        "modality": "cine",
        "ed": 0,
        "es": 1,
        "ed_frame": 1,
        "es_frame": 5,
        "n_frames": 30,
        "group": "DCM",
        "height": 184.0,
        "weight": 95.0,
        "split_group": "acdc-patient001",
        "frames_source": "ed_es",
        # write_nifti's RAS affine diag(dx, dy, dz) in LPS: x and y change sign.
        "direction": [[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]],
        "origin": [0.0, 0.0, 0.0],
    }


def test_acdc_label_mapping_and_axes(acdc_root):
    label = by_name(acdc(acdc_root))["acdc-patient001"].label
    for t in (0, 1):
        assert label[0, t, 2, 1] == LV  # ACDC 3 at X=1, Y=2, Z=0
        assert label[1, t, 7, 4] == MYO  # ACDC 2 at X=4, Y=7, Z=1
        assert label[2, t, 0, 10] == RV  # ACDC 1 at X=10, Y=0, Z=2
        assert np.count_nonzero(label[:, t]) == 3
    assert label[0, 0, 0, 0] == BACKGROUND
    assert set(np.unique(label)) == {BACKGROUND, LV, MYO, RV}


def test_acdc_frames_are_ed_then_es(acdc_root):
    items = by_name(acdc(acdc_root))
    normal = items["acdc-patient001"]
    assert normal.image[0, 0, 0, 0] == 101.0 and normal.image[0, 1, 0, 0] == 201.0
    assert normal.image[1, 0, 1, 1] == 100.0 and normal.image[1, 1, 1, 1] == 200.0
    swapped = items["acdc-patient002"]  # Info.cfg ED: 10, ES: 3
    assert swapped.image[1, 0, 1, 1] == 100.0 and swapped.image[1, 1, 1, 1] == 200.0
    assert (swapped.meta["ed_frame"], swapped.meta["es_frame"]) == (10, 3)
    assert swapped.meta["group"] == "HCM"


def test_acdc_missing_gt_frame_is_ignore(acdc_root):
    label = by_name(acdc(acdc_root))["acdc-patient005"].label
    assert (label[:, 1] == IGNORE).all()
    assert label[0, 0, 2, 1] == LV and not (label[:, 0] == IGNORE).any()


def test_acdc_no_gt_at_all_gives_no_label(tmp_path):
    make_patient(tmp_path, "patient001", gt=())
    (subject,) = acdc(tmp_path)
    assert subject.label is None


def test_acdc_broken_patients_are_yielded_as_errors(acdc_root):
    items = list(acdc(acdc_root))
    assert len(items) == 5
    names = [i.subject if isinstance(i, Subject) else Path(i.path).parent.name for i in items]
    assert names == [
        "acdc-patient001",
        "acdc-patient002",
        "patient003",
        "patient004",
        "acdc-patient005",
    ]
    truncated, bad_value = items[2], items[3]
    assert isinstance(truncated, SourceError) and isinstance(bad_value, SourceError)
    assert Path(truncated.path).name == "patient003_frame05.nii.gz"
    assert "patient003_frame05.nii.gz" in str(truncated) and "unreadable" in str(truncated)
    assert Path(bad_value.path).name == "patient004_frame05_gt.nii.gz"
    assert "[7]" in bad_value.reason and "patient004_frame05_gt.nii.gz" in str(bad_value)


@pytest.mark.parametrize(
    ("breakage", "file", "problem"),
    [
        ("no_info", "Info.cfg", "cannot read"),
        ("no_es_key", "Info.cfg", "ES"),
        ("bad_height", "Info.cfg", "Height"),
        ("no_es_image", "patient001_frame05.nii.gz", "not found"),
        ("nan_voxel", "patient001_frame01.nii.gz", "non-finite"),
        ("shape_mismatch", "patient001_frame05_gt.nii.gz", "shape"),
        ("not_gzip", "patient001_frame01.nii.gz", "unreadable"),
    ],
)
def test_acdc_errors_name_file_and_problem(tmp_path, breakage, file, problem):
    folder = make_patient(tmp_path, "patient001")
    make_patient(tmp_path, "patient002")
    info = folder / "Info.cfg"
    if breakage == "no_info":
        info.unlink()
    elif breakage == "no_es_key":
        info.write_text(info.read_text().replace("ES: 5\n", ""))
    elif breakage == "bad_height":
        info.write_text(info.read_text().replace("Height: 184.0", "Height: tall"))
    elif breakage == "no_es_image":
        (folder / file).unlink()
    elif breakage == "nan_voxel":
        image = np.zeros(SHAPE_XYZ, np.float32)
        image[3, 3, 1] = np.nan
        write_nifti(folder / file, image)
    elif breakage == "shape_mismatch":
        write_nifti(folder / file, np.zeros((12, 10, 4), np.uint8))
    elif breakage == "not_gzip":
        with gzip.open(folder / file, "wb") as f:
            f.write(b"not a nifti header")

    err, good = acdc(tmp_path)
    assert isinstance(err, SourceError), err
    assert Path(err.path).name == file
    assert problem in err.reason and file in str(err)
    assert isinstance(good, Subject) and good.subject == "acdc-patient002"


@pytest.mark.parametrize(
    "edit",
    [
        {"Height": None, "Weight": None},
        {"Group": None},
        {"Height": "", "Weight": "NA", "Group": ""},
    ],
    ids=["no_height_weight", "no_group", "empty_values"],
)
def test_acdc_info_without_group_height_or_weight_converts_them_as_unknown(tmp_path, edit):
    """Only ED, ES and NbFrame are needed; a missing or empty Group, Height or Weight is None."""
    info = {k: v for k, v in INFO.items() if k not in edit or edit[k] is not None}
    info |= {k: v for k, v in edit.items() if v is not None}
    folder = make_patient(tmp_path, "patient001")
    (folder / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    (subject,) = acdc(tmp_path)
    assert isinstance(subject, Subject), subject
    for key in edit:
        assert subject.meta[key.lower()] is None
    kept = {"group": "DCM", "height": 184.0, "weight": 95.0}
    assert all(subject.meta[k] == v for k, v in kept.items() if k.title() not in edit)


def test_acdc_074_and_076_share_a_split_group(tmp_path):
    for name in ("patient073", "patient074", "patient076"):
        make_patient(tmp_path, name)
    groups = {s.subject: s.meta["split_group"] for s in acdc(tmp_path)}
    assert groups == {
        "acdc-patient073": "acdc-patient073",
        "acdc-patient074": "acdc-patient074",
        "acdc-patient076": "acdc-patient074",
    }


def test_acdc_subjects_and_limit(acdc_root):
    picked = [s.subject for s in acdc(acdc_root, subjects=["patient002", "acdc-patient001"])]
    assert picked == ["acdc-patient001", "acdc-patient002"]
    assert [s.subject for s in acdc(acdc_root, limit=2)] == picked
    with pytest.raises(FileNotFoundError, match="patient999"):
        acdc(acdc_root, subjects=["patient999"])


def test_acdc_reads_lazily(acdc_root, monkeypatch):
    import data_shards.sources.acdc as module

    calls = []
    real = module.read_patient
    monkeypatch.setattr(
        module, "read_patient", lambda folder, **kw: calls.append(folder) or real(folder, **kw)
    )
    items = acdc(acdc_root)
    assert calls == []
    next(items)
    assert [p.name for p in calls] == ["patient001"]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_acdc_missing_or_empty_root_raises(tmp_path, make):
    root = tmp_path / "training"
    if make == "empty":
        root.mkdir()
    with pytest.raises(FileNotFoundError, match=str(root)):
        acdc(root)


# --- phantom ---------------------------------------------------------------------------------


def test_phantom_source_shapes_and_lge():
    subjects = list(get_source("phantom")(n=2, slices=2, frames=3, size=32, spacing=2.5))
    assert [s.image.shape for s in subjects] == [(2, 3, 32, 32)] * 2
    assert subjects[0].spacing[1:] == (2.5, 2.5)
    assert [s.meta["split_group"] for s in subjects] == [s.subject for s in subjects]
    (lge,) = get_source("phantom")(n=1, slices=2, size=32, lge_fraction=1.0)
    assert lge.image.shape[1] == 1 and lge.meta["modality"] == "lge"


# --- real data -------------------------------------------------------------------------------


def centroid_in_bbox(inner: np.ndarray, outer: np.ndarray) -> bool:
    """Whether the centroid of 2D mask ``inner`` lies inside the bounding box of ``outer``."""
    cy, cx = (float(np.mean(v)) for v in np.nonzero(inner))
    ys, xs = np.nonzero(outer)
    return ys.min() <= cy <= ys.max() and xs.min() <= cx <= xs.max()


@pytest.mark.realdata
def test_real_acdc_labels_map_to_our_anatomy():
    if not REAL_ACDC.is_dir():
        pytest.skip(f"real ACDC not found at {REAL_ACDC} (see ../shared/data/README.md)")
    subjects = list(acdc(REAL_ACDC, subjects=["patient001", "patient090"]))
    assert [s.subject for s in subjects] == ["acdc-patient001", "acdc-patient090"]
    for subject in subjects:
        assert isinstance(subject, Subject), subject
        label = subject.label[:, [subject.meta["ed"], subject.meta["es"]]]  # patient090: a 4D cine
        assert set(np.unique(label)) == {BACKGROUND, LV, MYO, RV}
        # The myocardium rings the LV cavity, not the RV: check slice by slice.
        lv_inside = rv_inside = n = 0
        for s in range(label.shape[0]):
            for t in range(label.shape[1]):
                frame = label[s, t]
                if not ((frame == MYO).any() and (frame == LV).any() and (frame == RV).any()):
                    continue
                n += 1
                lv_inside += centroid_in_bbox(frame == LV, frame == MYO)
                rv_inside += centroid_in_bbox(frame == RV, frame == MYO)
        assert n > 0 and lv_inside / n > 0.9 and lv_inside > rv_inside
        # ED comes first: the LV cavity is largest at end diastole.
        lv_volume = (label == LV).sum(axis=(0, 2, 3))
        assert lv_volume[0] > lv_volume[1]
