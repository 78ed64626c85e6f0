"""cmrfm.quality: every check fails on a study made to fail it and passes on a good one; and
finetune.evaluate.heart_entropy, the uncertainty the last check reads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmrfm.predict import ventricular_volumes
from cmrfm.quality import quality_report
from data_shards.record import LV, MYO, RV
from finetune.evaluate import heart_entropy

SPACING = (10.0, 1.8, 1.8)  # (dz, dy, dx) mm


def good_heart() -> np.ndarray:
    """(S=8, T=2, 64, 64): LV cavity with a myocardial ring and an RV beside it on slices 1-6
    (the stack reaches past base and apex), smaller at ES (frame 1)."""
    labels = np.zeros((8, 2, 64, 64), np.uint8)
    y, x = np.mgrid[:64, :64]
    for z in range(1, 7):
        taper = 1.0 - 0.08 * (z - 1)  # narrower toward the apex
        for t, radius in ((0, 11.0), (1, 8.0)):
            r = radius * taper
            labels[z, t][np.hypot(y - 32, x - 40 + 2 * r) < r + 4] = RV
            labels[z, t][np.hypot(y - 32, x - 36) < r + 4] = MYO
            labels[z, t][np.hypot(y - 32, x - 36) < r] = LV
    return labels


EVEN = [10.0] * 7  # gaps between the 8 slices' DICOM positions, mm


def report(
    labels: np.ndarray, entropy: np.ndarray | None = None, gaps: list[float] | None = None
) -> dict[str, dict]:
    found = ventricular_volumes(labels, SPACING)
    checks = quality_report(labels, SPACING, found["phases"], found, entropy, gaps)["checks"]
    return {c["name"]: c for c in checks}


def test_a_good_study_passes_every_check() -> None:
    checks = report(good_heart(), np.full((8, 2), 0.1), EVEN)
    assert {name: c["passed"] for name, c in checks.items()} == dict.fromkeys(checks, True)
    assert len(checks) == 8


def test_a_missing_slice_position_is_an_uneven_spacing_alert() -> None:
    gaps = [10.0, 10.0, 20.0, 10.0, 10.0, 10.0, 10.0]  # the slice after the third is gone
    check = report(good_heart(), gaps=gaps)["slice_spacing"]
    assert check["passed"] is False and check["evidence"]["after_slices"] == [2]
    assert "uneven slice spacing (10.0 to 20.0 mm)" in check["message"]
    assert report(good_heart(), gaps=[10.0, 10.4, 9.8, 10.0, 10.0, 10.0, 10.0])["slice_spacing"][
        "passed"
    ]  # scanner rounding is no alert


def test_without_slice_positions_the_spacing_check_does_not_apply() -> None:
    assert report(good_heart())["slice_spacing"]["passed"] is None


def test_cavity_on_the_last_slice_is_a_coverage_alert() -> None:
    labels = good_heart()
    labels[7] = labels[6]  # the stack stops inside the LV
    check = report(labels)["lv_coverage"]
    assert check["passed"] is False and check["evidence"]["cut_at"] == [7]


def test_a_slice_shifted_by_14_mm_is_a_misalignment_alert() -> None:
    labels = good_heart()
    labels[4] = np.roll(labels[4], 8, axis=-1)  # 8 px x 1.8 mm
    check = report(labels)["slice_alignment"]
    assert check["passed"] is False
    assert check["evidence"]["max_shift_mm"] == pytest.approx(14.4, abs=0.5)
    assert check["evidence"]["between_slices"] in ([3, 4], [4, 5])


def test_an_empty_slice_inside_the_lv_is_a_gap_alert() -> None:
    labels = good_heart()
    labels[3] = 0
    check = report(labels)["slice_gaps"]
    assert check["passed"] is False and check["evidence"]["empty_slices"] == [3]


def test_a_cavity_without_myocardium_is_implausible() -> None:
    labels = good_heart()
    labels[labels == MYO] = 0
    check = report(labels)["myocardium_surrounds_lv"]
    assert check["passed"] is False and check["evidence"]["share_surrounded"] == 0.0


def test_a_stray_piece_of_lv_is_a_components_alert() -> None:
    labels = good_heart()
    labels[2:5, 0, 2:12, 2:12] = LV  # a blob far from the heart, about a tenth of the LV
    check = report(labels)["connected_components"]
    assert check["passed"] is False
    assert check["evidence"]["structure"] == "lv" and check["evidence"]["pieces"] == 2


def test_a_heart_that_does_not_contract_is_outside_physiological_ranges() -> None:
    labels = good_heart()
    labels[:, 1] = labels[:, 0]  # ES = ED: EF 0 %
    check = report(labels)["physiological_ranges"]
    assert check["passed"] is False and "lv.ef_percent" in check["evidence"]["outside"]


def test_an_uncertain_slice_is_named() -> None:
    entropy = np.full((8, 2), 0.1)
    entropy[5, 1] = 0.6
    check = report(good_heart(), entropy)["model_uncertainty"]
    assert check["passed"] is False and check["evidence"]["unsure"] == [5]


def test_a_check_the_study_cannot_show_is_not_applicable_not_failed() -> None:
    blank = np.zeros((4, 1, 32, 32), np.uint8)
    found = ventricular_volumes(blank, SPACING)
    result = quality_report(blank, SPACING, found["phases"], found, None)
    assert all(c["passed"] is None for c in result["checks"] if c["name"] != "physiological_ranges")
    assert result["passed"] is (not any(c["passed"] is False for c in result["checks"]))


def test_heart_entropy_is_one_for_a_uniform_guess_and_near_zero_for_a_sure_one() -> None:
    logits = torch.zeros(1, 4, 2, 8, 8)
    logits[:, 1, :, 2:6, 2:6] = 1e-3  # argmax foreground there, probabilities still uniform
    sure = torch.zeros(1, 4, 2, 8, 8)
    sure[:, 1, :, 2:6, 2:6] = 30.0
    sure[:, 0] = 15.0  # background elsewhere, certain
    sure[:, 0, :, 2:6, 2:6] = 0.0
    np.testing.assert_allclose(heart_entropy(logits), 1.0, atol=1e-3)
    assert heart_entropy(sure).max() < 1e-3
    nothing = torch.zeros(1, 4, 1, 8, 8)
    nothing[:, 0] = 5.0  # all background: no heart pixels to judge
    assert np.isnan(heart_entropy(nothing)).all()


def test_failed_checks_are_written_under_the_overlay(tmp_path) -> None:
    from PIL import Image

    from cmrfm.figures import write_overlay

    labels = good_heart()
    image = labels.astype(np.float32) * 50
    frames = {"ed": 0, "es": 1}
    write_overlay(image, labels, SPACING, frames, tmp_path / "plain.png")
    alerts = ["slices inside the LV without cavity", "the model is unsure on slices [5]"]
    write_overlay(image, labels, SPACING, frames, tmp_path / "alerts.png", alerts)
    with Image.open(tmp_path / "plain.png") as plain, Image.open(tmp_path / "alerts.png") as warn:
        assert warn.height > plain.height  # room for two lines
        bottom = np.asarray(warn.convert("RGB"))[-40:]
        red = (bottom[..., 0] > 150) & (bottom[..., 1] < 80) & (bottom[..., 2] < 80)
        assert red.sum() > 20  # the alert text, in red
