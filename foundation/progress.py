"""Progress of Lightning training: plain log lines when the output is a file and not a terminal
(a job under nohup or a scheduler), where a progress bar writes nothing readable, and a rich bar
that suits an unbounded stream. The line itself is :func:`cmrfm_io.progress_lines.progress_line`."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar

from cmrfm_io.progress_lines import progress_line

_now = time.monotonic  # the callback's clock (tests replace it)


class LogLines(Callback):
    """Print a progress line (step, rate over the last interval, ETA from max_steps, the
    progress-bar metrics such as the loss) at least every ``every_s`` seconds of training, on
    rank 0 only."""

    def __init__(self, every_s: float = 30.0) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.every_s = every_s
        self._start: float | None = None
        self._last: tuple[float, int] | None = None  # (time, step) of the last line

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = _now()
        self._start, self._last = now, (now, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = _now()
        if self._last is None or self._start is None or now - self._last[0] < self.every_s:
            return
        then, step0 = self._last
        step = trainer.global_step
        rate = (step - step0) / (now - then) if step > step0 else None
        metrics = {k: float(v) for k, v in trainer.progress_bar_metrics.items() if k != "v_num"}
        self._last = (now, step)
        if trainer.is_global_zero:
            line = progress_line(step, trainer.max_steps, rate, metrics, now - self._start)
            print(line, flush=True)


def log_file_progress() -> list[Callback]:
    """[LogLines()] when stdout is not a terminal (a log file, where a progress bar writes nothing
    readable), else []: the callbacks a Trainer's progress needs."""
    return [] if sys.stdout.isatty() else [LogLines()]


class StreamBar(RichProgressBar):
    """Lightning's rich bar, whose title says "Epoch 3" when epochs are unbounded
    (``max_epochs=-1``, a stream trained for ``max_steps``) instead of "Epoch 3/-2"
    (Lightning issue 21925)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)


def use_stream_bar(trainer: L.Trainer) -> None:
    """Swap the trainer's rich bar (Lightning's default, or one configured without a subclass)
    for a :class:`StreamBar` with the same settings."""
    callbacks = trainer.callbacks
    for i, bar in enumerate(callbacks):
        if type(bar) is RichProgressBar:
            callbacks[i] = StreamBar(bar._refresh_rate, bar._leave, bar.theme, bar._console_kwargs)
            if not bar.is_enabled:
                callbacks[i].disable()
