"""foundation.card.metrics_lines: an evaluate summary (finetune.evaluate) becomes a Dice/HD95
table by structure and an agreement table by clinical index, not 50 raw rows."""

from __future__ import annotations

import numpy as np

from finetune.evaluate import summary_over_subjects
from finetune.metrics import CLINICAL_INDICES
from foundation.card import metrics_lines


def evaluate_summary() -> dict:
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(4):
        row = {f"{m}_{st}_{p}": float(rng.random()) for m in ("dice", "hd95")
               for st in ("lv", "myo", "rv") for p in ("ed", "es")}  # fmt: skip
        row |= {f"{i}_{w}": float(rng.random() * 100) for i in CLINICAL_INDICES
                for w in ("pred", "true")}  # fmt: skip
        rows.append(row)
    return summary_over_subjects(rows, ["lv", "myo", "rv"])


def test_an_evaluate_summary_reads_as_two_tables() -> None:
    summary = evaluate_summary()
    lines = metrics_lines(summary)
    assert lines[0].startswith("| structure | Dice ED | Dice ES | Dice | HD95 ED (mm)")
    lv = next(line for line in lines if line.startswith("| lv |"))
    assert f"{summary['dice_lv_ed']:.3f}" in lv and f"{summary['hd95_lv']:.3f}" in lv
    ef = next(line for line in lines if line.startswith("| lv_ef |"))
    assert ef.count("|") == 9 and f"{summary['lv_ef_mae']:.3f}" in ef  # index + 7 statistics
    assert len(lines) < len(summary) / 2  # a table a reader takes in, not a row per key
    leftovers = "\n".join(lines[lines.index("| metric | value |") :])
    assert "n_subjects" in leftovers and "dice_lv_ed" not in leftovers


def test_a_few_plain_values_stay_one_table() -> None:
    assert metrics_lines({"auc": 0.9, "note": "held-out"}) == [
        "| metric | value |", "|---|---|", "| auc | 0.900 |", "| note | held-out |"
    ]  # fmt: skip
    assert metrics_lines({"dice_mean": 0.1661852104589343, "n": 7})[2:] == [
        "| dice_mean | 0.166 |", "| n | 7 |"]  # floats to 3 decimals, counts as they are  # fmt: skip
