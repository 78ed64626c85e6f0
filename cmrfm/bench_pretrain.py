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
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from cmrfm.bench_loader import write_result
from foundation.flops import flop_counter, peak_tflops
from foundation.optim import no_weight_decay_names, param_groups
from foundation.registry import create_backbone
from pretext import create_objective
from pretext.system import PretrainSystem

STRATEGIES = ("auto", "ddp", "deepspeed_stage_2", "deepspeed_stage_3")
SHORT = {
    "auto": "single",
    "ddp": "ddp",
    "deepspeed_stage_2": "zero-2",
    "deepspeed_stage_3": "zero-3",
}
PRECISIONS = ("32-true", "bf16-mixed")
H100_BF16_TFLOPS = 989.0  # dense, no sparsity: the MFU peak on an unknown CUDA card
GOALS = {"loop": 0.95, "masking": 4.0, "mfu": 0.40}  # issue 4: Lightning/bare, 90%/0%, compiled
# Model and batch settings, and what --preset changes; explicit options override both.
DEFAULTS: dict[str, Any] = {
    "backbone": "cmr_vit_test",
    "frames": 4,
    "size": 32,
    "patch": 8,
    "tubelet": 2,
    "batch": 8,
    "steps": 20,
    "warmup": 3,
    "mask": 0.9,
    "precision": "32-true",
    "decoder_dim": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
}
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    # ViT-B on 16 x 128 x 128 clips with the decoder of configs/pretrain_mae_deepspeed2.yaml;
    # more warm-up: compilation and the cuDNN/cuBLAS autotuning settle in the first steps.
    "h100": {
        "backbone": "cmr_vit_base",
        "frames": 16,
        "size": 128,
        "patch": 16,
        "tubelet": 2,
        "batch": 64,
        "steps": 30,
        "warmup": 10,
        "mask": 0.9,
        "precision": "bf16-mixed",
        "decoder_dim": 384,
        "decoder_depth": 4,
        "decoder_heads": 6,
    },
}


