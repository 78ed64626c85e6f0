"""The machine a benchmark runs on: torch threads for the run, the load around it, and waiting
for a GPU's queued work."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages: a run records them before and after."""
    return list(os.getloadavg())


@contextlib.contextmanager
def torch_threads(threads: int | None, omp_env: bool = False) -> Iterator[None]:
    """torch threads inside the block, restored after; None leaves them as they are.

    ``omp_env`` also sets OMP_NUM_THREADS (restored after), which Lightning's DDP would
    otherwise set.
    """
    if threads is None:
        yield
        return
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(threads)
    if omp_env:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if omp_env:
            if env is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device (a timer's edge); nothing on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
