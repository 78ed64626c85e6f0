"""Few-shot benchmark report: mean +- std tables (CSV, Markdown) and plots from results.jsonl."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from finetune.results import read_jsonl

# Which per-subject pair each task's agreement plot shows, and its units.
AGREEMENT_PLOTS = {"seg": ("lv_ef", "LV EF", "%"), "ef": ("lv_ef", "LV EF", "%")}


def write_report(
    out: Path, task: str, metrics: Sequence[str], methods: Sequence[str]
) -> list[dict]:
    """summary.csv, summary.md and PNGs in out/; returns the summary rows."""
    results = read_jsonl(out / "results.jsonl")
    rows = summary_rows(results, metrics)
    _write_csv(out / "summary.csv", rows)
    (out / "summary.md").write_text(markdown(results, task, metrics, methods))
    plot_curves(out, results, metrics)
    subjects = read_jsonl(out / "subjects.jsonl")
    if task in AGREEMENT_PLOTS:
        plot_agreement(out, subjects, results, *AGREEMENT_PLOTS[task])
    if task == "cls":
        plot_confusions(out, results)
    return rows


def group_rows(
    rows: Sequence[dict], metric: str
) -> dict[str, list[tuple[int, str, float, float, int]]]:
    """method -> [(n, label spec, mean, std, runs)] of one metric over seeds, sorted by n."""
    cells: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in rows:
        value = r.get(metric)
        if value is not None and np.isfinite(value):
            cells[(r["method"], r["n"], r["labels"])].append(float(value))
    out: dict[str, list] = defaultdict(list)
    for (method, n, spec), values in sorted(cells.items(), key=lambda kv: kv[0][1]):
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[method].append((n, spec, float(np.mean(values)), std, len(values)))
    return dict(out)


def summary_rows(results: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """One row per (metric, method, N): mean, std over seeds and how many runs."""
    rows = []
    for metric in metrics:
        for method, cells in group_rows(results, metric).items():
            for n, spec, mean, std, runs in cells:
                rows.append(
                    {"metric": metric, "method": method, "labels": spec, "n": n}
                    | {"mean": mean, "std": std, "runs": runs}
                )
    return rows


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    fields = ["metric", "method", "labels", "n", "mean", "std", "runs"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def markdown(
    results: Sequence[dict], task: str, metrics: Sequence[str], methods: Sequence[str]
) -> str:
    """One table per metric: rows N, columns methods, cells mean +- std (runs)."""
    parts = [f"# Few-shot {task}: mean ± std over seeds (runs)\n"]
    for metric in metrics:
        grouped = group_rows(results, metric)
        present = [m for m in methods if m in grouped]
        if not present:
            continue
        ns = sorted({(n, spec) for m in present for n, spec, *_ in grouped[m]})
        parts.append(f"\n## {metric}\n")
        parts.append("| N | " + " | ".join(present) + " |")
        parts.append("|---|" + "---|" * len(present))
        for n, spec in ns:
            cells = []
            for m in present:
                hit = [c for c in grouped[m] if c[0] == n]
                cells.append(f"{hit[0][2]:.3f} ± {hit[0][3]:.3f} ({hit[0][4]})" if hit else "")
            label = f"{n} (all)" if spec == "all" else str(n)
            parts.append(f"| {label} | " + " | ".join(cells) + " |")
        if metric == metrics[0] and {"pretrained", "scratch"} <= set(present):
            parts.append("\n" + _margin_table(results, metric))
    return "\n".join(parts) + "\n"


def _margin_table(results: Sequence[dict], metric: str) -> str:
    """pretrained minus scratch, paired by (N, seed): the same draws, so differences pair up."""
    by_cell = {(r["method"], r["n"], r["seed"]): r.get(metric) for r in results}
    lines = [f"pretrained − scratch, {metric}, paired by seed:\n", "| N | mean ± std (pairs) |"]
    lines.append("|---|---|")
    for n in sorted({r["n"] for r in results}):
        diffs = [
            by_cell[("pretrained", n, s)] - by_cell[("scratch", n, s)]
            for (m, nn, s) in by_cell
            if m == "pretrained" and nn == n and ("scratch", n, s) in by_cell
        ]
        diffs = [d for d in diffs if d is not None and np.isfinite(d)]
        if diffs:
            std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
            lines.append(f"| {n} | {np.mean(diffs):+.3f} ± {std:.3f} ({len(diffs)}) |")
    return "\n".join(lines)


def plot_curves(out: Path, results: Sequence[dict], metrics: Sequence[str]) -> list[Path]:
    """metric against N, one line per method (finetune.plots.metric_vs_n)."""
    from finetune.plots import metric_vs_n

    paths = []
    for metric in metrics:
        grouped = group_rows(results, metric)
        if grouped:
            paths.append(metric_vs_n(grouped, out / f"{metric}_vs_n.png", metric, metric))
    return paths


def _largest_n_rows(results: Sequence[dict], method: str) -> list[str]:
    runs = [r for r in results if r["method"] == method]
    if not runs:
        return []
    top = max(r["n"] for r in runs)
    return [r["run"] for r in runs if r["n"] == top]


def plot_agreement(
    out: Path, subjects: Sequence[dict], results: Sequence[dict], key: str, name: str, units: str
) -> list[Path]:
    """Bland-Altman of `key` for each method at its largest N (every seed's subjects pooled)."""
    from finetune.plots import bland_altman

    paths = []
    for method in sorted({r["method"] for r in results}):
        runs = set(_largest_n_rows(results, method))
        pairs = [
            (s[f"{key}_pred"], s[f"{key}_true"])
            for s in subjects
            if s.get("run") in runs and f"{key}_pred" in s and f"{key}_true" in s
        ]
        pairs = [(p, t) for p, t in pairs if p is not None and t is not None]
        if len(pairs) >= 2:
            pred, true = np.array(pairs, dtype=float).T
            n = next(r["n"] for r in results if r["run"] in runs)
            title = f"{name}: {method}, N={n}"
            paths.append(
                bland_altman(pred, true, out / f"bland_altman_{key}_{method}.png", title, units)
            )
    return paths


def plot_confusions(out: Path, results: Sequence[dict]) -> list[Path]:
    """Confusion matrix of each method at its largest N, summed over seeds."""
    from finetune.plots import confusion_matrix_plot

    paths = []
    for method in sorted({r["method"] for r in results}):
        runs = set(_largest_n_rows(results, method))
        mats = [np.array(r["confusion"]) for r in results if r["run"] in runs and "confusion" in r]
        if mats:
            classes = next(r["classes"] for r in results if r["run"] in runs)
            n = next(r["n"] for r in results if r["run"] in runs)
            path = out / f"confusion_{method}.png"
            paths.append(confusion_matrix_plot(sum(mats), classes, path, f"{method}, N={n}"))
    return paths
