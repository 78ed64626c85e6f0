"""The cardiac cycle (cmrfm.cycle) and what `cmrfm predict` writes of it: ED and ES from the LV
curve, EF from its extremes, peak ejection and filling rates from its derivative over the frame
times, frame times from NIfTI and DICOM headers, and every output it cannot make named with
the reason instead of a crash."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.dicom import write_stack
from helpers.predict import drawn_heart, heart, study_image, write_nifti
from PIL import Image

from cmrfm.cli import main
from cmrfm.cycle import (
    FrameTimes,
    choose_phases,
    cycle_summary,
    dicom_frame_times,
    nifti_frame_times,
    peak_rates,
    usable_times,
    volume_rate,
)
from cmrfm.dicom_out import NEEDS_DICOM
from data_shards.record import LV, MYO, RV
from data_shards.volumes import volumes_ml

SPACING = (10.0, 2.0, 2.0)  # mm: a voxel is 0.04 ml
VOXEL_ML = 0.04
FRAMES, STEP_MS = 20, 40.0  # one 800 ms cycle
PERIOD_S = FRAMES * STEP_MS / 1000.0


def labels_with_volumes(lv_ml: np.ndarray, rv_ml: np.ndarray) -> np.ndarray:
    """Labels (S, T, H, W) whose LV and RV hold the given volumes (T,) in ml, to the voxel."""
    s, h, w = 4, 40, 40
    labels = np.zeros((s, len(lv_ml), h, w), np.uint8)
    for f, (lv, rv) in enumerate(zip(lv_ml, rv_ml, strict=True)):
        n_lv, n_rv = round(lv / VOXEL_ML), round(rv / VOXEL_ML)
        flat = np.zeros(s * h * w, np.uint8)
        flat[:n_lv], flat[n_lv : n_lv + n_rv] = LV, RV
        labels[:, f] = flat.reshape(s, h, w)
    return labels


def sinusoid(mean: float, amplitude: float, shift: int = 0) -> np.ndarray:
    """mean + amplitude cos(2π (f - shift) / FRAMES): largest at frame ``shift``, ml (T,)."""
    return mean + amplitude * np.cos(2 * np.pi * (np.arange(FRAMES) - shift) / FRAMES)


def times(periodic: bool = True) -> FrameTimes:
    return FrameTimes(tuple(STEP_MS * np.arange(FRAMES)), "test", periodic)


# --- the curve math ---------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0, 7], ids=["ed_first", "ed_mid_series"])
def test_sinusoidal_cycle_gives_exact_ed_es_ef_and_rates_near_the_derivative(shift):
    """LV 100 + 40 cos(2π t / 800 ms) over 20 frames 40 ms apart. ED (140 ml) and ES (60 ml)
    are frames ``shift`` and ``shift`` + 10, EF is 400/7 % exactly. The true peak rates are
    40 ml x 2π / 0.8 s = 314.2 ml/s; a central difference sees sin(x)/x of that, x = 2π/20
    (309.0 ml/s), and the voxel rounding of the curve moves it by under 0.5 ml/s: PER and PFR
    must be that within 0.5 ml/s, so within 2% of the true peak, a quarter cycle after ED and
    after ES. Wherever ED falls, the curve wraps round as one cycle."""
    lv_true, rv_true = sinusoid(100.0, 40.0, shift), sinusoid(80.0, 30.0, shift)
    labels = labels_with_volumes(lv_true, rv_true)
    lv = volumes_ml(labels, SPACING, LV)
    np.testing.assert_allclose(lv, lv_true, atol=VOXEL_ML / 2)
    frames = choose_phases(lv)
    assert frames == {"ed": shift, "es": (shift + 10) % FRAMES,
                      "ed_from": "largest LV volume", "es_from": "smallest LV volume"}  # fmt: skip

    cycle, unavailable = cycle_summary(lv, times(), frames)
    assert unavailable == {}
    assert cycle["lv_ef_percent"] == pytest.approx(100 * 80 / 140, rel=1e-12)
    omega = 2 * np.pi / PERIOD_S
    x = 2 * np.pi / FRAMES
    peak, seen = 40.0 * omega, 40.0 * omega * math.sin(x) / x
    for name in ("lv_peak_ejection_rate_ml_s", "lv_peak_filling_rate_ml_s"):
        assert cycle[name] == pytest.approx(seen, abs=0.5), name
        assert cycle[name] == pytest.approx(peak, rel=0.02), name
    assert cycle["lv_peak_ejection_frame"] == (shift + 5) % FRAMES
    assert cycle["lv_peak_filling_frame"] == (shift + 15) % FRAMES
    assert cycle["time_ms"] == pytest.approx(list(STEP_MS * np.arange(FRAMES)))
    assert cycle["periodic"] is True and "central differences" in cycle["rate_method"]
    dvdt = -40.0 * omega * np.sin(omega * (np.arange(FRAMES) - shift) * STEP_MS / 1000)
    np.testing.assert_allclose(cycle["lv_dvdt_ml_s"], dvdt * math.sin(x) / x, atol=0.5)


def test_one_cycle_wraps_round_and_a_real_time_series_does_not():
    """Periodic: rolling the frames rolls the derivative (the first frame's neighbour before it
    is the last). Not periodic: the ends are one-sided differences, and unequal steps are
    allowed (a straight line's slope comes back exactly)."""
    rng = np.random.default_rng(0)
    volume, ms = rng.uniform(50, 150, FRAMES), STEP_MS * np.arange(FRAMES)
    rate = volume_rate(volume, ms)
    for k in (1, 5, 13):
        np.testing.assert_allclose(volume_rate(np.roll(volume, k), ms), np.roll(rate, k))
    assert rate[0] == pytest.approx((volume[1] - volume[-1]) / (2 * STEP_MS / 1000))

    line = volume_rate(volume, ms, periodic=False)
    assert line[0] == pytest.approx((volume[1] - volume[0]) / (STEP_MS / 1000))
    assert line[-1] == pytest.approx((volume[-1] - volume[-2]) / (STEP_MS / 1000))
    uneven = np.array([0.0, 30.0, 45.0, 100.0, 160.0])
    np.testing.assert_allclose(volume_rate(80 - 0.25 * uneven, uneven, periodic=False), -250.0)


def test_rates_are_taken_in_their_phase():
    """PER is sought from ED to ES and PFR from ES round to ED: a filling-like spike inside
    systole is not the PFR, nor an ejection-like one inside diastole the PER. A real-time
    series (not one cycle) has no phases: its extremes are taken."""
    rate = np.zeros(FRAMES)
    rate[[3, 5, 15, 17]] = 500.0, -400.0, 300.0, -600.0  # ED 0 -> ES 10 -> ED 0
    assert peak_rates(rate, ed=0, es=10) == {
        "lv_peak_ejection_rate_ml_s": 400.0, "lv_peak_ejection_frame": 5,
        "lv_peak_filling_rate_ml_s": 300.0, "lv_peak_filling_frame": 15,
    }  # fmt: skip
    shifted = peak_rates(np.roll(rate, 12), ed=12, es=2)  # systole wraps past the last frame
    assert shifted["lv_peak_ejection_frame"] == 17 and shifted["lv_peak_filling_frame"] == 7
    real_time = peak_rates(rate, ed=0, es=10, periodic=False)
    assert real_time["lv_peak_ejection_frame"] == 17 and real_time["lv_peak_filling_frame"] == 3


def test_given_frames_are_kept_and_said_to_be_given():
    lv = sinusoid(100.0, 40.0)
    assert choose_phases(lv, ed=3) == {"ed": 3, "es": 10, "ed_from": "--ed",
                                       "es_from": "smallest LV volume"}  # fmt: skip
    assert choose_phases(lv[:1]) == {"ed": 0, "es": 0, "ed_from": "the only frame",
                                     "es_from": "the only frame"}  # fmt: skip
    with pytest.raises(ValueError, match=r"--es 20 is not a frame of this study \(0\.\.19\)"):
        choose_phases(lv, es=20)


# --- what cannot be measured is named ---------------------------------------------------------


def test_one_frame_names_every_curve_output_it_cannot_make():
    cycle, unavailable = cycle_summary(np.array([120.0]), nifti_frame_times(40, "msec", 1),
                                       {"ed": 0, "es": 0})  # fmt: skip
    nulls = {f"cycle.{k}" for k, v in cycle.items() if v is None}
    assert set(unavailable) == nulls
    assert {"cycle.lv_ef_percent", "cycle.lv_peak_ejection_rate_ml_s", "cycle.time_ms"} <= nulls
    assert "one frame" in unavailable["cycle.lv_ef_percent"]
    assert "one frame" in unavailable["cycle.lv_peak_filling_rate_ml_s"]


@pytest.mark.parametrize(
    ("step", "unit", "reason"),
    [
        (1.0, "unknown", "no time unit"),
        (0.0, "msec", "pixdim[4] is 0"),
        (float("nan"), "sec", "pixdim[4] is nan"),
        (3.0, "msec", "a 60 ms cycle, no heartbeat"),  # 20 frames of one repetition time
        (1.0, "hz", "no time unit"),
    ],
)
def test_without_usable_frame_times_the_rates_are_unavailable_with_the_reason(step, unit, reason):
    """The curve and its EF stay; the times, dV/dt, PER and PFR are None, each named with why."""
    lv = sinusoid(100.0, 40.0)
    cycle, unavailable = cycle_summary(lv, nifti_frame_times(step, unit, FRAMES),
                                       choose_phases(lv))  # fmt: skip
    assert cycle["lv_ef_percent"] == pytest.approx(100 * 80 / 140)
    for key in ("time_ms", "lv_dvdt_ml_s", "lv_peak_ejection_rate_ml_s",
                "lv_peak_filling_rate_ml_s"):  # fmt: skip
        assert cycle[key] is None
        assert reason in unavailable[f"cycle.{key}"], key
    assert set(unavailable) == {f"cycle.{k}" for k, v in cycle.items() if v is None}


def test_a_curve_without_lv_or_of_two_frames_has_no_ef_or_rates():
    cycle, unavailable = cycle_summary(np.zeros(FRAMES), times(), {"ed": 0, "es": 0})
    assert cycle["lv_ef_percent"] is None and cycle["time_ms"] is not None
    assert unavailable["cycle.lv_peak_ejection_rate_ml_s"] == "no LV in any frame"
    two = FrameTimes((0.0, 400.0), "test")
    cycle, unavailable = cycle_summary(np.array([140.0, 60.0]), two, {"ed": 0, "es": 1})
    assert cycle["lv_ef_percent"] == pytest.approx(100 * 80 / 140)
    assert "3 or more" in unavailable["cycle.lv_peak_filling_rate_ml_s"]


# --- frame times from the headers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "unit", "ms"), [(40.0, "msec", 40.0), (0.04, "sec", 40.0), (40000, "usec", 40.0)]
)
def test_nifti_frame_times_come_from_pixdim4_in_its_unit(step, unit, ms):
    found = nifti_frame_times(step, unit, 4)
    assert found.ms == pytest.approx((0.0, ms, 2 * ms, 3 * ms)) and found.periodic
    assert "pixdim[4]" in found.source


