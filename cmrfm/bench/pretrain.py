"""`cmrfm bench pretrain`: clips/s and MFU of the MAE pretraining step, the Lightning system
against a bare PyTorch loop over the same model and batch; eager and compiled, masked and not,
under DDP and DeepSpeed ZeRO-2.

Every run trains a fresh model (same seed) on one synthetic batch of clips (B, 1, F, H, W) that
stays on the device, so data loading is not measured. The first ``warmup`` steps (compilation,
the system's FLOP count, allocator warm-up) are not timed; the window is the same in both loops:
from the start of step ``warmup`` to the end of the last step, with the device synchronised at
both ends (CUDA events on a GPU).

* bare: ``create_backbone`` + ``create_objective("mae")``, AdamW over the system's parameter
  groups, autocast for bf16-mixed; forward, backward, step, zero_grad.
* lightning: ``pretext.system.PretrainSystem`` (the same model and optimizer, plus its schedule,
  per-step seeding, non-finite check and logging) in a one-device Trainer under each strategy,
  timed by a callback (on_train_batch_start .. on_train_batch_end); no logger, progress bar or
  checkpoints.

All runs take turns in rounds (A B C, C B A, ...), so drifting machine load reaches all alike.
FLOPs per step (forward + backward: matmuls, convolutions, attention) are counted once per mask
ratio on an eager model (``foundation.flops``); MFU = FLOPs/step x steps/s / peak.

This module holds the entry point (the options are in ``pretrain_options``); the cases are in ``pretrain_cases``, the
timed runs in ``pretrain_runs``, the rows, ratios and tables in ``pretrain_report``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from cmrfm.bench.machine import load_average, torch_threads
from cmrfm.bench.pretrain_cases import PRECISIONS, STRATEGIES, Setup, plan
from cmrfm.bench.pretrain_options import DEFAULTS, PRESETS, resolve_options
from cmrfm.bench.pretrain_report import (
    compare,
    comparisons_table,
    overhead_lines,
    pretrain_run_row,
    runs_table,
)
from cmrfm.bench.pretrain_runs import compile_unavailable, count_flops, make_batch, measure_cases
from cmrfm.bench.results import show_and_write
from foundation.flops import peak_tflops

H100_BF16_TFLOPS = 989.0  # dense, no sparsity: the MFU peak on an unknown CUDA card
__all__ = ["DEFAULTS", "PRESETS", "bench_pretrain", "resolve_options"]


def bench_pretrain(
    *,
    backbone: str = DEFAULTS["backbone"],
    frames: int = DEFAULTS["frames"],
    size: int = DEFAULTS["size"],
    patch: int = DEFAULTS["patch"],
    tubelet: int = DEFAULTS["tubelet"],
    batch: int = DEFAULTS["batch"],
    steps: int = DEFAULTS["steps"],
    warmup: int = DEFAULTS["warmup"],
    mask: float = DEFAULTS["mask"],
    precision: str = DEFAULTS["precision"],
    decoder_dim: int = DEFAULTS["decoder_dim"],
    decoder_depth: int = DEFAULTS["decoder_depth"],
    decoder_heads: int = DEFAULTS["decoder_heads"],
    compile: bool = True,
    strategies: Sequence[str] | str = ("ddp", "deepspeed_stage_2"),
    peak_tflops: float | None = None,
    rounds: int = 2,
    threads: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    out: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measure every run, print the tables, return the results.

    Args:
        backbone, patch, tubelet: the registered backbone and its tubelet embedding.
        frames, size, batch: the synthetic clips (batch, 1, frames, size, size).
        steps, warmup: timed steps per run and round, after ``warmup`` untimed ones.
        mask: MAE mask ratio; every configuration also runs at 0 (no masking) when it is not 0.
        precision: "32-true" or "bf16-mixed" (autocast in the bare loop).
        decoder_dim, decoder_depth, decoder_heads: the MAE decoder.
        compile: also measure every configuration with ``torch.compile``d backbone blocks.
        strategies: Lightning strategies, one device each (a comma-separated string or names
            from STRATEGIES); the first is the one the bare loop is mainly compared with.
        peak_tflops: the device's peak for MFU; None: a known CUDA card's dense bf16 peak
            (H100's 989 for an unknown card), and no MFU on a CPU.
        rounds: each run is measured this many times, the order reversed every round.
        threads: torch threads on a CPU (default 1: one core per run, as ``bench loader``);
            ignored on a GPU.
        seed: model initialisation and the synthetic batch.
        device: default: CUDA when available, else the CPU.
        out: a JSON file for the results (not written when None).
        console: where the tables go (default: a new stdout console).

    Returns:
        ``{"config", "runs": [{id, loop, strategy, compile, mask, status ("ok", "skipped",
        "failed"), reason, steps, seconds, cpu_seconds, clips_per_s, ms_per_step,
        clips_per_cpu_s, rounds_clips_per_s, flops_per_step, system_flops_per_step,
        tflops_per_s, mfu, max_memory_gb}], "comparisons": [{kind, name, compile, numerator,
        denominator, ratio, ratio_by_cpu, goal, reason}], "notes": [...]}``.
    """
    console = console or Console()
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    strategies = list(dict.fromkeys(strategies))
    _check(strategies, precision, mask, steps, warmup, rounds, threads)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    setup = Setup(backbone, frames, size, patch, tubelet, batch, steps, warmup, precision,
                  decoder_dim, decoder_depth, decoder_heads, seed)  # fmt: skip
    peak, peak_note = resolve_peak(peak_tflops, device)
    no_compile = compile_unavailable(device) if compile else None
    masks = [mask] if mask == 0 else [mask, 0.0]
    cases = plan(strategies, [False, True] if compile else [False], masks)
    threads = (threads or 1) if device.type == "cpu" else None
    config = {
        **asdict(setup),
        "mask": mask,
        "compile": compile,
        "strategies": strategies,
        "rounds": rounds,
        "device": _device_name(device),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_tflops": peak,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
    }
    with torch_threads(threads, omp_env=True):
        batch_data = make_batch(setup, device)
        flops = {m: count_flops(setup, m, batch_data) for m in masks}
        totals = measure_cases(cases, setup, batch_data, peak, rounds, no_compile, console)
    config["load_average_after"] = load_average()
    runs = [
        pretrain_run_row(case, totals[case], setup.batch, flops[case.mask], peak) for case in cases
    ]
    notes = [peak_note]
    if no_compile:
        notes.append(f"torch.compile skipped: {no_compile}")
    result = {
        "config": config,
        "runs": runs,
        "comparisons": compare(runs, strategies, compile, mask),
        "notes": notes,
    }
    tables = [runs_table(result), comparisons_table(result)]
    show_and_write(result, [*tables, *overhead_lines(result["comparisons"]), *notes], out, console)
    return result


