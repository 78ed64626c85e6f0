"""`cmrfm bench runtime`: seconds to segment one study with a fine-tuned package under torch,
onnxruntime (``model.onnx``) and onnxruntime int8 (``model.int8.onnx``), as ratios to torch in
one run.

What is timed is the model step of `cmrfm predict`: ``finetune.evaluate.predict_study`` over
the whole study on the model's grid (clips of the package's length, ``batch`` clips a forward
pass, with the entropy predict asks for), the same code for every runtime (cmrfm.onnx_model's
OnnxSegmenter stands in for the torch module). The study is a phantom cine of ``slices`` x
``frames`` preprocessed as the package says.

Packages are exported into a temporary copy (the given folders are not written to). Without
``models``, one package per ``archs`` entry is built with random weights (speed does not depend
on the weights; agreement with torch then says little). Every runtime first runs once untimed;
then all take turns in rounds (A B C, C B A, ...), so drifting machine load reaches all alike.
Wall-clock and CPU time are both kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from cmrfm.bench.machine import load_average, torch_threads
from cmrfm.bench.results import machine_caption, ratio_cell, show_and_write
from data_shards.preprocess import PreprocessConfig
from foundation.names import CONFIG_NAME, WEIGHTS_NAME

RUNTIMES = ("torch", "onnx", "onnx-int8")
DEFAULT_ARCHS = ("unet", "light")
# Packages built for the benchmark without --model: what runs/ fine-tunes on a CPU (ACDC at
# 1.5 mm, 128 x 128: PreprocessConfig's defaults; clips of 2 frames; the light decoder on
# cmr_vit_tiny, patch 16).
BUILT_PREPROCESS = PreprocessConfig().to_dict()
BUILT_FRAMES = 2
VIT = {"backbone": "cmr_vit_tiny", "patch_size": 16, "tubelet": 2}
BUILT_ARGS = {"unet": {}, "dense": {"backbone": "cmr_unet_small"}, "light": VIT, "unetr": VIT}


def bench_runtime(
    *,
    models: Sequence[Path] | None = None,
    archs: Sequence[str] = DEFAULT_ARCHS,
    slices: int = 10,
    frames: int = 30,
    batch: int = 16,
    rounds: int = 3,
    threads: int = 1,
    seed: int = 0,
    int8_ops: Sequence[str] = ("MatMul", "Conv"),
    out: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Time the three runtimes on each package, print the table, return the results.

    Args:
        models: fine-tuned package folders; None: one built per ``archs`` entry.
        archs: SegFinetuner archs of the built packages ("unet", "light", "unetr", "dense").
        slices, frames: the phantom study (S, T), before preprocessing.
        batch: clips per forward pass (predict's --batch).
        rounds: timed runs per runtime; the order reverses every round.
        threads: torch and onnxruntime threads (default 1: one core, as the other benches).
        seed: the phantom and the built packages' weights.
        int8_ops: the op types the int8 model quantises (cmrfm.onnx_model.export_onnx).
        out: a JSON file for the results (not written when None).

    Returns:
        ``{"config", "rows": [{package, arch, runtime, file_mb, load_s, seconds (per run),
        cpu_seconds, s_per_study, cpu_s_per_study, ratio, ratio_cpu, agreement}]}``; ratios
        divide by the torch row of the same package, agreement is the fraction of voxels whose
        label equals torch's.
    """
    console = console or Console()
    if rounds < 1 or threads < 1 or batch < 1 or slices < 1 or frames < 1:
        raise ValueError(
            f"rounds, threads, batch, slices and frames must be >= 1, got rounds={rounds}, "
            f"threads={threads}, batch={batch}, slices={slices}, frames={frames}"
        )
    config: dict[str, Any] = {
        "models": [str(m) for m in models] if models else None,
        "archs": None if models else list(archs),
        "study_st": [slices, frames],
        "batch": batch,
        "rounds": rounds,
        "seed": seed,
        "int8_ops": list(int8_ops),
        "torch": torch.__version__,
        "onnxruntime": _onnxruntime_version(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
    }
    rows: list[dict[str, Any]] = []
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="bench_runtime_") as tmp:
        config["threads"] = torch.get_num_threads()
        sources = list(models) if models else [None] * len(archs)
        for i, source in enumerate(sources):
            folder = Path(tmp) / f"package{i}"
            if source is None:
                build_package(archs[i], folder, seed)
            else:
                copy_package(Path(source), folder)
            with console.status(f"exporting {source or archs[i]} to ONNX and int8"):
                from cmrfm.onnx_model import export_onnx

                export_onnx(folder, int8=True, int8_ops=int8_ops)
            with console.status(f"timing {source or archs[i]}: 3 runtimes x {rounds} rounds"):
                rows += measure_package(folder, str(source or f"built {archs[i]}"), slices,
                                        frames, batch, rounds, seed)  # fmt: skip
    config["load_average_after"] = load_average()
    result = {"config": config, "rows": rows}
    show_and_write(result, [results_table(result)], out, console)
    return result


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def build_package(arch: str, folder: Path, seed: int) -> Path:
    """A package of ``SegFinetuner(arch=arch)`` with seeded random weights, as runs/ packages
    are shaped (BUILT_PREPROCESS, BUILT_FRAMES)."""
    from finetune.package import save_finetuned
    from finetune.system import SegFinetuner

    if arch not in BUILT_ARGS:
        raise ValueError(f"arch {arch!r}: choose one of {list(BUILT_ARGS)}")
    torch.manual_seed(seed)
    model = SegFinetuner(arch=arch, **BUILT_ARGS[arch]).eval()
    return save_finetuned(model, folder, preprocess=BUILT_PREPROCESS, frames=BUILT_FRAMES)