def resolve_options(preset: str | None = None, **given: Any) -> dict[str, Any]:
    """DEFAULTS, then the preset's values, then every option in ``given`` that is not None."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {sorted(DEFAULTS)}")
    chosen = {k: v for k, v in given.items() if v is not None}
    return {**DEFAULTS, **PRESETS.get(preset or "cpu", {}), **chosen}


@dataclass(frozen=True)
class Setup:
    """What every run shares: model, clip and batch sizes, precision, step counts."""

    backbone: str
    frames: int
    size: int
    patch: int
    tubelet: int
    batch: int
    steps: int
    warmup: int
    precision: str
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    seed: int = 0

    def backbone_kwargs(self, compile: bool) -> dict[str, Any]:
        return {"patch_size": self.patch, "tubelet": self.tubelet, "compile": compile}

    def objective_kwargs(self, mask: float) -> dict[str, Any]:
        return {
            "mask_ratio": mask,
            "decoder_dim": self.decoder_dim,
            "decoder_depth": self.decoder_depth,
            "decoder_heads": self.decoder_heads,
        }


@dataclass(frozen=True)
class Case:
    """One measured configuration: loop ("bare" or "lightning"), strategy, compile, mask ratio."""

    loop: str
    strategy: str | None
    compile: bool
    mask: float

    @property
    def label(self) -> str:
        return "bare" if self.loop == "bare" else f"lightning {SHORT[self.strategy]}"

    @property
    def id(self) -> str:
        return f"{self.label}, {'compiled' if self.compile else 'eager'}, mask {self.mask:g}"


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
        "load_average_before": list(os.getloadavg()),
    }
    with _threads(threads):
        batch_data = make_batch(setup, device)
        flops = {m: count_flops(setup, m, batch_data) for m in masks}
        totals = measure_cases(cases, setup, batch_data, peak, rounds, no_compile, console)
    config["load_average_after"] = list(os.getloadavg())
    runs = [summarise(case, totals[case], setup.batch, flops[case.mask], peak) for case in cases]
    notes = [peak_note]
    if no_compile:
        notes.append(f"torch.compile skipped: {no_compile}")
    result = {
        "config": config,
        "runs": runs,
        "comparisons": compare(runs, strategies, compile, mask),
        "notes": notes,
    }
    console.print(runs_table(result))
    console.print(comparisons_table(result))
    for line in [*overhead_lines(result["comparisons"]), *notes]:
        console.print(line)
    if out is not None:
        write_result(result, out)
        console.print(f"wrote {out}")
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


def plan(strategies: Sequence[str], compiles: Sequence[bool], masks: Sequence[float]) -> list[Case]:
    """Every loop (bare, then Lightning per strategy) x compile x mask, in measuring order."""
    loops = [("bare", None), *(("lightning", s) for s in strategies)]
    return [Case(loop, s, c, m) for c in compiles for m in masks for loop, s in loops]


# --- what can run here ---------------------------------------------------------------------


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on this device, or None when it can.

    Inductor builds C++ kernels on a CPU (a C++ compiler) and Triton kernels on a GPU.
    """
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (torch.compile's GPU backend): pip install triton"
        return None
    compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(name and shutil.which(name) for name in compilers):
        return (
            "no C++ compiler (g++, clang++ or $CXX) for torch.compile's CPU backend: install one"
            " (apt-get install g++) or pass --no-compile"
        )
    return None


def strategy_unavailable(name: str) -> str | None:
    """Why a strategy cannot run in this environment, or None when it can (as far as known)."""
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed: pip install deepspeed"
    return None


def make_strategy(name: str) -> Any:
    """A Lightning strategy for one device; DeepSpeed through cmrfm.strategies (CPU too)."""
    if name == "auto":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy()
    from cmrfm.strategies import DeepSpeed

    return DeepSpeed(stage=int(name.rsplit("_", 1)[1]))


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


# --- the model, the batch, the FLOPs -------------------------------------------------------


def make_batch(setup: Setup, device: torch.device) -> dict[str, Any]:
    """{"clip": float32 (B, 1, F, H, W) uniform in [0, 1) on device, "modality": ["cine"] * B}."""
    generator = torch.Generator().manual_seed(setup.seed)
    shape = (setup.batch, 1, setup.frames, setup.size, setup.size)
    clip = torch.rand(shape, generator=generator).to(device)
    return {"clip": clip, "modality": ["cine"] * setup.batch}


def build_model(setup: Setup, mask: float, compile: bool = False) -> nn.Module:
    """The backbone inside the MAE objective, as PretrainSystem builds it (same seed)."""
    torch.manual_seed(setup.seed)
    encoder = create_backbone(setup.backbone, **setup.backbone_kwargs(compile))
    return create_objective("mae", encoder, **setup.objective_kwargs(mask))


def count_flops(setup: Setup, mask: float, batch: dict[str, Any]) -> float:
    """FLOPs of one forward + backward of the eager model on batch (compiling changes none)."""
    device = batch["clip"].device
    model = build_model(setup, mask).to(device).train()
    with flop_counter() as counter:
        with _autocast(setup.precision, device):
            loss = model(batch)["loss"]
        loss.backward()
    return float(counter.get_total_flops())


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- timing --------------------------------------------------------------------------------


class Clock:
    """Wall and CPU seconds of one window; on a GPU, CUDA events after a device sync."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None
        self._wall = self._cpu = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # work queued before the window stays out
            self._events = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )
            self._events[0].record()
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        """(seconds, CPU seconds of this process) since start, the device's work finished."""
        if self._events is not None:
            self._events[1].record()
            torch.cuda.synchronize(self.device)
            seconds = self._events[0].elapsed_time(self._events[1]) / 1e3
        else:
            seconds = time.perf_counter() - self._wall
        return seconds, time.process_time() - self._cpu


class StepWindow(L.Callback):
    """Times Lightning steps ``warmup`` to ``last`` (batch indices of one epoch): from the start
    of the first to the end of the last, as the bare loop's window."""

    def __init__(self, warmup: int, last: int, device: torch.device) -> None:
        self.warmup, self.last, self.clock = warmup, last, Clock(device)
        self.steps = 0  # steps ended inside the window
        self.seconds: float | None = None  # set when the window closes
        self.cpu_seconds: float | None = None
        self._open = False

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        if idx == self.warmup:
            self.clock.start()
            self._open = True

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
        if not self._open:
            return
        self.steps += 1
        if idx == self.last:
            self.seconds, self.cpu_seconds = self.clock.stop()
            self._open = False


class SameBatch:
    """An iterable yielding one batch n times (a train dataloader with nothing to load)."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for _ in range(self.n):
            yield self.batch


class SameBatchData(L.LightningDataModule):
    """One batch, n times; ``batch_size`` as the system's learning-rate scaling reads it."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        super().__init__()
        self.batch, self.n, self.batch_size = batch, n, len(batch["clip"])

    def train_dataloader(self) -> SameBatch:
        return SameBatch(self.batch, self.n)


def run_bare(setup: Setup, case: Case, batch: dict[str, Any]) -> dict[str, Any]:
    """Forward, backward, AdamW step, zero_grad: ``warmup`` steps, then ``steps`` timed."""
    device = batch["clip"].device
    model = build_model(setup, case.mask, case.compile).to(device).train()
    groups = param_groups(model.named_parameters(), 0.05, 1.5e-4, no_weight_decay_names(model))
    # As the system's optimizer: fused on a GPU.
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], betas=(0.9, 0.95), fused=fused
    )
    clock = Clock(device)
    for step in range(setup.warmup + setup.steps):
        if step == setup.warmup:
            clock.start()
        with _autocast(setup.precision, device):
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds, cpu_seconds = clock.stop()
    return {"steps": setup.steps, "seconds": seconds, "cpu_seconds": cpu_seconds}


