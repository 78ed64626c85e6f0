"""Progress that shows in a log: a line with count, rate and ETA at least every 30 s when output
is not a terminal (a job under nohup or a scheduler, where a progress bar writes nothing), and a
rich bar when it is. Needs no Lightning, so light entry points (evaluate, predict) can use it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TextIO, TypeVar

from rich.console import Console
from rich.progress import track

T = TypeVar("T")

_now = time.monotonic  # the clock of logged (tests replace it)


def progress_line(
    step: int,
    max_steps: int,
    rate: float | None,
    metrics: dict[str, float],
    since: float,
    *,
    what: str = "step",
    unit: str = "steps",
) -> str:
    """'step 1200/16000 (7.5%) | 0.72 steps/s | ETA 5:42:40 | train/loss 0.0412 | 0:27:50 in'."""
    parts = [f"{what} {step}/{max_steps} ({100 * step / max_steps:.1f}%)" if max_steps > 0
             else f"{what} {step}"]  # fmt: skip
    if rate:
        parts.append(f"{rate:.3g} {unit}/s")
        if max_steps > 0:
            parts.append(f"ETA {timedelta(seconds=round((max_steps - step) / rate))}")
    parts += [f"{name} {value:.4g}" for name, value in sorted(metrics.items())]
    parts.append(f"{timedelta(seconds=round(since))} in")
    return " | ".join(parts)


def logged(
    items: Iterable[T],
    total: int,
    what: str,
    unit: str = "items",
    every_s: float = 30.0,
    console: Console | None = None,
) -> Iterator[T]:
    """Yield ``items`` while showing progress: on a terminal a transient rich bar; otherwise a
    line ('evaluating 3/10 (30.0%) | 0.5 subjects/s | ETA 0:00:14 | 0:00:06 in') after an item
    once ``every_s`` seconds have passed since the last line, and one when the items run out."""
    if every_s < 0:
        raise ValueError(f"every_s must be >= 0, got {every_s}")
    console = console or Console()
    if console.is_terminal:
        yield from track(items, description=what, total=total, console=console, transient=True)
    else:
        yield from _with_lines(items, total, what, unit, every_s, console.file)


def _with_lines(
    items: Iterable[T], total: int, what: str, unit: str, every_s: float, out: TextIO
) -> Iterator[T]:
    """Yield ``items``, printing a progress line to ``out`` on the clock and at the end."""
    start = last = _now()
    done = shown = 0

    def show(now: float) -> None:
        rate = done / (now - start) if now > start else None  # the mean over the whole run
        line = progress_line(done, total, rate, {}, now - start, what=what, unit=unit)
        print(line, file=out, flush=True)

    for item in items:
        yield item
        done += 1
        now = _now()
        if now - last >= every_s:
            show(now)
            last, shown = now, done
    if shown != done:
        show(_now())
