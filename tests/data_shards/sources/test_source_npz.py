"""The ``npz`` source: numpy archives of cine stacks, their spacing, labels and broken files."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA
from helpers.npz import SHAPE, cine, quiet, save
from helpers.quarantine import quarantined_inputs

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.record import IGNORE, LV, MYO, Subject
from data_shards.sources import SourceError, get_source
from data_shards.sources.npz import npz
from data_shards.stream import load_subjects

REAL_NPZ = DATA / "npz"


def only(items):
    (item,) = items
    return item


# --- layouts ---------------------------------------------------------------------------------


def test_folder_yields_one_cine_subject_per_file_sorted(tmp_path):
    save(tmp_path / "b.npz", cine=cine(dtype=np.int16))
    save(tmp_path / "a.npz", cine=cine())
    (tmp_path / "notes.txt").write_text("not an archive")
    items = list(npz(tmp_path))
    assert [s.subject for s in items] == ["npz-a", "npz-b"]
    a, b = items
    assert a.image.shape == SHAPE and np.array_equal(a.image, cine())
    assert b.image.dtype == np.int16  # the file's dtype: preprocessing converts
    assert a.label is None
    assert a.meta == {
        "source": "npz",
        "modality": "cine",
        "split_group": "npz-a",
        "input_shape": list(SHAPE),
    }


def test_single_file_root_and_one_slice_array(tmp_path):
    path = save(tmp_path / "slice.npz", cine=cine()[1])  # (T, H, W)
    subject = only(npz(path))
    assert subject.subject == "npz-slice"
    assert subject.image.shape == (1, *SHAPE[1:])
    assert np.array_equal(subject.image[0], cine()[1])
    assert subject.meta["input_shape"] == list(SHAPE[1:])


def test_key_option_reads_another_member(tmp_path):
    save(tmp_path / "a.npz", frames=cine())
    assert only(npz(tmp_path, key="frames")).image.shape == SHAPE


def test_limit_and_laziness(tmp_path, monkeypatch):
    import data_shards.sources.npz as module

    for name in "abc":
        save(tmp_path / f"{name}.npz", cine=cine())
    assert [s.subject for s in npz(tmp_path, limit=2)] == ["npz-a", "npz-b"]
    calls = []
    real = module.read_npz
    monkeypatch.setattr(module, "read_npz", lambda path, *a: calls.append(path) or real(path, *a))
    items = npz(tmp_path)
    assert calls == []
    next(items)
    assert [p.name for p in calls] == ["a.npz"]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_root_raises(tmp_path, make):
    root = tmp_path / "arrays"
    if make == "empty":
        root.mkdir()
    with pytest.raises(FileNotFoundError, match=str(root)):
        npz(root)


def test_registered_as_npz():
    assert get_source("npz") is npz


# --- spacing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "options", "expected"),
    [
        (None, {}, (math.nan, math.nan, math.nan)),  # unknown stays unknown
        ([0.8, 0.9], {}, (math.nan, 0.8, 0.9)),  # (dy, dx): dz unknown
        ([8.0, 0.8, 0.9], {}, (8.0, 0.8, 0.9)),
        ([math.nan, 0.8, 0.9], {}, (math.nan, 0.8, 0.9)),  # NaN marks one value unknown
        (None, {"spacing": [1.25, 1.5], "slice_spacing": 6.0}, (6.0, 1.25, 1.5)),
        ([0.8, 0.9], {"slice_spacing": 6.0}, (6.0, 0.8, 0.9)),  # options fill the gaps
        ([8.0, 0.8, 0.9], {"spacing": [0.8, 0.9], "slice_spacing": 8.0}, (8.0, 0.8, 0.9)),
    ],
)
def test_spacing_from_file_and_options(tmp_path, stored, options, expected):
    arrays = {"cine": cine()} if stored is None else {"cine": cine(), "spacing": np.array(stored)}
    save(tmp_path / "a.npz", **arrays)
    spacing = only(npz(tmp_path, **options)).spacing
    np.testing.assert_array_equal(spacing, expected)  # NaN == NaN here


def test_option_contradicting_the_file_is_an_error_not_an_override(tmp_path):
    path = save(tmp_path / "a.npz", cine=cine(), spacing=np.array([1.0, 1.0]))
    save(tmp_path / "b.npz", cine=cine())
    err, good = npz(tmp_path, spacing=[1.5, 1.5])
    assert isinstance(err, SourceError) and Path(err.path) == path
    assert "dy = 1.0" in err.reason and "1.5" in err.reason
    assert good.spacing[1:] == (1.5, 1.5)


@pytest.mark.parametrize(
    "options", [{"spacing": [1.0]}, {"spacing": [0.0, 1.0]}, {"slice_spacing": -2.0}]
)
def test_bad_spacing_option_raises_before_reading(tmp_path, options):
    save(tmp_path / "a.npz", cine=cine())
    with pytest.raises(ValueError, match="spacing"):
        npz(tmp_path, **options)


# --- ED/ES and labels ------------------------------------------------------------------------


def test_ed_es_and_label_are_read(tmp_path):
    label = np.zeros(SHAPE, np.uint8)
    label[:, 2] = IGNORE  # frame without ground truth
    label[1, 0, 3, 2] = LV
    label[0, 1, 5, 4] = MYO
    save(tmp_path / "a.npz", cine=cine(), label=label, ed=np.int64(0), es=np.array([1]))
    subject = only(npz(tmp_path))
    assert (subject.meta["ed"], subject.meta["es"]) == (0, 1)
    assert subject.label.dtype == np.uint8 and np.array_equal(subject.label, label)


def test_one_slice_label_is_promoted_with_the_image(tmp_path):
    label = np.zeros(SHAPE[1:], np.int32)
    label[0, 1, 1] = LV
    save(tmp_path / "a.npz", cine=cine()[0], label=label)
    subject = only(npz(tmp_path))
    assert subject.label.shape == subject.image.shape == (1, *SHAPE[1:])
    assert subject.label[0, 0, 1, 1] == LV and subject.label.sum() == LV


def test_ed_es_absent_are_not_invented(tmp_path):
    save(tmp_path / "a.npz", cine=cine())
    meta = only(npz(tmp_path)).meta
    assert "ed" not in meta and "es" not in meta


# --- broken files ----------------------------------------------------------------------------


class _Touch:
    """Unpickling this runs ``Path.touch(marker)``: the test sees whether anything unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_absurd_header(path: Path) -> None:
    """An archive whose ``cine`` header claims 10^10 float32 voxels and holds no data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (1, 1, 100_000, 100_000)}
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("cine.npy", header.getvalue())


def break_file(path: Path, breakage: str, tmp_path: Path) -> None:
    if breakage == "truncated":
        save(path, cine=cine())
        path.write_bytes(path.read_bytes()[:300])
    elif breakage == "not_zip":
        path.write_text("cine = [[1, 2], [3, 4]]")
    elif breakage == "npy_named_npz":
        with path.open("wb") as f:
            np.save(f, cine())
    elif breakage == "missing_key":
        save(path, image=cine(), spacing=np.array([1.0, 1.0]))
    elif breakage == "rank_2":
        save(path, cine=cine()[0, 0])
    elif breakage == "rank_5":
        save(path, cine=cine()[None])
    elif breakage == "nan":
        image = cine()
        image[1, 2, 3, 4] = np.nan
        save(path, cine=image)
    elif breakage == "inf":
        image = cine()
        image[0, 0, 0, 0] = -np.inf
        save(path, cine=image)
    elif breakage == "object":
        save(path, cine=np.array([_Touch(tmp_path / "unpickled")], dtype=object))
    elif breakage in ("complex64", "bool", "<U3"):
        save(path, cine=cine().astype(breakage))
    elif breakage == "empty_axis":
        save(path, cine=np.zeros((2, 0, 6, 5), np.float32))
    elif breakage == "absurd":
        write_absurd_header(path)
    elif breakage == "spacing_zero":
        save(path, cine=cine(), spacing=np.array([0.0, 1.0]))
    elif breakage == "spacing_count":
        save(path, cine=cine(), spacing=np.array([1.0, 1.0, 1.0, 1.0]))
    elif breakage == "label_values":
        label = np.zeros(SHAPE, np.uint8)
        label[0, 0, 0, 0] = 9
        save(path, cine=cine(), label=label)
    elif breakage == "label_shape":
        save(path, cine=cine(), label=np.zeros((2, 3, 6, 4), np.uint8))
    elif breakage == "es_range":
        save(path, cine=cine(), es=np.array(3))
    else:
        raise AssertionError(breakage)


BROKEN = [
    ("truncated", "no zip structure"),
    ("not_zip", "no zip structure"),
    ("npy_named_npz", "not an .npz archive"),
    ("missing_key", "keys present: ['image', 'spacing']"),
    ("rank_2", "expected (Z, T, H, W)"),
    ("rank_5", "expected (Z, T, H, W)"),
    ("nan", "1 non-finite"),
    ("inf", "1 non-finite"),
    ("object", "pickled object arrays are not loaded"),
    ("complex64", "dtype complex64"),
    ("bool", "dtype bool"),
    ("<U3", "dtype <U3"),
    ("empty_axis", "empty axis"),
    ("absurd", "1e+10 voxels"),
    ("spacing_zero", "must be positive"),
    ("spacing_count", "4 values"),
    ("label_values", "[9]"),
    ("label_shape", "'label' shape"),
    ("es_range", "'es' = 3 is outside the 3 frames"),
]


@pytest.mark.parametrize(("breakage", "problem"), BROKEN)
def test_broken_file_is_yielded_as_error_naming_it(tmp_path, breakage, problem):
    bad = tmp_path / "a_bad.npz"
    break_file(bad, breakage, tmp_path)
    save(tmp_path / "b_good.npz", cine=cine())
    err, good = npz(tmp_path)
    assert isinstance(err, SourceError), err
    assert Path(err.path) == bad and str(bad) in str(err)
    assert problem in err.reason
    assert isinstance(good, Subject) and good.subject == "npz-b_good"
    assert not (tmp_path / "unpickled").exists()


# --- through convert -------------------------------------------------------------------------


def test_convert_quarantines_broken_files_and_keeps_good_ones(tmp_path):
    root = tmp_path / "arrays"
    root.mkdir()
    label = np.zeros(SHAPE, np.uint8)
    label[:, :, 2:4, 2:4] = LV
    save(root / "good.npz", cine=cine(), spacing=np.array([1.5, 1.5]), label=label, ed=0, es=2)
    save(root / "unknown_spacing.npz", cine=cine())
    for breakage in ("truncated", "missing_key", "object"):
        break_file(root / f"{breakage}.npz", breakage, tmp_path)
    out = tmp_path / "shards"
    config = PreprocessConfig(spacing=1.5, size=8)
    manifest = convert("npz", root, out, preprocess_config=config, console=quiet())

    quarantine = json.loads((out / "quarantine.json").read_text())
    assert [p.name for p in quarantined_inputs(out, root)] == [
        "missing_key.npz",
        "object.npz",
        "truncated.npz",
    ]
    reasons = [q["reason"] for q in quarantine]
    assert "keys present" in reasons[0] and "pickled" in reasons[1] and "zip" in reasons[2].lower()
    assert manifest["quarantined"] == 3
    loaded = {s["key"]: s for s in load_subjects(out)}
    assert set(loaded) == {"npz-good", "npz-unknown_spacing"}
    good = loaded["npz-good"]
    assert good["image"].shape == (2, 3, 8, 8)
    assert set(np.unique(good["label"])) == {0, LV}
    assert (good["meta"]["ed"], good["meta"]["es"]) == (0, 2)
    assert loaded["npz-unknown_spacing"]["meta"]["original_spacing"] == [None, None, None]


# --- real data -------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_NPZ.is_dir(), reason=f"real npz files not found at {REAL_NPZ}")
def test_real_npz_files_read_with_their_recorded_spacing():
    items = {s.subject: s for s in npz(REAL_NPZ)}
    assert all(isinstance(s, Subject) for s in items.values()), items
    assert set(items) == {"npz-acdc_slice_cine", "npz-cinemyops_case1002"}
    acdc_slice, cinemyops = items["npz-acdc_slice_cine"], items["npz-cinemyops_case1002"]
    # Shapes and spacing as ../shared/data/README.md describes the files.
    assert acdc_slice.image.shape == (1, 30, 184, 256) and acdc_slice.image.dtype == np.uint8
    assert all(math.isnan(v) for v in acdc_slice.spacing)
    assert cinemyops.image.shape == (10, 17, 103, 98)
    assert math.isnan(cinemyops.spacing[0]) and cinemyops.spacing[1:] == (1.0, 1.0)
    # The README's 6 mm slices are not in the file: only an option can say so.
    cinemyops = only(npz(REAL_NPZ / "cinemyops_case1002.npz", slice_spacing=6.0))
    assert cinemyops.spacing == (6.0, 1.0, 1.0)
    for subject in items.values():
        # A cine loop moves: frames differ from each other, not just by noise-free copies.
        assert not np.array_equal(
            subject.image[:, 0], subject.image[:, subject.image.shape[1] // 2]
        )
