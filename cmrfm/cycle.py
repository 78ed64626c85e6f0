"""The cardiac cycle of a segmented cine: volume curves, ED and ES, ejection and filling rates.

Pure numpy. `cmrfm predict` hands in the per-frame volumes of its label map and the frame times
its readers found (`FrameTimes`), and writes what comes back. What cannot be measured (one
frame, no frame times, a curve without LV) comes back as None, with the reason under the output's
name in ``unavailable``: never an exception.

Rates: dV/dt by central differences over the frame times (numpy.gradient: second order, unequal
steps allowed). The frames of an ECG-gated cine are one cycle, so the curve is periodic: before
the first frame comes the last, one median frame step earlier, and the ends get central
differences too. A real-time cine (frames by clock time) spans several beats and is not
periodic: its ends get one-sided differences. There is no smoothing: it flattens the very peaks
being measured, and a central difference already spans two frame steps without using the
frame's own volume, so one frame's segmentation error does not make a spike at that frame.
For a sinusoidal curve of N frames per cycle the peak slope comes out sin(2π/N) / (2π/N) of
the true one: 1.6% low for N = 20, 6.5% low for N = 10.
The peak ejection rate (PER) is the largest -dV/dt from ED to ES (systole), the peak filling
rate (PFR) the largest dV/dt from ES to the next ED (diastole); over the whole series when the
frames are not one cycle, or when ED and ES are one frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A whole cycle longer or shorter than this is no heartbeat (20-300 bpm): the header's "frame
# spacing" is something else (dcm2niix, for one, writes the repetition time to pixdim[4]).
CYCLE_MS = (200.0, 3000.0)
NIFTI_TIME_UNITS_MS = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}
CURVE_FIELDS = ("frame", "time_ms", "lv_ml", "rv_ml", "myo_ml", "lv_dvdt_ml_s", "phase")
RATE_METHOD = "central differences of the LV curve over the frame times, no smoothing"


@dataclass(frozen=True)
class FrameTimes:
    """When a study's frames were taken.

    ms: (T,) times in ms, or None when unknown. source: where the times come from, or why there
    are none. periodic: the frames are one cardiac cycle (ECG-gated cine), not a stretch of time
    (real-time cine, several beats).
    """

    ms: tuple[float, ...] | None
    source: str
    periodic: bool = True


def nifti_frame_times(step: float, unit: str, n_frames: int) -> FrameTimes:
    """Times of a NIfTI's frames from its header: ``step`` = pixdim[4] in ``unit`` = the time
    unit of xyzt_units as nibabel names it ("msec", "sec", "usec", "unknown", ...)."""
    if n_frames < 2:
        return FrameTimes(None, "one frame")
    if unit not in NIFTI_TIME_UNITS_MS:
        return FrameTimes(None, f"the NIfTI header gives no time unit (xyzt_units: {unit!r})")
    if not (math.isfinite(step) and step > 0):
        return FrameTimes(None, f"the NIfTI header's frame spacing pixdim[4] is {step:g}")
    ms = step * NIFTI_TIME_UNITS_MS[unit]  # to the microsecond: pixdim is float32
    return FrameTimes(
        tuple(round(i * ms, 3) for i in range(n_frames)),
        f"NIfTI pixdim[4]: {step:g} {unit} per frame",
    )


def dicom_frame_times(meta: dict, n_frames: int) -> FrameTimes:
    """Times of a DICOM series' frames from what data_shards.sources.dicom records in meta:
    ``trigger_times_ms`` (ms after the R wave: one gated cycle) or ``frame_times_ms`` (clock
    times, ms from the first frame: a real-time cine, several beats), by ``frame_order``."""
    order = meta.get("frame_order")
    if n_frames < 2:
        return FrameTimes(None, "one frame")
    if meta.get("trigger_times_ms") is not None:
        return FrameTimes(tuple(meta["trigger_times_ms"]), f"DICOM {order}, ms after the R wave")
    if meta.get("frame_times_ms") is not None:
        return FrameTimes(
            tuple(meta["frame_times_ms"]),
            f"DICOM {order}, ms from the first frame (real-time: not one gated cycle)",
            periodic=False,
        )
    return FrameTimes(None, f"the DICOM frames are ordered by {order}, which holds no time")


def usable_times(times: FrameTimes, n_frames: int) -> tuple[np.ndarray | None, str | None]:
    """The frame times (T,) in ms if they can time a curve of ``n_frames``, else None and why:
    none known, one per frame needed, rising, and for one gated cycle a heartbeat's length."""
    if times.ms is None:
        return None, f"no frame times: {times.source}"
    ms = np.asarray(times.ms, dtype=np.float64)
    if ms.shape != (n_frames,):
        return None, f"{ms.size} frame times for {n_frames} frames ({times.source})"
    steps = np.diff(ms)
    if not (np.isfinite(ms).all() and (steps > 0).all()):
        return None, f"frame times do not rise frame by frame ({times.source})"
    cycle = n_frames * float(np.median(steps))
    if times.periodic and not CYCLE_MS[0] <= cycle <= CYCLE_MS[1]:
        return None, (
            f"{n_frames} frames {np.median(steps):g} ms apart make a {cycle:.0f} ms cycle, no "
            f"heartbeat ({times.source}; a repetition time, not the frame spacing?)"
        )
    return ms, None


