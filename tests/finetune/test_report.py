"""finetune.report: the summary is mean +- sample std over seeds, non-finite values are left out,
and pretrained-minus-scratch pairs runs by seed."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.report import group_rows, markdown, summary_rows


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
