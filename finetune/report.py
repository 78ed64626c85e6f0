"""Few-shot benchmark report: mean +- std tables (CSV, Markdown) and plots from results.jsonl."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmrfm_io.files import read_json
from finetune.results import read_jsonl

# Which per-subject pair each task's agreement plot shows, and its units.
# The baselines pretrained is paired against by seed: the same network from random weights, and
# MONAI's U-Net (for the dense route these are the same network, so either row is the margin).
PAIRED_BASELINES = ("scratch", "unet")
AGREEMENT_PLOTS = {"seg": ("lv_ef", "LV EF", "%"), "ef": ("lv_ef", "LV EF", "%")}


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means, its unit, and the range its values can take: a value outside it
    (an EF error of 179 points) means a broken run or mask, and is flagged, never hidden."""

    title: str
    unit: str
    low: float
    high: float

    def label(self) -> str:
        return f"{self.title} ({self.unit})" if self.unit else self.title

    def plausible(self, value: float) -> bool:
        return self.low <= value <= self.high


# Exact names first, then prefixes (dice_lv, dice_myo, ...). Bounds are what the quantity can
# physically be: EF lies in 0-100 %, so its absolute error cannot exceed 100 points.
METRIC_INFO = {
    "dice_mean": MetricInfo("mean Dice", "", 0.0, 1.0),
    "hd95_mean": MetricInfo("mean 95th-percentile Hausdorff distance", "mm", 0.0, 500.0),
    "lv_ef_mae": MetricInfo("LV EF mean absolute error", "percentage points", 0.0, 100.0),
    "lv_ef_bias": MetricInfo("LV EF bias, predicted − true", "percentage points", -100.0, 100.0),
    "lv_ef_r": MetricInfo("LV EF Pearson r", "", -1.0, 1.0),
    "lv_mass_mae": MetricInfo("LV mass mean absolute error", "g", 0.0, 500.0),
    "infarct_pct_mae": MetricInfo(
        "infarct size mean absolute error", "% of LV myocardium", 0.0, 100.0
    ),
    "accuracy": MetricInfo("accuracy", "", 0.0, 1.0),
    "macro_f1": MetricInfo("macro F1", "", 0.0, 1.0),
    "dice_": MetricInfo("Dice", "", 0.0, 1.0),
    "hd95_": MetricInfo("95th-percentile Hausdorff distance", "mm", 0.0, 500.0),
}


def metric_info(metric: str) -> MetricInfo:
    """The metric's title, unit and plausible range (unbounded and unitless when unknown)."""
    if metric in METRIC_INFO:
        return METRIC_INFO[metric]
    for prefix, info in METRIC_INFO.items():
        if prefix.endswith("_") and metric.startswith(prefix):
            return MetricInfo(
                f"{info.title}, {metric[len(prefix) :]}", info.unit, info.low, info.high
            )
    return MetricInfo(metric, "", -math.inf, math.inf)


def implausible_runs(results: Sequence[dict], metric: str) -> list[tuple[str, float]]:
    """(run, value) of every run whose finite value lies outside the metric's plausible range."""
    info = metric_info(metric)
    return [
        (r["run"], float(r[metric]))
        for r in results
        if r.get(metric) is not None
        and np.isfinite(r[metric])
        and not info.plausible(float(r[metric]))
    ]


def write_report(
    out: Path, task: str, metrics: Sequence[str], methods: Sequence[str]
) -> list[dict]:
    """summary.csv, summary.md and PNGs in out/; returns the summary rows. Each row names the
    data it was scored on (``dataset``, the shards folder, and ``split``, from out/config.json),
    so a summary.csv copied elsewhere still says what it measured."""
    results = read_jsonl(out / "results.jsonl")
    where = evaluated_on(out)
    rows = [row | where for row in summary_rows(results, metrics)]
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
    """method -> [(n, label spec, mean, std, runs)] of one metric over seeds, sorted by n; one run
    has no spread: its std is NaN (written as an empty cell in summary.csv)."""
    cells: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in rows:
        value = r.get(metric)
        if value is not None and np.isfinite(value):
            cells[(r["method"], r["n"], r["labels"])].append(float(value))
    out: dict[str, list] = defaultdict(list)
    for (method, n, spec), values in sorted(cells.items(), key=lambda kv: kv[0][1]):
        std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        out[method].append((n, spec, float(np.mean(values)), std, len(values)))
    return dict(out)


