"""Metrics: Dice against its definition, LV EF from hand-computed volumes, HD95 on shapes with known distances, clinical indices from known voxel counts,
Bland-Altman agreement, classification scores, the evaluation summary, and the result plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from torch import nn

from data_shards.record import IGNORE
from finetune.evaluate import evaluate, evaluate_predictions, summary_over_subjects
from finetune.metrics import (
    CLINICAL_INDICES,
    agreement,
    classification_metrics,
    clinical_indices,
    dice_per_class,
    hd95_per_class,
    hd95_undefined,
    lv_ef,
    scar_extent,
)
from finetune.plots import (
    bland_altman,
    bland_altman_figure,
    confusion_matrix_figure,
    confusion_matrix_plot,
    metric_vs_n,
    metric_vs_n_figure,
)

SPACING = (10.0, 1.5, 1.25)  # (dz, dy, dx) mm: anisotropic so that a wrong axis order shows
ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(yy - cy, xx - cx) <= r


# --- HD95 --------------------------------------------------------------------------------------


def test_hd95_of_a_disc_moved_to_the_next_slice_is_the_slice_spacing() -> None:
    # A one-slice disc is all surface; moved by one slice every surface point is exactly dz away.
    truth = np.zeros((4, 24, 24), np.uint8)
    truth[1][disc(24, 24, 12, 12, 6)] = 1
    pred = np.roll(truth, 1, axis=0)
    assert hd95_per_class(pred, truth, 4, SPACING)["lv"] == pytest.approx(SPACING[0])
    pred = np.roll(truth, 2, axis=0)
    assert hd95_per_class(pred, truth, 4, SPACING)["lv"] == pytest.approx(2 * SPACING[0])


@pytest.mark.parametrize(("axis", "shift"), [(1, 3), (2, 3), (2, 5)])
def test_hd95_of_a_thin_wall_moved_in_plane_scales_with_that_axis_spacing(axis, shift) -> None:
    # A one-voxel-thick wall moved across itself: every surface point is shift voxels away.
    truth = np.zeros((3, 24, 24), np.uint8)
    wall = (slice(None), 6, slice(4, 20)) if axis == 1 else (slice(None), slice(4, 20), 6)
    truth[wall] = 2
    pred = np.roll(truth, shift, axis=axis)
    scores = hd95_per_class(pred, truth, 4, SPACING)
    assert scores["myo"] == pytest.approx(shift * SPACING[axis], rel=1e-5)
    assert math.isnan(scores["lv"]) and math.isnan(scores["rv"])


def test_hd95_is_zero_for_a_perfect_match_and_ignores_a_few_outlying_voxels() -> None:
    truth = np.zeros((6, 40, 40), np.uint8)
    truth[:, disc(40, 40, 20, 20, 12)] = 1
    assert hd95_per_class(truth, truth, 2, SPACING) == {"lv": 0.0}
    # One stray voxel far away: the maximum distance would be large, the 95th percentile is not.
    pred = truth.copy()
    pred[0, 0, 0] = 1
    assert hd95_per_class(pred, truth, 2, SPACING)["lv"] == pytest.approx(0.0)


def test_hd95_of_single_frames_uses_the_in_plane_spacing() -> None:
    truth = np.zeros((24, 24), np.uint8)
    truth[5, 4:20] = 3
    pred = np.roll(truth, 4, axis=0)
    assert hd95_per_class(pred, truth, 4, SPACING[1:])["rv"] == pytest.approx(4 * SPACING[1])
    with pytest.raises(ValueError, match="spacing"):
        hd95_per_class(pred, truth, 4, SPACING)


def test_hd95_is_nan_for_absent_structures_and_counts_the_one_sided_ones() -> None:
    truth = np.zeros((2, 16, 16), np.uint8)
    truth[:, 2:6, 2:6] = 1  # LV in truth only: missed by the prediction
    pred = np.zeros_like(truth)
    pred[:, 10:14, 10:14] = 3  # RV in prediction only: a false structure
    scores = hd95_per_class(pred, truth, 4, SPACING)
    assert all(math.isnan(v) for v in scores.values())  # MYO absent from both: also NaN
    assert hd95_undefined(pred, truth, 4) == {"lv": True, "myo": False, "rv": True}


def test_hd95_leaves_out_pixels_whose_truth_is_unknown() -> None:
    truth = np.full((2, 16, 16), IGNORE, np.uint8)
    truth[:, 4:10, 4:10] = 1
    pred = np.where(truth == 1, 1, 0).astype(np.uint8)
    pred[:, 14, 14] = 1  # on unknown truth: neither right nor wrong
    pred[:, 0:2, 0:2] = 2  # a MYO wholly on unknown truth does not make MYO "one-sided"
    assert hd95_per_class(pred, truth, 4, SPACING)["lv"] == 0.0
    assert not hd95_undefined(pred, truth, 4)["myo"]


# --- clinical indices ---------------------------------------------------------------------------


def cardiac_label() -> np.ndarray:
    """(S=2, T=3, 10, 12) with hand-countable voxels per class and frame."""
    label = np.zeros((2, 3, 10, 12), np.uint8)
    label[:, 0, 0:5, 0:8] = 1  # LV ED: 2 x 40 voxels
    label[:, 1, 0:3, 0:5] = 1  # LV ES: 2 x 15
    label[:, 0, 5:10, 0:5] = 2  # MYO ED: 2 x 25
    label[:, 1, 5:10, 0:2] = 2  # MYO ES (not used for mass)
    label[:, 0, 0:6, 9:12] = 3  # RV ED: 2 x 18
    label[:, 1, 0:3, 9:12] = 3  # RV ES: 2 x 9
    label[:, 2, 0:1, 0:1] = 1  # a frame that is neither ED nor ES
    return label


def test_clinical_indices_from_known_voxel_counts() -> None:
    voxel_ml = np.prod(SPACING) / 1000
    out = clinical_indices(cardiac_label(), SPACING, ed=0, es=1)
    assert list(out) == list(CLINICAL_INDICES)
    assert out["lv_edv"] == pytest.approx(80 * voxel_ml)
    assert out["lv_esv"] == pytest.approx(30 * voxel_ml)
    assert out["lv_sv"] == pytest.approx(50 * voxel_ml)
    assert out["lv_ef"] == pytest.approx(100 * 50 / 80)
    assert out["rv_edv"] == pytest.approx(36 * voxel_ml)
    assert out["rv_sv"] == pytest.approx(18 * voxel_ml)
    assert out["rv_ef"] == pytest.approx(50.0)
    assert out["lv_mass"] == pytest.approx(1.05 * 50 * voxel_ml)  # g: ED myocardium x 1.05 g/ml


def test_rv_indices_are_nan_without_an_rv_class() -> None:
    lv_only = np.where(cardiac_label() == 3, 0, cardiac_label())
    for rv in (None, False):  # None: decided from the map, which has no RV
        out = clinical_indices(lv_only, SPACING, ed=0, es=1, rv=rv)
        assert all(math.isnan(out[k]) for k in ("rv_edv", "rv_esv", "rv_sv", "rv_ef"))
        assert out["lv_ef"] == pytest.approx(100 * 50 / 80)
    # A prediction that misses an RV the truth has: volumes 0, EF undefined.
    missed = clinical_indices(lv_only, SPACING, ed=0, es=1, rv=True)
    assert missed["rv_edv"] == 0.0 and math.isnan(missed["rv_ef"])


def test_clinical_indices_of_an_unlabelled_frame_are_nan() -> None:
    label = cardiac_label()
    label[:, 1] = IGNORE  # no ground truth at ES
    out = clinical_indices(label, SPACING, ed=0, es=1)
    assert math.isnan(out["lv_esv"]) and math.isnan(out["lv_ef"]) and math.isnan(out["rv_sv"])
    assert out["lv_edv"] > 0 and out["lv_mass"] > 0


def test_scar_extent_is_infarct_and_mvo_over_the_whole_wall() -> None:
    label = np.zeros((2, 1, 10, 10), np.uint8)
    label[0, 0, :6, :5] = 2  # 30 healthy myocardium voxels
    label[1, 0, :2, :5] = 4  # 10 infarct
    label[1, 0, 2:4, :5] = 5  # 10 MVO (counted as infarct too)
    label[1, 0, 5:9, 5:9] = 1  # cavity is not wall
    out = scar_extent(label, frame=0)
    assert out["infarct_pct"] == pytest.approx(100 * 20 / 50)
    assert out["mvo_pct"] == pytest.approx(100 * 10 / 50)
    assert all(math.isnan(v) for v in scar_extent(np.full_like(label, IGNORE), 0).values())


# --- agreement ---------------------------------------------------------------------------------


def test_agreement_of_known_pairs() -> None:
    true = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    pred = true + np.array([2.0, 0.0, 2.0, 0.0, 1.0])  # differences: mean 1, sample SD 1
    out = agreement(pred, true)
    assert out["n"] == 5
    assert out["bias"] == pytest.approx(1.0)
    assert out["mae"] == pytest.approx(1.0)
    assert out["sd"] == pytest.approx(1.0)
    assert (out["loa_low"], out["loa_high"]) == pytest.approx((1 - 1.96, 1 + 1.96))
    assert out["r"] == pytest.approx(pearsonr(pred, true)[0])


def test_agreement_drops_nan_pairs_and_degenerate_cases() -> None:
    true = [10.0, np.nan, 30.0, 40.0, 50.0, 60.0]
    pred = [12.0, 25.0, 32.0, np.nan, 49.0, 59.0]
    out = agreement(pred, true)
    assert out == pytest.approx(agreement([12.0, 32.0, 49.0, 59.0], [10.0, 30.0, 50.0, 60.0]))
    assert out["n"] == 4
    assert math.isnan(agreement([1.0, 2.0], [1.5, 2.5])["r"])  # too few pairs for r
    assert math.isnan(agreement([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])["r"])  # a constant side
    empty = agreement([np.nan], [1.0])
    assert empty["n"] == 0 and math.isnan(empty["mae"]) and math.isnan(empty["loa_high"])
    with pytest.raises(ValueError, match="paired"):
        agreement([1.0, 2.0], [1.0])


# --- classification ----------------------------------------------------------------------------


def test_classification_metrics_keep_a_row_for_an_absent_class() -> None:
    y_true = ["DCM", "DCM", "HCM", "MINF", "NOR", "NOR"]
    y_pred = ["DCM", "HCM", "HCM", "MINF", "NOR", "MINF"]  # RV in neither
    out = classification_metrics(y_true, y_pred, ACDC_GROUPS)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["classes"] == list(ACDC_GROUPS)
    assert out["confusion"] == [
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0],
    ]
    # F1 per class present: DCM 2/3, HCM 2/3, MINF 2/3, NOR 2/3; RV is absent and left out.
    assert out["macro_f1"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="not among the classes"):
        classification_metrics(["DCM"], ["XYZ"], ACDC_GROUPS)


# --- summary and evaluation --------------------------------------------------------------------


def row(key: str, dice_lv: tuple[float, float], hd_lv: tuple[float, float], ef: tuple) -> dict:
    r = {"subject": key, "lv_ef_true": ef[0], "lv_ef_pred": ef[1], "lv_ef_error": ef[1] - ef[0]}
    for phase, d, h in zip(("ed", "es"), dice_lv, hd_lv):
        r |= {f"dice_lv_{phase}": d, f"hd95_lv_{phase}": h, f"hd95_undefined_lv_{phase}": 0}
    for index in CLINICAL_INDICES:
        r.setdefault(f"{index}_true", np.nan)
        r.setdefault(f"{index}_pred", np.nan)
    return r


def test_summarise_pools_phases_and_flattens_agreement() -> None:
    rows = [
        row("a", (0.9, 0.7), (2.0, 4.0), (60.0, 62.0)),
        row("b", (0.8, 0.6), (3.0, 5.0), (50.0, 46.0)),
    ]
    rows[1]["hd95_lv_es"] = np.nan  # LV missed at ES in b
    rows[1]["hd95_undefined_lv_es"] = 1
    out = summary_over_subjects(rows, ["lv"])
    assert out["n_subjects"] == 2
    assert out["dice_lv"] == pytest.approx(0.75) and out["dice_mean"] == pytest.approx(0.75)
    assert out["dice_lv_ed"] == pytest.approx(0.85) and out["dice_lv_es"] == pytest.approx(0.65)
    assert out["hd95_lv"] == pytest.approx(3.0) and out["hd95_lv_es"] == pytest.approx(4.0)
    assert out["hd95_undefined_lv"] == 1
    assert out["lv_ef_mae"] == pytest.approx(3.0) and out["lv_ef_bias"] == pytest.approx(-1.0)
    assert out["lv_ef_n"] == 2 and math.isnan(out["lv_ef_r"])
    assert out["rv_ef_n"] == 0 and math.isnan(out["rv_ef_mae"])


class IntensityLabeller(nn.Module):
    """Stub segmenter: label = intensity // 64 as one-hot logits (B, 4, T, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # predict_study reads the device from it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = (x[:, 0] * 255).round().long() // 64  # (B, T, H, W)
        return nn.functional.one_hot(label, 4).permute(0, 4, 1, 2, 3).float() + self.anchor


