"""The ``lge-slices`` source: PNG slices + masks grouped into LGE subjects (EMIDEC's export)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA
from helpers.quarantine import quarantined_inputs
from PIL import Image
from rich.console import Console

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.record import BACKGROUND, IGNORE, INFARCT, LV, MVO, MYO, RV, Subject
from data_shards.sources import SourceError, get_source
from data_shards.sources.lge_slices import lge_slices
from data_shards.stream import load_subjects

REAL_EMIDEC = DATA / "emidec"

H, W = 10, 12  # deliberately not square


def slice_image(case: int, number: int) -> np.ndarray:
    """(H, W) uint8 whose pixel [0, 0] is the slice number and [0, 1] the case: order shows."""
    image = np.full((H, W), 50, np.uint8)
    image[0, 0], image[0, 1] = number, case
    return image


def emidec_mask() -> np.ndarray:
    """(H, W) EMIDEC labels 0..4 at known pixels."""
    mask = np.zeros((H, W), np.uint8)
    mask[2, 3] = 1  # LV cavity
    mask[4, 5] = 2  # myocardium
    mask[6, 7] = 3  # infarct
    mask[8, 9] = 4  # microvascular obstruction
    return mask


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def make_case(root: Path, folder: str, case: str, numbers, masks=True, fmt="{:03d}") -> None:
    """Slices ``numbers`` of ``case`` in ``root/folder`` with masks in ``root/<folder>annot``."""
    for number in numbers:
        name = f"{case}_slice{fmt.format(number)}.png"
        write_png(root / folder / name, slice_image(int(case[-3:]), number))
        if masks:
            write_png(root / f"{folder}annot" / name, emidec_mask())


@pytest.fixture
def emidec_root(tmp_path: Path) -> Path:
    """EMIDEC's layout: two train cases and one val case."""
    root = tmp_path / "emidec"
    make_case(root, "train", "Case_P002", range(3))
    make_case(root, "train", "Case_N001", range(4))
    make_case(root, "val", "Case_N010", range(2))
    return root


def by_name(items) -> dict:
    return {(i.subject if isinstance(i, Subject) else Path(i.path).name): i for i in items}


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


# --- layouts and what a subject holds ---------------------------------------------------------


def test_emidec_layout_gives_one_subject_per_case(emidec_root):
    items = list(lge_slices(emidec_root))
    assert [s.subject for s in items] == [
        "emidec-Case_N001",
        "emidec-Case_N010",
        "emidec-Case_P002",
    ]
    n001 = items[0]
    assert n001.image.shape == n001.label.shape == (4, 1, H, W)
    assert n001.image.dtype == np.float32 and n001.label.dtype == np.uint8
    assert all(math.isnan(v) for v in n001.spacing)  # PNGs carry no geometry: nothing invented
    assert n001.meta == {
        "source": "lge-slices",
        "dataset": "emidec",
        "modality": "lge",
        "ed": 0,
        "es": 0,
        "split_group": "emidec-Case_N001",
        "dataset_split": "train",
        "slice_numbers": [3, 2, 1, 0],
        "group": "normal",
    }
    assert items[1].meta["dataset_split"] == "val"
    assert items[2].meta["group"] == "infarct"
    assert all("split" not in s.meta for s in items)  # our hash split decides


def test_emidec_labels_map_to_ours(emidec_root):
    label = by_name(lge_slices(emidec_root))["emidec-Case_N001"].label
    for s in range(4):
        frame = label[s, 0]
        assert (frame[2, 3], frame[4, 5], frame[6, 7], frame[8, 9]) == (LV, MYO, INFARCT, MVO)
        assert np.count_nonzero(frame) == 4
    assert set(np.unique(label)) == {BACKGROUND, LV, MYO, INFARCT, MVO}


def test_slices_sort_numerically_and_run_base_to_apex(tmp_path):
    # Unpadded numbers starting at 8: a string sort would put slice10 before slice8.
    make_case(tmp_path, "train", "Case_P001", [10, 8, 11, 9], fmt="{}")
    subject = lge_slices(tmp_path).__next__()
    # EMIDEC numbers from the apex, so the stack (base to apex) runs from the highest number.
    assert subject.image[:, 0, 0, 0].tolist() == [11, 10, 9, 8]
    assert subject.meta["slice_numbers"] == [11, 10, 9, 8]
    ascending = next(lge_slices(tmp_path, slice_order="base-to-apex"))
    assert ascending.image[:, 0, 0, 0].tolist() == [8, 9, 10, 11]
    assert ascending.meta["slice_numbers"] == [8, 9, 10, 11]


