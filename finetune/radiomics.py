"""Radiomics diagnosis baseline: hand-made features from (image, label map) and an SVM on them.

``subject_features`` turns one study, image (S, T, H, W) and label (S, T, H, W) in our convention
(0 bg, 1 LV, 2 MYO, 3 RV, 255 ignore), into the fixed, ordered ``FEATURE_NAMES``: cavity volumes
and EF, LV mass, wall thickness at ED and ES, intensity statistics and myocardial GLCM texture.
An empty structure (or an ignored / all-background frame) gives NaN features, never an error;
``RadiomicsSVM`` imputes them (median) before scaling and the SVC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from data_shards.record import LV, MYO, RV
from finetune.metrics import MYOCARDIAL_DENSITY

GLCM_LEVELS = 32  # grey levels of the myocardium after min-max quantisation
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation", "dissimilarity")
_STRUCTURES = {"lv": LV, "myo": MYO, "rv": RV}
_INTENSITY_STATS = ("mean", "std", "skew", "kurtosis", "p10", "p90")

VOLUME_FEATURES = (
    "lv_edv",  # ml
    "lv_esv",
    "lv_sv",
    "lv_ef",  # percent
    "rv_edv",
    "rv_esv",
    "rv_sv",
    "rv_ef",
    "lv_mass",  # g: myocardium at ED x 1.05 g/ml
    "myo_esv",  # ml: myocardium at ES (vs mass: how well the segmentation conserves it)
    "rv_lv_edv_ratio",
    "rv_lv_esv_ratio",
    "mass_lv_edv_ratio",  # g/ml: concentric (HCM) vs eccentric (DCM) remodelling
)
WALL_FEATURES = (
    "wt_ed_mean",  # mm
    "wt_ed_max",
    "wt_ed_std",
    "wt_es_mean",
    "wt_es_max",
    "wt_es_std",
    "wt_thickening",  # (ES mean - ED mean) / ED mean
)
INTENSITY_FEATURES = tuple(f"{s}_{stat}" for s in _STRUCTURES for stat in _INTENSITY_STATS)
TEXTURE_FEATURES = tuple(f"myo_glcm_{p}" for p in GLCM_PROPS)
FEATURE_NAMES: tuple[str, ...] = (
    VOLUME_FEATURES + WALL_FEATURES + INTENSITY_FEATURES + TEXTURE_FEATURES
)

NAN = float("nan")


def _nan_dict(names: Sequence[str]) -> dict[str, float]:
    return dict.fromkeys(names, NAN)


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when either is NaN or b is zero (NaN propagates without warnings)."""
    return NAN if not (np.isfinite(a) and np.isfinite(b)) or b == 0 else float(a / b)


def _volume_ml(mask: np.ndarray, voxel_ml: float) -> float:
    """Volume of a boolean mask in ml; NaN when empty (an empty heart structure is missing)."""
    n = int(np.count_nonzero(mask))
    return NAN if n == 0 else n * voxel_ml


def volume_features(
    label: np.ndarray, spacing: Sequence[float], ed: int, es: int
) -> dict[str, float]:
    """``VOLUME_FEATURES`` from label (S, T, H, W) and spacing (dz, dy, dx) mm."""
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    lab_ed, lab_es = label[:, ed], label[:, es]
    out: dict[str, float] = {}
    for name, cls in (("lv", LV), ("rv", RV)):
        edv, esv = _volume_ml(lab_ed == cls, voxel_ml), _volume_ml(lab_es == cls, voxel_ml)
        out[f"{name}_edv"], out[f"{name}_esv"] = edv, esv
        out[f"{name}_sv"] = edv - esv
        out[f"{name}_ef"] = 100.0 * _ratio(edv - esv, edv)
    out["lv_mass"] = _volume_ml(lab_ed == MYO, voxel_ml) * MYOCARDIAL_DENSITY
    out["myo_esv"] = _volume_ml(lab_es == MYO, voxel_ml)
    out["rv_lv_edv_ratio"] = _ratio(out["rv_edv"], out["lv_edv"])
    out["rv_lv_esv_ratio"] = _ratio(out["rv_esv"], out["lv_esv"])
    out["mass_lv_edv_ratio"] = _ratio(out["lv_mass"], out["lv_edv"])
    return {k: out[k] for k in VOLUME_FEATURES}