def copy_package(source: Path, folder: Path) -> Path:
    """config.json and model.safetensors of a package (its ONNX records dropped on export)."""
    from finetune.package import read_package_config

    read_package_config(source)  # errors name the folder
    folder.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy2(source / name, folder / name)
    return folder


def phantom_study(slices: int, frames: int, preprocess: dict[str, Any], seed: int) -> np.ndarray:
    """A phantom cine (S, T) on the model's grid: uint8 (S, T, size, size)."""
    from data_shards.phantom import PhantomConfig, make_subject
    from data_shards.preprocess import PreprocessConfig
    from data_shards.preprocess import preprocess as prepare

    pre = PreprocessConfig.from_dict(preprocess, "bench runtime")
    size = max(32, int(pre.size))
    subject = make_subject(seed, 0, PhantomConfig(slices=slices, frames=frames, size=size,
                                                  spacing=float(pre.spacing or 1.5)))  # fmt: skip
    return prepare(subject, pre).image


def measure_package(
    folder: Path, name: str, slices: int, frames: int, batch: int, rounds: int, seed: int
) -> list[dict[str, Any]]:
    """One row per runtime of one exported package (see bench_runtime)."""
    from cmrfm.onnx_model import RUNTIMES as FILES
    from cmrfm.onnx_model import load_onnx
    from finetune.evaluate import predict_study
    from finetune.package import load_finetuned

    models, load_s = {}, {}
    for runtime in RUNTIMES:
        start = time.perf_counter()
        if runtime == "torch":
            models[runtime], config = load_finetuned(folder)
        else:
            models[runtime], _ = load_onnx(folder, runtime)
        load_s[runtime] = time.perf_counter() - start
    image = phantom_study(slices, frames, config["preprocess"], seed)
    clip = int(config["frames"])
    label_maps, seconds, cpu = {}, {r: [] for r in RUNTIMES}, {r: [] for r in RUNTIMES}
    for runtime in RUNTIMES:  # untimed: lazy initialisation, allocations
        label_maps[runtime], _ = predict_study(
            models[runtime], image, clip, batch=batch, entropy=True
        )
    for r in range(rounds):
        for runtime in RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]:
            start, cpu_start = time.perf_counter(), time.process_time()
            predict_study(models[runtime], image, clip, batch=batch, entropy=True)
            seconds[runtime].append(time.perf_counter() - start)
            cpu[runtime].append(time.process_time() - cpu_start)
    base_wall, base_cpu = float(np.mean(seconds["torch"])), float(np.mean(cpu["torch"]))
    rows = []
    for runtime in RUNTIMES:
        file = folder / (FILES[runtime] or WEIGHTS_NAME)
        wall, cpu_s = float(np.mean(seconds[runtime])), float(np.mean(cpu[runtime]))
        rows.append({
            "package": name,
            "arch": config["model"]["init_args"].get("arch"),
            "runtime": runtime,
            "file": file.name,
            "file_mb": file.stat().st_size / 1e6,
            "load_s": load_s[runtime],
            "study_model_grid": [int(n) for n in image.shape],
            "clips": int(image.shape[0] * -(-image.shape[1] // clip)),
            "seconds": seconds[runtime],
            "cpu_seconds": cpu[runtime],
            "s_per_study": wall,
            "cpu_s_per_study": cpu_s,
            "ratio": wall / base_wall,
            "ratio_cpu": cpu_s / base_cpu if base_cpu > 0 else None,
            "agreement": float(np.mean(label_maps[runtime] == label_maps["torch"])),
        })  # fmt: skip
    return rows


def results_table(result: dict[str, Any]) -> Table:
    """Per package and runtime: file size, load time, seconds per study (wall, CPU), their
    ratios to torch, and label agreement with torch."""
    config = result["config"]
    s, t = config["study_st"]
    table = Table(title=f"segmenting one {s} x {t} study: torch vs onnxruntime vs int8")
    for column in ("package", "runtime", "file MB", "load s", "s/study", "CPU s", "ratio",
                   "by CPU", "same labels"):  # fmt: skip
        if column == "runtime":
            table.add_column(column, no_wrap=True)
        elif column == "package":  # the folder's name; the JSON has the path
            table.add_column(column, max_width=28)
        else:
            table.add_column(column, justify="right")
    package = None
    for row in result["rows"]:
        if row["package"] != package:
            table.add_section()
            package = row["package"]
        table.add_row(
            _package_cell(row) if row["runtime"] == "torch" else "",
            row["runtime"],
            f"{row['file_mb']:.1f}",
            f"{row['load_s']:.2f}",
            f"{row['s_per_study']:.2f}",
            f"{row['cpu_s_per_study']:.2f}",
            ratio_cell(row["ratio"]),
            ratio_cell(row["ratio_cpu"]),
            f"{row['agreement']:.4f}",
        )
    table.caption = (
        f"ratio: seconds per study over torch's, by wall-clock and by CPU time; {config['rounds']}"
        f" rounds after one untimed run; batch {config['batch']}; int8 quantises "
        f"{'+'.join(config['int8_ops'])}; {config['threads']} threads "
        f"(torch and onnxruntime), {machine_caption(config)}"
    )
    return table


def _package_cell(row: dict[str, Any]) -> str:
    built = row["package"].startswith("built ")
    return row["package"] if built else f"{Path(row['package']).name} ({row['arch']})"
