"""`cmrfm bench loader`: both loaders measured on the same arrays, the ratio, the npy export;
augmentation in the loaders, or uint8 loaders with the device-side augmentation timed apart.

No timing thresholds: the numbers depend on the machine; these tests pin down what is compared.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from torch.utils.data import DataLoader, IterableDataset

from cmrfm.bench.loader import (
    SPLITS,
    ClipLoading,
    bench_loader,
    export_npy,
    plain_loader,
    shard_loader,
)
from cmrfm.bench.loader_report import LOADERS
from cmrfm.bench.loader_timing import measure
from cmrfm.cli import main
from data_shards.clips import cyclic_window
from data_shards.stream import load_subjects

FRAMES = 3  # fewer than the phantom's 4, so windows wrap


@pytest.fixture(scope="module")
def shards(make_phantom_shards) -> Path:
    return make_phantom_shards(6, 2)


def _quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.mark.parametrize(("augment_on", "dtype"), [("loader", "float32"), ("device", "uint8")])
def test_result_holds_both_loaders_their_ratio_and_the_extrapolation(
    shards: Path, tmp_path: Path, augment_on: str, dtype: str
) -> None:
    out = tmp_path / "loader.json"
    result = bench_loader(shards, workers=[0, 1], frames=FRAMES, seconds=0.2, batch=4,
                          augment=True, augment_on=augment_on, rounds=2, out=out,
                          console=_quiet())  # fmt: skip
    assert result["config"]["augment"] is True
    assert result["config"]["augment_on"] == augment_on
    assert [run["workers"] for run in result["runs"]] == [0, 1]
    for run in result["runs"]:
        shard, plain = run["shards"], run["plain"]
        assert shard["clips"] > 0 and plain["clips"] > 0
        assert run["ratio"] == shard["clips_per_s"] / plain["clips_per_s"]
        by_cpu = shard["clips_per_cpu_s"], plain["clips_per_cpu_s"]
        if None in by_cpu:  # a 0.2 s run on a loaded machine can register no CPU tick
            assert run["ratio_by_cpu"] is None
        else:
            assert run["ratio_by_cpu"] == by_cpu[0] / by_cpu[1]
        # Same clips: shape (1, F, H, W), dtype, and the same (subject, slice) pairs to draw from.
        assert shard["clip_shape"] == plain["clip_shape"] == [1, FRAMES, 48, 48]
        assert shard["clip_dtype"] == plain["clip_dtype"] == f"torch.{dtype}"
        assert shard["pairs_available"] == plain["pairs_available"] > 0
        for stats in (shard, plain):
            megabytes = stats["clips"] * FRAMES * 48 * 48 / 1e6  # uint8 payload
            assert stats["mb_per_s"] == pytest.approx(megabytes / stats["seconds"])
            assert stats["clips_per_cpu_s"] == stats["clips"] / stats["cpu_seconds"]
    one_worker = result["runs"][1]
    for name in LOADERS:
        e = result["extrapolation"][name]
        assert e["from_workers"] == 1
        assert e["per_core_clips_per_s"] == one_worker[name]["clips_per_s_per_worker"]
        assert e["clips_per_s"] == pytest.approx(16 * e["per_core_clips_per_s"])
        assert e["clips_per_cpu_s"] == one_worker[name]["clips_per_cpu_s"]
        assert e["clips_per_s_by_cpu"] == pytest.approx(16 * e["clips_per_cpu_s"])
        # 6,000 clips/s of 16 x 128 x 128 is the same bytes/s as more of these smaller clips.
        assert e["target_clips_per_s"] == pytest.approx(6000 * 16 * 128 * 128 / (FRAMES * 48 * 48))
    device = result["device_augment"]
    if augment_on == "loader":
        assert device is None  # the loaders' rates already include it
    else:  # timed apart on batches of the same clips, at least one batch
        assert device["cpu"]["clips"] >= 4 and device["cpu"]["clips"] % 4 == 0
        cpu = device["cpu"]
        assert cpu["ms_per_clip"] == pytest.approx(1e3 * cpu["seconds"] / cpu["clips"])
        assert cpu["cpu_ms_per_clip"] == pytest.approx(1e3 * cpu["cpu_seconds"] / cpu["clips"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))


def test_npy_export_round_trips_the_shard_arrays_byte_for_byte(
    shards: Path, tmp_path: Path
) -> None:
    files = export_npy(shards, tmp_path)
    subjects = load_subjects(shards, splits=list(SPLITS))
    assert [f.stem for f in files] == [s["key"] for s in subjects]
    for path, subject in zip(files, subjects):
        array = np.load(path)
        assert array.dtype == np.uint8 and array.shape == subject["image"].shape
        assert array.tobytes() == subject["image"].tobytes()


@pytest.mark.parametrize(("augment", "output"), [(False, "float"), (True, "float"),
                                                 (False, "uint8")])  # fmt: skip
def test_both_loaders_cut_cyclic_windows_of_the_same_slices(
    shards: Path, tmp_path: Path, augment: bool, output: str
) -> None:
    """Without augmentation every clip is a raw window of its slice; with it, not all are.
    The uint8 loaders of device-side augmentation ship the raw windows themselves."""
    images = {s["key"]: s["image"] for s in load_subjects(shards, splits=list(SPLITS))}
    files = export_npy(shards, tmp_path)
    loading = ClipLoading(FRAMES, batch=8, workers=0, augment=augment, seed=0, output=output)
    loaders = {"shards": shard_loader(shards, loading), "plain": plain_loader(files, loading)}
    for name, loader in loaders.items():
        batch = next(iter(loader))
        assert batch["clip"].dtype == (torch.uint8 if output == "uint8" else torch.float32)
        raw = []
        for clip, key, index in zip(batch["clip"], batch["key"], batch["slice"].tolist()):
            if output == "uint8":
                uint8 = clip[0].numpy()
            else:
                uint8 = np.rint(clip[0].numpy() * 255).astype(np.uint8)  # (F, H, W)
            volume = images[key][index]  # (T, H, W)
            windows = [volume[cyclic_window(t, FRAMES, len(volume))] for t in range(len(volume))]
            raw.append(any(np.array_equal(uint8, w) for w in windows))
        assert all(raw) if not augment else not all(raw), name


def test_each_loader_gets_a_fresh_augmentation(tmp_path: Path) -> None:
    """Sharing one would share its random state between the loaders' workers."""
    files = [tmp_path / "a.npy"]
    np.save(files[0], np.zeros((1, 4, 8, 8), np.uint8))
    loading = ClipLoading(FRAMES, batch=2, workers=0, augment=True)
    first, second = (plain_loader(files, loading).dataset for _ in range(2))
    assert first.augment is not None and first.augment is not second.augment
    off = ClipLoading(FRAMES, batch=2, workers=0, augment=False, output="uint8")
    assert plain_loader(files, off).dataset.augment is None