def test_flat_images_and_masks_layout(tmp_path):
    for number in range(2):
        name = f"Case_P007_slice{number:03d}.png"
        write_png(tmp_path / "images" / name, slice_image(7, number))
        write_png(tmp_path / "masks" / name, emidec_mask())
    (subject,) = lge_slices(tmp_path)
    assert subject.subject == "emidec-Case_P007" and subject.meta["dataset_split"] == "images"
    assert subject.label[0, 0, 8, 9] == MVO


def test_explicit_image_dirs_without_masks_give_no_label(emidec_root):
    make_case(emidec_root, "test", "Case_N050", range(2), masks=False)
    items = list(lge_slices(emidec_root, image_dirs=["test"]))
    assert [s.subject for s in items] == ["emidec-Case_N050"]
    assert items[0].label is None and items[0].meta["dataset_split"] == "test"
    # Auto-detection only pairs <x>/ with <x>annot/, so test/ is not picked up by default.
    assert "emidec-Case_N050" not in by_name(lge_slices(emidec_root))


def test_image_without_mask_is_an_unlabelled_slice(tmp_path):
    make_case(tmp_path, "train", "Case_P001", range(3))
    (tmp_path / "trainannot" / "Case_P001_slice001.png").unlink()
    (subject,) = lge_slices(tmp_path)
    assert subject.meta["slice_numbers"] == [2, 1, 0]
    assert (subject.label[1] == IGNORE).all()  # stack index 1 is slice 1
    assert not (subject.label[[0, 2]] == IGNORE).any()
    assert subject.meta["unlabelled_slice_numbers"] == [1]


def test_options_label_map_groups_split_map_dataset_limit(emidec_root):
    label_map = {"0": 0, "1": 1, "2": 2, "3": 3, "4": 255}  # string keys, as JSON gives them
    items = list(
        lge_slices(
            emidec_root,
            label_map=label_map,
            groups={"N": "healthy"},
            split_map={"val": "test"},
            dataset="lge",
            limit=2,
        )
    )
    assert [s.subject for s in items] == ["lge-Case_N001", "lge-Case_N010"]
    assert items[0].label[0, 0, 6, 7] == RV and items[0].label[0, 0, 8, 9] == IGNORE
    assert items[0].meta["group"] == "healthy" and items[0].meta["dataset"] == "lge"
    assert "split" not in items[0].meta and items[1].meta["split"] == "test"


def test_colour_and_16_bit_images_convert_consistently(tmp_path):
    make_case(tmp_path, "train", "Case_P001", range(3))
    grey = slice_image(1, 0)
    write_png(tmp_path / "train" / "Case_P001_slice000.png", np.stack([grey] * 3, axis=-1))
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 0] = 200  # pure red: PIL's luma gives 200 * 299 / 1000
    write_png(tmp_path / "train" / "Case_P001_slice001.png", colour)
    deep = np.full((H, W), 4000, np.uint16)
    write_png(tmp_path / "train" / "Case_P001_slice002.png", deep)
    (subject,) = lge_slices(tmp_path, slice_order="base-to-apex")
    assert np.array_equal(subject.image[0, 0], grey)  # grey stored as RGB reads exactly
    assert np.allclose(subject.image[1, 0], round(200 * 0.299))
    assert np.array_equal(subject.image[2, 0], deep)  # 16 bits kept, not clipped to 255


def test_palette_mask_gives_its_indices(tmp_path):
    make_case(tmp_path, "train", "Case_P001", range(1))
    mask = Image.fromarray(emidec_mask())
    mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0])  # L -> P
    mask.save(tmp_path / "trainannot" / "Case_P001_slice000.png")
    assert Image.open(tmp_path / "trainannot" / "Case_P001_slice000.png").mode == "P"
    (subject,) = lge_slices(tmp_path)
    assert subject.label[0, 0, 6, 7] == INFARCT and subject.label[0, 0, 8, 9] == MVO


def test_reads_lazily(emidec_root, monkeypatch):
    import data_shards.sources.lge_slices as module

    calls = []
    real = module.read_case
    monkeypatch.setattr(module, "read_case", lambda name, *a, **k: calls.append(name) or real(name, *a, **k))  # fmt: skip
    items = lge_slices(emidec_root)
    assert calls == []
    next(items)
    assert calls == ["Case_N001"]


def test_registered_as_lge_slices():
    assert get_source("lge-slices") is lge_slices


# --- bad roots and options -------------------------------------------------------------------