def heart_subject(i: int) -> dict:
    """A labelled study (S=4, T=2, 32, 32) whose image encodes its label (label * 64)."""
    label = np.zeros((4, 2, 32, 32), np.uint8)
    for t, r in enumerate((7 + i, 5 + i)):  # ED then ES: the cavity shrinks
        label[:, t][:, disc(32, 32, 14, 12, r + 3)] = 2
        label[:, t][:, disc(32, 32, 14, 12, r)] = 1
        label[:, t][:, disc(32, 32, 14, 26, r - 1) & ~disc(32, 32, 14, 12, r + 3)] = 3
    image = (label * 64).astype(np.uint8)
    meta = {"spacing": [8.0, 1.5, 1.5], "ed": 0, "es": 1, "group": "NOR"}
    return {"key": f"s{i}", "image": image, "label": label, "meta": meta}


def test_evaluate_of_a_perfect_model_gives_perfect_scores() -> None:
    subjects = [heart_subject(i) for i in range(3)] + [{**heart_subject(3), "label": None}]
    report = evaluate(IntensityLabeller(), subjects, frames=2, num_classes=4)
    s = report["summary"]
    assert s["n_subjects"] == 3 and len(report["subjects"]) == 3
    for st in ("lv", "myo", "rv"):
        assert s[f"dice_{st}"] == pytest.approx(1.0) and s[f"dice_{st}_es"] == pytest.approx(1.0)
        assert s[f"hd95_{st}"] == 0.0 and s[f"hd95_undefined_{st}"] == 0
    assert s["dice_mean"] == pytest.approx(1.0) and s["hd95_mean"] == 0.0
    for index in CLINICAL_INDICES:
        assert s[f"{index}_n"] == 3
        assert s[f"{index}_mae"] == pytest.approx(0.0, abs=1e-9)
        assert s[f"{index}_bias"] == pytest.approx(0.0, abs=1e-9)
    assert 0 < report["subjects"][0]["rv_ef_true"] < 100
    # Scoring the same predictions directly gives the same report.
    preds = {sub["key"]: sub["label"] for sub in subjects[:3]}
    assert evaluate_predictions(preds, subjects, num_classes=4)["subjects"] == report["subjects"]
    with pytest.raises(KeyError, match="s2"):
        evaluate_predictions({k: v for k, v in preds.items() if k != "s2"}, subjects, 4)


