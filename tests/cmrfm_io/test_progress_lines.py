"""A long loop shows its progress: a rich bar on a terminal, a line with count, rate and ETA at
least every ``every_s`` seconds in a log."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cmrfm_io import progress_lines
from cmrfm_io.progress_lines import logged, progress_line


def test_a_line_gives_step_share_rate_eta_and_metrics() -> None:
    line = progress_line(1200, 16000, 0.5, {"train/loss": 0.04123}, since=1670)
    assert line == (
        "step 1200/16000 (7.5%) | 0.5 steps/s | ETA 8:13:20 | train/loss 0.04123 | 0:27:50 in"
    )
    assert progress_line(7, -1, None, {}, since=3) == "step 7 | 0:00:03 in"  # no max_steps


def test_a_line_names_what_is_counted() -> None:
    line = progress_line(3, 10, 0.5, {}, since=6, what="evaluating", unit="subjects")
    assert line == "evaluating 3/10 (30.0%) | 0.5 subjects/s | ETA 0:00:14 | 0:00:06 in"


def _clock(monkeypatch: pytest.MonkeyPatch, step_s: int) -> None:
    """Each reading of the clock is ``step_s`` seconds after the one before."""
    ticks = iter(range(0, 10_000, step_s))
    monkeypatch.setattr(progress_lines, "_now", lambda: float(next(ticks)))


def test_a_log_gets_a_line_on_the_clock_and_a_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    _clock(monkeypatch, 10)  # an item takes 10 s: a line every third item
    log = io.StringIO()
    console = Console(file=log, force_terminal=False)
    items = list(logged(range(7), 7, "evaluating", "subjects", every_s=30, console=console))
    assert items == list(range(7))
    lines = log.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "evaluating 3/7 (42.9%)", "evaluating 6/7 (85.7%)", "evaluating 7/7 (100.0%)"
    ]  # fmt: skip
    assert lines[0] == "evaluating 3/7 (42.9%) | 0.1 subjects/s | ETA 0:00:40 | 0:00:30 in"


def test_every_s_zero_gives_a_line_per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    _clock(monkeypatch, 1)
    log = io.StringIO()
    list(logged("abc", 3, "scoring", every_s=0, console=Console(file=log, force_terminal=False)))
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and all("items/s" in x and "ETA" in x for x in lines)


def test_a_terminal_gets_a_bar_and_no_plain_lines() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80)
    assert list(logged(range(5), 5, "evaluating", every_s=0, console=console)) == list(range(5))
    assert "evaluating 5/5" not in screen.getvalue() and "ETA 0" not in screen.getvalue()


def test_every_s_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="every_s"):
        list(logged([], 0, "x", every_s=-1))
