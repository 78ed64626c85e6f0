"""Contract of data_shards.preprocess: grid, geometry in mm, exact labels, robust uint8."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest

from data_shards.preprocess import PreprocessConfig, preprocess
from data_shards.record import IGNORE, LV, MYO, RV, Subject


def disc(shape: tuple[int, int], spacing: float, radius_mm: float) -> np.ndarray:
    """(H, W) bool disc of ``radius_mm`` centred in the field of view, pixel pitch ``spacing``."""
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) * spacing
    x = (np.arange(w) - (w - 1) / 2) * spacing
    return np.hypot(y[:, None], x[None, :]) < radius_mm


def make_subject(image, label=None, spacing=(8.0, 1.5, 1.5), name="subj-1", meta=None) -> Subject:
    return Subject(name, image, label, spacing, dict(meta or {"source": "test"}))


def test_output_grid_dtype_spacing_and_meta():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (2, 3, 50, 70)).astype(np.float32)
    label = rng.integers(0, 4, image.shape).astype(np.uint8)
    subject = make_subject(image, label, spacing=(8.0, 1.0, 1.2))
    out = preprocess(subject, PreprocessConfig(spacing=1.5, size=64))

    assert out.image.shape == out.label.shape == (2, 3, 64, 64)
    assert out.image.dtype == out.label.dtype == np.uint8
    assert out.spacing == (8.0, 1.5, 1.5)
    assert out.subject == "subj-1"
    assert out.meta["source"] == "test"
    assert out.meta["preprocess"] == {
        "spacing": 1.5,
        "size": 64,
        "percentiles": [0.5, 99.5],
        "orientation": "canonical",
        "crop": "centre",
    }
    assert out.meta["orientation"] == "unknown"  # no direction in meta: left as the source gave it
    assert out.meta["original_spacing"] == [8.0, 1.0, 1.2]
    assert out.meta["original_shape"] == [2, 3, 50, 70]
    json.dumps(out.meta, allow_nan=False)
    assert "preprocess" not in subject.meta  # the input is left alone
    assert out.image.max() == 255 and out.image.min() == 0


def test_unknown_slice_spacing_passes_through():
    image = np.random.default_rng(1).random((1, 1, 20, 20)).astype(np.float32)
    out = preprocess(make_subject(image, spacing=(math.nan, 1.5, 1.5)), PreprocessConfig(size=16))
    assert math.isnan(out.spacing[0]) and out.spacing[1:] == (1.5, 1.5)
    assert out.meta["original_spacing"] == [None, 1.5, 1.5]
    assert out.label is None


@pytest.mark.parametrize("source_spacing", [1.0, 2.3, 0.7])
def test_disc_keeps_its_radius_in_mm(source_spacing):
    radius_mm, fov_mm = 30.0, 150.0
    n = round(fov_mm / source_spacing)
    mask = disc((n, n), source_spacing, radius_mm)
    image = np.where(mask, 1000.0, 100.0).astype(np.float32)[None, None]  # (1, 1, n, n)
    label = np.where(mask, LV, 0).astype(np.uint8)[None, None]
    subject = make_subject(image, label, spacing=(10.0, source_spacing, source_spacing))
    out = preprocess(subject, PreprocessConfig(spacing=1.5, size=128))

    expected = math.pi * radius_mm**2
    label_area = np.count_nonzero(out.label == LV) * 1.5**2
    image_area = np.count_nonzero(out.image > 127) * 1.5**2
    assert label_area == pytest.approx(expected, rel=0.03)
    assert image_area == pytest.approx(expected, rel=0.03)
    # and it is still centred: the centroid sits in the middle of the 128 x 128 grid
    ys, xs = np.nonzero(out.label[0, 0] == LV)
    assert abs(ys.mean() - 63.5) < 1.0 and abs(xs.mean() - 63.5) < 1.0


def test_label_values_are_preserved_exactly():
    rng = np.random.default_rng(2)
    s, t, h, w = 2, 3, 37, 41
    # blocky labels with every class, so interpolation would create in-between values
    coarse = rng.choice([0, LV, MYO, RV, 4, 5], size=(s, t, 8, 9)).astype(np.uint8)
    label = coarse.repeat(5, axis=2).repeat(5, axis=3)[:, :, :h, :w].copy()
    label[0, 1] = IGNORE  # a frame without ground truth
    label[1, 2, :10, :10] = IGNORE  # a partly unannotated frame
    image = rng.random((s, t, h, w)).astype(np.float32)
    subject = make_subject(image, label, spacing=(8.0, 1.13, 0.97))
    out = preprocess(subject, PreprocessConfig(spacing=1.5, size=64))  # resample and pad

    assert set(np.unique(out.label)) <= set(np.unique(label))
    assert (out.label[0, 1] == IGNORE).all()  # padding included
    # other frames are padded with background, not IGNORE
    for si, ti in [(0, 0), (1, 2)]:
        frame = out.label[si, ti]
        assert (frame[0, :] == 0).all() and (frame[:, -1] == 0).all()
    assert (out.label[1, 2] == IGNORE).any()  # the partial IGNORE region survives


def test_label_none_stays_none():
    image = np.random.default_rng(3).random((1, 2, 30, 30)).astype(np.float32)
    assert preprocess(make_subject(image), PreprocessConfig(size=16)).label is None


def test_pad_is_centred():
    h, w, size = 20, 31, 40
    label = np.full((1, 1, h, w), MYO, np.uint8)
    image = np.ones((1, 1, h, w), np.float32)
    out = preprocess(make_subject(image, label), PreprocessConfig(spacing=1.5, size=size))
    rows = np.nonzero((out.label[0, 0] == MYO).any(axis=1))[0]
    cols = np.nonzero((out.label[0, 0] == MYO).any(axis=0))[0]
    assert (rows[0], rows[-1]) == (10, 29)  # 10 padded above, 10 below
    assert len(cols) == w and abs(cols[0] - (size - 1 - cols[-1])) <= 1


def test_crop_is_centred():
    h, w, size = 200, 181, 128
    label = np.zeros((1, 1, h, w), np.uint8)
    label[0, 0, h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = RV  # 4 x 4 block at the centre
    label[0, 0, :30] = MYO  # near the top edge: must be cropped away
    image = label.astype(np.float32)
    out = preprocess(make_subject(image, label), PreprocessConfig(spacing=1.5, size=size))
    ys, xs = np.nonzero(out.label[0, 0] == RV)
    assert len(ys) == 16
    assert abs(ys.mean() - (size - 1) / 2) <= 1 and abs(xs.mean() - (size - 1) / 2) <= 1
    assert not (out.label == MYO).any()


def test_same_result_for_float32_int16_uint8():
    rng = np.random.default_rng(4)
    values = rng.integers(0, 256, (2, 2, 45, 52))
    config = PreprocessConfig(spacing=1.5, size=48)
    outs = [
        preprocess(make_subject(values.astype(dtype), spacing=(8.0, 1.1, 1.1)), config).image
        for dtype in (np.float32, np.int16, np.uint8)
    ]
    for other in outs[1:]:
        assert np.array_equal(outs[0], other)


def test_percentiles_ignore_a_few_hot_voxels():
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 100, (1, 1, 64, 64)).astype(np.float32)
    image[0, 0, 0, :3] = 1e6  # three hot voxels must not crush the tissue contrast
    out = preprocess(make_subject(image), PreprocessConfig(spacing=1.5, size=64))
    assert out.image[0, 0, 0, :3].tolist() == [255, 255, 255]
    assert 100 < np.median(out.image) < 155


@pytest.mark.parametrize("value", [0.0, 7.0, -3.5])
def test_constant_image_gives_zeros(value):
    image = np.full((2, 2, 30, 30), value, np.float32)
    with np.errstate(all="raise"):
        out = preprocess(make_subject(image, spacing=(8.0, 1.0, 1.0)), PreprocessConfig(size=32))
    assert out.image.dtype == np.uint8 and not out.image.any()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_image_raises_naming_the_subject(bad):
    image = np.zeros((1, 2, 16, 16), np.float32)
    image[0, 1, 3, 4] = bad
    with pytest.raises(ValueError, match=r"acdc-patient042.*non-finite"):
        preprocess(make_subject(image, name="acdc-patient042"), PreprocessConfig(size=16))


@pytest.mark.parametrize(
    "spacing", [(8.0, 0.0, 1.0), (8.0, 1.0, -2.0), (8.0, -1.0, 1.0), (8.0, math.inf, 1.0)]
)
def test_bad_in_plane_spacing_raises_naming_the_subject(spacing):
    image = np.zeros((1, 1, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"emidec-0001.*spacing"):
        preprocess(make_subject(image, spacing=spacing, name="emidec-0001"), PreprocessConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"spacing": 0.0},
        {"size": 0},
        {"percentiles": (99.0, 1.0)},
        {"spacing": math.nan},
        {"orientation": "ras"},
        {"crop": "heart"},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PreprocessConfig(**kwargs)


# ------------------------------------------------------------------ to and from a dict

CONFIGS = [
    PreprocessConfig(),
    PreprocessConfig(spacing=2.0, size=48, percentiles=(1.0, 99.0), orientation="none"),
    PreprocessConfig(spacing=1.25, size=16, crop="label"),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_to_dict_round_trips_through_json(config):
    recorded = json.loads(json.dumps(config.to_dict(), allow_nan=False))
    assert recorded == config.to_dict()
    assert PreprocessConfig.from_dict(recorded, "manifest.json") == config


@pytest.mark.parametrize("config", CONFIGS)
def test_to_dict_is_the_format_files_have_always_held(config):
    # Manifests, journals and config.json were written as asdict with JSON's lists: keep that.
    assert config.to_dict() == json.loads(json.dumps(asdict(config)))
    assert list(config.to_dict()) == ["spacing", "size", "percentiles", "orientation", "crop"]


def test_from_dict_skips_keys_of_other_configs_and_defaults_what_older_files_lack():
    hub = {"spacing": 2.0, "size": 32.0, "percentiles": [1, 99], "frames": 4, "modalities": []}
    config = PreprocessConfig.from_dict(hub, "config.json")
    assert config == PreprocessConfig(spacing=2.0, size=32, percentiles=(1, 99))
    assert isinstance(config.size, int) and isinstance(config.percentiles, tuple)
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ({"spacing": 0}, "spacing"),
        ({"spacing": "1.5"}, "spacing"),
        ({"spacing": None}, "spacing"),
        ({"size": 32.5}, "size"),
        ({"size": True}, "size"),
        ({"percentiles": [1.0]}, "percentiles"),
        ({"percentiles": 5}, "percentiles"),
        ({"percentiles": [99.0, 1.0]}, "percentiles"),
        ({"orientation": "ras"}, "orientation"),
        ({"crop": 3}, "crop"),
    ],
)
def test_from_dict_error_names_the_source_and_the_bad_key(given, key):
    with pytest.raises(ValueError, match=rf"^pkg/config\.json: .*{key}"):
        PreprocessConfig.from_dict({"size": 16, **given}, "pkg/config.json")


def test_from_dict_refuses_what_is_not_an_object():
    with pytest.raises(ValueError, match=r"^manifest\.json: preprocess must be an object"):
        PreprocessConfig.from_dict([1.5, 128], "manifest.json")


# ------------------------------------------------------------------ unknown in-plane spacing


def test_unknown_in_plane_spacing_keeps_the_native_grid():
    rng = np.random.default_rng(6)
    image = rng.random((2, 1, 40, 30)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[:, :, 15:25, 10:20] = LV  # a 10 x 10 block in the middle
    subject = make_subject(image, label, spacing=(math.nan, math.nan, math.nan), name="emidec-1")
    out = preprocess(subject, PreprocessConfig(spacing=1.5, size=32))

    assert out.image.shape == (2, 1, 32, 32)
    assert all(math.isnan(v) for v in out.spacing)  # nothing invented
    assert out.meta["original_spacing"] == [None, None, None]
    json.dumps(out.meta, allow_nan=False)
    # Not resampled: the block keeps its 10 x 10 pixels, the crop is a plain window.
    assert np.count_nonzero(out.label[0, 0] == LV) == 100
    y0, x0, y1, x1 = out.meta["crop"]["box"]
    assert out.meta["crop"]["resampled_shape"] == [40, 30]
    assert (x0, x1) == (-1, 31) and out.meta["crop"]["pad"] == [[0, 0], [1, 1]]
    assert np.array_equal(out.label[0, 0, :, 1:31], label[0, 0, y0:y1, 0:30])


# ------------------------------------------------------------------ orientation in preprocess


def oblique_subject(h: int = 20, w: int = 24) -> Subject:
    """A coronal-like study, rows to the right, columns up: canonical swaps and flips both."""
    rng = np.random.default_rng(7)
    image = rng.random((3, 2, h, w)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[1, 0, 4, 5] = RV  # one marker voxel
    meta = {
        "source": "test",
        "direction": [[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],  # S anterior
        "origin": [-30.0, 20.0, 50.0],
    }
    return make_subject(image, label, spacing=(8.0, 1.5, 1.5), meta=meta)


def world(meta: dict, spacing, index) -> np.ndarray:
    """LPS mm of voxel (s, h, w) under the meta's origin and direction."""
    steps = np.asarray(index, float) * np.asarray(spacing, float)
    return np.asarray(meta["origin"]) + steps @ np.asarray(meta["direction"])


