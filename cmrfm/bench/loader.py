"""`cmrfm bench loader`: clips/s of the shard pipeline against a plain reader of the same arrays.

Both loaders feed a torch DataLoader with the same workers, batch, clip length and augmentation:

* shards: ``data_shards.stream.pretrain_dataset`` (resampled shards, as pretraining reads them);
* plain: the simplest loader a user would write: one ``.npy`` per subject (the same uint8
  arrays, exported from the shards), ``np.load``, one random cyclic clip per slice.

Where the augmentation runs (``augment_on``), as ``ClipDataModule`` does it:

* loader: each worker augments its clips and ships float32 (1, F, H, W);
* device (what a GPU job runs): both loaders ship the raw uint8 clips and the batched
  augmentation (``BatchClipAugment``) runs after the transfer; it is timed apart on this
  machine's CPU (one thread) and, when there is one, on its GPU.

At each worker count both loaders run side by side and take turns in time slices (A B, B A,
A B): each slice first skips the batches made outside it (worker start-up, prefetch), then
counts clips for a fixed time, so drifting machine load reaches both alike.

This module holds the entry point and the two loaders; the timing is in ``loader_timing``, the
extrapolation and the table in ``loader_report``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import webdataset as wds
from rich.console import Console
from torch.utils.data import DataLoader, IterableDataset

from cmrfm.bench.loader_report import (
    LOADERS,
    device_augment_lines,
    extrapolate,
    extrapolation_lines,
    results_table,
)
from cmrfm.bench.loader_timing import measure, measure_device_augment
from cmrfm.bench.machine import load_average, torch_threads
from cmrfm.bench.results import show_and_write
from data_shards.augment import clip_augment
from data_shards.clips import cyclic_window
from data_shards.stream import Augment, decode, pretrain_dataset, shard_urls
from data_shards.writer import read_manifest

SPLITS = ("train", "val")  # what pretraining reads (pretrain_dataset's default)
PHANTOM = {"n": 24, "slices": 8, "spacing": 1.5}  # default bench cohort (frames, size: CLI)
AugmentOn = Literal["loader", "device"]
AUGMENT_ON = get_args(AugmentOn)


def bench_loader(
    shards: Path | None = None,
    *,
    workers: Sequence[int] = (0, 1, 2),
    frames: int = 16,
    size: int = 128,
    seconds: float = 10.0,
    augment: bool = True,
    augment_on: AugmentOn = "device",
    batch: int = 32,
    rounds: int = 3,
    seed: int = 0,
    cache: Path = Path(".cache/bench"),
    out: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measure both loaders at every worker count, print the table, return the results.

    Args:
        shards: a shard folder; None builds (or reuses) phantom shards under ``cache``.
        workers: DataLoader worker counts to measure (0 = in the main process).
        frames: clip length F.
        size: phantom image size (H = W) when ``shards`` is None.
        seconds: timed budget of each loader at each worker count, after warm-up.
        augment: apply the pretraining augmentation to both loaders' clips.
        augment_on: ``"loader"``: in the workers (float32 clips); ``"device"``: the loaders
            ship uint8 and the batched augmentation (or, without ``augment``, the conversion
            to float) is timed apart per clip, on the CPU and on a GPU if there is one.
        batch: clips per batch.
        rounds: the budget is split into this many alternating slices per loader.
        seed: seeds clip starts and orders in both loaders.
        cache: where phantom shards are built when ``shards`` is None.
        out: a JSON file for the results (not written when None).
        console: where the table goes (default: a new stdout console).

    Returns:
        ``{"config", "runs": [{"workers", "shards": {...}, "plain": {...}, "ratio",
        "ratio_by_cpu"}],
        "extrapolation": {loader: {...}}, "device_augment": {device: {...}} or None}``; per
        loader: clips, seconds, clips_per_s, mb_per_s, clips_per_s_per_worker, cpu_seconds,
        clips_per_cpu_s, clip_shape, clip_dtype, pairs_available, pairs_seen; per device (device
        mode only): clips, seconds, ms_per_clip, clips_per_s.
    """
    console = console or Console()
    if any(w < 0 for w in workers) or not workers:
        raise ValueError(f"workers must be a non-empty list of counts >= 0, got {list(workers)}")
    if rounds < 1 or seconds <= 0:
        raise ValueError(f"rounds must be >= 1 and seconds > 0, got {rounds} and {seconds}")
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {AUGMENT_ON}, got {augment_on!r}")
    if shards is None:
        shards = phantom_shards(Path(cache), frames=frames, size=size, console=console)
    config = {
        "shards": str(shards),
        "workers": list(workers),
        "frames": frames,
        "batch": batch,
        "seconds": seconds,
        "augment": augment,
        "augment_on": augment_on,
        "seed": seed,
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
    }
    on_loader = augment and augment_on == "loader"
    output = "float" if augment_on == "loader" else "uint8"
    # One torch thread in the main process too (workers have one): a run measures one core.
    with torch_threads(1):
        runs = _measure_all(
            shards, workers, frames, batch, seconds, on_loader, output, seed, rounds, console
        )
        device_augment = None
        if augment_on == "device":
            shape = runs[0]["shards"]["clip_shape"]
            with console.status("timing the batched augmentation"):
                budget = min(seconds, 5.0)  # steady per-batch work: seconds suffice
                device_augment = measure_device_augment(
                    shape, batch, augment, seconds=budget, seed=seed
                )
    config["load_average_after"] = load_average()
    result = {
        "config": config,
        "runs": runs,
        "extrapolation": extrapolate(runs),
        "device_augment": device_augment,
    }
    shown = [results_table(result), *extrapolation_lines(result["extrapolation"])]
    if device_augment is not None:
        shown += device_augment_lines(device_augment, result["extrapolation"], augment)
    show_and_write(result, shown, out, console)
    return result


