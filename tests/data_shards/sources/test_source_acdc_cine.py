"""The ``acdc-cine`` source: cropped ACDC 4D cines, unlabelled, with ACDC's ids and splits."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import DATA
from helpers.acdc_cine import cine_xyzt, write_cine, write_nifti
from helpers.nifti import patch_header
from helpers.quarantine import quarantined_inputs
from rich.console import Console

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.record import Subject
from data_shards.sources import SourceError, get_source
from data_shards.sources.acdc import acdc
from data_shards.sources.acdc_cine import acdc_cine
from data_shards.split import assign_split, subject_split

REAL_CINE = DATA / "acdc_cine"
REAL_ACDC = DATA / "acdc" / "training"


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def by_name(items) -> dict:
    return {i.subject if isinstance(i, Subject) else Path(i.path).name: i for i in items}


# --- good files ------------------------------------------------------------------------------


def test_registered_as_acdc_cine():
    assert get_source("acdc-cine") is acdc_cine


def test_one_unlabelled_cine_per_file_sorted(tmp_path):
    write_cine(tmp_path, "patient002")
    write_cine(tmp_path, "patient001")
    write_nifti(tmp_path / "patient003_4d.nii", cine_xyzt())  # uncompressed reads too
    (tmp_path / "README.md").write_text("not an image")  # files of other types are ignored
    items = list(acdc_cine(tmp_path))
    assert [s.subject for s in items] == ["acdc-patient001", "acdc-patient002", "acdc-patient003"]
    subject = items[0]
    assert subject.image.dtype == np.float32
    assert subject.image.shape == (3, 5, 10, 12)  # (Z, T, Y, X)
    s, t, h, w = np.indices(subject.image.shape)
    np.testing.assert_array_equal(subject.image, w + 20 * h + 400 * s + 2000 * t)
    assert subject.label is None
    assert subject.spacing == (8.0, 1.5, 1.25)  # (dz, dy, dx)
    # No ed/es: not known for these files, and never guessed. No direction/origin either.
    assert subject.meta == {
        "source": "acdc-cine",
        "modality": "cine",
        "frames_source": "4d",
        "n_frames": 5,
        "split_group": "acdc-patient001",
        "geometry_note": subject.meta["geometry_note"],
    }
    assert "not trusted" in subject.meta["geometry_note"]


def make_acdc_patient(root: Path, name: str, cine: np.ndarray, ed: int = 1, es: int = 4) -> None:
    """An ACDC training folder for ``name`` whose ED/ES files are frames of ``cine`` (X, Y, Z, T)."""
    folder = root / name
    info = {"ED": ed, "ES": es, "Group": "NOR", "Height": 170.0, "NbFrame": 5, "Weight": 70.0}
    for frame in (ed, es):
        write_nifti(folder / f"{name}_frame{frame:02d}.nii.gz", cine[..., frame - 1])
    write_nifti(folder / f"{name}_4d.nii.gz", cine)
    (folder / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))


def test_same_subject_axes_and_spacing_as_the_acdc_source(tmp_path):
    for name in ("patient001", "patient076"):
        make_acdc_patient(tmp_path / "training", name, cine_xyzt())
        write_cine(tmp_path / "cine", name)
    ours = list(acdc_cine(tmp_path / "cine"))
    theirs = list(acdc(tmp_path / "training"))
    for mine, acdc_subject in zip(ours, theirs, strict=True):
        assert acdc_subject.meta["frames_source"] == "4d"
        assert mine.subject == acdc_subject.subject
        assert mine.meta["split_group"] == acdc_subject.meta["split_group"]
        np.testing.assert_array_equal(mine.image, acdc_subject.image)  # same (S, T, H, W)
        assert mine.spacing == acdc_subject.spacing
    assert [s.meta["split_group"] for s in ours] == ["acdc-patient001", "acdc-patient074"]


def test_convert_keeps_the_acdc_split_and_orientation_unknown(tmp_path):
    write_cine(tmp_path / "cine", "patient001")
    out = tmp_path / "shards"
    manifest = convert(
        "acdc-cine",
        tmp_path / "cine",
        out,
        preprocess_config=PreprocessConfig(spacing=1.5, size=16),
        console=quiet(),
    )
    assert json.loads((out / "quarantine.json").read_text()) == []
    (sample,) = manifest["samples"]
    assert sample["subject"] == "acdc-patient001" and not sample["has_label"]
    assert sample["shape"] == [3, 5, 16, 16] and sample["source"] == "acdc-cine"
    assert sample["split"] == assign_split("acdc-patient001")


def test_subjects_limit_and_laziness(tmp_path, monkeypatch):
    import data_shards.sources.acdc_cine as module

    for name in ("patient001", "patient002", "patient003"):
        write_cine(tmp_path, name)
    picked = [s.subject for s in acdc_cine(tmp_path, subjects=["patient003", "acdc-patient001"])]
    assert picked == ["acdc-patient001", "acdc-patient003"]
    assert [s.subject for s in acdc_cine(tmp_path, limit=2)] == [
        "acdc-patient001",
        "acdc-patient002",
    ]
    with pytest.raises(FileNotFoundError, match="patient999"):
        acdc_cine(tmp_path, subjects=["patient999"])
    calls = []
    real = module.read_cine
    monkeypatch.setattr(module, "read_cine", lambda path: calls.append(path) or real(path))
    items = acdc_cine(tmp_path)
    assert calls == []
    next(items)
    assert [p.name for p in calls] == ["patient001_4d.nii.gz"]


@pytest.mark.parametrize("make", ["missing", "empty", "acdc_training_layout"])
def test_missing_or_empty_root_raises(tmp_path, make):
    root = tmp_path / "acdc_cine"
    if make == "empty":
        root.mkdir()
    if make == "acdc_training_layout":  # the patient folders of ACDC's release: another source
        make_acdc_patient(root, "patient001", cine_xyzt())
    with pytest.raises(FileNotFoundError, match=str(root)):
        acdc_cine(root)


# --- bad files -------------------------------------------------------------------------------


def break_file(root: Path, breakage: str) -> str:
    """Write one broken file for patient002 (or a misnamed one); returns its file name."""
    path = root / "patient002_4d.nii.gz"
    if breakage == "truncated":
        data = write_cine(root, "patient002").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif breakage == "not_gzip":
        path.write_bytes(b"not a gzip stream, not a nifti header")
    elif breakage == "three_d":
        write_cine(root, "patient002", cine_xyzt()[..., 0])
    elif breakage == "one_frame":  # (X, Y, Z, 1) is a 3D volume, not a cine
        write_cine(root, "patient002", cine_xyzt()[..., :1])
    elif breakage == "nan":
        data = cine_xyzt().astype(np.float32)
        data[3, 4, 1, 2] = np.nan
        write_cine(root, "patient002", data)
    elif breakage in ("zero_spacing", "negative_spacing"):
        write_cine(root, "patient002")
        pixdim = nib.load(path).header["pixdim"].copy()
        pixdim[1] = 0.0 if breakage == "zero_spacing" else -1.25
        patch_header(path, pixdim=pixdim)
    elif breakage == "misnamed":
        path = write_cine(root, "patient2")
    elif breakage == "ed_file":  # an ACDC ED/ES frame file is not a cine of this folder
        path = write_nifti(root / "patient002_frame01.nii.gz", cine_xyzt()[..., 0])
    return path.name


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        ("truncated", "unreadable NIfTI voxels"),
        ("not_gzip", "unreadable NIfTI header"),
        ("three_d", "expected a 4D"),
        ("one_frame", "expected a 4D"),
        ("nan", "non-finite"),
        ("zero_spacing", "voxel size"),
        ("negative_spacing", "voxel size"),
        ("misnamed", "not named patientNNN_4d.nii.gz"),
        ("ed_file", "not named patientNNN_4d.nii.gz"),
    ],
)
def test_a_bad_file_is_an_error_naming_it_and_the_rest_converts(tmp_path, breakage, problem):
    write_cine(tmp_path, "patient001")
    write_cine(tmp_path, "patient003")
    name = break_file(tmp_path, breakage)
    items = list(acdc_cine(tmp_path))
    errors = [i for i in items if isinstance(i, SourceError)]
    assert len(errors) == 1, items
    (err,) = errors
    assert Path(err.path).name == name
    assert problem in err.reason and name in str(err)
    good = [i.subject for i in items if isinstance(i, Subject)]
    assert good == ["acdc-patient001", "acdc-patient003"]


def test_convert_quarantines_bad_files_and_writes_the_rest(tmp_path):
    root = tmp_path / "cine"
    write_cine(root, "patient001")
    with gzip.open(root / "patient002_4d.nii.gz", "wb") as f:
        f.write(b"not a nifti header")
    write_cine(root, "patient005", cine_xyzt()[..., 0])  # 3D
    out = tmp_path / "shards"
    manifest = convert(
        "acdc-cine", root, out, preprocess_config=PreprocessConfig(size=16), console=quiet()
    )
    quarantine = json.loads((out / "quarantine.json").read_text())
    assert [p.name for p in quarantined_inputs(out, root)] == [
        "patient002_4d.nii.gz",
        "patient005_4d.nii.gz",
    ]
    assert "unreadable" in quarantine[0]["reason"] and "4D" in quarantine[1]["reason"]
    assert [s["subject"] for s in manifest["samples"]] == ["acdc-patient001"]
    assert manifest["quarantined"] == 2


# --- real data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The real folder converted once with the default grid (128 px at 1.5 mm, centre crop)."""
    if not REAL_CINE.is_dir():
        pytest.skip(f"ACDC cines not found at {REAL_CINE} (see ../shared/data/README.md)")
    out = tmp_path_factory.mktemp("acdc_cine")
    manifest = convert(
        "acdc-cine", REAL_CINE, out, preprocess_config=PreprocessConfig(), console=quiet()
    )
    return out, manifest