def run_lightning(
    setup: Setup, case: Case, batch: dict[str, Any], peak: float | None = None
) -> dict[str, Any]:
    """PretrainSystem in a one-device Trainer under case.strategy, timed by a callback."""
    device = batch["clip"].device
    torch.manual_seed(setup.seed)
    module = PretrainSystem(
        setup.backbone,
        setup.backbone_kwargs(case.compile),
        "mae",
        setup.objective_kwargs(case.mask),
        scale_lr=False,
        peak_tflops=peak,
    )
    total = setup.warmup + setup.steps
    window = StepWindow(setup.warmup, total - 1, device)
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as root:
        trainer = L.Trainer(
            accelerator=device.type,
            devices=[device.index or 0] if device.type == "cuda" else 1,
            strategy=make_strategy(case.strategy or "auto"),
            precision=setup.precision,
            max_steps=total,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[window],
            default_root_dir=root,
        )
        trainer.fit(module, datamodule=SameBatchData(batch, total))
    if window.seconds is None:
        raise RuntimeError(
            f"the run stopped at step {trainer.global_step} of {total}: the window never closed"
        )
    return {
        "steps": window.steps,
        "seconds": window.seconds,
        "cpu_seconds": window.cpu_seconds,
        "system_flops_per_step": module.flops_per_batch,
    }


def measure_cases(
    cases: Sequence[Case],
    setup: Setup,
    batch: dict[str, Any],
    peak: float | None,
    rounds: int,
    no_compile: str | None,
    console: Console,
) -> dict[Case, dict[str, Any]]:
    """Run every case ``rounds`` times, the order reversed every round; sum steps and seconds.

    A case that cannot run here is "skipped" with the reason; one that raises is "failed" with
    the error and not run again.
    """
    totals: dict[Case, dict[str, Any]] = {}
    for case in cases:
        reason = no_compile if case.compile else None
        if reason is None and case.strategy is not None:
            reason = strategy_unavailable(case.strategy)
        totals[case] = {
            "status": "skipped" if reason else "ok",
            "reason": reason,
            "steps": 0,
            "seconds": 0.0,
            "cpu_seconds": 0.0,
            "rounds_clips_per_s": [],
            "system_flops_per_step": None,
            "max_memory_gb": None,
        }
    cuda = batch["clip"].device.type == "cuda"
    for r in range(rounds):
        for case in cases if r % 2 == 0 else cases[::-1]:
            total = totals[case]
            if total["status"] != "ok":
                continue
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with console.status(f"round {r + 1}/{rounds}: {case.id}"), _quiet():
                try:
                    if case.loop == "bare":
                        measured = run_bare(setup, case, batch)
                    else:
                        measured = run_lightning(setup, case, batch, peak)
                except Exception as error:  # a run that cannot run here: its row says why
                    total["status"], total["reason"] = "failed", describe(error)
                    continue
                finally:
                    gc.collect()  # the previous run's model, optimizer state and engine
                    if cuda:
                        torch.cuda.empty_cache()
            for key in ("steps", "seconds", "cpu_seconds"):
                total[key] += measured[key]
            total["rounds_clips_per_s"].append(
                setup.batch * measured["steps"] / measured["seconds"]
            )
            total["system_flops_per_step"] = measured.get("system_flops_per_step")
            if cuda:
                memory = torch.cuda.max_memory_allocated() / 2**30
                total["max_memory_gb"] = max(total["max_memory_gb"] or 0.0, memory)
    return totals


