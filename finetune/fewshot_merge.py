"""Several few-shot benchmark folders of one task and data -> one report: e.g. N <= 10 at one step
budget and N = all at the longer one where the U-Net plateaus there (budgets are a folder's)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cmrfm_io.files import read_json
from finetune.fewshot_config import HEADLINES
from finetune.report import write_report
from finetune.results import read_jsonl, write_jsonl

# What every merged folder must share: the runs are then scored on the same subjects.
COMMON_KEYS = ("task", "shards", "train_split", "eval_split", "frames")


def parse_source(spec: str | Path) -> tuple[Path, list[str] | None]:
    """A source: DIR -> (DIR, None), all its runs; DIR:unet,scratch -> (DIR, [unet, scratch]),
    those methods' runs only (e.g. one method re-run with the recipe val chose for it)."""
    folder, sep, methods = str(spec).rpartition(":")
    if not sep or not methods or "/" in methods or "\\" in methods:
        return Path(spec), None
    return Path(folder), methods.split(",")


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder}: not a few-shot benchmark folder (no config.json)")
    return read_json(path)


def _runs_of(folder: Path, methods: list[str] | None) -> list[dict]:
    """The finished runs of ``folder`` (of ``methods`` only, when given); refuses an empty one."""
    rows = read_jsonl(folder / "results.jsonl")
    if not rows:
        raise ValueError(f"{folder}: no finished runs (results.jsonl is missing or empty)")
    if methods is None:
        return rows
    absent = [m for m in methods if not any(r["method"] == m for r in rows)]
    if absent:
        found = ", ".join(dict.fromkeys(r["method"] for r in rows))
        raise ValueError(f"{folder}: no runs of {', '.join(absent)} (it holds {found})")
    return [r for r in rows if r["method"] in methods]


def merge_benchmarks(out: Path, sources: Sequence[str | Path]) -> list[dict]:
    """Write results.jsonl, subjects.jsonl, config.json (the common keys + each folder's own
    config) and the report of every run in ``sources`` into ``out``; returns the summary rows.

    A source is a folder, or "folder:method,..." for those methods' runs only (parse_source).
    Refuses folders that differ in a COMMON_KEYS entry, a run name found twice, a folder with no
    finished run (of the methods asked for), and an ``out`` that is one of the folders."""
    out, parsed = Path(out), [parse_source(s) for s in sources]
    folders = [folder for folder, _ in parsed]
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
    for folder, methods in parsed:
        rows = _runs_of(folder, methods)
        for row in rows:
            if row["run"] in source:
                raise ValueError(f"run {row['run']} is in both {source[row['run']]} and {folder}")
            source[row["run"]] = folder
        results += rows
        kept = {row["run"] for row in rows}
        subjects += [s for s in read_jsonl(folder / "subjects.jsonl") if s["run"] in kept]
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "results.jsonl", results)
    write_jsonl(out / "subjects.jsonl", subjects)
    merged = {k: configs[0].get(k) for k in COMMON_KEYS}
    merged["merged_from"] = {
        str(f): cfg | ({"methods_kept": methods} if methods else {})
        for (f, methods), cfg in zip(parsed, configs)
    }
    (out / "config.json").write_text(json.dumps(merged, indent=1) + "\n")
    methods = list(dict.fromkeys(r["method"] for r in results))
    return write_report(out, merged["task"], HEADLINES[merged["task"]], methods)