def test_dicom_frame_times_are_a_gated_cycle_or_a_real_time_series():
    gated = dicom_frame_times({"frame_order": "TriggerTime",
                               "trigger_times_ms": [12.0, 57.0, 102.0]}, 3)  # fmt: skip
    assert gated.ms == (12.0, 57.0, 102.0) and gated.periodic
    real_time = dicom_frame_times({"frame_order": "AcquisitionTime",
                                   "frame_times_ms": [0.0, 50.0, 100.0]}, 3)  # fmt: skip
    assert real_time.ms == (0.0, 50.0, 100.0) and not real_time.periodic
    untimed = dicom_frame_times({"frame_order": "InstanceNumber"}, 3)
    assert untimed.ms is None and "InstanceNumber" in untimed.source
    assert usable_times(real_time, 3)[0] is not None  # several beats: no one-cycle length check
    assert "do not rise" in usable_times(FrameTimes((0.0, 50.0, 50.0), "x"), 3)[1]
    assert "2 frame times for 3 frames" in usable_times(FrameTimes((0.0, 50.0), "x"), 3)[1]


# --- through `cmrfm predict` ------------------------------------------------------------------


def write_cine(path: Path, frames: int, step: float | None, unit: str = "msec") -> Path:
    """A 4D NIfTI cine of the test heart; pixdim[4] = ``step`` in ``unit`` (None: as nibabel
    leaves it, 1 with no unit)."""
    spacing = (10.0, 1.64, 1.64)
    write_nifti(path, study_image(heart((3, frames, 40, 44), spacing)), spacing)
    if step is not None:
        img = nib.load(path)
        header = img.header.copy()
        header["pixdim"][4] = step
        header.set_xyzt_units("mm", unit)
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header), path)
    return path