def test_evaluate_predictions_of_lv_only_labels_reports_no_rv() -> None:
    subject = heart_subject(0)
    subject["label"] = np.where(subject["label"] == 3, 0, subject["label"]).astype(np.uint8)
    pred = subject["label"].copy()
    pred[:, :, 0:3, 0:3] = 3  # an RV class the truth does not have: indices still NaN
    report = evaluate_predictions({"s0": pred}, [subject], num_classes=4)
    s = report["summary"]
    assert s["lv_ef_n"] == 1 and s["lv_ef_mae"] == pytest.approx(0.0)
    assert s["rv_ef_n"] == 0 and s["rv_edv_n"] == 0
    # Unlabelled structures are not scored: the RV is there in the image, just not annotated.
    assert "dice_rv" not in s and s["dice_mean"] == pytest.approx(1.0)
    assert report["subjects"][0]["dice_rv_ed"] == 0.0  # the row still shows what was predicted


def lge_subject() -> dict:
    """A single-phase LGE stack (S=3, T=1, 32, 32) with infarct and MVO and no known spacing,
    like EMIDEC's PNG slices."""
    label = np.zeros((3, 1, 32, 32), np.uint8)
    label[:, 0][:, disc(32, 32, 16, 16, 10)] = 2
    label[:, 0][:, disc(32, 32, 16, 16, 6)] = 1
    label[:2, 0, 6:10, 12:20] = 4  # infarct in the wall on two slices
    label[0, 0, 7:9, 15:17] = 5  # MVO inside it on one
    meta = {"spacing": [None, None, None], "ed": 0, "es": 0, "group": "infarct"}
    return {"key": "lge0", "image": (label * 40).astype(np.uint8), "label": label, "meta": meta}


