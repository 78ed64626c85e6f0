"""finetune.budget: a timed probe turns seconds into steps, BudgetStop ends a run that is slower
than probed, fixed steps ignore the clock, and a run into a log file prints progress lines.
The clock is a fake one that only the model's training steps move: no real timing."""

from __future__ import annotations

import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from finetune import budget
from finetune.budget import steps_for_budget
from foundation import progress


def test_budget_probe_scales_steps_and_leaves_weights_alone():
    net = torch.nn.Linear(64, 64)
    before = net.weight.detach().clone()
    x = torch.randn(256, 64)
    few, per_step = steps_for_budget(lambda: net(x).square().mean(), budget_s=0.5)
    many, _ = steps_for_budget(lambda: net(x).square().mean(), budget_s=5.0)
    assert per_step > 0 and many > few
    assert torch.equal(net.weight, before)


class FakeClock:
    """A time.monotonic that only the model's training steps move."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


class SlowSteps(L.LightningModule):
    """Every training step takes ``step_s`` seconds of a fake clock; remembers the schedule's
    length (the trainer's max_steps when the optimiser is built)."""

    def __init__(self, clock: FakeClock, step_s: float) -> None:
        super().__init__()
        self.net, self.clock, self.step_s = torch.nn.Linear(4, 1), clock, step_s
        self.schedule_steps = None

    def training_step(self, batch, batch_idx):
        self.clock.now += self.step_s
        return self.net(batch[0]).square().mean()

    def configure_optimizers(self):
        self.schedule_steps = self.trainer.max_steps
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(("step_s", "steps", "cut"), [(10.0, 6, True), (1.0, 20, False)])
def test_budget_is_a_limit_when_steps_are_slower_than_probed(monkeypatch, step_s, steps, cut):
    """The probe planned 20 steps of 1 s for 60 s. Steps of 10 s (a loaded machine) stop after 6,
    before a seventh would end past 60 s; the schedule keeps its planned 20. No real timing."""
    clock = FakeClock()
    monkeypatch.setattr(budget, "time", SimpleNamespace(monotonic=clock.monotonic,
                                                         perf_counter=time.perf_counter))  # fmt: skip
    monkeypatch.setattr(budget, "steps_for_budget", lambda step, budget_s: (20, 1.0))
    system = SlowSteps(clock, step_s)
    info = budget.fit_for_budget(system, TensorDataset(torch.randn(8, 4)), 2, 60.0, seed=0)
    assert info["steps"] == steps and info["planned_steps"] == 20 and info["cut_short"] is cut
    assert info["train_s"] == pytest.approx(steps * step_s) and info["train_s"] <= 60.0
    assert system.schedule_steps == 20


def test_fixed_steps_train_exactly_that_many_whatever_the_clock_says(monkeypatch):
    """steps: every run trains that many steps, with no timed probe and no time limit (steps
    of 10 s each would be cut short by a 60 s budget)."""
    clock = FakeClock()
    monkeypatch.setattr(budget, "time", SimpleNamespace(monotonic=clock.monotonic,
                                                         perf_counter=time.perf_counter))  # fmt: skip
    probed = []
    monkeypatch.setattr(budget, "steps_for_budget", lambda *a: probed.append(1) or (20, 1.0))
    system = SlowSteps(clock, 10.0)
    info = budget.fit_for_budget(system, TensorDataset(torch.randn(8, 4)), 2, 60.0, 0, steps=9)
    assert info["steps"] == info["planned_steps"] == system.schedule_steps == 9
    assert info["cut_short"] is False and info["s_per_step_probe"] is None and not probed


def test_a_run_into_a_log_file_prints_progress_lines(monkeypatch, capsys):
    """Output that is not a terminal gets a step / rate / ETA line every 30 s of a run (here a
    fake clock, 10 s a step): a few-shot job under nohup is not silent."""
    clock = FakeClock()
    monkeypatch.setattr(budget, "steps_for_budget", lambda step, budget_s: (20, 1.0))
    monkeypatch.setattr(progress, "_now", clock.monotonic)
    monkeypatch.setattr(progress.sys.stdout, "isatty", lambda: False, raising=False)
    budget.fit_for_budget(SlowSteps(clock, 10.0), TensorDataset(torch.randn(8, 4)), 2, 1e4, 0)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 6  # 200 s of steps, a line each 30 s
    assert lines[0].startswith("step 3/20 (15.0%) | 0.1 steps/s | ETA 0:02:50")