def measured_ml(seg_path: Path) -> dict[str, np.ndarray]:
    """Volumes (T,) in ml of the written label file, by nibabel alone."""
    seg = nib.load(seg_path)
    data = np.asarray(seg.dataobj)  # (X, Y, Z, T)
    voxel_ml = float(np.prod(seg.header.get_zooms()[:3])) / 1000.0
    return {n: (data == v).sum(axis=(0, 1, 2)) * voxel_ml for n, v in (("lv", LV), ("rv", RV),
                                                                       ("myo", MYO))}  # fmt: skip


def test_predict_writes_the_cycle_of_a_timed_cine(tmp_path, package, monkeypatch, capsys):
    """A 10-frame cine 40 ms apart: volumes.json has the times, the curves, ED/ES and why, EF
    from the curve and PER/PFR; curves.csv a row per frame; curves.png a plot; the terminal line
    says which frames and why. nibabel volumes of the written labels are the curve, at ED and
    ES too, and give the same EF and rates by an independent periodic central difference."""
    monkeypatch.setattr("finetune.evaluate.predict_study", drawn_heart)
    study, out = write_cine(tmp_path / "cine.nii.gz", 10, 40.0), tmp_path / "out"
    main(["predict", str(study), "--model", str(package), "--out", str(out)])
    console = capsys.readouterr().out
    volumes = json.loads((out / "volumes.json").read_text())
    cycle, frames = volumes["cycle"], volumes["phases"]
    ml = measured_ml(out / volumes["label_file"])

    assert cycle["time_ms"] == [40.0 * f for f in range(10)]
    assert cycle["times_from"] == "NIfTI pixdim[4]: 40 msec per frame"
    for name in ("lv", "rv", "myo"):
        np.testing.assert_allclose(volumes["per_frame_ml"][name], ml[name], rtol=1e-6)
    ed, es = int(np.argmax(ml["lv"])), int(np.argmin(ml["lv"]))
    assert (frames["ed"], frames["es"]) == (ed, es) and ed != es
    assert frames["ed_from"] == "largest LV volume" and frames["es_from"] == "smallest LV volume"
    assert volumes["lv"]["edv_ml"] == pytest.approx(ml["lv"][ed])
    assert volumes["lv"]["esv_ml"] == pytest.approx(ml["lv"][es])
    assert volumes["rv"]["edv_ml"] == pytest.approx(ml["rv"][ed])
    lv = ml["lv"]
    assert cycle["lv_ef_percent"] == pytest.approx(100 * (lv.max() - lv.min()) / lv.max())
    rate = (np.roll(lv, -1) - np.roll(lv, 1)) / 0.080  # ml/s, frames wrap round
    assert cycle["lv_peak_ejection_rate_ml_s"] == pytest.approx(-rate.min())
    assert cycle["lv_peak_filling_rate_ml_s"] == pytest.approx(rate.max())
    assert cycle["lv_peak_ejection_rate_ml_s"] > 0 and cycle["lv_peak_filling_rate_ml_s"] > 0
    # a NIfTI has everything a timed cine gives, but no source instances for a DICOM SEG or SR
    assert volumes["unavailable"] == {"seg.dcm": NEEDS_DICOM, "sr.dcm": NEEDS_DICOM}
    assert volumes["phases"]["rule"] and volumes["lv"]["ef_percent"] is not None  # kept keys

    with (out / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(10))
    assert [float(r["time_ms"]) for r in rows] == cycle["time_ms"]
    np.testing.assert_allclose([float(r["lv_ml"]) for r in rows], lv, rtol=1e-6)
    np.testing.assert_allclose([float(r["rv_ml"]) for r in rows], ml["rv"], rtol=1e-6)
    assert rows[ed]["phase"] == "ED" and rows[es]["phase"] == "ES"
    with Image.open(out / "curves.png") as png:
        assert png.width > 300 and png.height > 200
    assert f"ED frame {ed} (largest LV volume), ES frame {es} (smallest LV volume)" in console
    assert f"PER {cycle['lv_peak_ejection_rate_ml_s']:.1f} ml/s" in console