def test_single_phase_lge_without_spacing_is_scored_by_dice_only() -> None:
    subject = lge_subject()
    report = evaluate_predictions({"lge0": subject["label"]}, [subject], num_classes=6)
    row, s = report["subjects"][0], report["summary"]
    for st in ("lv", "myo", "infarct", "mvo"):
        assert row[f"dice_{st}_ed"] == pytest.approx(1.0) and f"dice_{st}_es" not in row
        assert s[f"dice_{st}"] == pytest.approx(1.0)
    assert "dice_rv" not in s and s["dice_mean"] == pytest.approx(1.0)
    assert not any(k.startswith("hd95_") for k in row) and math.isnan(s["hd95_mean"])
    assert all(math.isnan(row[f"{i}_true"]) for i in CLINICAL_INDICES)  # no mm, no ml
    assert s["lv_ef_n"] == 0 and s["lv_mass_n"] == 0
    # Scar extent is a voxel ratio: scored without spacing.
    assert row["infarct_pct_true"] == pytest.approx(scar_extent(subject["label"], 0)["infarct_pct"])
    assert s["infarct_pct_n"] == 1 and s["infarct_pct_mae"] == 0.0 and s["mvo_pct_mae"] == 0.0
    # Missing the MVO costs its Dice, and the mean over the four structures.
    pred = np.where(subject["label"] == 5, 4, subject["label"]).astype(np.uint8)
    s = evaluate_predictions({"lge0": pred}, [subject], num_classes=6)["summary"]
    assert s["dice_mvo"] == 0.0 and s["dice_infarct"] < 1.0
    assert s["infarct_pct_mae"] == 0.0 and s["mvo_pct_mae"] > 0  # same scar, none of it MVO
    assert s["dice_mean"] == pytest.approx((1 + 1 + s["dice_infarct"] + 0) / 4)


