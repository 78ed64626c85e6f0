"""finetune.report: the summary is mean +- sample std over seeds, non-finite values are left out,
and pretrained-minus-scratch pairs runs by seed."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from finetune.report import group_rows, implausible_runs, markdown, metric_info, summary_rows


def _rows() -> list[dict]:
    rows = []
    for method, offset in (("pretrained", 0.1), ("scratch", 0.0)):
        for n, spec in ((1, "1"), (5, "5")):
            for seed in range(3):
                value = 0.5 + offset + 0.01 * n + 0.02 * seed
                rows.append(
                    {"run": f"{method}_n{n}_s{seed}", "method": method, "n": n, "labels": spec}
                    | {"seed": seed, "dice_mean": value}
                )
    return rows


def test_summary_is_mean_and_sample_std_over_seeds():
    grouped = group_rows(_rows(), "dice_mean")
    n, spec, mean, std, runs = grouped["pretrained"][0]
    values = [0.61, 0.63, 0.65]
    assert (n, spec, runs) == (1, "1", 3)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    rows = summary_rows(_rows(), ["dice_mean"])
    assert len(rows) == 4 and {r["method"] for r in rows} == {"pretrained", "scratch"}


def test_non_finite_values_are_left_out_not_averaged():
    rows = _rows()
    rows[0]["dice_mean"] = float("nan")
    assert group_rows(rows, "dice_mean")["pretrained"][0][4] == 2


def test_markdown_pairs_pretrained_and_scratch_by_seed():
    text = markdown(_rows(), "seg", ["dice_mean"], ["pretrained", "scratch"])
    assert "| 1 | 0.630 ± 0.020 (3) | 0.530 ± 0.020 (3) |" in text
    assert "| 1 | +0.100 ± 0.000 (3) |" in text  # the same seed's draw: differences pair up


def test_one_run_shows_its_value_without_a_spread():
    rows = [r for r in _rows() if r["seed"] == 0]  # one seed: as N = all is run
    text = markdown(rows, "seg", ["dice_mean"], ["pretrained", "scratch"])
    assert "| 1 | 0.610 (1) | 0.510 (1) |" in text and "| 1 | +0.100 (1) |" in text
    assert "± 0.000 (1)" not in text


def test_pretrained_is_paired_with_the_unet_too_when_scratch_was_not_run():
    rows = [r | {"method": "unet"} if r["method"] == "scratch" else r for r in _rows()]
    rows[-1]["dice_mean"] += 0.06  # unet, N=5, seed 2: one pair differs
    text = markdown(rows, "seg", ["dice_mean"], ["pretrained", "unet"])
    assert "pretrained − unet, dice_mean, paired by seed" in text and "− scratch" not in text
    assert "| 1 | +0.100 ± 0.000 (3) |" in text
    assert "| 5 | +0.080 ± 0.035 (3) |" in text


def test_tables_name_the_metric_and_its_unit():
    rows = [r | {"lv_ef_mae": 5.0} for r in _rows()]
    text = markdown(rows, "seg", ["dice_mean", "lv_ef_mae"], ["pretrained", "scratch"])
    assert "## dice_mean: mean Dice\n" in text
    assert "## lv_ef_mae: LV EF mean absolute error (percentage points)" in text
    assert metric_info("dice_rv").label() == "Dice, rv" and metric_info("hd95_lv").unit == "mm"


def test_a_value_the_quantity_cannot_take_is_flagged_with_its_run():
    rows = [r | {"lv_ef_mae": 5.0} for r in _rows()]
    rows[1]["lv_ef_mae"] = 179.0  # EF lies in 0-100 %: an error of 179 points is a broken mask
    text = markdown(rows, "seg", ["lv_ef_mae"], ["pretrained", "scratch"])
    first_row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert first_row.endswith("(3) ⚠ | 5.000 ± 0.000 (3) |")  # pretrained's N=1 cell only
    assert "pretrained_n1_s1 (179)" in text and text.count("⚠") == 2  # the cell and the note
    summary = summary_rows(rows, ["lv_ef_mae"])
    assert [(r["method"], r["n"], r["implausible"]) for r in summary if r["implausible"]] == [
        ("pretrained", 1, 1)
    ]
    assert {r["unit"] for r in summary} == {"percentage points"}


def test_plausible_values_raise_no_flag():
    text = markdown(_rows(), "seg", ["dice_mean"], ["pretrained", "scratch"])
    assert "⚠" not in text
    assert implausible_runs(_rows(), "dice_mean") == []


def test_summary_csv_leaves_one_runs_std_empty_and_names_the_data_scored(tmp_path):
    from finetune.report import write_report
    from finetune.results import write_jsonl

    runs = [r for r in _rows() if r["seed"] == 0 or r["n"] == 5]  # N = 1: one run, N = 5: three
    write_jsonl(tmp_path / "results.jsonl", runs)
    write_jsonl(tmp_path / "subjects.jsonl", [])
    (tmp_path / "config.json").write_text('{"shards": "runs/real/acdc", "eval_split": "test"}')
    grouped = group_rows([r for r in _rows() if r["seed"] == 0], "dice_mean")
    assert np.isnan(grouped["pretrained"][0][3])
    write_report(tmp_path, "seg", ["dice_mean"], ["pretrained", "scratch"])
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    std = {(r["method"], r["n"]): r["std"] for r in rows}
    assert std[("pretrained", "1")] == "" and float(std[("pretrained", "5")]) > 0
    # each row names what it was scored on, so the file says it away from its folder too
    assert {(r["dataset"], r["split"]) for r in rows} == {("acdc", "test")}