def _measure_all(
    shards: Path,
    workers: Sequence[int],
    frames: int,
    batch: int,
    seconds: float,
    augment: bool,
    output: str,
    seed: int,
    rounds: int,
    console: Console,
) -> list[dict[str, Any]]:
    """Both loaders at every worker count, in alternating slices (see :func:`measure`).

    ``augment``: in the loaders; ``output``: "float" or "uint8" clips from both.
    """
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-npy-") as folder:
        with console.status("exporting the same arrays to .npy files"):
            files = export_npy(shards, Path(folder))
        available = {
            "shards": shard_pairs(shards),
            "plain": sum(np.load(f, mmap_mode="r").shape[0] for f in files),
        }
        for i, n_workers in enumerate(workers):
            loading = ClipLoading(frames, batch, n_workers, augment, seed, output)
            loaders = {
                "shards": shard_loader(shards, loading),
                "plain": plain_loader(files, loading),
            }
            with console.status(f"{n_workers} workers: {seconds:g} s per loader"):
                run: dict[str, Any] = {"workers": n_workers}
                run |= measure(loaders, seconds, n_workers, rounds, first=i % 2)
            for name in LOADERS:
                run[name]["pairs_available"] = available[name]
            run["ratio"] = run["shards"]["clips_per_s"] / run["plain"]["clips_per_s"]
            by_cpu = run["shards"]["clips_per_cpu_s"], run["plain"]["clips_per_cpu_s"]
            run["ratio_by_cpu"] = None if None in by_cpu else by_cpu[0] / by_cpu[1]
            runs.append(run)
    return runs


def phantom_shards(cache: Path, *, frames: int, size: int, console: Console | None = None) -> Path:
    """Phantom shards (24 subjects x 8 slices x ``frames`` x ``size``^2) under ``cache``, reused."""
    from data_shards.convert import convert
    from data_shards.preprocess import PreprocessConfig

    options = {**PHANTOM, "frames": frames, "size": size}
    out = cache / f"phantom-n{options['n']}-s{options['slices']}-f{frames}-x{size}"
    try:
        if read_manifest(out).get("source_options") == options:
            return out
    except FileNotFoundError:
        pass
    # Same spacing in source and target grid: preprocessing only windows intensities.
    preprocess = PreprocessConfig(spacing=options["spacing"], size=size)
    # Several shards, so DataLoader workers draw different ones as in real pretraining.
    convert(
        "phantom",
        None,
        out,
        preprocess_config=preprocess,
        source_options=options,
        maxcount=4,
        console=console,
        overwrite=True,
    )
    return out


def _samples(shards: Path, splits: Sequence[str] = SPLITS) -> Iterator[dict[str, Any]]:
    """Decoded subjects of ``splits``, one at a time in shard order (flat memory)."""
    dataset = wds.WebDataset(
        shard_urls(shards), shardshuffle=False, nodesplitter=None, workersplitter=None
    )
    for sample in dataset:
        if json.loads(sample["meta.json"]).get("split") in splits:
            yield decode(sample)