@pytest.mark.parametrize("augment_on", [None, "loader"])
def test_cli_runs_the_benchmark_and_writes_json(
    shards: Path, tmp_path: Path, augment_on: str | None
) -> None:
    out = tmp_path / "bench.json"
    where = [] if augment_on is None else ["--augment-on", augment_on]
    main(["bench", "loader", "--shards", str(shards), "--workers", "0", "--frames", "2",
          "--seconds", "0.1", "--batch", "2", "--no-augment", *where,
          "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert result["config"]["workers"] == [0]
    assert result["config"]["augment"] is False
    assert result["config"]["augment_on"] == (augment_on or "device")  # a GPU job's default
    assert result["runs"][0]["shards"]["clip_shape"] == [1, 2, 48, 48]
    dtype = "torch.uint8" if augment_on is None else "torch.float32"
    assert result["runs"][0]["shards"]["clip_dtype"] == dtype


@pytest.mark.parametrize("workers", ["", "a,1", "0,-1"])
def test_cli_rejects_bad_worker_lists(workers: str) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "loader", "--workers", workers])


def test_cli_rejects_an_unknown_place_to_augment() -> None:
    with pytest.raises(SystemExit):
        main(["bench", "loader", "--augment-on", "gpu"])


class _Logged(IterableDataset):
    """Endless tiny clips that log which loader made each one."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def __iter__(self) -> Iterator[dict]:
        while True:
            self.log.append(self.name)
            yield {"clip": torch.zeros(1, 1, 2, 2), "key": self.name, "slice": 0}


@pytest.mark.parametrize(("first", "expected"), [(0, "abab"), (1, "baba")])
def test_loaders_take_turns_reversing_the_order_every_round(first: int, expected: str) -> None:
    log: list[str] = []
    loaders = {name: DataLoader(_Logged(name, log), batch_size=2) for name in "ab"}
    stats = measure(loaders, seconds=0.03, workers=0, rounds=3, first=first)
    runs = "".join(name for i, name in enumerate(log) if i == 0 or log[i - 1] != name)
    assert runs == expected  # A B | B A | A B: the middle slices join up
    for name in "ab":  # at least one timed batch per slice; warm-up batches not counted
        assert 3 * 2 <= stats[name]["clips"] <= log.count(name) - 2 * 2
        assert stats[name]["seconds"] >= 0.03