def choose_phases(lv_ml: np.ndarray, ed: int | None = None, es: int | None = None) -> dict:
    """ED and ES of an LV volume curve (T,) in ml: the given frames, else those of largest and
    smallest LV volume. Returns {ed, es, ed_from, es_from}; ValueError for a frame not in 0..T-1.
    """
    t = len(lv_ml)
    for name, frame in (("ed", ed), ("es", es)):
        if frame is not None and not 0 <= frame < t:
            raise ValueError(f"--{name} {frame} is not a frame of this study (0..{t - 1})")

    def pick(given: int | None, name: str, found: int, rule: str) -> tuple[int, str]:
        if given is not None:
            return int(given), f"--{name}"
        return (0, "the only frame") if t == 1 else (found, rule)

    ed, ed_from = pick(ed, "ed", int(np.argmax(lv_ml)), "largest LV volume")
    es, es_from = pick(es, "es", int(np.argmin(lv_ml)), "smallest LV volume")
    return {"ed": ed, "es": es, "ed_from": ed_from, "es_from": es_from}


def volume_rate(volume_ml: np.ndarray, times_ms: np.ndarray, periodic: bool = True) -> np.ndarray:
    """dV/dt (T,) in ml/s of a volume curve (T,) in ml at rising times (T,) in ms, T >= 3, by
    central differences; periodic: the frames are one cycle, the last frame precedes the first
    by the median frame step."""
    v = np.asarray(volume_ml, dtype=np.float64)
    s = np.asarray(times_ms, dtype=np.float64) / 1000.0
    if not periodic:
        return np.gradient(v, s)
    step = float(np.median(np.diff(s)))
    v = np.concatenate([v[-1:], v, v[:1]])
    s = np.concatenate([[s[0] - step], s, [s[-1] + step]])
    return np.gradient(v, s)[1:-1]


def cycle_frames(start: int, stop: int, n_frames: int) -> np.ndarray:
    """Frames from ``start`` to ``stop`` (both included) going forward round the cycle."""
    return (start + np.arange((stop - start) % n_frames + 1)) % n_frames


def peak_rates(rate: np.ndarray, ed: int, es: int, periodic: bool = True) -> dict:
    """PER (largest -dV/dt, ED to ES) and PFR (largest dV/dt, ES to ED) in ml/s and their
    frames, from dV/dt (T,) in ml/s; over all frames when not periodic or ED = ES."""
    t = len(rate)
    everything = np.arange(t)
    split = periodic and ed != es
    systole = cycle_frames(ed, es, t) if split else everything
    diastole = cycle_frames(es, ed, t) if split else everything
    eject = int(systole[np.argmax(-rate[systole])])
    fill = int(diastole[np.argmax(rate[diastole])])
    return {
        "lv_peak_ejection_rate_ml_s": float(-rate[eject]),
        "lv_peak_ejection_frame": eject,
        "lv_peak_filling_rate_ml_s": float(rate[fill]),
        "lv_peak_filling_frame": fill,
    }