# --- plots -------------------------------------------------------------------------------------


def is_png(path) -> bool:
    return (
        path.exists()
        and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        and path.stat().st_size > 2000
    )


def test_bland_altman_shows_bias_and_limits(tmp_path) -> None:
    true = np.array([50.0, 55.0, 60.0, 65.0, np.nan])
    pred = np.array([52.0, 54.0, 63.0, 66.0, 40.0])
    fig = bland_altman_figure(pred, true, title="LV EF", units="%")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "mean of predicted and true (%)" and "(%)" in ax.get_ylabel()
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines())
    stats = agreement(pred, true)
    assert levels == pytest.approx(
        sorted([0.0, stats["bias"], stats["loa_low"], stats["loa_high"]])
    )
    assert len(ax.collections[0].get_offsets()) == 4  # the NaN pair is dropped
    assert "n = 4" in ax.get_title()
    assert is_png(bland_altman(pred, true, tmp_path / "sub" / "ba.png", "LV EF", "%"))


def test_metric_vs_n_draws_one_line_per_method_with_an_all_tick(tmp_path) -> None:
    table = {
        "pretrained": [(1, 0.6, 0.05), (5, 0.8, 0.02), ("all", 0.9, 0.01)],
        "scratch": [(5, 0.7, 0.03), (1, 0.4, 0.1), ("all", 0.88, 0.01)],
    }
    ax = metric_vs_n_figure(table, "dice_mean", "mean Dice").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "5", "all"]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "mean Dice"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pretrained", "scratch"]
    lines = [bars.lines[0] for bars in ax.containers]  # the data line of each errorbar plot
    assert len(lines) == 2
    np.testing.assert_allclose(
        np.asarray(lines[1].get_xdata(), float), [1, 5, 10]
    )  # sorted; "all" at 2 x max N
    np.testing.assert_allclose(np.asarray(lines[1].get_ydata(), float), [0.4, 0.7, 0.88])
    rows = [{"method": m, "n": n, "dice_mean_mean": mu, "dice_mean_std": sd}
            for m, pts in table.items() for n, mu, sd in pts]  # fmt: skip
    assert is_png(metric_vs_n(rows, tmp_path / "n.png", "dice_mean", "mean Dice"))


