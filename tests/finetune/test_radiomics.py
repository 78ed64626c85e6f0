"""Radiomics features of synthetic hearts with known geometry, and the SVM diagnosis baseline."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from helpers import DATA

from data_shards.record import IGNORE, LV, MYO, RV
from finetune.radiomics import (
    FEATURE_NAMES,
    INTENSITY_FEATURES,
    TEXTURE_FEATURES,
    RadiomicsSVM,
    feature_matrix,
    local_wall_thickness,
    subject_features,
)

ACDC = DATA / "acdc" / "training"

PX = 1.25  # in-plane mm
DZ = 8.0  # slice mm
SLICES = 6
SIZE = 112


def _grid(px: float = PX, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets in mm from the image centre, each (size, size)."""
    yy, xx = (np.mgrid[:size, :size] - (size - 1) / 2) * px
    return yy, xx


def heart_slice(r_lv: float, r_epi: float, r_rv: float | None = 12.0, px: float = PX) -> np.ndarray:
    """(H, W) label: LV disc of radius r_lv, MYO ring r_lv..r_epi, RV disc left of the LV (mm)."""
    yy, xx = _grid(px)
    r = np.hypot(yy, xx)
    lab = np.zeros(r.shape, np.uint8)
    lab[r <= r_epi] = MYO
    lab[r < r_lv] = LV
    if r_rv is not None:
        lab[(np.hypot(yy, xx + r_epi + r_rv + 2) < r_rv) & (lab == 0)] = RV
    return lab


