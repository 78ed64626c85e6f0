"""Segmentation, clinical, agreement and classification metrics.

Dice and 95% Hausdorff distance per structure (MONAI), clinical indices from label maps (LV and RV
volumes, EF, LV mass), Bland-Altman agreement of paired measurements, and classification scores.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from data_shards.record import IGNORE, INFARCT, LABEL_NAMES, LV, MVO, MYO, RV
from data_shards.volumes import ejection_fraction, volumes_ml

MYOCARDIAL_DENSITY = 1.05  # g/ml: LV mass = myocardial volume at ED x 1.05
CLINICAL_INDICES = (
    "lv_edv", "lv_esv", "lv_sv", "lv_ef", "rv_edv", "rv_esv", "rv_sv", "rv_ef", "lv_mass",
)  # fmt: skip
SCAR_INDICES = ("infarct_pct", "mvo_pct")  # LGE: % of the LV myocardium, needs no spacing
AGREEMENT_STATS = ("n", "mae", "bias", "sd", "loa_low", "loa_high", "r")


def _known(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both maps with pixels whose truth is IGNORE set to background in both."""
    unknown = truth == IGNORE
    return np.where(unknown, 0, pred), np.where(unknown, 0, truth)


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    """Dice of each foreground class over one volume: pred, truth (S, H, W) integer label maps.

    0 for a class predicted where the truth has none; NaN only for a class absent from both.
    Pixels whose truth is IGNORE (e.g. outside a contour-only label) are left out of both.
    """
    pred, truth = _known(pred, truth)
    foreground = (pred > 0) | (truth > 0)
    if not foreground.any():
        return {LABEL_NAMES[c]: float("nan") for c in range(1, num_classes)}
    box = _bounding_box(foreground)  # background-only margins change no Dice; ~4x less work
    pred, truth = pred[box], truth[box]
    p = torch.as_tensor(pred, dtype=torch.long)[None]  # (1, S, H, W)
    t = torch.as_tensor(truth, dtype=torch.long)[None]
    one_hot = lambda x: torch.nn.functional.one_hot(x, num_classes).permute(0, 4, 1, 2, 3)  # noqa: E731
    from monai.metrics import compute_dice  # here: MONAI's eager import takes seconds

    scores = compute_dice(one_hot(p), one_hot(t), include_background=False, ignore_empty=False)[0]
    absent = [not (pred == c).any() and not (truth == c).any() for c in range(1, num_classes)]
    return {
        LABEL_NAMES[c]: float("nan") if absent[c - 1] else float(scores[c - 1])
        for c in range(1, num_classes)
    }