def test_missing_root_or_layout_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        lge_slices(tmp_path / "nowhere")
    (tmp_path / "train").mkdir()  # no trainannot/ beside it
    with pytest.raises(FileNotFoundError, match="annot"):
        lge_slices(tmp_path)
    (tmp_path / "trainannot").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.png"):
        lge_slices(tmp_path)
    with pytest.raises(FileNotFoundError, match="val"):
        lge_slices(tmp_path, image_dirs=["val"])
    with pytest.raises(FileNotFoundError, match="train_masks"):  # a named mask folder must exist
        lge_slices(tmp_path, image_dirs=["train"], mask_dirs=["train_masks"])


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"pattern": r"(?P<case>Case_\w+)"}, "slice"),
        ({"pattern": r"(?P<case>"}, "not a valid regex"),
        ({"label_map": {0: 0, 1: 7}}, "label_map"),
        ({"slice_order": "random"}, "slice_order"),
        ({"split_map": {"val": "holdout"}}, "split_map"),
        ({"mask_dirs": ["trainannot"]}, "image_dirs"),
    ],
)
def test_bad_options_raise(emidec_root, options, problem):
    with pytest.raises(ValueError, match=problem):
        lge_slices(emidec_root, **options)


# --- broken cases ----------------------------------------------------------------------------


def truncate(path: Path) -> Path:
    """Rewrite ``path`` as a noise PNG cut in the middle of its pixel data."""
    noise = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    write_png(path, noise)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def break_case(root: Path, breakage: str) -> Path:
    """Break Case_P002 (slices 0..3 in train/); return the path the error must name."""
    images, masks = root / "train", root / "trainannot"
    if breakage == "mask_without_image":
        (images / "Case_P002_slice003.png").unlink()
        return masks / "Case_P002_slice003.png"
    if breakage == "size_differs":
        return write_png(images / "Case_P002_slice002.png", np.zeros((H, W + 2), np.uint8))
    if breakage == "gap":
        (images / "Case_P002_slice001.png").unlink()
        (masks / "Case_P002_slice001.png").unlink()
        return images
    if breakage == "truncated":
        return truncate(images / "Case_P002_slice001.png")
    if breakage == "not_png":
        path = masks / "Case_P002_slice000.png"
        path.write_text("label image")
        return path
    if breakage == "mask_values":
        mask = emidec_mask()
        mask[0, 0], mask[1, 1] = 7, 9
        return write_png(masks / "Case_P002_slice002.png", mask)
    if breakage == "colour_mask":
        mask = np.stack([emidec_mask()] * 3, axis=-1)
        mask[4, 5] = (2, 0, 2)
        return write_png(masks / "Case_P002_slice000.png", mask)
    if breakage == "mask_size":
        return write_png(masks / "Case_P002_slice001.png", np.zeros((H + 1, W), np.uint8))
    if breakage == "duplicate_slice":
        return write_png(images / "Case_P002_slice2.png", slice_image(2, 2))  # and slice002
    if breakage == "two_folders":
        make_case(root, "val", "Case_P002", [4])
        return images
    raise AssertionError(breakage)


BROKEN = [
    ("mask_without_image", "mask without an image"),
    ("size_differs", "differs from Case_P002_slice003.png"),  # the stack starts at 3
    ("gap", "lacks slices [1]"),
    ("truncated", "unreadable PNG"),
    ("not_png", "unreadable PNG"),
    ("mask_values", "mask values [7, 9] outside"),
    ("colour_mask", "differing channels"),
    ("mask_size", "mask size (11, 12)"),
    ("duplicate_slice", "slice 2 is also"),
    ("two_folders", "several folders ['train', 'val']"),
]


@pytest.mark.parametrize(("breakage", "problem"), BROKEN)
def test_broken_case_is_yielded_as_error_naming_the_file(tmp_path, breakage, problem):
    make_case(tmp_path, "train", "Case_N001", range(2))
    make_case(tmp_path, "train", "Case_P002", range(4))
    make_case(tmp_path, "train", "Case_P003", range(2))
    path = break_case(tmp_path, breakage)
    good_before, err, good_after = lge_slices(tmp_path)
    assert isinstance(err, SourceError), err
    assert Path(err.path) == path and str(path) in str(err)
    assert problem in err.reason
    assert [good_before.subject, good_after.subject] == ["emidec-Case_N001", "emidec-Case_P003"]


