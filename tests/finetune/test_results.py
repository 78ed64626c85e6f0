"""finetune.results: a benchmark's files survive a killed job (a cut last line is dropped,
whole-file writes are atomic) and label maps come back as saved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from finetune.results import (
    append_jsonl,
    load_predictions,
    read_jsonl,
    save_predictions,
    write_jsonl,
)


def test_a_line_cut_by_a_killed_job_is_dropped(tmp_path: Path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"run": "a"}) + "\n" + '{"run": "b", "dice')
    assert read_jsonl(path) == [{"run": "a"}]


def test_a_row_appended_after_a_cut_line_is_kept(tmp_path: Path):
    # the resumed job's first finished run must not be glued to the killed job's half line
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"run": "a"}) + "\n" + '{"run": "b", "dice')
    append_jsonl(path, [{"run": "b", "dice": 0.5}])
    assert read_jsonl(path) == [{"run": "a"}, {"run": "b", "dice": 0.5}]


def test_jsonl_rows_are_appended_and_replaced_whole(tmp_path: Path):
    path = tmp_path / "results.jsonl"
    assert read_jsonl(path) == []  # no file yet: no finished runs
    append_jsonl(path, [{"run": "a", "dice": np.float32(0.5)}])  # numpy scalars are written
    append_jsonl(path, [{"run": "b"}])
    assert read_jsonl(path) == [{"run": "a", "dice": 0.5}, {"run": "b"}]
    write_jsonl(path, [{"run": "c"}])
    assert read_jsonl(path) == [{"run": "c"}]


def test_predictions_round_trip(tmp_path: Path):
    preds = {"s1": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "s2": np.zeros((1, 2, 2), int)}
    path = tmp_path / "predictions" / "unet_n1_s0.npz"  # the folder is created
    save_predictions(path, preds)
    back = load_predictions(path)
    assert back.keys() == preds.keys()
    for key, value in preds.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value)
