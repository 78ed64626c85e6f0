"""ACDC's ``patientNNN_4d.nii.gz``: the whole cine, labelled at ED and ES, checked against them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import DATA
from rich.console import Console

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.record import BACKGROUND, IGNORE, LV, MYO, RV, Subject
from data_shards.sources.acdc import acdc

REAL_ACDC = DATA / "acdc" / "training"

SHAPE_XYZ = (12, 10, 3)  # (X, Y, Z) as nibabel stores them
ZOOMS = (1.25, 1.5, 8.0)  # dx, dy, dz
T = 6
ED, ES = 2, 5  # 1-based, as in Info.cfg


def write_nifti(path: Path, data: np.ndarray, zooms=ZOOMS) -> None:
    img = nib.Nifti1Image(data, affine=np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(tuple(zooms[:3]) + (1.0,) * (data.ndim - 3))
    nib.save(img, path)


def cine_xyzt() -> np.ndarray:
    """(X, Y, Z, T) uint8-valued cine whose frame t is filled with 10 t + z."""
    z, t = np.indices((SHAPE_XYZ[2], T))
    return np.broadcast_to(10 * t + z, (*SHAPE_XYZ[:2], SHAPE_XYZ[2], T)).astype(np.float32)


def make_patient(
    root: Path,
    name: str = "patient001",
    cine: np.ndarray | None = None,
    full: np.ndarray | None = None,
) -> Path:
    """An ACDC patient folder whose ED/ES files are frames ED and ES of a 4D cine (``full``,
    default ``cine_xyzt()``); ``cine`` replaces only the 4D file."""
    folder = root / name
    folder.mkdir(parents=True)
    info = {"ED": ED, "ES": ES, "Group": "NOR", "Height": 170.0, "NbFrame": T, "Weight": 70.0}
    (folder / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    full = cine_xyzt() if full is None else full
    for frame in (ED, ES):
        stem = f"{name}_frame{frame:02d}"
        write_nifti(folder / f"{stem}.nii.gz", full[..., frame - 1].astype(np.uint8))
        gt = np.zeros(SHAPE_XYZ, np.uint8)
        gt[1, 2, 0] = 3  # ACDC LV
        gt[4, 7, 1] = 2 if frame == ED else 1  # myocardium at ED, RV at ES: frames stay apart
        write_nifti(folder / f"{stem}_gt.nii.gz", gt)
    write_nifti(folder / f"{name}_4d.nii.gz", full if cine is None else cine, (*ZOOMS, 1.0))
    return folder


def test_4d_file_gives_the_whole_cine_labelled_at_ed_and_es(tmp_path):
    make_patient(tmp_path)
    (subject,) = acdc(tmp_path)
    assert subject.image.shape == subject.label.shape == (3, T, 10, 12)  # (Z, T, Y, X)
    for t in range(T):
        assert (subject.image[:, t] == 10 * t + np.arange(3)[:, None, None]).all()
    assert (subject.meta["ed"], subject.meta["es"]) == (ED - 1, ES - 1)
    assert (subject.meta["ed_frame"], subject.meta["es_frame"]) == (ED, ES)
    assert subject.meta["frames_source"] == "4d" and subject.meta["n_frames"] == T
    ed, es = subject.meta["ed"], subject.meta["es"]
    assert subject.label[0, ed, 2, 1] == LV and subject.label[1, ed, 7, 4] == MYO
    assert subject.label[0, es, 2, 1] == LV and subject.label[1, es, 7, 4] == RV
    assert subject.label[2, ed, 0, 0] == BACKGROUND
    others = [t for t in range(T) if t not in (ed, es)]
    assert (subject.label[:, others] == IGNORE).all()
    assert subject.spacing == (8.0, 1.5, 1.25)


def test_cine_4d_false_reads_ed_and_es_only(tmp_path):
    make_patient(tmp_path)
    (subject,) = acdc(tmp_path, cine_4d=False)
    assert subject.image.shape == (3, 2, 10, 12)
    assert (subject.meta["ed"], subject.meta["es"], subject.meta["frames_source"]) == (
        0,
        1,
        "ed_es",
    )
    assert subject.image[0, 0, 0, 0] == 10 * (ED - 1) and subject.image[0, 1, 0, 0] == 10 * (ES - 1)
    assert "frames_note" not in subject.meta


def shifted_frames() -> np.ndarray:
    cine = cine_xyzt()
    return np.roll(cine, 1, axis=3)  # frame ED of the 4D is no longer the ED file's image


@pytest.mark.parametrize(
    ("breakage", "note"),
    [
        ("other_frames", "differs from the ED file"),
        ("other_shape", "(S, H, W)"),
        ("too_few_frames", "3 frames"),
        ("other_spacing", "voxel size"),
        ("truncated", "unreadable"),
        ("three_d", "expected a 4D"),
    ],
)
def test_a_4d_file_that_does_not_match_falls_back_to_ed_es(tmp_path, breakage, note):
    cines = {
        "other_frames": shifted_frames(),
        "other_shape": np.zeros((12, 10, 4, T), np.float32),
        "too_few_frames": cine_xyzt()[..., :3],
        "three_d": cine_xyzt()[..., 0],
    }
    folder = make_patient(tmp_path, cine=cines.get(breakage))
    cine_file = folder / "patient001_4d.nii.gz"
    if breakage == "other_spacing":
        write_nifti(cine_file, cine_xyzt(), (1.0, 1.5, 8.0, 1.0))
    if breakage == "truncated":
        data = cine_file.read_bytes()
        cine_file.write_bytes(data[: len(data) // 2])
    (subject,) = acdc(tmp_path)
    assert isinstance(subject, Subject), subject
    assert subject.image.shape == (3, 2, 10, 12)
    assert (subject.meta["ed"], subject.meta["es"], subject.meta["frames_source"]) == (
        0,
        1,
        "ed_es",
    )
    assert "patient001_4d.nii.gz" in subject.meta["frames_note"]
    assert note in subject.meta["frames_note"]


def test_convert_keeps_unlabelled_frames_ignored(tmp_path):
    # Frames need an image (a flat frame is blank: quarantined): a ramp along x.
    textured = cine_xyzt() + 15 * np.arange(SHAPE_XYZ[0], dtype=np.float32)[:, None, None, None]
    make_patient(tmp_path / "training", full=textured)
    out = tmp_path / "shards"
    manifest = convert(
        "acdc",
        tmp_path / "training",
        out,
        preprocess_config=PreprocessConfig(spacing=1.5, size=16),
        console=Console(file=io.StringIO()),
    )
    assert json.loads((out / "quarantine.json").read_text()) == []
    (sample,) = manifest["samples"]
    assert sample["shape"] == [3, T, 16, 16] and sample["has_label"]


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_ACDC.is_dir(), reason=f"real ACDC not found at {REAL_ACDC}")
def test_real_patient090_4d_cine():
    (cine,) = acdc(REAL_ACDC, subjects=["patient090"])
    (frames,) = acdc(REAL_ACDC, subjects=["patient090"], cine_4d=False)
    assert cine.meta["frames_source"] == "4d" and "frames_note" not in cine.meta
    assert cine.image.shape == (7, 12, 224, 154) and cine.meta["n_frames"] == 12
    ed, es = cine.meta["ed"], cine.meta["es"]
    assert (ed, es) == (cine.meta["ed_frame"] - 1, cine.meta["es_frame"] - 1) == (3, 10)
    # The labelled frames are the ED/ES files' own images and labels.
    np.testing.assert_array_equal(cine.image[:, [ed, es]], frames.image)
    np.testing.assert_array_equal(cine.label[:, [ed, es]], frames.label)
    others = [t for t in range(12) if t not in (ed, es)]
    assert (cine.label[:, others] == IGNORE).all()
    assert set(np.unique(cine.label[:, [ed, es]])) == {BACKGROUND, LV, MYO, RV}
    lv = (cine.label == LV).sum(axis=(0, 2, 3))
    assert lv[ed] > lv[es]  # the LV cavity is largest at end diastole
    # ACDC's affines are bare flips with 1 mm steps: no geometry is claimed for them.
    assert "direction" not in cine.meta
