"""`cmrfm inspect`: counts match the manifest, corrupt shards reported, blank frames flagged."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers.convert import blank_cases
from helpers.npz import cine, quiet, save

from cmrfm.cli import main
from data_shards import sources
from data_shards.convert import convert
from data_shards.inspect import histogram, inspect_shards, shard_summary
from data_shards.preprocess import PreprocessConfig
from data_shards.writer import read_manifest

N_SUBJECTS, N_SLICES = 8, 2


@pytest.fixture(scope="module")
def shards(make_phantom_shards) -> Path:
    """Phantom cine subjects (4 frames) and a few single-frame LGE subjects."""
    return make_phantom_shards(N_SUBJECTS, N_SLICES, lge_fraction=0.25)


def test_cli_summary_counts_equal_the_manifest(shards: Path, tmp_path: Path) -> None:
    main(["inspect", str(shards), "--out", str(tmp_path), "--clips", "2", "--frames", "2"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    manifest = read_manifest(shards)
    samples = manifest["samples"]
    modalities = Counter(s["modality"] for s in samples)
    assert set(modalities) == {"cine", "lge"}  # the fixture holds both, or the test means little

    assert summary["subjects"] == len(samples) == N_SUBJECTS
    assert summary["splits"] == {k: len(v) for k, v in manifest["splits"].items()}
    for row in summary["counts"]:
        kind = (row["source"], row["modality"])
        mine = [s for s in samples if (s["source"], s["modality"]) == kind]
        assert row["total"] == len(mine) == modalities[row["modality"]]
        assert row["labelled"] == sum(s["has_label"] for s in mine)
        for split in manifest["splits"]:
            assert row[split] == sum(s["split"] == split for s in mine)
    assert summary["quarantined"] == {"count": 0, "reasons": []}
    assert summary["blank"] == {"subjects": 0, "frames": 0, "listed": []}  # phantoms are images
    assert summary["problems"] == []

    # Histograms count every subject; LGE has one frame, cine the phantom's four.
    for name, rows in summary["histograms"].items():
        assert sum(r["count"] for r in rows) == N_SUBJECTS, name
    t_counts = {r["value"]: r["count"] for r in summary["histograms"]["T"]}
    assert t_counts == {"1": modalities["lge"], "4": modalities["cine"]}
    assert summary["histograms"]["original dy (mm)"] == [{"value": "2", "count": N_SUBJECTS}]
    assert (tmp_path / "contact_sheet.png").is_file()


def test_summary_json_is_what_inspect_returns(shards: Path, tmp_path: Path) -> None:
    summary = inspect_shards(shards, tmp_path, clips=1, frames=1)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_corrupt_shard_is_reported_and_fails_the_command(shards: Path, tmp_path: Path) -> None:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    shard = copy / read_manifest(copy)["shards"][0]["name"]
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    shard.write_bytes(bytes(data))

    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(copy), "--clips", "1", "--frames", "1"])
    assert exit_info.value.code == 1
    summary = json.loads((copy / "inspect" / "summary.json").read_text())
    assert any(shard.name in p and "sha256" in p for p in summary["problems"])


def test_a_manifest_cut_short_is_named_in_one_line(shards: Path, tmp_path: Path, capsys) -> None:
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])  # a copy that stopped early
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", str(copy), "--clips", "1", "--frames", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"cmrfm inspect: error: {manifest}: not valid JSON (")


def test_quarantine_reasons_are_counted_and_listed(shards: Path) -> None:
    quarantine = [
        {"input": f"input-00000000000{i}", "position": i + 1, "reason": "no spacing"}
        for i in range(7)
    ]
    summary = shard_summary(read_manifest(shards), quarantine=quarantine)
    assert summary["quarantined"]["count"] == 7
    assert summary["quarantined"]["reasons"][0] == "input-000000000000 (input 1): no spacing"
    assert len(summary["quarantined"]["reasons"]) == 5  # the first few, not all


def test_the_terminal_shows_a_quarantined_inputs_local_path_and_the_summary_does_not(
    tmp_path: Path, capsys
) -> None:
    """Folder names are often PatientIDs: summary.json keeps the keyed id, and only the
    operator's terminal is told which local file it is."""
    root = tmp_path / "export"
    root.mkdir()
    save(root / "good.npz", cine=cine())
    (root / "PID8675309_scan.npz").write_bytes(b"not a zip archive")
    out = tmp_path / "shards"
    convert("npz", root, out, preprocess_config=PreprocessConfig(size=8), console=quiet())
    capsys.readouterr()
    main(["inspect", str(out), "--out", str(tmp_path / "inspect"), "--clips", "1"])
    shown = capsys.readouterr().out
    assert str(root / "PID8675309_scan.npz") in shown.replace("\n", "")
    assert "PID8675309" not in (tmp_path / "inspect" / "summary.json").read_text()
    assert "PID8675309" not in (out / "quarantine.json").read_text()


def test_histogram_counts_values_bins_and_unknowns() -> None:
    assert histogram([1, 1, 2, None]) == [
        {"value": "1", "count": 2},
        {"value": "2", "count": 1},
        {"value": "unknown", "count": 1},
    ]
    sizes = histogram(list(range(6, 19)), bins=4)  # 13 slice counts: bins of 4 integers
    assert sizes == [
        {"value": "6-9", "count": 4},
        {"value": "10-13", "count": 4},
        {"value": "14-17", "count": 4},
        {"value": "18", "count": 1},
    ]
    values = list(np.linspace(0.7, 1.9, 40))
    rows = histogram(values, bins=4)
    assert len(rows) == 4 and sum(r["count"] for r in rows) == 40
    assert rows[0]["value"].startswith("[0.7,") and rows[-1]["value"].endswith("1.9]")


@pytest.mark.parametrize("checked", [True, False], ids=["converted_now", "converted_before"])
def test_blank_frames_are_flagged(tmp_path: Path, monkeypatch, capsys, checked: bool) -> None:
    """A kept study's blank slice is listed; so is a blank study in shards converted before the
    conversion quarantined them (found from the stored images)."""
    monkeypatch.setitem(sources.SOURCES, "blanks", blank_cases)
    if not checked:  # a conversion that looked for nothing
        monkeypatch.setattr(
            "data_shards.preprocess.blank_frames", lambda flat, w: (np.zeros(len(flat), bool), None)
        )
    shards = tmp_path / "shards"
    convert("blanks", None, shards, preprocess_config=PreprocessConfig(spacing=1.5, size=12))
    keys = {s["subject"]: s["key"] for s in read_manifest(shards)["samples"]}
    capsys.readouterr()
    main(["inspect", str(shards), "--out", str(tmp_path / "out"), "--clips", "1"])
    blank = json.loads((tmp_path / "out" / "summary.json").read_text())["blank"]
    one = f"{keys['one_blank']}: 1 of 6 frames blank (slice 1 frame 0)"
    if checked:
        assert blank == {"subjects": 1, "frames": 1, "listed": [one]}
    else:
        zeros = (
            f"{keys['zeros']}: all 6 frames blank (no image: a conversion quarantines such a study)"
        )
        assert blank["subjects"] == 3 and blank["frames"] == 1 + 6 + 6  # zeros, hot, one_blank
        assert one in blank["listed"] and zeros in blank["listed"]
    out = capsys.readouterr().out
    assert "blank frames" in out and one in out.replace("\n", " ")