def describe(error: BaseException) -> str:
    """One line for a table cell: the error's type and the first line of its message."""
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return message if len(message) <= 300 else message[:297] + "..."


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """torch threads (and OMP_NUM_THREADS, which Lightning's DDP would otherwise set)."""
    if threads is None:
        yield
        return
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's and DeepSpeed's start-up chatter and warnings off: the tables are the output."""
    names = ["lightning.pytorch", "lightning.fabric"]
    if "deepspeed" in sys.modules:  # imported by the first DeepSpeed run, which stays chatty
        names.append("DeepSpeed")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


# --- results -------------------------------------------------------------------------------


def summarise(
    case: Case, total: dict[str, Any], batch: int, flops: float, peak: float | None
) -> dict[str, Any]:
    """One run's row: rates from its summed steps and seconds, FLOP/s and MFU."""
    row: dict[str, Any] = {
        "id": case.id,
        "loop": case.loop,
        "strategy": case.strategy,
        "compile": case.compile,
        "mask": case.mask,
        **total,
        "flops_per_step": flops,
        "clips": None,
        "clips_per_s": None,
        "ms_per_step": None,
        "clips_per_cpu_s": None,
        "tflops_per_s": None,
        "mfu": None,
    }
    if total["status"] != "ok":
        return row
    steps, seconds, cpu = total["steps"], total["seconds"], total["cpu_seconds"]
    row["clips"] = batch * steps
    row["clips_per_s"] = row["clips"] / seconds
    row["ms_per_step"] = 1e3 * seconds / steps
    row["clips_per_cpu_s"] = row["clips"] / cpu if cpu > 0 else None
    row["tflops_per_s"] = flops * steps / seconds / 1e12
    if peak:
        row["mfu"] = row["tflops_per_s"] / peak
    return row


def compare(
    runs: Sequence[dict[str, Any]], strategies: Sequence[str], compile: bool, mask: float
) -> list[dict[str, Any]]:
    """Ratios of clips/s: each strategy / bare, other strategies / the first, mask / no mask,
    compiled / eager; None (with the reason) when either run did not measure.

    Each entry also has the difference in ms per step (numerator - denominator): for Lightning
    against the bare loop, the system's own cost per step, which does not grow with the model.
    """
    by = {(r["loop"], r["strategy"], r["compile"], r["mask"]): r for r in runs}
    loops = [("bare", None), *(("lightning", s) for s in strategies)]
    label = {loop: Case(*loop, False, 0.0).label for loop in loops}
    out = []

    def add(kind: str, name: str, numerator: tuple, denominator: tuple, flag: bool | None) -> None:
        a, b = by[numerator], by[denominator]
        entry = {"kind": kind, "name": name, "compile": flag, "numerator": a["id"],
                 "denominator": b["id"], "ratio": None, "ratio_by_cpu": None,
                 "ms_per_step_difference": None, "goal": GOALS.get(kind),
                 "reason": None}  # fmt: skip
        missing = [r for r in (a, b) if r["status"] != "ok"]
        if missing:
            entry["reason"] = "; ".join(f"{r['id']}: {r['status']}" for r in missing)
        else:
            entry["ratio"] = a["clips_per_s"] / b["clips_per_s"]
            entry["ms_per_step_difference"] = a["ms_per_step"] - b["ms_per_step"]
            if a["clips_per_cpu_s"] and b["clips_per_cpu_s"]:
                entry["ratio_by_cpu"] = a["clips_per_cpu_s"] / b["clips_per_cpu_s"]
        out.append(entry)

    first = ("lightning", strategies[0])
    for c in [False, True] if compile else [False]:
        for loop in loops[1:]:
            add("loop", f"{label[loop]} / bare", (*loop, c, mask), ("bare", None, c, mask), c)
        for loop in loops[2:]:
            name = f"{SHORT[loop[1]]} / {SHORT[first[1]]}"
            add("strategy", name, (*loop, c, mask), (*first, c, mask), c)
        if mask != 0:
            for loop in loops:
                name = f"masking {mask:.0%} / 0%: {label[loop]}"
                add("masking", name, (*loop, c, mask), (*loop, c, 0.0), c)
    if compile:
        for loop in loops:
            name = f"compiled / eager: {label[loop]}"
            add("compile", name, (*loop, True, mask), (*loop, False, mask), None)
    return out