def test_png_not_matching_the_pattern_is_an_error_and_the_rest_goes_on(emidec_root):
    stray = write_png(emidec_root / "train" / "overview.png", slice_image(0, 0))
    items = list(lge_slices(emidec_root))
    assert isinstance(items[0], SourceError) and Path(items[0].path) == stray
    assert "does not match pattern" in items[0].reason
    assert [s.subject for s in items[1:]] == [
        "emidec-Case_N001",
        "emidec-Case_N010",
        "emidec-Case_P002",
    ]


# --- through convert -------------------------------------------------------------------------


def test_convert_quarantines_broken_cases_and_keeps_good_ones(tmp_path):
    # Needs preprocessing that keeps the native pixel grid when the spacing is unknown (NaN).
    root = tmp_path / "emidec"
    make_case(root, "train", "Case_N001", range(2))
    make_case(root, "train", "Case_P002", range(4))
    make_case(root, "val", "Case_P003", range(3))
    make_case(root, "val", "Case_P004", range(2))
    values = break_case(root, "mask_values")
    truncated = truncate(root / "val" / "Case_P004_slice001.png")
    out = tmp_path / "shards"
    config = PreprocessConfig(spacing=1.5, size=16)
    manifest = convert("lge-slices", root, out, preprocess_config=config, console=quiet())

    quarantine = json.loads((out / "quarantine.json").read_text())
    assert quarantined_inputs(out, root) == [values, truncated]
    assert "[7, 9]" in quarantine[0]["reason"] and "unreadable" in quarantine[1]["reason"]
    assert manifest["quarantined"] == 2
    loaded = {s["key"]: s for s in load_subjects(out)}
    assert set(loaded) == {"emidec-Case_N001", "emidec-Case_P003"}
    p003 = loaded["emidec-Case_P003"]
    assert p003["image"].shape == p003["label"].shape == (3, 1, 16, 16)
    # Native grid: no resampling, so every labelled pixel survives (padded from 10 x 12).
    assert set(np.unique(p003["label"])) == {BACKGROUND, LV, MYO, INFARCT, MVO}
    assert (p003["label"] == MVO).sum() == 3
    assert p003["meta"]["modality"] == "lge" and p003["meta"]["dataset_split"] == "val"


# --- real data -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_emidec() -> list:
    """Every real EMIDEC case, read once for the tests below (708 PNG pairs)."""
    if not REAL_EMIDEC.is_dir():
        pytest.skip(f"EMIDEC not found at {REAL_EMIDEC} (see ../shared/data/README.md)")
    return list(lge_slices(REAL_EMIDEC))


@pytest.mark.realdata
def test_real_emidec_cases_slices_and_labels(real_emidec):
    errors = [i for i in real_emidec if isinstance(i, SourceError)]
    assert errors == []
    # As ../shared/data/README.md describes the export: 85 + 15 cases, 596 + 112 PNGs.
    n_files = {d: len(list((REAL_EMIDEC / d).glob("*.png"))) for d in ("train", "val")}
    per_split = {"train": [0, 0], "val": [0, 0]}
    for subject in real_emidec:
        per_split[subject.meta["dataset_split"]][0] += 1
        per_split[subject.meta["dataset_split"]][1] += subject.image.shape[0]
        assert subject.image.shape[1:] == (1, 256, 256)
        assert subject.label.shape == subject.image.shape
        assert all(math.isnan(v) for v in subject.spacing)
        letter = subject.subject.removeprefix("emidec-Case_")[0]
        assert subject.meta["group"] == {"N": "normal", "P": "infarct"}[letter]
        values = set(np.unique(subject.label))
        assert {BACKGROUND, LV} <= values <= {BACKGROUND, LV, MYO, INFARCT, MVO}
        if letter == "N":  # a normal heart has no scar
            assert not values & {INFARCT, MVO}
    assert per_split == {"train": [85, n_files["train"]], "val": [15, n_files["val"]]}
    assert n_files == {"train": 596, "val": 112}
    assert len({s.subject for s in real_emidec}) == 100
    infarcted = [s for s in real_emidec if s.meta["group"] == "infarct"]
    assert any(INFARCT in s.label for s in infarcted) and any(MVO in s.label for s in infarcted)


@pytest.mark.realdata
def test_real_emidec_stack_runs_base_to_apex(real_emidec):
    # The heart's cross-section shrinks towards the apex: the first slice is the larger end.
    area = [(s.label[:, 0] != BACKGROUND).sum(axis=(1, 2)) for s in real_emidec]
    larger_first = sum(int(a[0] > a[-1]) for a in area)
    assert larger_first / len(area) > 0.9
