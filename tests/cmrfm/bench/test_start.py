"""cmrfm.bench.start: fresh processes timed to their first line of work and to their exit,
medians set against `python -c pass` and the issue's goals."""

from __future__ import annotations

import sys

import pytest

from cmrfm.bench.start import GOALS_S, bench_start, summarise_runs, timed_run


def test_a_process_is_timed_to_its_marker_line_and_to_its_exit() -> None:
    code = (
        "import time; print('warming'); time.sleep(0.3); print('go', flush=True); time.sleep(0.5)"
    )
    times = timed_run([sys.executable, "-c", code], marker="go")
    assert 0.3 <= times["start"] < times["total"]
    assert times["total"] - times["start"] >= 0.45  # the half second after the marker
    assert timed_run([sys.executable, "-c", "pass"], marker="go")["start"] is None


def test_a_failing_command_is_named_with_its_last_error_line() -> None:
    with pytest.raises(RuntimeError, match=r"exited 3: broken model"):
        code = "import sys; print('x', file=sys.stderr); print('broken model', file=sys.stderr); sys.exit(3)"
        timed_run([sys.executable, "-c", code])


def _times(python: float, helps: list[float], starts: list[float | None]) -> dict:
    return {
        "python -c pass": [{"start": None, "total": python}] * 3,
        "cmrfm --help": [{"start": None, "total": t} for t in helps],
        "cmrfm predict": [{"start": s, "total": 10.0} for s in starts],
    }


def test_medians_are_judged_against_the_goals_and_the_python_floor() -> None:
    rows = summarise_runs(_times(0.05, [0.5, 2.5, 0.6], [3.0, 5.0, 4.5]))
    by = {(r["case"], r["timed"]): r for r in rows}
    assert by[("cmrfm --help", "total")]["median_s"] == 0.6
    assert by[("cmrfm --help", "total")]["met"] is True
    assert by[("cmrfm --help", "total")]["vs_python"] == pytest.approx(12.0)
    start = by[("cmrfm predict", "start")]
    assert start["median_s"] == 4.5 and start["goal_s"] == GOALS_S["predict start"]
    assert start["met"] is False and start["fastest_s"] == 3.0
    assert by[("cmrfm predict", "total")]["met"] is None  # no goal for the whole run


def test_a_predict_that_never_starts_its_work_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="never printed"):
        summarise_runs(_times(0.05, [0.5], [None, None]))


@pytest.mark.slow
def test_the_real_commands_meet_the_start_goals(tmp_path) -> None:
    """Real processes: `cmrfm predict` says it starts reading before its network's imports."""
    result = bench_start(rounds=1, out=tmp_path / "start.json")
    rows = {(r["case"], r["timed"]): r for r in result["rows"]}
    assert (
        rows[("cmrfm predict", "start")]["median_s"] < rows[("cmrfm predict", "total")]["median_s"]
    )
    assert (tmp_path / "start.json").is_file()