def _check(
    strategies: Sequence[str],
    precision: str,
    mask: float,
    steps: int,
    warmup: int,
    rounds: int,
    threads: int | None,
) -> None:
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"strategies must be names from {list(STRATEGIES)}, got {strategies}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not 0.0 <= mask < 1.0:
        raise ValueError(f"mask must be in [0, 1), got {mask}")
    if steps < 1 or warmup < 1 or rounds < 1:
        # warmup >= 1: the first step compiles and the system counts its FLOPs there.
        raise ValueError(f"steps, warmup and rounds must be >= 1, got {steps}, {warmup}, {rounds}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


def resolve_peak(peak: float | None, device: torch.device) -> tuple[float | None, str]:
    """The peak TFLOP/s that MFU is measured against, and a note saying where it comes from."""
    if peak is not None:
        return peak, f"MFU against {peak:g} TFLOP/s (--peak-tflops)"
    if device.type != "cuda":
        return None, "MFU: no peak for a CPU; pass --peak-tflops to get it"
    name = _device_name(device)
    known = peak_tflops(device)
    if known is not None:
        return known, f"MFU against the {name}'s dense bf16 peak, {known:g} TFLOP/s"
    return H100_BF16_TFLOPS, (
        f"MFU against an H100's dense bf16 peak ({H100_BF16_TFLOPS:g} TFLOP/s): {name} is not in"
        " foundation.flops.PEAK_TFLOPS; pass --peak-tflops for its own"
    )


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