def heart(
    ed: tuple[float, float],
    es: tuple[float, float],
    r_rv: tuple[float, float] | None = (14.0, 10.0),
    seed: int = 0,
    noise: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """image (S, 2, H, W) uint8 and label: a cylinder heart, frame 0 ED, frame 1 ES.

    ed/es: (LV radius, epicardial radius) mm; r_rv: RV radius at ED and ES (None: no RV).
    Intensities: background 20, LV blood 110, MYO 50, RV 100, plus Gaussian noise.
    """
    frames = []
    for t, (r_lv, r_epi) in enumerate((ed, es)):
        frames.append(heart_slice(r_lv, r_epi, None if r_rv is None else r_rv[t]))
    label = np.stack([np.stack(frames)] * SLICES)  # (S, 2, H, W)
    lut = np.zeros(256, np.float64)
    lut[[0, LV, MYO, RV]] = [20, 110, 50, 100]
    rng = np.random.default_rng(seed)
    image = lut[label] + rng.normal(0, noise, label.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), label


def features(image: np.ndarray, label: np.ndarray) -> dict[str, float]:
    return subject_features(image, label, (DZ, PX, PX), 0, 1)


def cylinder_ml(r: float) -> float:
    return math.pi * r**2 * DZ * SLICES / 1000.0


def test_feature_dict_has_the_documented_names_in_order():
    image, label = heart((24.0, 31.0), (17.0, 28.0))
    f = features(image, label)
    assert tuple(f) == FEATURE_NAMES
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    x = feature_matrix([f, {}])
    assert x.shape == (2, len(FEATURE_NAMES))
    assert np.all(np.isfinite(x[0])) and np.all(np.isnan(x[1]))


def test_volumes_ef_and_mass_of_concentric_cylinders():
    (a, b), (a2, b2) = (24.0, 31.0), (17.0, 28.0)
    f = features(*heart((a, b), (a2, b2), r_rv=(14.0, 10.0)))
    rel = 0.02  # rasterisation of circles at 1.25 mm pixels
    assert f["lv_edv"] == pytest.approx(cylinder_ml(a), rel=rel)
    assert f["lv_esv"] == pytest.approx(cylinder_ml(a2), rel=rel)
    assert f["lv_sv"] == pytest.approx(cylinder_ml(a) - cylinder_ml(a2), rel=2 * rel)
    assert f["lv_ef"] == pytest.approx(100 * (1 - a2**2 / a**2), abs=1.5)
    assert f["rv_ef"] == pytest.approx(100 * (1 - 10**2 / 14**2), abs=2.0)
    myo_ed = cylinder_ml(b) - cylinder_ml(a)
    assert f["lv_mass"] == pytest.approx(1.05 * myo_ed, rel=0.03)
    assert f["myo_esv"] == pytest.approx(cylinder_ml(b2) - cylinder_ml(a2), rel=0.03)
    assert f["rv_lv_edv_ratio"] == pytest.approx(14**2 / a**2, rel=0.04)
    assert f["mass_lv_edv_ratio"] == pytest.approx(1.05 * (b**2 - a**2) / a**2, rel=0.04)


@pytest.mark.parametrize(("r_lv", "r_epi", "px"), [(20, 27, 1.0), (25, 31, 1.5), (15, 30, 1.37)])
def test_local_wall_thickness_of_a_ring_is_its_width_within_a_pixel(r_lv, r_epi, px):
    wt = local_wall_thickness(heart_slice(r_lv, r_epi, r_rv=12.0, px=px), (px, px))
    assert wt.size == np.count_nonzero(heart_slice(r_lv, r_epi, px=px) == MYO)
    assert abs(wt.mean() - (r_epi - r_lv)) < px / 2
    assert abs(wt.max() - (r_epi - r_lv)) < px
    assert wt.std() < px / 2


def test_wall_thickness_features_and_thickening():
    (a, b), (a2, b2) = (24.0, 31.0), (17.0, 29.0)
    f = features(*heart((a, b), (a2, b2)))
    assert f["wt_ed_mean"] == pytest.approx(b - a, abs=PX)
    assert f["wt_es_mean"] == pytest.approx(b2 - a2, abs=PX)
    assert f["wt_ed_max"] >= f["wt_ed_mean"]
    assert f["wt_ed_std"] < PX
    true_thickening = ((b2 - a2) - (b - a)) / (b - a)
    assert f["wt_thickening"] == pytest.approx(true_thickening, abs=0.15)


def test_slices_without_lv_cavity_or_myocardium_do_not_count_for_wall_thickness():
    image, label = heart((24.0, 31.0), (17.0, 28.0))
    base = features(image, label)
    # an apical cap (myocardium disc, no cavity) and an empty slice beyond the apex
    label[0] = np.where(heart_slice(0.0, 15.0, None) > 0, MYO, 0)[None]
    label[1] = 0
    f = features(image, label)
    for name in ("wt_ed_mean", "wt_ed_max", "wt_ed_std", "wt_es_mean", "wt_thickening"):
        assert f[name] == pytest.approx(base[name], rel=1e-9)
    assert f["lv_edv"] == pytest.approx(base["lv_edv"] * (SLICES - 2) / SLICES)


def test_missing_rv_gives_nan_rv_features_and_finite_others():
    f = features(*heart((24.0, 31.0), (17.0, 28.0), r_rv=None))
    rv_names = {n for n in FEATURE_NAMES if n.startswith("rv_")}
    assert rv_names >= {"rv_edv", "rv_ef", "rv_lv_edv_ratio", "rv_mean", "rv_p90"}
    assert all(math.isnan(f[n]) for n in rv_names)
    assert all(math.isfinite(f[n]) for n in FEATURE_NAMES if n not in rv_names)


@pytest.mark.parametrize("fill", [0, IGNORE])
def test_empty_or_ignored_label_gives_all_nan_without_warnings(fill):
    image, label = heart((24.0, 31.0), (17.0, 28.0))
    label[:] = fill
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = features(image, label)
    assert tuple(f) == FEATURE_NAMES
    assert all(math.isnan(v) for v in f.values())


def test_flat_region_and_missing_es_structures_do_not_crash():
    image, label = heart((24.0, 31.0), (17.0, 28.0), noise=0.0)
    label[:, 1][label[:, 1] == LV] = 0  # no LV at ES
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = features(image, label)
    assert math.isnan(f["lv_esv"]) and math.isnan(f["lv_ef"]) and math.isnan(f["wt_es_mean"])
    assert math.isfinite(f["lv_edv"]) and math.isfinite(f["wt_ed_mean"])
    assert math.isnan(f["lv_skew"])  # a constant region has no defined skewness
    assert f["lv_std"] == 0.0


def test_texture_separates_noisy_from_smooth_myocardium():
    _, label = heart((24.0, 31.0), (17.0, 28.0))
    yy, xx = _grid()
    smooth = np.broadcast_to(60 + 0.5 * xx + 0.3 * yy, label.shape)
    noisy = 60 + np.random.default_rng(1).normal(0, 12, label.shape)
    f_smooth = features(np.clip(smooth, 0, 255).astype(np.uint8), label)
    f_noisy = features(np.clip(noisy, 0, 255).astype(np.uint8), label)
    assert f_noisy["myo_glcm_contrast"] > 2 * f_smooth["myo_glcm_contrast"]
    assert f_noisy["myo_glcm_dissimilarity"] > f_smooth["myo_glcm_dissimilarity"]
    assert f_noisy["myo_glcm_homogeneity"] < f_smooth["myo_glcm_homogeneity"]
    assert f_noisy["myo_glcm_correlation"] < 0.5 < f_smooth["myo_glcm_correlation"]


def test_intensity_and_texture_features_ignore_a_global_intensity_scale():
    image, label = heart((24.0, 31.0), (17.0, 28.0), noise=8.0)
    image = np.minimum(image, 127)  # so that doubling stays inside uint8
    f1, f2 = features(image, label), features(image * np.uint8(2), label)
    for name in INTENSITY_FEATURES + TEXTURE_FEATURES:
        assert f2[name] == pytest.approx(f1[name], rel=1e-9, abs=1e-12), name
    # ...while still describing contrast between structures: blood is brighter than muscle
    assert f1["lv_mean"] > 1.5 * f1["myo_mean"]
    assert f1["lv_p10"] > f1["myo_p90"]


def test_bad_inputs_raise_value_errors_naming_the_problem():
    image, label = heart((24.0, 31.0), (17.0, 28.0))
    with pytest.raises(ValueError, match="S, T, H, W"):
        subject_features(image[0], label[0], (DZ, PX, PX), 0, 1)
    with pytest.raises(ValueError, match="es=2"):
        subject_features(image, label, (DZ, PX, PX), 0, 2)


def cohort(n: int, seed: int, drop_rv: int = 0) -> tuple[list[dict[str, float]], list[str]]:
    """n dilated (DCM: big thin-walled LV, low EF) and n thick-walled (HCM) jittered subjects."""
    rng = np.random.default_rng(seed)
    feats, groups = [], []
    for i in range(n):
        j = rng.uniform(-2, 2, size=4)
        dcm = heart((30 + j[0], 36 + j[0] + j[1] / 2), (26 + j[0], 33 + j[0]), seed=seed * 100 + i)
        hcm = heart((19 + j[2], 33 + j[2] + j[3]), (10 + j[2], 31 + j[2]), seed=seed * 100 + n + i)
        for (image, label), group in ((dcm, "DCM"), (hcm, "HCM")):
            if len(groups) < drop_rv:  # segmentation without RV: NaN features to impute
                label[label == RV] = 0
            feats.append(features(image, label))
            groups.append(group)
    return feats, groups


def test_svm_separates_dilated_from_thick_walled_hearts_on_held_out_subjects():
    train, train_groups = cohort(6, seed=1, drop_rv=2)
    test, test_groups = cohort(6, seed=2, drop_rv=1)
    assert any(math.isnan(v) for v in train[0].values())
    for kernel in ("rbf", "linear"):
        model = RadiomicsSVM(kernel=kernel).fit(train, train_groups)
        assert model.classes_ == ["DCM", "HCM"]
        assert model.predict(test) == test_groups


def test_svm_is_deterministic_and_fits_one_subject_per_group():
    feats, groups = cohort(1, seed=3)
    extra = features(*heart((22.0, 34.0), (16.0, 31.0), r_rv=(24.0, 21.0)))
    feats, groups = [*feats, extra], [*groups, "RV"]
    preds = RadiomicsSVM().fit(feats, groups).predict(feats)
    assert preds == groups
    held_out, _ = cohort(3, seed=4)
    a = RadiomicsSVM().fit(feats, groups).predict(held_out)
    b = RadiomicsSVM().fit(feats, groups).predict(held_out)
    assert a == b and set(a) <= set(groups)


def test_single_group_training_set_predicts_that_group():
    feats, _ = cohort(2, seed=5)
    model = RadiomicsSVM().fit(feats[:1], ["NOR"])
    assert model.classes_ == ["NOR"]
    assert model.predict(feats) == ["NOR"] * len(feats)
    with pytest.raises(ValueError, match="groups"):
        RadiomicsSVM().fit(feats, ["NOR"])


@pytest.mark.realdata
@pytest.mark.skipif(not ACDC.exists(), reason=f"needs ACDC at {ACDC}")
def test_acdc_ground_truth_features_are_finite_and_plausible():
    import data_shards.sources.acdc  # noqa: F401  (registers the source)
    from data_shards.sources import get_source

    names = ["patient001", "patient021", "patient061"]  # DCM, HCM, NOR
    subjects = list(get_source("acdc")(ACDC, subjects=names, cine_4d=False))
    feats = {}
    for s in subjects:
        f = subject_features(s.image, s.label, s.spacing, s.meta["ed"], s.meta["es"])
        bad = [k for k, v in f.items() if not math.isfinite(v)]
        assert not bad, f"{s.subject}: non-finite {bad}"
        assert 5 < f["lv_ef"] < 90 and 3 < f["wt_ed_mean"] < 25 and f["wt_thickening"] > 0
        feats[s.meta["group"]] = f
    # the textbook contrasts between these three groups
    assert feats["DCM"]["lv_edv"] > feats["NOR"]["lv_edv"] > 0
    assert feats["DCM"]["lv_ef"] < feats["NOR"]["lv_ef"]
    assert feats["HCM"]["wt_ed_max"] > feats["NOR"]["wt_ed_max"]
    assert feats["HCM"]["mass_lv_edv_ratio"] > feats["NOR"]["mass_lv_edv_ratio"]
