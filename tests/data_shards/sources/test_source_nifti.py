"""The ``nifti`` source and its reader: axes, geometry, labels, M&Ms grouping and broken files."""

from __future__ import annotations

import gzip
import io
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import DATA
from helpers.nifti import patch_header
from helpers.quarantine import quarantined_inputs
from rich.console import Console

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.record import BACKGROUND, IGNORE, INFARCT, LV, MVO, MYO, RV, Subject
from data_shards.sources import SourceError, get_source
from data_shards.sources.nifti import LABEL_PRESETS, nifti
from data_shards.sources.nifti_io import read_nifti

REAL_MNMS2 = DATA / "mnms2"

SHAPE_XYZ = (16, 12, 3)  # (X, Y, Z) as nibabel stores them, deliberately not square
ZOOMS = (1.25, 1.5, 8.0)  # dx, dy, dz


def volume(shape=SHAPE_XYZ, dtype=np.float32) -> np.ndarray:
    """Voxel value 1000 z + 100 t + 10 y + x (t = 0 for 3D), so any axis mix-up shows."""
    idx = np.indices(shape)
    value = 1000 * idx[2] + 10 * idx[1] + idx[0] + (100 * idx[3] if len(shape) == 4 else 0)
    return value.astype(dtype)


def write(path: Path, data: np.ndarray, zooms=ZOOMS, affine=None) -> Path:
    affine = np.diag([*zooms[:3], 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(zooms)[: data.ndim] + (1.0,) * (data.ndim - 3))
    nib.save(img, path)
    return path


def write_raw(
    path: Path, shape, dtype=np.float32, zooms=ZOOMS, payload: bytes | None = None, code=None
) -> Path:
    """A NIfTI written byte by byte, for headers nibabel would refuse to save."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr["pixdim"][1 : 1 + len(zooms)] = zooms
    hdr.set_data_offset(352)
    if code is not None:
        hdr["datatype"] = code
    if payload is None:
        payload = np.zeros(shape, dtype).tobytes(order="F")
    raw = hdr.binaryblock + b"\0" * 4 + payload
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def labels_xyz(values=(1, 2, 3)) -> np.ndarray:
    """(X, Y, Z) source labels: values[i] at a known voxel on slice i."""
    gt = np.zeros(SHAPE_XYZ, np.uint8)
    for z, (x, y) in enumerate([(1, 2), (4, 7), (10, 0)][: len(values)]):
        gt[x, y, z] = values[z]
    return gt


def by_id(items) -> dict:
    return {i.subject if isinstance(i, Subject) else Path(i.path).name: i for i in items}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


# --- one file: axes, spacing, geometry -------------------------------------------------------


def test_axis_order_and_spacing(tmp_path):
    write(tmp_path / "a.nii.gz", volume())
    (subject,) = nifti(tmp_path)
    assert subject.subject == f"{tmp_path.name}-a"
    assert subject.image.shape == (3, 1, 12, 16)  # (Z, T, Y, X)
    assert subject.image[2, 0, 7, 5] == 2000 + 70 + 5  # z = 2, y = 7, x = 5
    assert subject.spacing == (8.0, 1.5, 1.25)  # (dz, dy, dx)
    assert subject.label is None
    assert subject.meta["modality"] == "cine" and subject.meta["frames_source"] == "3d"
    assert subject.meta["ed"] == 0 and subject.meta["n_frames"] == 1


def test_ras_affine_becomes_lps_direction_and_origin(tmp_path):
    # RAS+ world: +x right, +y anterior. Voxel X steps 1.25 mm anterior, Y 1.5 mm to the
    # patient's left (-x), Z 8 mm superior; voxel 0 sits at RAS (10, 20, 30).
    affine = np.array(
        [[0.0, -1.5, 0.0, 10.0], [1.25, 0.0, 0.0, 20.0], [0.0, 0.0, 8.0, 30.0], [0, 0, 0, 1]]
    )
    write(tmp_path / "a.nii.gz", volume(), affine=affine)
    (subject,) = nifti(tmp_path)
    direction = np.array(subject.meta["direction"])  # rows S, H, W in LPS
    np.testing.assert_allclose(direction[0], [0, 0, 1])  # Z: superior
    np.testing.assert_allclose(direction[1], [1, 0, 0])  # Y: RAS -x = patient left = LPS +x
    np.testing.assert_allclose(direction[2], [0, -1, 0])  # X: RAS +y anterior = LPS -y
    np.testing.assert_allclose(subject.meta["origin"], [-10, -20, 30])
    assert subject.meta["affine_space"] == "ras"
    (as_lps,) = nifti(tmp_path, affine_space="lps")  # the affine taken as LPS: no sign change
    np.testing.assert_allclose(as_lps.meta["direction"][1], [-1, 0, 0])
    np.testing.assert_allclose(as_lps.meta["origin"], [10, 20, 30])
    assert as_lps.meta["affine_space"] == "lps"


def test_mnms2_named_files_default_to_lps_affines(tmp_path):
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]
    write(tmp_path / "007_SA_ED.nii.gz", volume(), affine=affine)
    write(tmp_path / "other.nii.gz", volume(), affine=affine)
    mnms, other = nifti(tmp_path)
    assert mnms.subject.endswith("-007-sa") and mnms.meta["affine_space"] == "lps"
    np.testing.assert_allclose(mnms.meta["origin"], [10, 20, 30])
    assert other.meta["affine_space"] == "ras"
    np.testing.assert_allclose(other.meta["origin"], [-10, -20, 30])
    explicit, _ = nifti(tmp_path, affine_space="ras")
    assert explicit.meta["affine_space"] == "ras"


def test_geometry_is_dropped_when_the_affine_disagrees_with_the_voxel_size(tmp_path):
    # ACDC's release: pure flips (steps of 1 mm) with 1.25 x 1.5 x 8 mm voxels.
    write(tmp_path / "flips.nii.gz", volume(), affine=np.diag([-1.0, -1.0, 1.0, 1.0]))
    write_raw(tmp_path / "noform.nii.gz", SHAPE_XYZ)  # qform_code = sform_code = 0
    for name in ("flips.nii.gz", "noform.nii.gz"):
        vol = read_nifti(tmp_path / name)
        assert vol.direction is None and vol.geometry_meta() == {}
        assert vol.geometry_note
    assert "direction" not in next(iter(nifti(tmp_path))).meta


def test_4d_cine_frames_and_label_frames(tmp_path):
    cine = volume((*SHAPE_XYZ, 4))
    write(tmp_path / "c.nii.gz", cine)
    gt = np.zeros((*SHAPE_XYZ, 4), np.uint8)  # drawn at frames 1 (big LV) and 3 (small LV)
    gt[2:6, 2:6, 1, 1] = 1
    gt[2:4, 2:4, 1, 3] = 1
    gt[8, 8, 0, 3] = 3
    write(tmp_path / "c_gt.nii.gz", gt)
    (subject,) = nifti(tmp_path, label_map="mnms2")
    assert subject.image.shape == subject.label.shape == (3, 4, 12, 16)
    assert subject.image[1, 3, 2, 4] == 1000 + 300 + 20 + 4
    assert (subject.label[:, [0, 2]] == IGNORE).all()  # empty label frames: no ground truth
    assert subject.label[1, 1, 5, 5] == LV and subject.label[0, 3, 8, 8] == RV
    assert subject.label[0, 1, 0, 0] == BACKGROUND
    assert (subject.meta["ed"], subject.meta["es"]) == (1, 3)  # ED: the larger LV cavity
    assert subject.meta["n_frames"] == 4 and subject.meta["frames_source"] == "4d"
    assert subject.meta["modality"] == "cine"


# --- labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label_map", "source_values", "ours"),
    [
        ("mnms2", (1, 2, 3), (LV, MYO, RV)),
        ("acdc", (1, 2, 3), (RV, MYO, LV)),
        ("emidec", (2, 3, 4), (MYO, INFARCT, MVO)),
        ({"7": 3, "9": 1}, (9, 7, 9), (LV, RV, LV)),  # JSON gives string keys
        (None, (1, 4, 5), (LV, INFARCT, MVO)),  # default: already ours
    ],
)
def test_label_map_presets_and_dicts(tmp_path, label_map, source_values, ours):
    write(tmp_path / "a.nii.gz", volume())
    write(tmp_path / "a_gt.nii.gz", labels_xyz(source_values).astype(np.float64))  # M&Ms: float
    (subject,) = nifti(tmp_path, label_map=label_map)
    label = subject.label[:, 0]
    assert (label[0, 2, 1], label[1, 7, 4], label[2, 0, 10]) == ours
    assert np.count_nonzero(label) == 3 and label.dtype == np.uint8


def test_label_presets_are_the_documented_conventions():
    assert LABEL_PRESETS["mnms2"] == {0: BACKGROUND, 1: LV, 2: MYO, 3: RV}
    assert LABEL_PRESETS["acdc"] == {0: BACKGROUND, 1: RV, 2: MYO, 3: LV}
    assert LABEL_PRESETS["emidec"] == {0: BACKGROUND, 1: LV, 2: MYO, 3: INFARCT, 4: MVO}


@pytest.mark.parametrize(
    "bad", [{"label_map": "ukbb"}, {"label_map": {1: 9}}, {"modality": "ct"}, {"group_by": "("}]
)
def test_bad_options_raise_value_error(tmp_path, bad):
    write(tmp_path / "a.nii.gz", volume())
    with pytest.raises(ValueError):
        nifti(tmp_path, **bad)


# --- M&Ms-style groups ------------------------------------------------------------------------


def make_mnms(folder: Path, cine_frames=(3, 1), t=5) -> Path:
    """One M&Ms-2-like patient: SA ED/ES (+gt), LA ED/ES (+gt), LA cine holding LA ED/ES."""
    folder.mkdir(parents=True, exist_ok=True)
    pid = folder.name if folder.name.isdigit() else "001"
    for phase, offset in (("ED", 0.0), ("ES", 50.0)):
        write(folder / f"{pid}_SA_{phase}.nii.gz", volume() + offset)
        write(folder / f"{pid}_SA_{phase}_gt.nii.gz", labels_xyz())
    la_xyz = (16, 12, 1)
    cine = volume((*la_xyz, t)).astype(np.int16)
    for phase, frame in zip(("ED", "ES"), cine_frames, strict=True):
        write(folder / f"{pid}_LA_{phase}.nii.gz", cine[..., frame].astype(np.float64))
        gt = np.zeros(la_xyz)
        gt[3, 4, 0] = 1 if phase == "ED" else 3
        write(folder / f"{pid}_LA_{phase}_gt.nii.gz", gt)
    write(folder / f"{pid}_LA_CINE.nii.gz", cine)
    return folder


@pytest.mark.parametrize("layout", ["folder_per_patient", "flat"])
def test_mnms_layout_groups_views_into_cines(tmp_path, layout):
    root = tmp_path / "mnms2"
    make_mnms(root / "001" if layout == "folder_per_patient" else root)
    items = list(nifti(root, label_map="mnms2"))
    assert [s.subject for s in items] == ["mnms2-001-la", "mnms2-001-sa"]
    la, sa = items
    assert sa.image.shape == (3, 2, 12, 16) and sa.meta["view"] == "SA"
    assert sa.image[0, 1, 0, 0] == sa.image[0, 0, 0, 0] + 50  # frames [ED, ES]
    assert (sa.meta["ed"], sa.meta["es"], sa.meta["frames_source"]) == (0, 1, "ed_es")
    assert sa.label[0, 1, 2, 1] == LV and sa.label[2, 0, 0, 10] == RV
    # LA: the cine itself, labelled at the frames that equal the ED and ES files.
    assert la.image.shape == la.label.shape == (1, 5, 12, 16) and la.meta["view"] == "LA"
    assert (la.meta["ed"], la.meta["es"], la.meta["frames_source"]) == (3, 1, "4d")
    assert la.label[0, 3, 4, 3] == LV and la.label[0, 1, 4, 3] == RV
    assert (la.label[:, [0, 2, 4]] == IGNORE).all()
    assert la.meta["split_group"] == sa.meta["split_group"] == "mnms2-001"


def test_cine_without_the_ed_es_frames_becomes_its_own_subject(tmp_path):
    root = make_mnms(tmp_path / "mnms2" / "001")
    write(root / "001_LA_CINE.nii.gz", volume((16, 12, 1, 5)) + 7.0)  # not the ED/ES images
    items = by_id(nifti(root.parent))
    assert sorted(items) == ["mnms2-001-la", "mnms2-001-la-cine", "mnms2-001-sa"]
    stacked, cine = items["mnms2-001-la"], items["mnms2-001-la-cine"]
    assert stacked.image.shape == (1, 2, 12, 16) and stacked.meta["frames_source"] == "ed_es"
    assert cine.image.shape == (1, 5, 12, 16) and cine.label is None
    assert "no frame equal" in cine.meta["frames_note"]
    assert cine.meta["split_group"] == stacked.meta["split_group"] == "mnms2-001"


def test_group_by_none_reads_every_file_alone(tmp_path):
    root = make_mnms(tmp_path / "mnms2" / "001")
    ids = [s.subject for s in nifti(root.parent, group_by=None)]
    assert ids == [f"mnms2-001_{v}_{p}" for v, p in [("LA", "CINE"), ("LA", "ED"), ("LA", "ES"),
                                                     ("SA", "ED"), ("SA", "ES")]]  # fmt: skip


def test_patient_folders_set_split_group_and_prefix(tmp_path):
    for patient in ("p1", "p2"):
        (tmp_path / patient).mkdir()
        write(tmp_path / patient / "image.nii.gz", volume())
    items = list(nifti(tmp_path, prefix="ds"))
    assert [s.subject for s in items] == ["ds-p1-image", "ds-p2-image"]
    assert [s.meta["split_group"] for s in items] == ["ds-p1", "ds-p2"]
    assert all(s.meta["dataset"] == "ds" and s.meta["source"] == "nifti" for s in items)


def test_modality_lge_for_single_frames_only(tmp_path):
    write(tmp_path / "a.nii.gz", volume())
    write(tmp_path / "b.nii.gz", volume((*SHAPE_XYZ, 3)))
    a, b = nifti(tmp_path, modality="lge")
    assert isinstance(a, Subject) and a.meta["modality"] == "lge"
    assert isinstance(b, SourceError) and "lge" in b.reason and Path(b.path).name == "b.nii.gz"


def test_reads_lazily(tmp_path, monkeypatch):
    import data_shards.sources.nifti as module

    for name in ("a", "b"):
        write(tmp_path / f"{name}.nii.gz", volume())
    calls = []
    real = module.read_nifti
    monkeypatch.setattr(module, "read_nifti", lambda p, **kw: calls.append(p) or real(p, **kw))
    items = nifti(tmp_path)
    assert calls == []
    next(items)
    assert [p.name for p in calls] == ["a.nii.gz"]


@pytest.mark.parametrize("make", ["missing", "empty", "no_nifti"])
def test_missing_or_empty_root_raises(tmp_path, make):
    root = tmp_path / "cohort"
    if make != "missing":
        root.mkdir()
    if make == "no_nifti":
        (root / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match=str(root)):
        nifti(root)


# --- broken files: each one quarantined by name, the good subject still converted ------------


def break_file(root: Path, breakage: str) -> tuple[str, str]:
    """Write one broken subject into root; returns (the offending file's name, a reason word)."""
    bad = root / "bad.nii.gz"
    if breakage == "truncated_gzip":
        data = write(bad, volume()).read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        return bad.name, "unreadable"
    if breakage == "not_gzip":
        bad.write_bytes(b"not a nifti at all")
        return bad.name, "unreadable"
    if breakage == "truncated_nii":
        bad = root / "bad.nii"
        write_raw(bad, SHAPE_XYZ, payload=b"\0" * 100)
        return bad.name, "truncated"
    if breakage in ("nan", "inf"):
        image = volume()
        image[3, 4, 1] = np.nan if breakage == "nan" else np.inf
        write(bad, image)
        return bad.name, "non-finite"
    if breakage in ("zero_spacing", "missing_spacing", "nan_spacing", "negative_spacing"):
        write(bad, volume())
        pixdim = nib.load(bad).header["pixdim"].copy()
        bad_value = {"zero": 0.0, "missing": 0.0, "nan": np.nan, "negative": -1.5}
        which = 2 if breakage == "missing_spacing" else 1  # missing: pixdim left 0 for dy
        pixdim[which] = bad_value[breakage.split("_")[0]]
        patch_header(bad, pixdim=pixdim)
        return bad.name, "voxel size"
    if breakage == "2d":
        write(bad, volume()[:, :, 0])
        return bad.name, "expected a 3D or 4D"
    if breakage == "5d":
        write(bad, np.zeros((16, 12, 3, 2, 2), np.float32))
        return bad.name, "expected a 3D or 4D"
    if breakage == "complex":
        write(bad, volume().astype(np.complex64))
        return bad.name, "complex64"
    if breakage == "rgb":
        rgb = np.zeros(SHAPE_XYZ, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        write(bad, rgb)
        return bad.name, "not a real number"
    if breakage == "bool":
        write_raw(bad, SHAPE_XYZ, dtype=np.uint8, code=1)  # NIfTI DT_BINARY
        return bad.name, "not supported"
    if breakage == "huge_dim":
        write_raw(bad, (5000, 16, 3), payload=b"")
        return bad.name, "absurd"
    if breakage == "huge_total":
        write_raw(bad, (4096, 4096, 200), dtype=np.int16, payload=b"")
        return bad.name, "absurd"
    if breakage == "overclaiming_header":  # under the limits, but far more than the file holds
        write_raw(bad, (4000, 4000, 60), dtype=np.int16, payload=b"\0" * 1000)
        return bad.name, "header claims"
    if breakage == "zero_length_axis":
        write_raw(bad, (16, 0, 3), payload=b"")
        return bad.name, "0-length"
    if breakage == "label_shape":
        write(bad, volume())
        write(root / "bad_gt.nii.gz", np.zeros((16, 12, 4), np.uint8))
        return "bad_gt.nii.gz", "shape"
    if breakage == "label_values":
        write(bad, volume())
        write(root / "bad_gt.nii.gz", labels_xyz((1, 7, 3)))
        return "bad_gt.nii.gz", "[7]"
    if breakage == "label_fraction":
        write(bad, volume())
        write(root / "bad_gt.nii.gz", labels_xyz((1, 2, 3)).astype(np.float32) * 0.5)
        return "bad_gt.nii.gz", "[0.5, 1.5]"
    if breakage == "orphan_label":
        write(root / "bad_gt.nii.gz", labels_xyz())
        return "bad_gt.nii.gz", "without image"
    raise AssertionError(breakage)


BREAKAGES = [
    "truncated_gzip",
    "not_gzip",
    "truncated_nii",
    "nan",
    "inf",
    "zero_spacing",
    "missing_spacing",
    "nan_spacing",
    "negative_spacing",
    "2d",
    "5d",
    "complex",
    "rgb",
    "bool",
    "huge_dim",
    "huge_total",
    "overclaiming_header",
    "zero_length_axis",
    "label_shape",
    "label_values",
    "label_fraction",
    "orphan_label",
]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_source_yields_error_naming_file_and_problem(tmp_path, breakage):
    write(tmp_path / "good.nii.gz", volume())
    name, problem = break_file(tmp_path, breakage)
    start = time.perf_counter()
    items = by_id(nifti(tmp_path, label_map="mnms2"))
    assert time.perf_counter() - start < 2.0  # absurd headers are refused before any read
    err = items[name]
    assert isinstance(err, SourceError), err
    assert problem in err.reason and name in str(err)
    assert isinstance(items[f"{tmp_path.name}-good"], Subject)


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_convert_quarantines_the_file_and_keeps_the_good_subject(tmp_path, breakage):
    root, out = tmp_path / "cohort", tmp_path / "shards"
    root.mkdir()
    write(root / "good.nii.gz", volume())
    write(root / "good_gt.nii.gz", labels_xyz())
    name, problem = break_file(root, breakage)
    manifest = convert(
        "nifti",
        root,
        out,
        preprocess_config=PreprocessConfig(spacing=1.5, size=16),
        source_options={"label_map": "mnms2"},
        console=quiet(),
    )
    (entry,) = json.loads((out / "quarantine.json").read_text())
    assert [p.name for p in quarantined_inputs(out, root)] == [name]
    assert problem in entry["reason"]
    assert [s["subject"] for s in manifest["samples"]] == ["cohort-good"]
    assert manifest["samples"][0]["has_label"]


# --- real data --------------------------------------------------------------------------------


def world_centroid(subject: Subject, frame: int, cls: int) -> np.ndarray:
    """LPS mm of the centroid of label ``cls`` at ``frame``, from the subject's geometry."""
    direction, origin = np.array(subject.meta["direction"]), np.array(subject.meta["origin"])
    voxels = np.argwhere(subject.label[:, frame] == cls) * np.array(subject.spacing)  # (n, 3)
    return origin + voxels.mean(axis=0) @ direction


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_MNMS2.is_dir(), reason=f"M&Ms-2 not found at {REAL_MNMS2}")
def test_real_mnms2_anatomy_and_orientation():
    la, sa = nifti(REAL_MNMS2, label_map="mnms2")  # M&Ms-2 names: affines read as LPS
    assert (sa.subject, la.subject) == ("mnms2-001-sa", "mnms2-001-la")
    assert sa.image.shape == (12, 2, 256, 256) and la.image.shape == (1, 25, 256, 256)
    assert (la.meta["ed"], la.meta["es"]) == (23, 8)  # where LA ED/ES sit in the LA cine
    assert sa.meta["split_group"] == la.meta["split_group"] == "mnms2-001"
    for subject in (sa, la):
        for frame in (subject.meta["ed"], subject.meta["es"]):
            label, image = subject.label[:, frame], subject.image[:, frame]
            assert set(np.unique(label)) == {BACKGROUND, LV, MYO, RV}
            # LV: bright blood pool ringed by darker myocardium, which sits around it.
            assert image[label == LV].mean() > 1.5 * image[label == MYO].mean()
            myo_to_lv = world_centroid(subject, frame, MYO) - world_centroid(subject, frame, LV)
            assert np.linalg.norm(myo_to_lv) < 10.0
            # The RV lies to the patient's right (-x) and anterior (-y) of the LV.
            rv_to_lv = world_centroid(subject, frame, RV) - world_centroid(subject, frame, LV)
            assert rv_to_lv[0] < -10 and rv_to_lv[1] < -5
    # Short-axis slices run base (large LV) to apex, and the slice axis points apex-ward.
    lv_area = (sa.label[:, 0] == LV).sum(axis=(1, 2))
    assert lv_area[:5].sum() > lv_area[-5:].sum()
    assert np.dot(sa.meta["direction"][0], [1, -1, -1]) > 0  # left, anterior, inferior
    assert sa.meta["affine_space"] == la.meta["affine_space"] == "lps"
    # Read as standard RAS, M&Ms-2's affines put the RV left and posterior: they hold LPS.
    _, sa_ras = nifti(REAL_MNMS2, label_map="mnms2", affine_space="ras")
    rv_to_lv = world_centroid(sa_ras, 0, RV) - world_centroid(sa_ras, 0, LV)
    assert rv_to_lv[0] > 10 and rv_to_lv[1] > 5


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_MNMS2.is_dir(), reason=f"M&Ms-2 not found at {REAL_MNMS2}")
def test_real_mnms2_converts_with_defaults_and_no_quarantine(tmp_path):
    manifest = convert(
        "nifti",
        REAL_MNMS2,
        tmp_path,
        preprocess_config=PreprocessConfig(),
        source_options={},
        console=quiet(),
    )
    assert json.loads((tmp_path / "quarantine.json").read_text()) == []
    samples = {s["subject"]: s for s in manifest["samples"]}
    assert sorted(samples) == ["mnms2-001-la", "mnms2-001-sa"]
    assert samples["mnms2-001-la"]["shape"][:2] == [1, 25]
    assert len({s["split"] for s in samples.values()}) == 1  # one patient, one split
    assert get_source("nifti") is nifti
