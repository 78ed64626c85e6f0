"""The timing of `cmrfm bench loader`: loaders that take turns in time slices, each skipping
the batches made outside its slice, and the device-side augmentation timed apart."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from cmrfm.bench.machine import synchronize
from data_shards.augment import BatchClipAugment, to_unit


class TimedLoader:
    """A loader's live iterator, its worker processes, and clip/wall/CPU totals over slices.

    Both loaders stay alive side by side and take turns, so machine load that drifts during a
    run reaches both alike. CPU time is that of this process plus this loader's own workers:
    clips per CPU-second is the per-core rate even when other jobs share the cores.
    """

    def __init__(self, loader: DataLoader, workers: int) -> None:
        import psutil  # a dependency of deepspeed

        me = psutil.Process()
        before = {child.pid for child in me.children()}
        self.iterator = iter(loader)  # starts the workers
        self.processes = [me, *(c for c in me.children() if c.pid not in before)]
        self.workers = workers
        # First slice: each worker's first batch carries its start-up (fork, imports, first
        # shard or file, shuffle buffer). Later slices: the batches prefetched while the other
        # loader ran (2 per worker) were made outside the timed window.
        self.skip = 2 * max(1, workers)
        self.clips, self.seconds, self.cpu = 0, 0.0, 0.0
        self.pairs: set[tuple[str, int]] = set()
        self.shape: list[int] = []
        self.dtype = ""

    def run(self, seconds: float) -> None:
        """Skip the stale batches, then count clips for ``seconds`` (at least one batch)."""
        for _ in range(self.skip):
            first = next(self.iterator)
            self.shape, self.dtype = list(first["clip"].shape[1:]), str(first["clip"].dtype)
        self.skip = 2 * self.workers
        cpu_start, start = self._cpu(), time.perf_counter()
        while True:
            batch = next(self.iterator)
            self.clips += len(batch["clip"])
            self.pairs.update(zip(batch["key"], batch["slice"].tolist()))
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        self.seconds += elapsed
        self.cpu += self._cpu() - cpu_start

    def _cpu(self) -> float:
        import psutil

        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(process.cpu_times()[:2])  # user + system
        return total

    def close(self) -> None:
        del self.iterator  # stops the workers now rather than at garbage collection

    def stats(self) -> dict[str, Any]:
        megabytes = self.clips * math.prod(self.shape) / 1e6  # uint8 payload: a byte per voxel
        return {
            "clips": self.clips,
            "seconds": self.seconds,
            "clips_per_s": self.clips / self.seconds,
            "mb_per_s": megabytes / self.seconds,
            "clips_per_s_per_worker": self.clips / self.seconds / max(1, self.workers),
            "cpu_seconds": self.cpu,
            "clips_per_cpu_s": self.clips / self.cpu if self.cpu > 0 else None,
            "clip_shape": self.shape,
            "clip_dtype": self.dtype,
            "pairs_seen": len(self.pairs),
        }


def measure(
    loaders: dict[str, DataLoader], seconds: float, workers: int, rounds: int, first: int = 0
) -> dict[str, dict[str, Any]]:
    """Time every loader for ``seconds`` in total, in ``rounds`` alternating slices.

    Args:
        loaders: name -> DataLoader, all with ``workers`` workers.
        seconds: timed budget per loader, split evenly over the rounds.
        workers: the loaders' worker count (how many prefetched batches to skip).
        rounds: slices per loader; the order reverses every round (A B, B A, A B, ...).
        first: which loader goes first in round 0 (alternate it between calls).
    """
    timed = {name: TimedLoader(loader, workers) for name, loader in loaders.items()}
    names = list(loaders)
    try:
        for r in range(rounds):
            order = names if (r + first) % 2 == 0 else names[::-1]
            for name in order:
                timed[name].run(seconds / rounds)
    finally:
        for t in timed.values():
            t.close()
    return {name: t.stats() for name, t in timed.items()}


def measure_device_augment(
    clip_shape: Sequence[int],
    batch: int,
    augment: bool = True,
    *,
    seconds: float = 2.0,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Time the device side of ``augment_on: device`` on batches of uint8 clips (1, F, H, W):
    ``BatchClipAugment`` (default strengths) or, without ``augment``, the conversion to float.

    Runs on the CPU in this process's threads (the caller sets one) and on the GPU when
    there is one. Returns ``{device: {clips, seconds, ms_per_clip, clips_per_s, cpu_seconds,
    cpu_ms_per_clip}}``: the CPU time of this process, which machine load does not inflate.
    """
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    transform = BatchClipAugment(seed=seed) if augment else to_unit
    generator = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (batch, *clip_shape), dtype=torch.uint8, generator=generator)
    out = {}
    for device in devices:
        on_device = clips.to(device)
        transform(on_device)  # warm-up: allocations, kernels, lazy initialisation
        synchronize(device)
        count, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while True:
            transform(on_device)
            count += batch
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        cpu = time.process_time() - cpu_start
        out[device.type] = {
            "clips": count,
            "seconds": elapsed,
            "ms_per_clip": 1e3 * elapsed / count,
            "clips_per_s": count / elapsed,
            "cpu_seconds": cpu,
            "cpu_ms_per_clip": 1e3 * cpu / count,
        }
    return out