def hd95_per_class(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> dict[str, float]:
    """95% Hausdorff distance in mm per foreground class: pred, truth (S, H, W) at (dz, dy, dx).

    Symmetric HD95 between the 3D surfaces (MONAI, exact Euclidean distances in mm); (H, W) maps
    with spacing (dy, dx) give the 2D distance. NaN when the class is absent from truth or
    prediction: absent from both there is nothing to measure, absent from one the distance is
    undefined (MONAI gives inf). Callers count the one-sided cases (`hd95_undefined`) so that a
    model missing a whole structure does not look better for it. Pixels whose truth is IGNORE
    are left out of both, as in `dice_per_class`.
    """
    from monai.metrics import compute_hausdorff_distance

    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match maps of shape {pred.shape}")
    pred, truth = _known(pred, truth)
    spacing = [float(s) for s in spacing]
    out = {}
    for c in range(1, num_classes):
        p, t = pred == c, truth == c
        if not (p.any() and t.any()):
            out[LABEL_NAMES[c]] = float("nan")
            continue
        box = _bounding_box(p | t)  # MONAI crops the same way; cropping first is ~10x faster
        pt, tt = (torch.from_numpy(m[box])[None, None] for m in (p, t))  # (1, 1, s, h, w)
        with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated argument
            warnings.simplefilter("ignore", FutureWarning)
            hd = compute_hausdorff_distance(
                pt, tt, include_background=True, percentile=95, spacing=spacing
            )
        out[LABEL_NAMES[c]] = float(hd[0, 0])
    return out


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Slices of the smallest box holding every True voxel of mask, grown by 1 voxel per side."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(hits[0] - 1, 0), hits[-1] + 2))
    return tuple(box)


def hd95_undefined(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, bool]:
    """Per foreground class of (S, H, W) maps: True where it is in exactly one of pred and truth."""
    pred, truth = _known(pred, truth)
    return {
        LABEL_NAMES[c]: bool((pred == c).any() != (truth == c).any()) for c in range(1, num_classes)
    }


def lv_ef(
    label_map: np.ndarray, spacing: tuple[float, float, float], ed: int, es: int
) -> dict[str, float]:
    """LV EDV, ESV (ml) and EF (%) from a label map (S, T, H, W) at frames ed and es."""
    vols = volumes_ml(label_map, spacing, cls=LV)
    return {"edv": vols[ed], "esv": vols[es], "ef": ejection_fraction(vols[ed], vols[es])}


def clinical_indices(
    label_map: np.ndarray,
    spacing: Sequence[float],
    ed: int,
    es: int,
    rv: bool | None = None,
) -> dict[str, float]:
    """LV and RV EDV, ESV, SV (ml), EF (%) and LV mass (g) from a label map (S, T, H, W).

    LV mass is the myocardial volume at ED x 1.05 g/ml. rv: whether the label map has an RV
    class at all (False for LV-only label maps such as Sunnybrook's: RV indices NaN); None
    decides from this map (RV anywhere in it), which suits ground truth but not a prediction:
    pass the truth's answer for those. A frame whose pixels are all IGNORE gives NaN for the
    indices it feeds.
    """
    spacing = tuple(float(s) for s in spacing)
    unlabelled = (label_map == IGNORE).all(axis=(0, 2, 3))  # (T,)

    def vols(cls: int) -> np.ndarray:
        return np.where(unlabelled, np.nan, volumes_ml(label_map, spacing, cls))

    if rv is None:
        rv = bool((label_map == RV).any())
    out: dict[str, float] = {}
    for name, cls, present in (("lv", LV, True), ("rv", RV, rv)):
        v = vols(cls) if present else np.full(label_map.shape[1], np.nan)
        edv, esv = float(v[ed]), float(v[es])
        out |= {f"{name}_edv": edv, f"{name}_esv": esv, f"{name}_sv": edv - esv}
        out[f"{name}_ef"] = ejection_fraction(edv, esv) if present else float("nan")
    out["lv_mass"] = float(vols(MYO)[ed]) * MYOCARDIAL_DENSITY
    return {k: out[k] for k in CLINICAL_INDICES}


def scar_extent(label_map: np.ndarray, frame: int) -> dict[str, float]:
    """Infarct (MVO included) and MVO as % of the LV myocardium (myo + infarct + MVO) in one
    frame of a label map (S, T, H, W): voxel counts, so no spacing is needed. NaN without
    myocardium (or where the frame is all IGNORE)."""
    lab = label_map[:, frame]
    infarct, mvo = int((lab == INFARCT).sum()), int((lab == MVO).sum())
    wall = int((lab == MYO).sum()) + infarct + mvo
    if wall == 0:
        return {"infarct_pct": float("nan"), "mvo_pct": float("nan")}
    return {"infarct_pct": 100.0 * (infarct + mvo) / wall, "mvo_pct": 100.0 * mvo / wall}


def agreement(pred: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Bland-Altman agreement of paired measurements (1D): n, mae, bias, sd, loa_low/high, r.

    Pairs with a NaN on either side are dropped. bias = mean(pred - true), sd its sample standard
    deviation, limits of agreement bias -+ 1.96 sd; Pearson r is NaN with fewer than 3 pairs or a
    constant side; everything but n is NaN with no pairs (sd and limits with fewer than 2).
    """
    p, t = np.asarray(pred, dtype=float).ravel(), np.asarray(true, dtype=float).ravel()
    if p.shape != t.shape:
        raise ValueError(f"agreement needs paired values, got {p.size} predicted and {t.size} true")
    keep = ~(np.isnan(p) | np.isnan(t))
    p, t = p[keep], t[keep]
    n, nan = int(p.size), float("nan")
    diff = p - t
    bias = float(diff.mean()) if n else nan
    sd = float(diff.std(ddof=1)) if n >= 2 else nan
    r = nan
    if n >= 3 and np.ptp(p) > 0 and np.ptp(t) > 0:
        r = float(np.corrcoef(p, t)[0, 1])
    return {
        "n": n,
        "mae": float(np.abs(diff).mean()) if n else nan,
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "r": r,
    }


def classification_metrics(
    y_true: Sequence, y_pred: Sequence, classes: Sequence
) -> dict[str, object]:
    """Accuracy, macro-F1 and confusion matrix (rows truth, columns prediction, `classes` order).

    Every class gets a row and column even when absent. Macro-F1 averages over the classes that
    occur in truth or prediction: a class absent from both says nothing about the classifier.
    """
    # Imported here: scikit-learn takes seconds to import and only classification needs it.
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    y_true, y_pred, classes = list(y_true), list(y_pred), list(classes)
    unknown = sorted({str(y) for y in y_true + y_pred if y not in classes})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    seen = [c for c in classes if c in y_true or c in y_pred]
    if not y_true:
        empty = [[0] * len(classes) for _ in classes]
        return {
            "n": 0,
            "accuracy": np.nan,
            "macro_f1": np.nan,
            "confusion": empty,
            "classes": classes,
        }
    f1 = f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1),
        "confusion": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "classes": classes,
    }