def test_confusion_matrix_plot_annotates_every_cell(tmp_path) -> None:
    confusion = [[3, 1, 0], [0, 2, 0], [0, 0, 0]]
    ax = confusion_matrix_figure(confusion, ["DCM", "HCM", "RV"], title="cls").axes[0]
    assert [t.get_text() for t in ax.texts] == ["3", "1", "0", "0", "2", "0", "0", "0", "0"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["DCM", "HCM", "RV"]
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert is_png(confusion_matrix_plot(confusion, ["DCM", "HCM", "RV"], tmp_path / "c.png"))


def test_metric_vs_n_places_all_at_its_subject_count_when_given() -> None:
    # The benchmark's grouping: method -> [(n, label spec, mean, std, runs)].
    table = {"unet": [(2, "2", 0.5, 0.1, 3), (80, "all", 0.9, 0.0, 1)]}
    ax = metric_vs_n_figure(table, "dice_mean").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "all"]
    np.testing.assert_allclose(ax.get_xticks(), [2, 80])
    assert ax.get_ylabel() == "dice_mean"


# --- Dice and LV EF ---------------------------------------------------------------------------


def reference_dice(pred: np.ndarray, truth: np.ndarray, c: int) -> float:
    a, b = pred == c, truth == c
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_dice_per_class_matches_definition() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (3, 16, 16))
    truth = np.where(rng.random((3, 16, 16)) < 0.6, pred, rng.integers(0, 4, (3, 16, 16)))
    scores = dice_per_class(pred, truth, num_classes=4)
    assert list(scores) == ["lv", "myo", "rv"]
    for c, name in enumerate(["lv", "myo", "rv"], start=1):
        assert scores[name] == pytest.approx(reference_dice(pred, truth, c), rel=1e-6)
    perfect = dice_per_class(truth, truth, num_classes=4)
    assert all(v == pytest.approx(1.0) for v in perfect.values())


def test_dice_is_nan_for_a_class_absent_from_both() -> None:
    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, 2:5, 2:5] = 1
    scores = dice_per_class(truth, truth, num_classes=4)
    assert scores["lv"] == pytest.approx(1.0)
    assert np.isnan(scores["myo"]) and np.isnan(scores["rv"])


def test_dice_is_zero_for_a_class_only_in_the_prediction() -> None:
    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, 2:5, 2:5] = 1
    pred = truth.copy()
    pred[:, 6:8, 6:8] = 3  # a false-positive RV
    assert dice_per_class(pred, truth, num_classes=4)["rv"] == 0.0


def test_dice_leaves_out_pixels_whose_truth_is_unknown() -> None:
    # Contour-only labels (Sunnybrook ES): LV known, everything outside it IGNORE.
    truth = np.full((1, 8, 8), IGNORE, np.uint8)
    truth[0, 2:5, 2:5] = 1
    pred = np.zeros((1, 8, 8), np.uint8)
    pred[0, 2:5, 2:5] = 1
    pred[0, 6:8, 6:8] = 2  # lands on unknown truth: neither right nor wrong
    scores = dice_per_class(pred, truth, num_classes=4)
    assert scores["lv"] == pytest.approx(1.0)
    assert np.isnan(scores["myo"])
    pred[0, 2, 2] = 0  # a real miss inside the known LV still counts
    assert dice_per_class(pred, truth, num_classes=4)["lv"] == pytest.approx(16 / 17)


def test_lv_ef_against_hand_computed_volumes() -> None:
    label = np.zeros((2, 3, 10, 10), np.uint8)
    label[:, 0, 0:5, 0:8] = 1  # ED: 2 slices * 40 pixels
    label[:, 1, 0:3, 0:5] = 1  # ES: 2 slices * 15 pixels
    label[:, 2, 0:4, 0:4] = 1
    label[0, :, 9, 9] = 2  # other classes do not count
    spacing = (8.0, 1.25, 1.25)
    voxel_ml = 8.0 * 1.25 * 1.25 / 1000
    out = lv_ef(label, spacing, ed=0, es=1)
    assert out["edv"] == pytest.approx(80 * voxel_ml)
    assert out["esv"] == pytest.approx(30 * voxel_ml)
    assert out["ef"] == pytest.approx(100 * (80 - 30) / 80)
    assert np.isnan(lv_ef(np.zeros_like(label), spacing, ed=0, es=1)["ef"])