def test_predict_keeps_given_frames_and_names_what_a_header_without_times_prevents(
    tmp_path, package, monkeypatch, capsys
):
    """A cine whose header has no time unit (nibabel's default): curves, curve EF and
    curves.png (against frame number) still come out; the times and rates are named in
    ``unavailable`` with the reason. --ed is kept and said to be given."""
    monkeypatch.setattr("finetune.evaluate.predict_study", drawn_heart)
    study, out = write_cine(tmp_path / "cine.nii.gz", 6, None), tmp_path / "out"
    main(["predict", str(study), "--model", str(package), "--out", str(out), "--ed", "1"])
    volumes = json.loads((out / "volumes.json").read_text())
    assert volumes["phases"]["ed"] == 1 and volumes["phases"]["ed_from"] == "--ed"
    assert volumes["phases"]["es_from"] == "smallest LV volume"
    assert volumes["lv"]["edv_ml"] == pytest.approx(volumes["per_frame_ml"]["lv"][1])
    cycle, unavailable = volumes["cycle"], volumes["unavailable"]
    assert cycle["lv_ef_percent"] is not None and cycle["time_ms"] is None
    assert "no time unit" in unavailable["cycle.lv_peak_ejection_rate_ml_s"]
    assert "no time unit" in unavailable["cycle.time_ms"]
    assert (out / "curves.png").is_file()
    assert "PER n/a" in capsys.readouterr().out