@pytest.mark.realdata
def test_real_acdc_cines_convert_into_train_and_val_only(real_shards):
    out, manifest = real_shards
    assert json.loads((out / "quarantine.json").read_text()) == []
    samples = manifest["samples"]
    # As ../shared/data/README.md describes the folder: 30 patients, 888 frames in all.
    numbers = [*range(1, 8), *range(21, 34), *range(42, 51), *range(61, 74)]
    present = {f"acdc-patient{n:03d}" for n in numbers}
    assert len(samples) == 30 and {s["subject"] for s in samples} <= present
    assert sum(s["shape"][1] for s in samples) == 888
    for sample in samples:
        s, t, h, w = sample["shape"]
        assert s in (6, 7) and 16 <= t <= 35 and (h, w) == (128, 128)
        assert not sample["has_label"]
        # Pretraining reads train and val: no ACDC test patient may be among these.
        assert sample["split"] in ("train", "val")
        assert sample["split"] == assign_split(sample["subject"])


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_ACDC.is_dir(), reason=f"real ACDC not found at {REAL_ACDC}")
def test_real_acdc_cines_are_the_acdc_patients(real_shards):
    _, manifest = real_shards
    samples = {s["subject"]: s for s in manifest["samples"]}
    names = sorted(subject.removeprefix("acdc-") for subject in samples)
    frames = {s.subject: s for s in acdc(REAL_ACDC, subjects=names, cine_4d=False)}
    assert set(frames) == set(samples)  # the same ids as the acdc source gives these patients
    for subject, labelled in frames.items():
        assert isinstance(labelled, Subject), labelled
        assert samples[subject]["split"] == subject_split(labelled.subject, labelled.meta)
        assert samples[subject]["shape"][1] == labelled.meta["n_frames"]  # Info.cfg's NbFrame
    # The cine is a crop of ACDC's own voxels, not flipped: frame ED of patient001 is its ED file
    # at rows 85-179, columns 50-149, slices 1-7 (offset found by matching; not in the files).
    (cine,) = acdc_cine(REAL_CINE, subjects=["patient001"])
    ed_file = frames["acdc-patient001"]
    assert cine.meta["split_group"] == ed_file.meta["split_group"]
    assert cine.spacing == pytest.approx(ed_file.spacing)
    ed = ed_file.meta["ed_frame"] - 1
    crop = ed_file.image[1:8, 0, 85:180, 50:150]
    np.testing.assert_allclose(cine.image[:, ed], crop, atol=0.02)  # int16 scaling rounds
