"""Result figures as PNG: Bland-Altman agreement, metric against labelled subjects, confusion.

Each `*_figure` builds a matplotlib Figure (Agg canvas, no pyplot state, safe in any process);
the plain function writes it to `path` and returns the path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from finetune.metrics import agreement


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def bland_altman_figure(
    pred: Sequence[float], true: Sequence[float], title: str = "", units: str = ""
) -> Figure:
    """Mean of each pair against its difference (pred - true), with bias and 95% limits lines."""
    p, t = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    keep = ~(np.isnan(p) | np.isnan(t))
    p, t = p[keep], t[keep]
    stats = agreement(p, t)
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter((p + t) / 2, p - t, s=18, alpha=0.8, color="tab:blue")
    unit = f" ({units})" if units else ""
    lines = (("bias", stats["bias"], "-"), ("-1.96 SD", stats["loa_low"], "--"))
    lines += (("+1.96 SD", stats["loa_high"], "--"),)
    for name, y, style in lines:
        if np.isfinite(y):
            ax.axhline(y, color="tab:red" if name == "bias" else "grey", linestyle=style)
            ax.annotate(
                f"{name} {y:+.2f}",
                (1.0, y),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                fontsize=8,
            )
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel(f"mean of predicted and true{unit}")
    ax.set_ylabel(f"predicted - true{unit}")
    r = f", r = {stats['r']:.2f}" if np.isfinite(stats["r"]) else ""
    ax.set_title(f"{title} (n = {stats['n']}, MAE {stats['mae']:.2f}{r})".strip())
    return fig


def bland_altman(
    pred: Sequence[float], true: Sequence[float], path: str | Path, title: str = "", units: str = ""
) -> Path:
    """Write the Bland-Altman plot of paired values (NaN pairs dropped) to path (PNG)."""
    return _save(bland_altman_figure(pred, true, title, units), path)


def _series(table: Mapping[str, Sequence[Sequence]] | Sequence[Mapping], metric: str) -> dict:
    """{method: [(n, tick label, mean, std)]} from a mapping or from result-table rows.

    A mapping gives per method points (n, mean, std), n an int or "all", or (n, spec, mean, std,
    ...) with n the subject count and spec its label ("all" or the count as text). A row is a
    mapping with "method", "n" and either `{metric}_mean` and `{metric}_std` or "mean" and "std".
    """
    if not isinstance(table, Mapping):
        grouped: dict[str, list] = {}
        for row in table:
            mean = row.get(f"{metric}_mean", row.get("mean"))
            std = row.get(f"{metric}_std", row.get("std"))
            std = float("nan") if std in (None, "") else std  # one run: no spread
            if mean is None:
                raise KeyError(f"result row {dict(row)} has neither {metric}_mean nor mean")
            grouped.setdefault(str(row["method"]), []).append((row["n"], float(mean), float(std)))
        table = grouped
    out: dict[str, list[tuple[int | str, str, float, float]]] = {}
    for method, points in table.items():
        for point in points:
            n, spec, mean, std = (
                (point[0], str(point[0]), *point[1:3]) if len(point) == 3 else point[:4]
            )
            out.setdefault(str(method), []).append((n, str(spec), float(mean), float(std)))
    return out


def metric_vs_n_figure(
    table: Mapping[str, Sequence[Sequence]] | Sequence[Mapping], metric: str, ylabel: str = ""
) -> Figure:
    """One line per method of a metric's mean +- std against N labelled subjects (log x axis).

    Ticks sit at the N values, labelled with their spec ("all" at its subject count); an N given
    only as "all" sits at twice the largest numeric N.
    """
    series = _series(table, metric)
    numeric = [int(n) for pts in series.values() for n, *_ in pts if n != "all"]
    all_at = 2.0 * max(numeric) if numeric else 1.0
    ticks: dict[float, str] = {}
    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, points in series.items():
        xs = [all_at if n == "all" else float(n) for n, *_ in points]
        order = np.argsort(xs, kind="stable")
        for k in order:
            ticks.setdefault(xs[k], points[k][1])
        means, stds = [points[k][2] for k in order], [points[k][3] for k in order]
        ax.errorbar([xs[k] for k in order], means, yerr=stds, label=method, marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
    ax.minorticks_off()
    ax.set_xlabel("labelled subjects (N)")
    ax.set_ylabel(ylabel or metric)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def metric_vs_n(
    table: Mapping[str, Sequence[Sequence]] | Sequence[Mapping],
    path: str | Path,
    metric: str,
    ylabel: str = "",
) -> Path:
    """Write the metric-against-N plot (see `metric_vs_n_figure`) to path (PNG)."""
    return _save(metric_vs_n_figure(table, metric, ylabel), path)


def confusion_matrix_figure(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str = ""
) -> Figure:
    """Counts with rows = true class, columns = predicted class, each cell annotated."""
    counts = np.asarray(confusion, dtype=int)
    fig = Figure(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.7 * len(classes)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues", vmin=0)
    high = counts.max() / 2 if counts.size else 0
    for (i, j), c in np.ndenumerate(counts):
        ax.text(j, i, str(c), ha="center", va="center", color="white" if c > high else "black")
    ticks = range(len(classes))
    ax.set_xticks(ticks, [str(c) for c in classes])
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def confusion_matrix_plot(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write the confusion matrix plot to path (PNG)."""
    return _save(confusion_matrix_figure(confusion, classes, title), path)
