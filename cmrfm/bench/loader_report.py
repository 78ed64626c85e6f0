"""The results of `cmrfm bench loader`: the per-core rate extrapolated to 16 workers against
what one H100 consumes, and the table and lines that print them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from cmrfm.bench.results import machine_caption, ratio_cell

LOADERS = ("shards", "plain")  # the loaders compared, in the table's order
# What one H100 consumes in MAE pretraining: 6,000 clips/s of 16 x 128 x 128 uint8 voxels.
H100_CLIPS_PER_S = 6000
H100_CLIP_VOXELS = 16 * 128 * 128
EXTRAPOLATE_WORKERS = 16


def device_augment_lines(
    device_augment: dict[str, dict[str, Any]],
    extrapolation: dict[str, dict[str, Any]],
    augment: bool,
) -> list[str]:
    """What the device side costs per clip, and the shard loader's per-core rate if this CPU
    had to do it as well (a job without a GPU)."""
    what = "batched augmentation" if augment else "uint8 -> float conversion"
    lines = []
    cpu = device_augment.get("cpu")
    if cpu is not None:
        per_core = extrapolation["shards"]["per_core_clips_per_s"]
        both = 1.0 / (1.0 / per_core + cpu["ms_per_clip"] / 1e3)
        lines.append(
            f"device side ({what}) on this CPU, one thread: {cpu['ms_per_clip']:.2f} ms per clip"
            f" ({cpu['clips_per_s']:.0f} clips/s), {cpu['cpu_ms_per_clip']:.2f} ms of CPU time;"
            f" shards loader + this on one core: {both:.0f} clips/s per core"
        )
    gpu = device_augment.get("cuda")
    if gpu is not None:
        lines.append(
            f"device side on the GPU: {gpu['ms_per_clip'] * 1e3:.1f} µs per clip"
            f" ({gpu['clips_per_s']:,.0f} clips/s)"
        )
    else:
        # Estimate, not a measurement: the work is memory-bound elementwise passes and one
        # grid_sample, ~10 MB of GPU memory traffic per 16 x 128 x 128 clip.
        lines.append(
            "no GPU here to time it: on one it runs batched after the transfer, off the loader"
            " cores (memory-bound, ~10 MB of traffic per 16x128x128 clip: microseconds)"
        )
    return lines


def extrapolate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-core rate x 16 workers against what one H100 consumes, per loader.

    The per-core rate comes from the one-worker run when there is one (a worker on its own core
    while the main process only collects batches), else the best per-worker rate measured. The
    same run's clips per CPU-second give a second estimate that machine load does not lower.
    """
    with_workers = [run for run in runs if run["workers"] >= 1] or list(runs)
    single = [run for run in with_workers if run["workers"] == 1]
    out = {}
    for name in LOADERS:
        source = (
            single[0]
            if single
            else max(with_workers, key=lambda r: r[name]["clips_per_s_per_worker"])
        )
        per_core = source[name]["clips_per_s_per_worker"]
        per_cpu_s = source[name]["clips_per_cpu_s"]
        voxels = math.prod(source[name]["clip_shape"])
        # Another clip size moves the same bytes at a different clip rate.
        target = H100_CLIPS_PER_S * H100_CLIP_VOXELS / voxels
        out[name] = {
            "from_workers": source["workers"],
            "per_core_clips_per_s": per_core,
            "workers": EXTRAPOLATE_WORKERS,
            "clips_per_s": per_core * EXTRAPOLATE_WORKERS,
            "target_clips_per_s": target,
            "meets_target": per_core * EXTRAPOLATE_WORKERS >= target,
            "clips_per_cpu_s": per_cpu_s,
            "clips_per_s_by_cpu": None if per_cpu_s is None else per_cpu_s * EXTRAPOLATE_WORKERS,
        }
    return out


def results_table(result: dict[str, Any]) -> Table:
    """Per worker count and loader: clips/s, MB/s, per worker, per CPU-second, shards/plain.

    The ratio is of wall-clock rates, with the ratio of clips per CPU-second in brackets.
    """
    config = result["config"]
    shape = "x".join(map(str, result["runs"][0]["shards"]["clip_shape"]))
    dtype = result["runs"][0]["shards"]["clip_dtype"].removeprefix("torch.")
    if config.get("augment_on", "loader") == "device":
        after = "augmented" if config["augment"] else "converted"
        augment = f"{dtype}, {after} on the device (below)"
    else:
        augment = f"{dtype}, " + ("augmented in the loader" if config["augment"] else "plain")
    table = Table(title=f"loader: clips of {shape}, batch {config['batch']}, {augment}")
    columns = ("workers", "loader", "clips/s", "MB/s", "per worker", "per CPU·s")
    for column in (*columns, "shards/plain"):
        table.add_column(column, justify="left" if column == "loader" else "right")
    for run in result["runs"]:
        for i, name in enumerate(LOADERS):
            stats = run[name]
            table.add_row(
                str(run["workers"]) if i == 0 else "",
                name,
                f"{stats['clips_per_s']:.0f}",
                f"{stats['mb_per_s']:.0f}",
                f"{stats['clips_per_s_per_worker']:.0f}",
                "?" if stats["clips_per_cpu_s"] is None else f"{stats['clips_per_cpu_s']:.0f}",
                ratio_cell(run["ratio"], run.get("ratio_by_cpu"), cpu_label=" CPU")
                if i == 0
                else "",
            )
        table.add_section()
    table.caption = machine_caption(config)
    return table


def extrapolation_lines(extrapolation: dict[str, dict[str, Any]]) -> list[str]:
    """One line per loader: per-core rate x 16 workers against the H100's appetite."""
    lines = []
    for name, e in extrapolation.items():
        verdict = "meets" if e["meets_target"] else "falls short of"
        line = (
            f"{name}: {e['per_core_clips_per_s']:.0f} clips/s per core"
            f" (workers={e['from_workers']}) x {e['workers']} workers"
            f" = {e['clips_per_s']:,.0f} clips/s, {verdict} the {e['target_clips_per_s']:,.0f}"
            " clips/s one H100 consumes in MAE pretraining"
        )
        if e["clips_per_cpu_s"] is not None:
            line += (
                f"; by CPU time {e['clips_per_cpu_s']:.0f} clips per CPU-second"
                f" x {e['workers']} = {e['clips_per_s_by_cpu']:,.0f} clips/s"
            )
        lines.append(line)
    return lines