def test_predict_on_one_frame_makes_what_it_can(tmp_path, package, monkeypatch):
    monkeypatch.setattr("finetune.evaluate.predict_study", drawn_heart)
    study, out = write_cine(tmp_path / "one.nii.gz", 1, None), tmp_path / "out"
    main(["predict", str(study), "--model", str(package), "--out", str(out)])
    volumes = json.loads((out / "volumes.json").read_text())
    unavailable = volumes["unavailable"]
    assert volumes["phases"]["ed_from"] == volumes["phases"]["es_from"] == "the only frame"
    assert volumes["lv"]["edv_ml"] > 0 and volumes["lv"]["mass_g"] > 0
    for key in ("lv.ef_percent", "rv.sv_ml", "cycle.lv_ef_percent",
                "cycle.lv_peak_ejection_rate_ml_s", "curves.png"):  # fmt: skip
        assert "one frame" in unavailable[key], key
    assert not (out / "curves.png").exists()
    assert {p.name for p in out.iterdir()} == {
        "one_seg.nii.gz", "volumes.json", "volumes.csv", "curves.csv", "overlay.png"
    }  # fmt: skip
    with (out / "curves.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 1


def test_predict_times_a_dicom_cine_by_its_trigger_times(tmp_path, package, monkeypatch):
    monkeypatch.setattr("finetune.evaluate.predict_study", drawn_heart)
    write_stack(tmp_path / "series", slices=2, frames=8, shape=(40, 44))  # TriggerTime 12 + 45 t
    main(["predict", str(tmp_path / "series"), "--model", str(package), "--out",
          str(tmp_path / "out")])  # fmt: skip
    cycle = json.loads((tmp_path / "out" / "volumes.json").read_text())["cycle"]
    assert cycle["time_ms"] == [12.0 + 45.0 * t for t in range(8)]
    assert "TriggerTime" in cycle["times_from"] and cycle["periodic"] is True
    assert cycle["lv_peak_ejection_rate_ml_s"] > 0
    header = nib.load(tmp_path / "out" / "study_seg.nii.gz").header  # frames 45 ms apart
    assert header.get_xyzt_units()[1] == "msec" and header["pixdim"][4] == pytest.approx(45.0)


def test_volumes_json_stays_valid_json_when_a_volume_is_unknown(tmp_path):
    """A study of unknown slice spacing has NaN volumes: volumes.json writes them as null."""
    from cmrfm.predict import finite

    volumes = {"lv": {"edv_ml": float("nan"), "ef_percent": 55.0}, "curve": [1.0, float("inf")]}
    assert finite(volumes) == {"lv": {"edv_ml": None, "ef_percent": 55.0}, "curve": [1.0, None]}
    assert json.loads(json.dumps(finite(volumes), allow_nan=False))["lv"]["edv_ml"] is None


def test_a_nifti_without_geometry_gets_every_output_and_says_its_orientation_is_unknown(
    tmp_path, package, monkeypatch
):
    monkeypatch.setattr("finetune.evaluate.predict_study", drawn_heart)
    study, out = write_cine(tmp_path / "bare.nii.gz", 4, 40.0), tmp_path / "out"
    img = nib.load(study)
    bare = nib.Nifti1Image(np.asarray(img.dataobj), None, img.header.copy())
    bare.header.set_sform(None, code=0)
    bare.header.set_qform(None, code=0)
    nib.save(bare, study)
    main(["predict", str(study), "--model", str(package), "--out", str(out)])
    volumes = json.loads((out / "volumes.json").read_text())
    assert "orientation unknown" in volumes["unavailable"]["orientation"]
    assert volumes["lv"]["edv_ml"] > 0 and volumes["cycle"]["lv_ef_percent"] is not None
    assert {"bare_seg.nii.gz", "overlay.png", "curves.png"} <= {p.name for p in out.iterdir()}