def overhead_lines(comparisons: Sequence[dict[str, Any]]) -> list[str]:
    """Per compile mode: what each Lightning run adds per step to the bare loop, in ms."""
    lines = []
    for flag in (False, True):
        parts = [
            f"{c['name'].removeprefix('lightning ').removesuffix(' / bare')}"
            f" {c['ms_per_step_difference']:+.2f} ms"
            for c in comparisons
            if c["kind"] == "loop" and c["compile"] is flag and c["ratio"] is not None
        ]
        if parts:
            mode = "compiled" if flag else "eager"
            lines.append(f"Lightning - bare per step, {mode}: " + ", ".join(parts))
    return lines


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def runs_table(result: dict[str, Any]) -> Table:
    """One row per run: clips/s, ms/step, FLOPs/step, FLOP/s, MFU, or why it did not run;
    a heading row per compile mode and mask ratio."""
    config = result["config"]
    shape = f"{config['frames']}x{config['size']}x{config['size']}"
    title = (
        f"pretrain step: {config['backbone']} MAE, clips {shape}, patch {config['patch']},"
        f" tubelet {config['tubelet']}, batch {config['batch']}, {config['precision']},"
        f" {config['device']}"
    )
    table = Table(title=title)
    for column in ("run", "clips/s", "ms/step", "FLOP/step", "FLOP/s", "MFU", "note"):
        table.add_column(column, justify="left" if column in ("run", "note") else "right")
    heading = None
    for row in result["runs"]:
        if (row["compile"], row["mask"]) != heading:
            if heading is not None:
                table.add_section()
            heading = row["compile"], row["mask"]
            mode = "compiled" if row["compile"] else "eager"
            table.add_row(f"[bold]{mode}, mask {row['mask']:.0%}[/bold]")
        ok = row["status"] == "ok"
        memory = row.get("max_memory_gb")
        note = f"{memory:.1f} GiB peak" if ok and memory else ""
        if not ok:
            note = f"{row['status']}: {row['reason']}"
        table.add_row(
            "  " + Case(row["loop"], row["strategy"], row["compile"], row["mask"]).label,
            f"{row['clips_per_s']:.1f}" if ok else "–",
            f"{row['ms_per_step']:.2f}" if ok else "–",
            _si(row["flops_per_step"]),
            _si(row["tflops_per_s"] * 1e12) if ok else "–",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "–",
            note,
        )
    load = config["load_average_before"][0], config["load_average_after"][0]
    table.caption = (
        f"{config['steps']} timed steps after {config['warmup']} warm-up, x {config['rounds']}"
        f" rounds; {config['threads']} torch threads, {config['cpu_count']} cores;"
        f" 1-min load {load[0]:.2f} before, {load[1]:.2f} after"
    )
    return table


def comparisons_table(result: dict[str, Any]) -> Table:
    """The ratios of clips/s (eager and compiled side by side), MFU, and the issue's goals."""
    config = result["config"]
    cpu = config["device"] == "cpu"
    modes = ["eager", "compiled"] if config["compile"] else ["eager"]
    table = Table(title="ratios of clips/s")
    for column in ("comparison", *modes, "goal"):
        table.add_column(column, justify="left" if column in ("comparison", "goal") else "right")
    cells: dict[str, dict[str, str]] = {}
    for c in result["comparisons"]:
        mode = "eager" if c["compile"] is False else "compiled"
        cells.setdefault(c["name"], {"kind": c["kind"]})[mode] = _ratio_cell(c, cpu)
    goals = {"loop": f"≥ {GOALS['loop']:.2f}", "masking": f"≥ {GOALS['masking']:g}x"}
    for name, row in cells.items():
        table.add_row(name, *(row.get(m, "") for m in modes), goals.get(row["kind"], ""))
    if config["peak_tflops"]:  # MFU of the bare loop and the first strategy at the mask ratio
        table.add_section()
        for strategy in (None, config["strategies"][0]):
            runs = [r for r in result["runs"]
                    if r["strategy"] == strategy and r["mask"] == config["mask"]]  # fmt: skip
            mfu = {("compiled" if r["compile"] else "eager"): r["mfu"] for r in runs}
            label = Case(runs[0]["loop"], strategy, False, config["mask"]).label
            table.add_row(
                f"MFU: {label}, mask {config['mask']:.0%}",
                *(f"{mfu[m]:.1%}" if mfu.get(m) is not None else "–" for m in modes),
                f"≥ {GOALS['mfu']:.0%} compiled",
            )
    table.caption = "ratio (ratio of clips per CPU-second)" if cpu else None
    return table


def _ratio_cell(comparison: dict[str, Any], cpu: bool) -> str:
    ratio = comparison["ratio"]
    if ratio is None:
        return "–"
    text = f"{ratio:.2f}x" if comparison["kind"] in ("masking", "compile") else f"{ratio:.2f}"
    by_cpu = comparison["ratio_by_cpu"]
    if cpu and by_cpu is not None:
        text += f" ({by_cpu:.2f})"
    return text
