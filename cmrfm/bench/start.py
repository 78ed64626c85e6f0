"""`cmrfm bench start`: how soon the command line answers, against `python -c pass`, in one run.

Three cases, each a fresh process, taking turns in rounds (A B C, C B A, ...) so drifting load
reaches all alike: `python -c pass` (the floor), `cmrfm --help`, and `cmrfm predict` on a
phantom cine, timed to the line it prints when it starts reading the study ("start") and to
its exit ("total"). The goals (issue 14) are 2 s for the help and 4 s for predict's start.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cmrfm.bench.machine import load_average
from cmrfm.bench.results import machine_caption, ratio_cell, show_and_write

GOALS_S = {"help": 2.0, "predict start": 4.0}
START_LINE = "study 1 of 1: reading"  # cmrfm.cli.predict prints it before reading the study


def cmrfm_command() -> list[str]:
    """The installed `cmrfm` script beside this Python, else ``python -m cmrfm.cli``."""
    script = Path(sys.executable).with_name("cmrfm")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "cmrfm.cli"]


def timed_run(command: list[str], marker: str | None = None) -> dict[str, float | None]:
    """Wall seconds of a fresh process to exit ("total") and to the first stdout line that
    starts with ``marker`` ("start", None when it never came). A failing command raises
    RuntimeError with its last error line."""
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    begin = time.perf_counter()
    # stderr joins stdout: one pipe read to the end cannot fill and stall the other
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
    seen, last = None, "no message"
    for line in proc.stdout:  # type: ignore[union-attr]
        if seen is None and marker is not None and line.startswith(marker):
            seen = time.perf_counter() - begin
        last = line.strip() or last
    code = proc.wait()
    total = time.perf_counter() - begin
    if code != 0:
        raise RuntimeError(f"{' '.join(command[-3:])} exited {code}: {last}")
    return {"start": seen, "total": total}


def phantom_inputs(folder: Path, model: Path | None, seed: int) -> tuple[Path, Path]:
    """(study, package): a phantom cine NIfTI (8 slices x 20 frames) and, without ``model``, a
    dense U-Net package with seeded random weights (start-up does not depend on them)."""
    import nibabel as nib
    import numpy as np

    from cmrfm.bench.runtime import build_package
    from data_shards.phantom import PhantomConfig, make_subject

    subject = make_subject(seed, 0, PhantomConfig(slices=8, frames=20, size=96, spacing=1.6))
    image = np.transpose(subject.image, (3, 2, 0, 1)).astype(np.float32)  # (W, H, S, T)
    affine = np.diag([1.6, 1.6, 8.0, 1.0])
    study = folder / "phantom_cine.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), study)
    package = model if model is not None else build_package("dense", folder / "package", seed)
    return study, package


def bench_start(
    *,
    model: Path | None = None,
    rounds: int = 5,
    seed: int = 0,
    out: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Median and fastest seconds of each case over ``rounds``, ratios to `python -c pass`,
    and whether the goals are met; printed as a table and written to ``out`` (JSON)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    console = console or Console()
    config = {"rounds": rounds, "seed": seed, "cpu_count": os.cpu_count(),
              "load_average_before": load_average()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cmrfm-bench-start-") as tmp:
        study, package = phantom_inputs(Path(tmp), model, seed)
        config["model"] = str(model) if model is not None else "built: dense, random weights"
        predict = [*cmrfm_command(), "predict", str(study), "--model", str(package),
                   "--out", str(Path(tmp) / "out")]  # fmt: skip
        cases = {
            "python -c pass": ([sys.executable, "-c", "pass"], None),
            "cmrfm --help": ([*cmrfm_command(), "--help"], None),
            "cmrfm predict": (predict, START_LINE),
        }
        times: dict[str, list[dict]] = {name: [] for name in cases}
        for r in range(rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for name in order:
                times[name].append(timed_run(*cases[name]))
    config["load_average_after"] = load_average()
    result = {"config": config, "rows": summarise_runs(times)}
    show_and_write(result, [results_table(result), machine_caption(config)], out, console)
    return result


def summarise_runs(times: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """One row per (case, what is timed): median and fastest seconds, ratio of the medians to
    `python -c pass`, and the goal with whether the median meets it."""
    floor = statistics.median(t["total"] for t in times["python -c pass"])
    measures = [("python -c pass", "total", None), ("cmrfm --help", "total", "help"),
                ("cmrfm predict", "start", "predict start"), ("cmrfm predict", "total", None)]  # fmt: skip
    rows = []
    for case, what, goal in measures:
        values = [t[what] for t in times[case] if t[what] is not None]
        if not values:
            raise RuntimeError(f"{case} never printed {START_LINE!r}")
        median = statistics.median(values)
        limit = GOALS_S.get(goal) if goal else None
        rows.append({"case": case, "timed": what, "median_s": round(median, 3),
                     "fastest_s": round(min(values), 3), "vs_python": round(median / floor, 2),
                     "goal_s": limit, "met": None if limit is None else median <= limit})  # fmt: skip
    return rows


def results_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"start-up, {result['config']['rounds']} rounds (fresh processes)")
    for column in ("case", "timed to", "median s", "fastest s", "x python -c pass", "goal"):
        table.add_column(column)
    for row in result["rows"]:
        goal = "–" if row["goal_s"] is None else (
            f"<= {row['goal_s']:g} s: " + ("met" if row["met"] else "MISSED"))  # fmt: skip
        table.add_row(row["case"], "first line of work" if row["timed"] == "start" else "exit",
                      f"{row['median_s']:.2f}", f"{row['fastest_s']:.2f}",
                      ratio_cell(row["vs_python"], times=True), goal)  # fmt: skip
    return table
