"""Several few-shot benchmark folders of one task and data -> one report: e.g. N <= 10 at one step
budget and N = all at the longer one where the U-Net plateaus there (budgets are a folder's)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from finetune.fewshot_config import HEADLINES
from finetune.report import write_report
from finetune.results import read_jsonl, write_jsonl

# What every merged folder must share: the runs are then scored on the same subjects.
COMMON_KEYS = ("task", "shards", "train_split", "eval_split", "frames")


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder}: not a few-shot benchmark folder (no config.json)")
    return json.loads(path.read_text())


def merge_benchmarks(out: Path, folders: Sequence[Path]) -> list[dict]:
    """Write results.jsonl, subjects.jsonl, config.json (the common keys + each folder's own
    config) and the report of every run in ``folders`` into ``out``; returns the summary rows.

    Refuses folders that differ in a COMMON_KEYS entry, a run name found twice, a folder with no
    finished run, and an ``out`` that is one of the folders."""
    out, folders = Path(out), [Path(f) for f in folders]
    if len(folders) < 2:
        raise ValueError("merging needs at least two benchmark folders")
    if any(out.resolve() == f.resolve() for f in folders):
        raise ValueError(f"{out}: is one of the folders merged; write the merge elsewhere")
    configs = [_config(f) for f in folders]
    for folder, cfg in zip(folders[1:], configs[1:]):
        differ = [k for k in COMMON_KEYS if cfg.get(k) != configs[0].get(k)]
        if differ:
            raise ValueError(
                f"{folder}: differs from {folders[0]} in {', '.join(differ)}; "
                "only benchmarks of one task, data and split merge"
            )
    results, subjects, source = [], [], {}
    for folder in folders:
        rows = read_jsonl(folder / "results.jsonl")
        if not rows:
            raise ValueError(f"{folder}: no finished runs (results.jsonl is missing or empty)")
        for row in rows:
            if row["run"] in source:
                raise ValueError(f"run {row['run']} is in both {source[row['run']]} and {folder}")
            source[row["run"]] = folder
        results += rows
        subjects += read_jsonl(folder / "subjects.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "results.jsonl", results)
    write_jsonl(out / "subjects.jsonl", subjects)
    merged = {k: configs[0].get(k) for k in COMMON_KEYS}
    merged["merged_from"] = {str(f): cfg for f, cfg in zip(folders, configs)}
    (out / "config.json").write_text(json.dumps(merged, indent=1) + "\n")
    methods = list(dict.fromkeys(r["method"] for r in results))
    return write_report(out, merged["task"], HEADLINES[merged["task"]], methods)
