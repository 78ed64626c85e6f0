"""The synthetic short-axis phantom: determinism, exact labels, physiology, image contrast."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from data_shards.phantom import PhantomConfig, make_cohort, make_subject
from data_shards.record import BACKGROUND, INFARCT, LV, MYO, RV
from data_shards.volumes import ejection_fraction, volumes_ml

LGE = PhantomConfig(modality="lge")


@pytest.fixture(scope="module")
def cohort():
    return list(make_cohort(10, seed=3))


def test_deterministic_and_distinct():
    a, b = make_subject(1, 2), make_subject(1, 2)
    assert a.subject == b.subject == "phantom-0001-00002"
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert a.meta == b.meta
    c = make_subject(1, 3)
    assert c.subject == "phantom-0001-00003"
    assert not np.array_equal(a.label, c.label)
    assert not np.array_equal(a.image, c.image)
    assert a.meta["lv_edv_ml"] != c.meta["lv_edv_ml"]
    assert not np.array_equal(make_subject(2, 2).label, a.label)  # the seed matters too


def test_cine_shapes_dtypes_labels():
    cfg = PhantomConfig(slices=5, frames=10, size=64, spacing=2.5, slice_thickness=8.0)
    s = make_subject(0, 0, cfg)
    assert s.image.shape == s.label.shape == (5, 10, 64, 64)
    assert s.image.dtype == np.float32 and s.label.dtype == np.uint8
    assert s.spacing == (8.0, 2.5, 2.5)
    assert np.isfinite(s.image).all() and s.image.min() >= 0
    assert set(np.unique(s.label).tolist()) == {BACKGROUND, LV, MYO, RV}
    for t in range(10):  # every frame is labelled
        assert {LV, MYO, RV} <= set(np.unique(s.label[:, t]).tolist())


def test_lge_shapes_and_infarct():
    s = make_subject(0, 4, PhantomConfig(modality="lge", frames=16))  # frames ignored for LGE
    assert s.image.shape == s.label.shape == (8, 1, 80, 80)
    assert s.image.dtype == np.float32 and s.image.min() >= 0
    assert set(np.unique(s.label).tolist()) == {BACKGROUND, LV, MYO, RV, INFARCT}
    assert s.meta["modality"] == "lge" and s.meta["ed"] == s.meta["es"] == 0
    assert s.meta["infarct_ml"] == pytest.approx(volumes_ml(s.label, s.spacing, INFARCT)[0])
    assert s.meta["infarct_ml"] > 0
    inf_slices = np.flatnonzero((s.label == INFARCT).any(axis=(1, 2, 3)))
    assert np.array_equal(inf_slices, np.arange(inf_slices[0], inf_slices[-1] + 1))  # contiguous
    # the same index gives the same heart in cine and LGE: LGE myo+infarct = cine ED myo
    cine = make_subject(0, 4)
    lge_myo = np.isin(s.label[:, 0], (MYO, INFARCT))
    assert np.array_equal(lge_myo, cine.label[:, 0] == MYO)


def test_meta_consistent_with_labels(cohort):
    for s in cohort:
        m = s.meta
        json.dumps(m)
        assert m["source"] == "phantom" and m["modality"] == "cine"
        assert m["group"] is None and m["height"] is None and m["weight"] is None
        assert 60 <= m["heart_rate_bpm"] <= 100
        lv, rv = volumes_ml(s.label, s.spacing, LV), volumes_ml(s.label, s.spacing, RV)
        assert lv.shape == (s.image.shape[1],)
        assert m["ed"] == 0 and lv[m["ed"]] == lv.max()
        assert lv[m["es"]] == lv.min() and 0 < m["es"] < s.image.shape[1]
        assert m["lv_edv_ml"] == pytest.approx(lv.max())
        assert m["lv_esv_ml"] == pytest.approx(lv.min())
        assert m["rv_edv_ml"] == pytest.approx(rv.max())
        assert m["rv_esv_ml"] == pytest.approx(rv.min())
        assert m["lv_ef"] == pytest.approx(ejection_fraction(lv.max(), lv.min()))
        assert m["rv_ef"] == pytest.approx(ejection_fraction(rv.max(), rv.min()))
        assert abs(m["lv_ef"] - m["target_lv_ef"]) < 10
        assert abs(m["rv_ef"] - m["target_rv_ef"]) < 10
        assert 40 < m["lv_edv_ml"] < 250 and 30 < m["rv_edv_ml"] < 300


def test_ef_spread_and_plausible(cohort):
    lv = np.array([s.meta["lv_ef"] for s in cohort])
    rv = np.array([s.meta["rv_ef"] for s in cohort])
    assert ((lv > 20) & (lv < 80)).all() and ((rv > 20) & (rv < 80)).all()
    assert lv.std() > 3 and rv.std() > 3


def test_myocardial_volume_constant(cohort):
    for s in cohort:
        myo = volumes_ml(s.label, s.spacing, MYO)
        assert myo.min() > 0.85 * myo.max()
        lv = volumes_ml(s.label, s.spacing, LV)
        assert lv.min() < 0.8 * lv.max()  # while the cavity clearly contracts


def test_cavity_shrinks_towards_apex():
    s = make_subject(0, 1)
    area = (s.label[:, 0] == LV).sum(axis=(1, 2))
    assert area[0] > area[-1] and area[len(area) // 2] > area[-1]
    assert (np.diff(area) <= 0).all()


def test_image_shows_anatomy(cohort):
    for s in cohort[:4]:
        blood = s.image[s.label == LV].mean()
        myo = s.image[s.label == MYO].mean()
        assert blood > 2 * myo
        assert s.image[s.label == RV].mean() > 2 * myo
    for i in range(4):
        s = make_subject(0, i, LGE)
        infarct = s.image[s.label == INFARCT].mean()
        remote = s.image[s.label == MYO].mean()
        assert infarct > 2 * remote
        assert s.image[s.label == LV].mean() > remote


def test_cohort_lge_fraction():
    subs = list(make_cohort(6, seed=1, lge_fraction=0.5))
    assert [s.subject for s in subs] == [f"phantom-0001-{i:05d}" for i in range(6)]
    assert sum(s.meta["modality"] == "lge" for s in subs) == 3
    assert all(s.image.shape[1] == (1 if s.meta["modality"] == "lge" else 16) for s in subs)
    assert next(make_cohort(3)).label.tobytes() == make_subject(0, 0).label.tobytes()


def test_volumes_and_ef_helpers():
    label = np.zeros((2, 3, 4, 4), np.uint8)
    label[:, 0, :2, :2] = LV  # 8 voxels at t=0
    label[0, 1, 0, 0] = LV  # 1 voxel at t=1
    v = volumes_ml(label, (10.0, 2.0, 2.0), LV)
    np.testing.assert_allclose(v, [8 * 0.04, 0.04, 0.0])
    assert ejection_fraction(v[0], v[2]) == pytest.approx(100.0)
    assert ejection_fraction(100.0, 40.0) == pytest.approx(60.0)
    assert np.isnan(ejection_fraction(0.0, 0.0))
    with pytest.raises(ValueError):
        volumes_ml(label[0], (1.0, 1.0, 1.0), LV)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"size": 16}, "size"),
        ({"slices": 0}, "slices"),
        ({"frames": 1}, "frames"),
        ({"modality": "t1"}, "modality"),
        ({"spacing": 0.0}, "spacing"),
        ({"slice_thickness": -1.0}, "slice_thickness"),
        ({"noise": -0.1}, "noise"),
    ],
)
def test_bad_config(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PhantomConfig(**kwargs)


def test_bad_arguments():
    PhantomConfig(modality="lge", frames=1)  # frames is irrelevant for LGE
    with pytest.raises(ValueError, match="seed"):
        make_subject(-1, 0)
    with pytest.raises(ValueError, match="index"):
        make_subject(0, 1.5)
    with pytest.raises(ValueError, match="lge_fraction"):
        list(make_cohort(2, lge_fraction=1.5))
    with pytest.raises(ValueError, match="n must"):
        list(make_cohort(-1))


def test_fast():
    make_subject(0, 0)
    t0 = time.perf_counter()
    for i in range(3):
        make_subject(0, i)
    assert (time.perf_counter() - t0) / 3 < 0.5