def summary_rows(results: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """One row per (metric, method, N): mean, std over seeds, how many runs, the unit, and how
    many of those runs lie outside the metric's plausible range (``implausible``)."""
    rows = []
    for metric in metrics:
        bad = {run for run, _ in implausible_runs(results, metric)}
        for method, cells in group_rows(results, metric).items():
            for n, spec, mean, std, runs in cells:
                flagged = sum(
                    r["run"] in bad for r in results if r["method"] == method and r["n"] == n
                )
                rows.append(
                    {"metric": metric, "method": method, "labels": spec, "n": n}
                    | {"mean": mean, "std": std, "runs": runs}
                    | {"unit": metric_info(metric).unit, "implausible": flagged}
                )
    return rows


def evaluated_on(out: Path) -> dict[str, str]:
    """The benchmark folder's shards name and evaluation split ("" for a folder without
    config.json)."""
    config = out / "config.json"
    setup = read_json(config) if config.is_file() else {}
    return {"dataset": Path(setup.get("shards") or "").name, "split": setup.get("eval_split", "")}


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    fields = ["metric", "method", "labels", "n", "mean", "std", "runs", "unit", "implausible"]
    fields += ["dataset", "split"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**r, "std": "" if np.isnan(r["std"]) else r["std"]} for r in rows)


def markdown(
    results: Sequence[dict], task: str, metrics: Sequence[str], methods: Sequence[str]
) -> str:
    """One table per metric, headed by its meaning and unit: rows N, columns methods, cells
    mean +- std (runs); a cell holding a run outside the plausible range is marked ⚠ and the
    runs are listed under the table."""
    parts = [f"# Few-shot {task}: mean ± std over seeds (runs)\n"]
    for metric in metrics:
        grouped = group_rows(results, metric)
        present = [m for m in methods if m in grouped]
        if not present:
            continue
        ns = sorted({(n, spec) for m in present for n, spec, *_ in grouped[m]})
        bad = implausible_runs(results, metric)
        flagged = {(r["method"], r["n"]) for r in results if r["run"] in dict(bad)}
        parts.append(f"\n## {metric}: {metric_info(metric).label()}\n")
        parts.append("| N | " + " | ".join(present) + " |")
        parts.append("|---|" + "---|" * len(present))
        for n, spec in ns:
            cells = []
            for m in present:
                hit = [c for c in grouped[m] if c[0] == n]
                mark = " ⚠" if (m, n) in flagged else ""
                cells.append(f"{_mean_cell(hit[0][2], hit[0][3], hit[0][4])}{mark}" if hit else "")
            label = f"{n} (all)" if spec == "all" else str(n)
            parts.append(f"| {label} | " + " | ".join(cells) + " |")
        if bad:
            info = metric_info(metric)
            runs = ", ".join(f"{run} ({value:.3g})" for run, value in bad)
            parts.append(
                f"\n⚠ implausible, outside {info.low:g} to {info.high:g} {info.unit}: {runs}. "
                "Check those runs' masks (per-subject values in subjects.jsonl)."
            )
        if metric == metrics[0] and "pretrained" in present:
            for baseline in (m for m in PAIRED_BASELINES if m in present):
                parts.append("\n" + _margin_table(results, metric, baseline))
    return "\n".join(parts) + "\n"


def _margin_table(results: Sequence[dict], metric: str, baseline: str) -> str:
    """pretrained minus baseline, paired by (N, seed): the same draws, so differences pair up."""
    by_cell = {(r["method"], r["n"], r["seed"]): r.get(metric) for r in results}
    lines = [f"pretrained − {baseline}, {metric}, paired by seed:\n", "| N | mean ± std (pairs) |"]
    lines.append("|---|---|")
    for n in sorted({r["n"] for r in results}):
        diffs = [
            by_cell[("pretrained", n, s)] - by_cell[(baseline, n, s)]
            for (m, nn, s) in by_cell
            if m == "pretrained" and nn == n and (baseline, n, s) in by_cell
        ]
        diffs = [d for d in diffs if d is not None and np.isfinite(d)]
        if diffs:
            std = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan")
            lines.append(f"| {n} | {_mean_cell(float(np.mean(diffs)), std, len(diffs), '+')} |")
    return "\n".join(lines)


def _mean_cell(mean: float, std: float, runs: int, sign: str = "") -> str:
    """``mean ± std (runs)``; a NaN std (one run has no spread) shows as ``mean (1)``."""
    spread = "" if np.isnan(std) else f" ± {std:.3f}"
    return f"{mean:{sign}.3f}{spread} ({runs})"


def plot_curves(out: Path, results: Sequence[dict], metrics: Sequence[str]) -> list[Path]:
    """metric against N, one line per method (finetune.plots.metric_vs_n)."""
    from finetune.plots import metric_vs_n

    paths = []
    for metric in metrics:
        grouped = group_rows(results, metric)
        if grouped:
            label = metric_info(metric).label()
            paths.append(metric_vs_n(grouped, out / f"{metric}_vs_n.png", metric, label))
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