def curve_ejection_fraction(volume_ml: np.ndarray) -> float | None:
    """(max - min) / max of a volume curve (T,), in %; None without a positive maximum."""
    top = float(np.max(volume_ml))
    return 100.0 * (top - float(np.min(volume_ml))) / top if top > 0 else None


def cycle_summary(
    lv_ml: np.ndarray, times: FrameTimes, phases: dict
) -> tuple[dict, dict[str, str]]:
    """The "cycle" block of volumes.json for an LV curve (T,) in ml, and the reason for each of
    its outputs that is None (keyed ``cycle.<name>``).

    phases: {ed, es} frame indices as chosen (`choose_phases`). The block holds time_ms (T,) and times_from,
    periodic, lv_ef_percent (from the curve's extremes), lv_dvdt_ml_s (T,), PER and PFR with
    their frames, and rate_method (how the rates are, or would be, found).
    """
    lv = np.asarray(lv_ml, dtype=np.float64)
    n = len(lv)
    ms, times_reason = usable_times(times, n)
    rate_keys = ("lv_dvdt_ml_s", "lv_peak_ejection_rate_ml_s", "lv_peak_ejection_frame",
                 "lv_peak_filling_rate_ml_s", "lv_peak_filling_frame")  # fmt: skip
    ends = "periodic ends (one cycle)" if times.periodic else "one-sided at the ends"
    block: dict = {
        "time_ms": None if ms is None else ms.tolist(),
        "times_from": times.source,
        "periodic": times.periodic,
        "lv_ef_percent": None,
        **dict.fromkeys(rate_keys),
        "rate_method": f"{RATE_METHOD}, {ends}",
    }
    why: dict[str, str] = {}
    if times_reason is not None:
        why["time_ms"] = times_reason
    if n < 2:
        curve_reason = "one frame: a curve needs a cine"
    elif not np.isfinite(lv).all():
        curve_reason = "the LV volumes are unknown (is the slice spacing unknown?)"
    elif lv.max() <= 0:
        curve_reason = "no LV in any frame"
    else:
        curve_reason = None
        block["lv_ef_percent"] = curve_ejection_fraction(lv)
    rate_reason = curve_reason or times_reason
    if rate_reason is None and n < 3:
        rate_reason = f"{n} frames: a derivative needs 3 or more"
    if rate_reason is None:
        rate = volume_rate(lv, ms, times.periodic)
        block["lv_dvdt_ml_s"] = rate.tolist()
        block |= peak_rates(rate, phases["ed"], phases["es"], times.periodic)
    else:
        why |= dict.fromkeys(rate_keys, rate_reason)
    if curve_reason is not None:
        why["lv_ef_percent"] = curve_reason
    return block, {f"cycle.{k}": v for k, v in why.items()}


def curve_rows(per_frame_ml: dict[str, list[float]], cycle: dict, phases: dict) -> list[dict]:
    """curves.csv: one row per frame with frame, time_ms, lv_ml, rv_ml, myo_ml, lv_dvdt_ml_s and
    phase (ED, ES, "ED ES" or empty); unknown values empty."""
    n = len(per_frame_ml["lv"])
    times, rate = cycle["time_ms"] or [None] * n, cycle["lv_dvdt_ml_s"] or [None] * n
    rows = []
    for f in range(n):
        phase = " ".join(p for p in ("ED", "ES") if phases[p.lower()] == f)
        rows.append({
            "frame": f, "time_ms": times[f], "lv_ml": per_frame_ml["lv"][f],
            "rv_ml": per_frame_ml["rv"][f], "myo_ml": per_frame_ml["myo"][f],
            "lv_dvdt_ml_s": rate[f], "phase": phase,
        })  # fmt: skip
    return rows
