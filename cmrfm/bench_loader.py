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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, IterableDataset

from data_shards.augment import BatchClipAugment, clip_augment, to_unit
from data_shards.stream import Augment, cyclic_window, decode, pretrain_dataset, shard_urls
from data_shards.writer import read_manifest

LOADERS = ("shards", "plain")
SPLITS = ("train", "val")  # what pretraining reads (pretrain_dataset's default)
# What one H100 consumes in MAE pretraining: 6,000 clips/s of 16 x 128 x 128 uint8 voxels.
H100_CLIPS_PER_S = 6000
H100_CLIP_VOXELS = 16 * 128 * 128
EXTRAPOLATE_WORKERS = 16
PHANTOM = {"n": 24, "slices": 8, "spacing": 1.5}  # default bench cohort (frames, size: CLI)
AUGMENT_ON = ("loader", "device")


def bench_loader(
    shards: Path | None = None,
    *,
    workers: Sequence[int] = (0, 1, 2),
    frames: int = 16,
    size: int = 128,
    seconds: float = 10.0,
    augment: bool = True,
    augment_on: str = "device",
    batch: int = 32,
    seed: int = 0,
    rounds: int = 3,
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
        seed: seeds clip starts and orders in both loaders.
        rounds: the budget is split into this many alternating slices per loader.
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
        "load_average_before": list(os.getloadavg()),
    }
    # One torch thread in the main process too (workers have one): a run measures one core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    on_loader = augment and augment_on == "loader"
    output = "float" if augment_on == "loader" else "uint8"
    try:
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
    finally:
        torch.set_num_threads(threads)
    config["load_average_after"] = list(os.getloadavg())
    result = {
        "config": config,
        "runs": runs,
        "extrapolation": extrapolate(runs),
        "device_augment": device_augment,
    }
    console.print(results_table(result))
    for line in extrapolation_lines(result["extrapolation"]):
        console.print(line)
    if device_augment is not None:
        for line in device_augment_lines(device_augment, result["extrapolation"], augment):
            console.print(line)
    if out is not None:
        write_result(result, out)
        console.print(f"wrote {out}")
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
            # A fresh augmentation per loader: each seeds its own copy per worker.
            loaders = {
                "shards": shard_loader(
                    shards, frames, batch, n_workers, augmentation(augment), seed, output
                ),
                "plain": plain_loader(
                    files, frames, batch, n_workers, augmentation(augment), seed, output
                ),
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


def shard_loader(
    shards: Path,
    frames: int,
    batch: int,
    workers: int,
    augment: Augment | None,
    seed: int,
    output: str = "float",
) -> DataLoader:
    """The pretraining pipeline as ``ClipDataModule`` builds it, without an epoch bound."""
    dataset = pretrain_dataset(
        shards,
        frames=frames,
        splits=SPLITS,
        resampled=True,
        seed=seed,
        augment=augment,
        output=output,
    )
    return DataLoader(dataset, batch_size=batch, num_workers=workers)


def plain_loader(
    files: Sequence[Path],
    frames: int,
    batch: int,
    workers: int,
    augment: Augment | None,
    seed: int,
    output: str = "float",
) -> DataLoader:
    """:class:`NpyClips` in a DataLoader with the same batch and workers."""
    dataset = NpyClips(files, frames, seed, augment, output)
    return DataLoader(dataset, batch_size=batch, num_workers=workers)


class TimedLoader:
    """A loader's live iterator, its worker processes, and clip/wall/CPU totals over slices.

    Both loaders stay alive side by side and take turns, so machine load that drifts during a
    run reaches both alike. CPU time is that of this process plus this loader's own workers:
    clips per CPU-second is the per-core rate even when other jobs share the cores.
    """

    def __init__(self, loader: DataLoader, workers: int) -> None:
        import psutil  # a dependency of deepspeed

        me = psutil.Process()
        before = {child.pid for child in me.children()}
        self.iterator = iter(loader)  # starts the workers
        self.processes = [me, *(c for c in me.children() if c.pid not in before)]
        self.workers = workers
        # First slice: each worker's first batch carries its start-up (fork, imports, first
        # shard or file, shuffle buffer). Later slices: the batches prefetched while the other
        # loader ran (2 per worker) were made outside the timed window.
        self.skip = 2 * max(1, workers)
        self.clips, self.seconds, self.cpu = 0, 0.0, 0.0
        self.pairs: set[tuple[str, int]] = set()
        self.shape: list[int] = []
        self.dtype = ""

    def run(self, seconds: float) -> None:
        """Skip the stale batches, then count clips for ``seconds`` (at least one batch)."""
        for _ in range(self.skip):
            first = next(self.iterator)
            self.shape, self.dtype = list(first["clip"].shape[1:]), str(first["clip"].dtype)
        self.skip = 2 * self.workers
        cpu_start, start = self._cpu(), time.perf_counter()
        while True:
            batch = next(self.iterator)
            self.clips += len(batch["clip"])
            self.pairs.update(zip(batch["key"], batch["slice"].tolist()))
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        self.seconds += elapsed
        self.cpu += self._cpu() - cpu_start

    def _cpu(self) -> float:
        import psutil

        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(process.cpu_times()[:2])  # user + system
        return total

    def close(self) -> None:
        del self.iterator  # stops the workers now rather than at garbage collection

    def stats(self) -> dict[str, Any]:
        megabytes = self.clips * math.prod(self.shape) / 1e6  # uint8 payload: a byte per voxel
        return {
            "clips": self.clips,
            "seconds": self.seconds,
            "clips_per_s": self.clips / self.seconds,
            "mb_per_s": megabytes / self.seconds,
            "clips_per_s_per_worker": self.clips / self.seconds / max(1, self.workers),
            "cpu_seconds": self.cpu,
            "clips_per_cpu_s": self.clips / self.cpu if self.cpu > 0 else None,
            "clip_shape": self.shape,
            "clip_dtype": self.dtype,
            "pairs_seen": len(self.pairs),
        }


def measure(
    loaders: dict[str, DataLoader], seconds: float, workers: int, rounds: int, first: int = 0
) -> dict[str, dict[str, Any]]:
    """Time every loader for ``seconds`` in total, in ``rounds`` alternating slices.

    Args:
        loaders: name -> DataLoader, all with ``workers`` workers.
        seconds: timed budget per loader, split evenly over the rounds.
        workers: the loaders' worker count (how many prefetched batches to skip).
        rounds: slices per loader; the order reverses every round (A B, B A, A B, ...).
        first: which loader goes first in round 0 (alternate it between calls).
    """
    timed = {name: TimedLoader(loader, workers) for name, loader in loaders.items()}
    names = list(loaders)
    try:
        for r in range(rounds):
            order = names if (r + first) % 2 == 0 else names[::-1]
            for name in order:
                timed[name].run(seconds / rounds)
    finally:
        for t in timed.values():
            t.close()
    return {name: t.stats() for name, t in timed.items()}


def measure_device_augment(
    clip_shape: Sequence[int],
    batch: int,
    augment: bool = True,
    *,
    seconds: float = 2.0,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Time the device side of ``augment_on: device`` on batches of uint8 clips (1, F, H, W):
    ``BatchClipAugment`` (default strengths) or, without ``augment``, the conversion to float.

    Runs on the CPU in this process's threads (the caller sets one) and on the GPU when
    there is one. Returns ``{device: {clips, seconds, ms_per_clip, clips_per_s, cpu_seconds,
    cpu_ms_per_clip}}``: the CPU time of this process, which machine load does not inflate.
    """
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    transform = BatchClipAugment(seed=seed) if augment else to_unit
    generator = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (batch, *clip_shape), dtype=torch.uint8, generator=generator)
    out = {}
    for device in devices:
        on_device = clips.to(device)
        transform(on_device)  # warm-up: allocations, kernels, lazy initialisation
        _synchronize(device)
        count, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while True:
            transform(on_device)
            count += batch
            _synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        cpu = time.process_time() - cpu_start
        out[device.type] = {
            "clips": count,
            "seconds": elapsed,
            "ms_per_clip": 1e3 * elapsed / count,
            "clips_per_s": count / elapsed,
            "cpu_seconds": cpu,
            "cpu_ms_per_clip": 1e3 * cpu / count,
        }
    return out


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_augment_lines(
    device_augment: dict[str, dict[str, Any]],
    extrapolation: dict[str, dict[str, Any]],
    augment: bool,
) -> list[str]:
    """What the device side costs per clip, and the shard loader's per-core rate if this CPU
    had to do it as well (a job without a GPU)."""
    what = "batched augmentation" if augment else "uint8 -> float conversion"
    lines = []
    cpu = device_augment.get("cpu")
    if cpu is not None:
        per_core = extrapolation["shards"]["per_core_clips_per_s"]
        both = 1.0 / (1.0 / per_core + cpu["ms_per_clip"] / 1e3)
        lines.append(
            f"device side ({what}) on this CPU, one thread: {cpu['ms_per_clip']:.2f} ms per clip"
            f" ({cpu['clips_per_s']:.0f} clips/s), {cpu['cpu_ms_per_clip']:.2f} ms of CPU time;"
            f" shards loader + this on one core: {both:.0f} clips/s per core"
        )
    gpu = device_augment.get("cuda")
    if gpu is not None:
        lines.append(
            f"device side on the GPU: {gpu['ms_per_clip'] * 1e3:.1f} µs per clip"
            f" ({gpu['clips_per_s']:,.0f} clips/s)"
        )
    else:
        # Estimate, not a measurement: the work is memory-bound elementwise passes and one
        # grid_sample, ~10 MB of GPU memory traffic per 16 x 128 x 128 clip.
        lines.append(
            "no GPU here to time it: on one it runs batched after the transfer, off the loader"
            " cores (memory-bound, ~10 MB of traffic per 16x128x128 clip: microseconds)"
        )
    return lines


def extrapolate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-core rate x 16 workers against what one H100 consumes, per loader.

    The per-core rate comes from the one-worker run when there is one (a worker on its own core
    while the main process only collects batches), else the best per-worker rate measured. The
    same run's clips per CPU-second give a second estimate that machine load does not lower.
    """
    with_workers = [run for run in runs if run["workers"] >= 1] or list(runs)
    single = [run for run in with_workers if run["workers"] == 1]
    out = {}
    for name in LOADERS:
        source = (
            single[0]
            if single
            else max(with_workers, key=lambda r: r[name]["clips_per_s_per_worker"])
        )
        per_core = source[name]["clips_per_s_per_worker"]
        per_cpu_s = source[name]["clips_per_cpu_s"]
        voxels = math.prod(source[name]["clip_shape"])
        # Another clip size moves the same bytes at a different clip rate.
        target = H100_CLIPS_PER_S * H100_CLIP_VOXELS / voxels
        out[name] = {
            "from_workers": source["workers"],
            "per_core_clips_per_s": per_core,
            "workers": EXTRAPOLATE_WORKERS,
            "clips_per_s": per_core * EXTRAPOLATE_WORKERS,
            "target_clips_per_s": target,
            "meets_target": per_core * EXTRAPOLATE_WORKERS >= target,
            "clips_per_cpu_s": per_cpu_s,
            "clips_per_s_by_cpu": None if per_cpu_s is None else per_cpu_s * EXTRAPOLATE_WORKERS,
        }
    return out


def results_table(result: dict[str, Any]) -> Table:
    """Per worker count and loader: clips/s, MB/s, per worker, per CPU-second, shards/plain.

    The ratio is of wall-clock rates, with the ratio of clips per CPU-second in brackets.
    """
    config = result["config"]
    shape = "x".join(map(str, result["runs"][0]["shards"]["clip_shape"]))
    dtype = result["runs"][0]["shards"]["clip_dtype"].removeprefix("torch.")
    if config.get("augment_on", "loader") == "device":
        after = "augmented" if config["augment"] else "converted"
        augment = f"{dtype}, {after} on the device (below)"
    else:
        augment = f"{dtype}, " + ("augmented in the loader" if config["augment"] else "plain")
    table = Table(title=f"loader: clips of {shape}, batch {config['batch']}, {augment}")
    columns = ("workers", "loader", "clips/s", "MB/s", "per worker", "per CPU·s")
    for column in (*columns, "shards/plain"):
        table.add_column(column, justify="left" if column == "loader" else "right")
    for run in result["runs"]:
        for i, name in enumerate(LOADERS):
            stats = run[name]
            table.add_row(
                str(run["workers"]) if i == 0 else "",
                name,
                f"{stats['clips_per_s']:.0f}",
                f"{stats['mb_per_s']:.0f}",
                f"{stats['clips_per_s_per_worker']:.0f}",
                "?" if stats["clips_per_cpu_s"] is None else f"{stats['clips_per_cpu_s']:.0f}",
                _ratio_cell(run) if i == 0 else "",
            )
        table.add_section()
    load = config["load_average_before"][0], config["load_average_after"][0]
    table.caption = (
        f"{config['cpu_count']} cores; 1-min load {load[0]:.2f} before, {load[1]:.2f} after"
    )
    return table


def _ratio_cell(run: dict[str, Any]) -> str:
    by_cpu = run.get("ratio_by_cpu")
    return f"{run['ratio']:.2f}" + ("" if by_cpu is None else f" ({by_cpu:.2f} CPU)")


def extrapolation_lines(extrapolation: dict[str, dict[str, Any]]) -> list[str]:
    """One line per loader: per-core rate x 16 workers against the H100's appetite."""
    lines = []
    for name, e in extrapolation.items():
        verdict = "meets" if e["meets_target"] else "falls short of"
        line = (
            f"{name}: {e['per_core_clips_per_s']:.0f} clips/s per core"
            f" (workers={e['from_workers']}) x {e['workers']} workers"
            f" = {e['clips_per_s']:,.0f} clips/s, {verdict} the {e['target_clips_per_s']:,.0f}"
            " clips/s one H100 consumes in MAE pretraining"
        )
        if e["clips_per_cpu_s"] is not None:
            line += (
                f"; by CPU time {e['clips_per_cpu_s']:.0f} clips per CPU-second"
                f" x {e['workers']} = {e['clips_per_s_by_cpu']:,.0f} clips/s"
            )
        lines.append(line)
    return lines


def write_result(result: dict[str, Any], path: Path) -> None:
    """The results as JSON, parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