def test_canonical_orientation_keeps_world_positions_through_the_crop():
    subject = oblique_subject()
    out = preprocess(subject, PreprocessConfig(spacing=1.5, size=16))  # no resampling, a crop

    assert out.meta["orientation"] == {"transposed": True, "flipped": ["H", "W"]}
    direction = np.asarray(out.meta["direction"])
    assert direction[2] @ [1, 0, 0] == 1.0  # columns point to patient left
    assert direction[1] @ [0, 0, -1] == 1.0  # rows (vertical) point inferior
    marker = np.argwhere(out.label == RV)
    assert len(marker) == 1
    s, _, h, w = marker[0]
    assert world(out.meta, out.spacing, (s, h, w)) == pytest.approx(
        world(subject.meta, subject.spacing, (1, 4, 5))
    )


def test_orientation_none_keeps_voxel_order():
    subject = oblique_subject(h=16, w=16)
    out = preprocess(subject, PreprocessConfig(spacing=1.5, size=16, orientation="none"))
    assert out.meta["orientation"] == "none"
    assert out.meta["direction"] == subject.meta["direction"]
    assert np.array_equal(out.label, subject.label)


def test_origin_follows_resampling_to_within_a_pixel():
    subject = oblique_subject(h=40, w=48)
    subject.spacing = (8.0, 0.75, 0.75)
    subject.label[1, 0, 20:22, 24:26] = RV  # a 2 x 2 block: one pixel at 1.5 mm
    subject.label[1, 0, 4, 5] = 0
    out = preprocess(subject, PreprocessConfig(spacing=1.5, size=16))
    marker = np.argwhere(out.label == RV)
    assert len(marker) == 1
    s, _, h, w = marker[0]
    expected = world(subject.meta, subject.spacing, (1, 20.5, 24.5))  # the block's centre
    assert np.abs(world(out.meta, out.spacing, (s, h, w)) - expected).max() < 1e-6


