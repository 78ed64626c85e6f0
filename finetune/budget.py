"""Training for a time budget or a fixed number of steps.

A timed probe turns the budget into a step count, so a warmup + cosine schedule ends when the time
does; :class:`BudgetStop` ends a run early on a machine slower than the probe said. With a fixed
step count no clock is involved, so equal steps mean equal work whatever else the machine runs.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from foundation.progress import log_file_progress


def steps_for_budget(
    step: Callable[[], torch.Tensor], budget_s: float, warmup: int = 1, probe: int = 3
) -> tuple[int, float]:
    """How many optimiser steps fit in budget_s: times `probe` forward+backward passes of `step`
    (after `warmup`) and returns (steps, seconds per step). The weights are not changed."""
    times = []
    for i in range(warmup + probe):
        start = time.perf_counter()
        loss = step()
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    per_step = float(np.median(times)) * 1.08  # the optimiser step and logging, measured ~5-8 %
    return max(10, int(budget_s / per_step)), per_step


def _zero_grads(module: torch.nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


class BudgetStop(L.Callback):
    """Stops training before a step would end past ``budget_s`` seconds from the start of
    training, judging the next step by the last one; ``cut_short`` says whether it stopped a run
    before its planned steps. The clock is ``time.monotonic``."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.cut_short = False
        self._start = self._last = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        now = time.monotonic()
        step_s, self._last = now - self._last, now
        if trainer.global_step < trainer.max_steps and now - self._start + step_s > self.budget_s:
            trainer.should_stop = True
            self.cut_short = True


def fit_for_budget(
    system: L.LightningModule,
    dataset: Dataset,
    batch_size: int,
    budget_s: float,
    seed: int,
    steps: int | None = None,
) -> dict[str, float]:
    """Train `system` on clips drawn with replacement from dataset for at most budget_s seconds,
    or for exactly ``steps`` optimiser steps when given (no clock involved).

    The step count comes from a timed probe, so the warmup + cosine schedule ends when the time
    does; on a machine slower than the probe said, :class:`BudgetStop` ends the run before a
    step would take it past budget_s (the schedule keeps the planned length). Returns steps
    done, planned_steps, cut_short, train_s and s_per_step_probe (None with ``steps``).
    """
    generator = torch.Generator().manual_seed(seed)
    probe = next(
        iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator))
    )
    system.train()
    per_step = None
    if steps is None:
        with warnings.catch_warnings():  # self.log outside a Trainer warns; the probe logs nothing
            warnings.simplefilter("ignore")
            steps, per_step = steps_for_budget(lambda: system.training_step(probe, 0), budget_s)
        _zero_grads(system)
    else:
        budget_s = math.inf
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=steps * batch_size, generator=generator
    )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True)
    budget = BudgetStop(budget_s)
    trainer = L.Trainer(
        max_steps=steps,
        callbacks=[budget, *log_file_progress()],
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.monotonic()
    trainer.fit(system, train_dataloaders=loader)
    return {
        "steps": int(trainer.global_step),
        "planned_steps": steps,
        "cut_short": budget.cut_short,
        "train_s": time.monotonic() - start,
        "s_per_step_probe": per_step,
    }