def _crop_padded(mask: np.ndarray, pad: int = 2) -> tuple[slice, slice]:
    """Bounding box of a non-empty (H, W) mask grown by ``pad`` (may run past the image)."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return slice(rows[0] - pad, rows[-1] + 1 + pad), slice(cols[0] - pad, cols[-1] + 1 + pad)


def local_wall_thickness(label2d: np.ndarray, spacing_hw: Sequence[float]) -> np.ndarray:
    """Wall thickness in mm at each myocardial pixel of one (H, W) slice -> (n_myo,).

    thickness = distance to the nearest LV-cavity pixel + distance to the nearest pixel outside
    the LV epicardium - one pixel: both distances run between pixel centres, so across a wall of
    n pixels they add up to n + 1 pixels. Empty (0,) when the slice lacks myocardium or LV
    cavity (an apical cap has no wall to measure).
    """
    myo, lv = label2d == MYO, label2d == LV
    if not myo.any() or not lv.any():
        return np.zeros(0)
    rows, cols = _crop_padded(myo | lv)
    # pad with background so the epicardial distance always has an outside to reach
    pad = ((2, 2), (2, 2))
    myo_c = np.pad(myo, pad)[rows.start + 2 : rows.stop + 2, cols.start + 2 : cols.stop + 2]
    lv_c = np.pad(lv, pad)[rows.start + 2 : rows.stop + 2, cols.start + 2 : cols.stop + 2]
    sampling = tuple(float(s) for s in spacing_hw)
    to_endo = ndimage.distance_transform_edt(~lv_c, sampling=sampling)
    to_outside = ndimage.distance_transform_edt(myo_c | lv_c, sampling=sampling)
    return (to_endo + to_outside)[myo_c] - float(np.mean(sampling))


def _thickness_stats(label_frame: np.ndarray, spacing_hw: Sequence[float]) -> tuple[float, ...]:
    """(mean, max, std) mm of the wall thickness pooled over the slices of label (S, H, W)."""
    parts = [local_wall_thickness(sl, spacing_hw) for sl in label_frame]
    wt = np.concatenate(parts) if parts else np.zeros(0)
    if wt.size == 0:
        return NAN, NAN, NAN
    return float(wt.mean()), float(wt.max()), float(wt.std())


def wall_features(
    label: np.ndarray, spacing: Sequence[float], ed: int, es: int
) -> dict[str, float]:
    """``WALL_FEATURES`` from label (S, T, H, W); ``local_wall_thickness`` says how."""
    spacing_hw = tuple(spacing)[1:]
    out: dict[str, float] = {}
    for phase, t in (("ed", ed), ("es", es)):
        mean, mx, std = _thickness_stats(label[:, t], spacing_hw)
        out[f"wt_{phase}_mean"], out[f"wt_{phase}_max"], out[f"wt_{phase}_std"] = mean, mx, std
    out["wt_thickening"] = _ratio(out["wt_es_mean"] - out["wt_ed_mean"], out["wt_ed_mean"])
    return out


def _moments(values: np.ndarray, ref: float) -> dict[str, float]:
    """Intensity statistics of one region, location and spread divided by the reference mean."""
    if values.size == 0 or not np.isfinite(ref) or ref <= 0:
        return _nan_dict(_INTENSITY_STATS)
    mean = float(values.mean())
    centred = values - mean
    m2 = float(np.mean(centred**2))
    # a flat region has no defined shape: NaN rather than a made-up 0
    skew = float(np.mean(centred**3)) / m2**1.5 if m2 > 0 else NAN
    kurt = float(np.mean(centred**4)) / m2**2 - 3.0 if m2 > 0 else NAN
    p10, p90 = np.percentile(values, [10, 90])
    return {
        "mean": mean / ref,
        "std": m2**0.5 / ref,
        "skew": skew,
        "kurtosis": kurt,
        "p10": float(p10) / ref,
        "p90": float(p90) / ref,
    }


def intensity_features(image_ed: np.ndarray, label_ed: np.ndarray) -> dict[str, float]:
    """``INTENSITY_FEATURES`` of image (S, H, W) at ED: stats per structure / whole-image mean.

    Dividing by the whole-image mean makes them invariant to a global intensity scale
    (scanner gain); skew and kurtosis are scale-free by themselves.
    """
    ref = float(image_ed.mean()) if image_ed.size else NAN
    out: dict[str, float] = {}
    for name, cls in _STRUCTURES.items():
        for stat, value in _moments(image_ed[label_ed == cls], ref).items():
            out[f"{name}_{stat}"] = value
    return out


def texture_features(image_ed: np.ndarray, label_ed: np.ndarray) -> dict[str, float]:
    """``TEXTURE_FEATURES``: GLCM of the myocardium at ED, image and label (S, H, W).

    Myocardial intensities are min-max quantised to ``GLCM_LEVELS`` levels over the whole
    subject (so invariant to a global intensity scale and offset); pixels outside the
    myocardium get level 0 and their pairs are dropped. Co-occurrence counts (distance 1 pixel,
    4 angles, symmetric) are summed over slices, the properties are computed per angle and
    averaged over angles. NaN without myocardial pixel pairs.
    """
    myo = label_ed == MYO
    values = image_ed[myo].astype(np.float64)
    if values.size < 2:
        return _nan_dict(TEXTURE_FEATURES)
    lo, hi = float(values.min()), float(values.max())
    scale = GLCM_LEVELS / (hi - lo) if hi > lo else 0.0
    counts = np.zeros((GLCM_LEVELS, GLCM_LEVELS, 1, len(GLCM_ANGLES)))
    for image2d, myo2d in zip(image_ed, myo):
        if np.count_nonzero(myo2d) < 2:
            continue
        rows, cols = _crop_padded(myo2d, pad=1)
        rows = slice(max(rows.start, 0), rows.stop)
        cols = slice(max(cols.start, 0), cols.stop)
        m = myo2d[rows, cols]
        level = np.floor((image2d[rows, cols].astype(np.float64) - lo) * scale)
        quant = np.where(m, 1 + np.clip(level, 0, GLCM_LEVELS - 1), 0).astype(np.uint8)
        glcm = graycomatrix(quant, [1], list(GLCM_ANGLES), levels=GLCM_LEVELS + 1, symmetric=True)
        counts += glcm[1:, 1:]
    if (counts.sum(axis=(0, 1)) == 0).any():
        return _nan_dict(TEXTURE_FEATURES)
    return {f"myo_glcm_{p}": float(np.mean(graycoprops(counts, p))) for p in GLCM_PROPS}


def subject_features(
    image: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    ed: int,
    es: int,
) -> dict[str, float]:
    """All ``FEATURE_NAMES`` (in that order) of one study.

    Args:
        image: (S, T, H, W) any real dtype (uint8 from shards).
        label: (S, T, H, W) uint8, 0 bg, 1 LV, 2 MYO, 3 RV; any other value (255 ignore,
            infarct, ...) belongs to no structure here.
        spacing: (dz, dy, dx) mm.
        ed, es: 0-based frame indices on T.

    Returns:
        {name: float}; NaN where a structure is empty in the frame a feature needs.
    """
    if image.ndim != 4 or label.shape != image.shape:
        raise ValueError(
            f"image and label must both be (S, T, H, W), got {image.shape} and {label.shape}"
        )
    if len(spacing) != 3:
        raise ValueError(f"spacing must be (dz, dy, dx) mm, got {spacing!r}")
    t = image.shape[1]
    for name, idx in (("ed", ed), ("es", es)):
        if not 0 <= int(idx) < t:
            raise ValueError(f"{name}={idx} is not a frame index of an image with T={t}")
    image_ed = image[:, ed].astype(np.float32)
    label_ed = label[:, ed]
    out = volume_features(label, spacing, ed, es)
    out.update(wall_features(label, spacing, ed, es))
    out.update(intensity_features(image_ed, label_ed))
    out.update(texture_features(image_ed, label_ed))
    return {k: out[k] for k in FEATURE_NAMES}


def feature_matrix(features: Sequence[dict[str, float]]) -> np.ndarray:
    """(N, F) float64 matrix in ``FEATURE_NAMES`` order; a missing key reads as NaN."""
    return np.array(
        [[float(f.get(name, NAN)) for name in FEATURE_NAMES] for f in features],
        dtype=np.float64,
    ).reshape(len(features), len(FEATURE_NAMES))


def make_classifier(C: float = 1.0, kernel: str = "rbf") -> Pipeline:
    """SimpleImputer(median) -> StandardScaler -> SVC(balanced class weights), deterministic.

    Args:
        C: SVC regularisation (1.0 suits a few dozen subjects; larger fits the training set
            harder).
        kernel: "rbf" (gamma="scale") or "linear".
    """
    if kernel not in ("rbf", "linear"):
        raise ValueError(f"kernel must be 'rbf' or 'linear', got {kernel!r}")
    if not C > 0:
        raise ValueError(f"C must be > 0, got {C!r}")
    return make_pipeline(
        # keep_empty_features: a column NaN in every training subject imputes to 0 rather than
        # being dropped, so the fitted pipeline always takes all FEATURE_NAMES
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        # probability stays off (sklearn's default; the argument is deprecated in 1.9)
        SVC(C=C, kernel=kernel, gamma="scale", class_weight="balanced"),
    )


class RadiomicsSVM:
    """Diagnosis from ``subject_features`` dicts: fit(features, groups), predict(features).

    A training set with a single group cannot train an SVC: the model then predicts that group
    for every subject. One subject per group is enough otherwise.
    """

    def __init__(self, C: float = 1.0, kernel: str = "rbf") -> None:
        self.C, self.kernel = C, kernel
        self.pipeline: Pipeline | None = None
        self.constant: str | None = None
        self.classes_: list[str] = []

    def fit(self, features: Sequence[dict[str, float]], groups: Sequence[str]) -> RadiomicsSVM:
        """Fit on N feature dicts and their N group names; returns self."""
        if len(features) != len(groups):
            raise ValueError(f"got {len(features)} feature dicts but {len(groups)} groups")
        if len(features) == 0:
            raise ValueError("cannot fit RadiomicsSVM on zero subjects")
        self.classes_ = sorted({str(g) for g in groups})
        if len(self.classes_) == 1:
            self.pipeline, self.constant = None, self.classes_[0]
            return self
        self.constant = None
        self.pipeline = make_classifier(self.C, self.kernel)
        self.pipeline.fit(feature_matrix(features), np.array([str(g) for g in groups]))
        return self

    def predict(self, features: Sequence[dict[str, float]]) -> list[str]:
        """Group name per feature dict."""
        if self.constant is not None:
            return [self.constant] * len(features)
        if self.pipeline is None:
            raise RuntimeError("RadiomicsSVM.predict called before fit")
        if len(features) == 0:
            return []
        return [str(g) for g in self.pipeline.predict(feature_matrix(features))]