def test_malformed_direction_is_named():
    subject = oblique_subject()
    subject.meta["direction"] = [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match=r"subj-1.*direction"):
        preprocess(subject, PreprocessConfig(size=16))


# ------------------------------------------------------------------ crop window


def heart_study(h: int = 120, w: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(2, 3, h, w) image and labels with the heart off-centre, in different places per frame."""
    rng = np.random.default_rng(8)
    image = rng.random((2, 3, h, w)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[0, 0, 10:20, 10:20] = LV  # union of the labelled pixels: rows 10..29, cols 10..29
    label[1, 1, 20:30, 20:30] = MYO
    label[0, 2] = IGNORE  # a frame without ground truth does not count
    label[1, 2, 100:, 80:] = IGNORE  # nor does an unannotated region
    return image, label


def test_label_crop_centres_the_labelled_heart_with_one_window():
    image, label = heart_study()
    config = PreprocessConfig(spacing=1.5, size=32, crop="label")
    out = preprocess(make_subject(image, label), config)

    crop = out.meta["crop"]
    assert crop["mode"] == "label"
    # Centroid of the union (rows and cols 10..29, less the 10 x 10 overlap of none): 19.5.
    assert crop["center"] == [pytest.approx(19.5, abs=0.6)] * 2
    y0, x0, y1, x1 = crop["box"]
    assert (y1 - y0, x1 - x0) == (32, 32) and crop["resampled_shape"] == [120, 100]
    assert crop["pad"] == [[max(0, -y0), 0], [max(0, -x0), 0]]
    # Every slice and frame is cut from the same window (no resampling at 1.5 mm).
    assert np.array_equal(out.label[:, :2], label[:, :2, y0:y1, x0:x1])
    assert (out.label[0, 2] == IGNORE).all()
    # Whereas the centred window loses the heart entirely.
    centred = preprocess(make_subject(image, label), PreprocessConfig(spacing=1.5, size=32))
    assert centred.meta["crop"]["mode"] == "centre"
    assert not np.isin(centred.label, [LV, MYO]).any()


def test_label_crop_pads_when_the_heart_is_at_the_edge():
    image, label = heart_study(h=40, w=40)
    label[:] = 0
    label[:, :, 0:4, 0:4] = LV
    signed = image - 0.5  # zero is mid-grey here: padding must still come out black
    out = preprocess(make_subject(signed, label), PreprocessConfig(size=32, crop="label"))
    y0, x0, _, _ = out.meta["crop"]["box"]
    assert y0 < 0 and x0 < 0 and out.meta["crop"]["pad"][0][0] == -y0
    rows, cols = np.nonzero(out.label[0, 0] == LV)
    assert abs(rows.mean() - 15.5) <= 1 and abs(cols.mean() - 15.5) <= 1
    assert (out.image[0, 0, :-y0] == 0).all()  # padding is black


def test_label_crop_without_labels_falls_back_to_centre():
    image, _ = heart_study()
    config = PreprocessConfig(size=32, crop="label")
    unlabelled = preprocess(make_subject(image), config)
    reference = preprocess(make_subject(image), PreprocessConfig(size=32))
    assert unlabelled.meta["crop"]["mode"] == "centre"
    assert "no foreground" in unlabelled.meta["crop"]["note"]
    assert np.array_equal(unlabelled.image, reference.image)
    all_ignore = np.full(image.shape, IGNORE, np.uint8)
    assert preprocess(make_subject(image, all_ignore), config).meta["crop"]["mode"] == "centre"


@pytest.mark.parametrize("crop", ["centre", "label"])
def test_same_bytes_for_every_dtype_with_orientation_and_crop(crop):
    values = np.random.default_rng(9).integers(0, 256, (3, 2, 30, 34))
    label = oblique_subject(30, 34).label
    config = PreprocessConfig(spacing=1.5, size=24, crop=crop)
    outs = []
    for dtype in (np.float32, np.int16, np.uint8):
        subject = oblique_subject(30, 34)
        subject.image, subject.label, subject.spacing = values.astype(dtype), label, (8, 1.1, 0.9)
        outs.append(preprocess(subject, config))
    for other in outs[1:]:
        assert np.array_equal(outs[0].image, other.image)
        assert np.array_equal(outs[0].label, other.label)
        assert other.meta == outs[0].meta


# --- blank frames ------------------------------------------------------------------------------


def lge_like(rng: np.random.Generator, slices: int = 4) -> np.ndarray:
    """(S, 1, 64, 64) LGE-like stack: a zero-padded border (a third of the field), body noise,
    bright blood, nulled myocardium at exactly 0 and a dim apical slice."""
    y, x = np.mgrid[:64, :64] - 31.5
    r = np.hypot(y, x)
    image = np.zeros((slices, 1, 64, 64), np.float32)
    for z in range(slices):
        frame = rng.normal(60, 15, (64, 64)).clip(0)
        frame[r < 14] = 0.0  # nulled myocardium
        frame[r < 9] = rng.normal(400, 30, (r < 9).sum())  # blood pool
        frame[:, :21] = 0.0  # zero padding
        image[z, 0] = frame
    image[-1, 0] = rng.normal(8, 2, (64, 64)).clip(0)  # a dim slice: mostly noise, still an image
    return image


def test_legitimate_images_have_no_blank_frames():
    rng = np.random.default_rng(11)
    small = rng.normal(100, 30, (2, 3, 12, 12)).astype(np.float32)
    padded = np.zeros((2, 3, 64, 64), np.float32)  # a small image in a big field of zeros
    padded[:, :, 26:38, 26:38] = small
    for image in (lge_like(rng), padded):
        out = preprocess(make_subject(image, spacing=(8.0, 1.5, 1.5)), PreprocessConfig(size=48))
        assert "blank_frames" not in out.meta and "blank" not in out.meta


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("zeros", "constant image: every voxel is 0"),
        ("flat_frames", "every one of its 4 frames is constant"),
        ("hot_voxels", "near-constant image: all but 2 of its 6400 voxels are 0"),
    ],
)
def test_a_study_without_an_image_says_why(case, reason):
    image = np.zeros((2, 2, 40, 40), np.float32)
    if case == "flat_frames":  # each frame one value, but not the same one
        image += np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1) * 50
    elif case == "hot_voxels":
        image[0, 0, 3, :2] = 900.0
    label = np.zeros(image.shape, np.uint8)
    label[:, :, 10:20, 10:20] = LV
    out = preprocess(make_subject(image, label, spacing=(8.0, 1.5, 1.5)), PreprocessConfig(size=32))
    assert out.meta["blank"].startswith(reason)


def test_blank_frames_of_a_real_study_are_listed_in_output_order():
    rng = np.random.default_rng(12)
    image = rng.normal(100, 30, (3, 2, 40, 40)).astype(np.float32)
    image[1, 0] = 0.0  # a slice that was never filled
    image[2, 1] = 100.0 + rng.normal(0, 0.01, (40, 40))  # within one grey level of constant
    out = preprocess(make_subject(image, spacing=(8.0, 1.5, 1.5)), PreprocessConfig(size=32))
    assert out.meta["blank_frames"] == [[1, 0], [2, 1]] and "blank" not in out.meta
    json.dumps(out.meta, allow_nan=False)
    flipped = preprocess(
        make_subject(image, spacing=(8.0, 1.5, 1.5), meta={"direction": np.diag([-1.0, 1.0, 1.0])}),
        PreprocessConfig(size=32),
    )  # canonical orientation turns the stack base to apex: slice indices follow
    assert flipped.meta["blank_frames"] == [[0, 1], [1, 0]]


@pytest.mark.parametrize(
    ("shape", "out", "mode"),
    [((5, 37, 41), (24, 24), "area"), ((3, 20, 22), (48, 44), "bilinear"),
     ((4, 30, 30), (17, 50), "nearest-exact")],
)  # fmt: skip
def test_resampling_is_monai_resize_bit_for_bit(shape, out, mode) -> None:
    """Preprocessing resizes as MONAI's Resize does, without importing MONAI (slow to import)."""
    import torch
    from monai.transforms import Resize

    from data_shards.preprocess import _resize

    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    expected = Resize(out, mode=mode)(torch.from_numpy(x)).as_tensor().numpy()
    assert np.array_equal(_resize(x, out, mode), expected)