def export_npy(shards: Path, folder: Path, splits: Sequence[str] = SPLITS) -> list[Path]:
    """Write each subject's uint8 image (S, T, H, W) to ``folder/<key>.npy``; the paths, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for subject in _samples(shards, splits):
        path = folder / f"{subject['key']}.npy"
        np.save(path, subject["image"], allow_pickle=False)
        files.append(path)
    if not files:
        raise ValueError(f"{shards}: no subjects in splits {list(splits)} to benchmark")
    return sorted(files)


def shard_pairs(shards: Path, splits: Sequence[str] = SPLITS) -> int:
    """Distinct (subject, slice) pairs the shard pipeline can draw clips from."""
    samples = read_manifest(shards)["samples"]
    return sum(s["shape"][0] for s in samples if s["split"] in splits)


class NpyClips(IterableDataset):
    """Endless per-slice clips from ``.npy`` files: ``{"clip": float32 (1, F, H, W), key, slice}``.

    Each pass shuffles this worker's files, loads each whole and cuts one random cyclic window
    per slice, as the shard pipeline does; workers read disjoint files. ``augment`` takes the
    uint8 clip (F, H, W) to float32 (F, H, W) in [0, 1], as in ``pretrain_dataset``;
    ``output="uint8"`` yields the raw uint8 clips instead (no augmentation then).
    """

    def __init__(
        self,
        files: Sequence[Path],
        frames: int,
        seed: int = 0,
        augment: Augment | None = None,
        output: str = "float",
    ) -> None:
        if output == "uint8" and augment is not None:
            raise ValueError("output='uint8' yields raw clips: augment must be None")
        self.files = [Path(f) for f in files]
        self.frames = frames
        self.seed = seed
        self.augment = augment
        self.output = output

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        files = self.files[worker::n_workers] or self.files  # more workers than files: repeat
        rng = np.random.default_rng([self.seed, worker])
        if hasattr(self.augment, "set_random_state"):
            self.augment.set_random_state(seed=int(rng.integers(2**32)))
        while True:
            for index in rng.permutation(len(files)):
                image = np.load(files[index])  # (S, T, H, W) uint8
                n_frames = image.shape[1]
                for s in range(image.shape[0]):
                    window = cyclic_window(int(rng.integers(n_frames)), self.frames, n_frames)
                    clip = image[s, window]  # uint8 (F, H, W)
                    if self.output == "uint8":  # as pretrain_dataset(output="uint8")
                        tensor = torch.from_numpy(np.ascontiguousarray(clip))
                    elif self.augment is not None:
                        tensor = torch.as_tensor(self.augment(clip), dtype=torch.float32)
                    else:  # numpy, as the shard pipeline does: no torch intra-op threads
                        array = clip.astype(np.float32)
                        array /= 255.0
                        tensor = torch.from_numpy(array)
                    yield {"clip": tensor[None], "key": files[index].stem, "slice": s}


def augmentation(enabled: bool) -> Augment | None:
    """A fresh pretraining augmentation (default strengths), or None when off."""
    return clip_augment() if enabled else None


@dataclass(frozen=True)
class ClipLoading:
    """What both loaders share: clip length, batch, workers, augmentation, seed and output.

    augment: the pretraining augmentation in the loader, a fresh one per loader (each seeds its
    own copy per worker); output: "float" or "uint8" clips (raw, so no augmentation then).
    """

    frames: int
    batch: int
    workers: int
    augment: bool
    seed: int = 0
    output: str = "float"

    def loader(self, dataset: IterableDataset) -> DataLoader:
        """dataset in a DataLoader with this batch and these workers."""
        return DataLoader(dataset, batch_size=self.batch, num_workers=self.workers)


def shard_loader(shards: Path, loading: ClipLoading) -> DataLoader:
    """The pretraining pipeline as ``ClipDataModule`` builds it, without an epoch bound."""
    dataset = pretrain_dataset(
        shards,
        frames=loading.frames,
        splits=SPLITS,
        resampled=True,
        seed=loading.seed,
        augment=augmentation(loading.augment),
        output=loading.output,
    )
    return loading.loader(dataset)


def plain_loader(files: Sequence[Path], loading: ClipLoading) -> DataLoader:
    """:class:`NpyClips` of ``files`` in the same kind of DataLoader."""
    augment = augmentation(loading.augment)
    return loading.loader(NpyClips(files, loading.frames, loading.seed, augment, loading.output))
