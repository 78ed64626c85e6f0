"""Contract of data_shards.preprocess: grid, geometry in mm, exact labels, robust uint8."""

from __future__ import annotations

import json
import math

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
    assert out.meta["preprocess"] == {"spacing": 1.5, "size": 64, "percentiles": [0.5, 99.5]}
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
        assert np.abs(outs[0].astype(int) - other.astype(int)).max() <= 1


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
    "spacing", [(8.0, 0.0, 1.0), (8.0, 1.0, math.nan), (8.0, -1.0, 1.0), (8.0, math.inf, 1.0)]
)
def test_bad_in_plane_spacing_raises_naming_the_subject(spacing):
    image = np.zeros((1, 1, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"emidec-0001.*spacing"):
        preprocess(make_subject(image, spacing=spacing, name="emidec-0001"), PreprocessConfig())


@pytest.mark.parametrize(
    "kwargs", [{"spacing": 0.0}, {"size": 0}, {"percentiles": (99.0, 1.0)}, {"spacing": math.nan}]
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        PreprocessConfig(**kwargs)
