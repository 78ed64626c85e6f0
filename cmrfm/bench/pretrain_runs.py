"""The runs of `cmrfm bench pretrain`: the bare PyTorch loop and the Lightning system on one
synthetic batch, each timed over the same window, and every case measured in alternating rounds.
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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import torch
from rich.console import Console
from torch import nn

from cmrfm.bench.pretrain_cases import Case, Setup
from foundation.flops import flop_counter
from foundation.optim import no_weight_decay_names, param_groups
from foundation.registry import create_backbone
from pretext import create_objective
from pretext.system import PretrainSystem

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


def bare_step(
    setup: Setup, mask: float, batch: dict[str, Any], compile: bool = False
) -> Callable[[], None]:
    """The bare loop's training step on ``batch`` as a closure over a fresh model and optimizer
    (as the system builds them: AdamW over its parameter groups, fused on a GPU): forward under
    the setup's precision, backward, AdamW step, zero_grad."""
    device = batch["clip"].device
    model = build_model(setup, mask, compile).to(device).train()
    groups = param_groups(model.named_parameters(), 0.05, 1.5e-4, no_weight_decay_names(model))
    fused = True if device.type == "cuda" else None
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], betas=(0.9, 0.95), fused=fused
    )

    def step() -> None:
        with _autocast(setup.precision, device):
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_bare(setup: Setup, case: Case, batch: dict[str, Any]) -> dict[str, Any]:
    """Forward, backward, AdamW step, zero_grad: ``warmup`` steps, then ``steps`` timed."""
    step = bare_step(setup, case.mask, batch, case.compile)
    clock = Clock(batch["clip"].device)
    for i in range(setup.warmup + setup.steps):
        if i == setup.warmup:
            clock.start()
        step()
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
