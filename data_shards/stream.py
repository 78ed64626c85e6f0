"""Read shards back: per-slice clip streams for pretraining, whole subjects for fine-tuning.

Training never touches NIfTI/DICOM: everything comes from the tar shards the writer made.

Pretraining pipeline (one :class:`ClipSource` per process; randomness from seed, epoch, rank and
DataLoader worker)::

    for each shard set: shard urls
      -> one pass: [node split] -> [worker split] -> shuffled shard order
         resampled: shards drawn with replacement, forever
      -> subjects of the kept splits (meta.json read first; label.npy never)
      -> one clip per slice (random start and stride, cyclic wrap), modality from meta
    -> mix the sets by weight -> shuffle buffer (uint8) -> augment -> float32 (1, F, H, W)
                                                        or, output="uint8": uint8 (1, F, H, W)

Exactly once per epoch (one-pass mode): ranks take every ``world_size``-th shard, then workers
every ``num_workers``-th of those, so each subject of the kept splits is read by exactly one
stream. The split is by shard: with fewer shards than ranks x workers some streams get none,
and when shards do not divide evenly (or hold different numbers of slices) streams yield
different numbers of clips. DDP needs equal batch counts on every rank, so pretraining uses the
resampled mode with ``epoch_length`` (every stream yields exactly that many clips).

Unreadable data is skipped, not fatal: a sample whose members fail to decode, or the rest of a
shard that fails to open or read (truncated tar), is dropped with a :class:`SkippedDataWarning`
naming the shard url (and sample key) and the running count, also in ``dataset.skipped``.

Shard urls, local and remote, are read by :mod:`data_shards.shard_io`.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from data_shards.clips import slice_clips
from data_shards.shard_io import ShardSet, decode, shard_subjects, shard_urls
from data_shards.views import slice_pairs

__all__ = [
    "ClipDataset",
    "ClipSource",
    "SkippedDataWarning",
    "decode",
    "load_subjects",
    "mix",
    "pretrain_dataset",
    "shard_sets",
    "shard_urls",
]

Shards = ShardSet | Mapping[str, float] | Sequence[tuple[ShardSet, float]]
Augment = Callable[[np.ndarray], torch.Tensor]

# A resampled set that yields no clip in this many shard draws (x its shard count) is an error:
# the chance that a set with one usable shard misses it that long is below e^-20.
_DRAWS_PER_SHARD = 20


class SkippedDataWarning(UserWarning):
    """A sample, or the rest of a shard, could not be read and was skipped."""


def shard_sets(shards: Shards) -> list[tuple[list[str], float]]:
    """Weighted shard sets: a mapping ``{set: weight}`` or ``[(set, weight), ...]`` gives several,
    anything :func:`shard_urls` takes gives one of weight 1.

    Raises:
        ValueError: a weight that is not a positive finite number, or a set without shards.
    """
    if isinstance(shards, Mapping):
        items = list(shards.items())
    elif not isinstance(shards, (str, os.PathLike)) and _is_pair_list(shards):
        items = [(item[0], item[1]) for item in shards]
    else:
        items = [(shards, 1.0)]
    sets = []
    for urls, weight in items:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"weight of shard set {urls} must be a number, got {weight!r}")
        if not 0 < weight < float("inf"):
            raise ValueError(f"weight of shard set {urls} must be > 0, got {weight}")
        listed = shard_urls(urls)
        if not listed:
            raise ValueError(f"no shards in {urls}")
        sets.append((listed, float(weight)))
    return sets


def _is_pair_list(items: Sequence[Any]) -> bool:
    return len(items) > 0 and all(
        isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item[1], str)
        for item in items
    )


def _in_splits(sample: dict[str, Any], splits: frozenset[str]) -> bool:
    """Split filter on the raw sample, so skipped subjects never have their images decoded."""
    return json.loads(sample["meta.json"]).get("split") in splits


def mix(
    streams: Sequence[Iterator[dict[str, Any]]], weights: Sequence[float], rng: np.random.Generator
) -> Iterator[dict[str, Any]]:
    """Each next item from stream i with probability w_i / sum(w) (as webdataset's RandomMix,
    but seeded); ends when a drawn stream ends."""
    total = float(sum(weights))
    cumulative = list(np.cumsum(weights) / total)
    last = len(streams) - 1
    while True:
        chosen = streams[min(bisect.bisect_right(cumulative, rng.random()), last)]
        item = next(chosen, None)
        if item is None:
            return
        yield item


class ClipSource(IterableDataset):
    """Per-slice uint8 clips from weighted shard sets -> shuffle -> augment -> float tensors.

    Seeded by (seed, epoch, rank, worker): every pass of every worker draws its own shard order,
    start frames, strides, shuffle and augmentation, reproducibly. Counts skipped data in
    ``skipped`` (per process: each DataLoader worker counts its own).
    """

    def __init__(
        self,
        sets: Sequence[tuple[list[str], float]],
        *,
        frames: int,
        splits: Sequence[str],
        shuffle: int,
        resampled: bool,
        seed: int,
        stride: int | Sequence[int],
        augment: Augment | None,
        output: str = "float",
        views: int = 1,
    ) -> None:
        self.sets = [(list(urls), weight) for urls, weight in sets]
        self.output = output
        self.views = views
        self.frames, self.splits, self.shuffle = frames, frozenset(splits), shuffle
        self.resampled, self.seed, self.stride, self.augment = resampled, seed, stride, augment
        self.epoch = -1
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.epoch += 1
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        set_rngs = rng.spawn(len(self.sets))
        streams = [self._set_clips(urls, r) for (urls, _), r in zip(self.sets, set_rngs)]
        if len(streams) == 1:
            clips = streams[0]
        else:
            clips = mix(streams, [weight for _, weight in self.sets], rng)
        if self.shuffle > 1:
            # Buffer uint8 clips: 4x less memory than float32 for the same buffer length.
            order = random.Random(int(rng.integers(2**63)))
            clips = wds.shuffle(self.shuffle, rng=order)(clips)
        if hasattr(self.augment, "set_random_state"):
            self.augment.set_random_state(seed=int(rng.integers(2**32)))
        return map(self._to_tensor, clips)

    def _set_clips(self, urls: list[str], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        if not self.resampled:
            order = list(wds.split_by_worker(wds.split_by_node(urls)))
            rng.shuffle(order)
            yield from self._clips(order, rng)
            return
        budget = _DRAWS_PER_SHARD * len(urls)
        draws = 0

        def drawn() -> Iterator[str]:
            nonlocal draws
            while True:
                draws += 1
                if draws > budget:
                    raise RuntimeError(
                        f"no clip in {budget} shard draws from {urls[0]} ... ({len(urls)} shards):"
                        f" no subject in splits {sorted(self.splits)}, or every shard unreadable"
                        " (see the SkippedDataWarnings)"
                    )
                yield urls[int(rng.integers(len(urls)))]

        for clip in self._clips(drawn(), rng):
            draws = 0
            yield clip

    def _clips(self, urls: Iterable[str], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        subjects = (s for url in urls for s in shard_subjects(url, self.splits, self._skip))
        if self.views == 2:
            return slice_pairs(subjects, self.frames, rng, self.stride)
        return slice_clips(subjects, self.frames, rng, self.stride)

    def _skip(self, message: str) -> None:
        self.skipped += 1
        warnings.warn(
            f"{message} [{self.skipped} skipped in this process]", SkippedDataWarning, stacklevel=3
        )

    def _to_tensor(self, sample: dict[str, Any]) -> dict[str, Any]:
        converted = {key: self._tensor(sample[key]) for key in ("clip", "clip2") if key in sample}
        return {**sample, **converted}

    def _tensor(self, clip: np.ndarray) -> torch.Tensor:
        """uint8 (F, H, W) -> (1, F, H, W): float in [0, 1] (augmented), or uint8; each view of
        a pair gets its own augmentation draw."""
        if self.output == "uint8":  # augmented after the batch reaches the accelerator
            tensor = torch.from_numpy(np.ascontiguousarray(clip[None]))
        elif self.augment is not None:
            tensor = torch.as_tensor(self.augment(clip), dtype=torch.float32)[None]
        else:
            # numpy, not torch ops: torch's intra-op thread pool on a busy main process
            # (num_workers=0) makes this tiny conversion ~50x slower. Same float32 division.
            array = clip[None].astype(np.float32)
            array /= 255.0
            tensor = torch.from_numpy(array)
        return tensor


class ClipDataset(wds.DataPipeline):
    """A webdataset pipeline over one :class:`ClipSource` (``with_epoch``, ``batched``, ...)."""

    def __init__(self, source: ClipSource) -> None:
        super().__init__(source)
        self.source = source

    @property
    def skipped(self) -> int:
        """Samples and shard remainders skipped as unreadable, in this process."""
        return self.source.skipped


def pretrain_dataset(
    urls: Shards,
    *,
    frames: int,
    splits: Sequence[str] = ("train", "val"),
    shuffle: int = 256,
    resampled: bool = False,
    epoch_length: int | None = None,
    seed: int = 0,
    stride: int | Sequence[int] = 1,
    augment: Augment | None = None,
    output: str = "float",
    views: int = 1,
) -> ClipDataset:
    """Stream per-slice clips for self-supervised pretraining.

    Args:
        urls: one shard set (anything :func:`shard_urls` takes; a list is one set made of all
            its shards), or several with mixing weights: ``{"runs/cine": 0.8, "runs/lge": 0.2}``
            or ``[("runs/cine", 0.8), ("runs/lge", 0.2)]``. Several sets need ``resampled``.
        frames: clip length F; windows wrap cyclically, shorter studies repeat frames.
        splits: keep subjects whose ``meta["split"]`` is one of these (pretraining may use val
            images without label maps; test stays out).
        shuffle: clip shuffle buffer length; 0 or 1 keeps the stream order.
        resampled: draw shards with replacement forever (bound it with ``epoch_length``), and
            each clip from set i with probability w_i / sum(w). Otherwise one pass in which
            ranks x workers see every clip exactly once (see the module docstring).
        epoch_length: clips per pass per process (each DataLoader worker yields this many).
        seed: seeds shard order, start frames, strides, shuffle and augmentation; a fresh
            dataset with the same seed yields the same stream in a single process. Each pass
            counts an epoch in the process that iterates, so DataLoader workers need
            ``persistent_workers=True`` for the epochs to differ.
        stride: frame step inside a window, or a sequence of steps to draw one from per clip.
        augment: uint8 (F, H, W) -> float32 (F, H, W) in [0, 1], e.g.
            :func:`data_shards.augment.clip_augment`; seeded per epoch and worker through its
            ``set_random_state`` when it has one. None: intensities / 255.
        output: ``"float"``: float32 clips in [0, 1]; ``"uint8"``: the raw uint8 clips, a
            quarter of the bytes to collate and send between processes, for augmentation on
            the accelerator after the transfer (:class:`data_shards.augment.BatchClipAugment`);
            ``augment`` must then be None.
        views: 1, or 2 for contrastive objectives: each sample then also holds ``clip2``, the
            same subject at another slice with its own window and augmentation
            (:func:`data_shards.views.slice_pairs`), plus ``modality2`` and ``slice2``.

    Returns:
        An iterable of ``{"clip": float32 (1, F, H, W) in [0, 1] (uint8 with output="uint8"),
        "modality": str, "key": str, "slice": int, "slices": int}``; ``.skipped`` counts the
        data skipped as unreadable in this process.
    """
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if shuffle < 0:
        raise ValueError(f"shuffle must be >= 0, got {shuffle}")
    if epoch_length is not None and epoch_length < 1:
        raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
    if isinstance(splits, str):
        raise ValueError(f"splits must be a list of split names, got the string {splits!r}")
    if output not in ("float", "uint8"):
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    if output == "uint8" and augment is not None:
        raise ValueError(
            "output='uint8' yields the clips unaugmented: pass augment=None and augment the"
            " batches on the device (data_shards.augment.BatchClipAugment)"
        )
    strides = list(stride) if isinstance(stride, (list, tuple)) else [stride]
    if not strides or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in strides):
        raise ValueError(f"stride must be an int >= 1 or a list of them, got {stride!r}")
    sets = shard_sets(urls)
    if len(sets) > 1 and not resampled:
        raise ValueError(
            f"mixing {len(sets)} shard sets by weight needs resampled=True (a one-pass mix would"
            " stop at the first set to run out)"
        )
    source = ClipSource(
        sets,
        frames=frames,
        splits=splits,
        shuffle=shuffle,
        resampled=resampled,
        seed=seed,
        stride=strides[0] if len(strides) == 1 else tuple(strides),
        augment=augment,
        output=output,
        views=views,
    )
    dataset = ClipDataset(source)
    if epoch_length is not None:
        dataset = dataset.with_epoch(epoch_length)
    return dataset


def load_subjects(urls: ShardSet, splits: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every decoded subject (optionally only some splits), sorted by key.

    For fine-tuning and evaluation, which want a map-style list of whole subjects. Every
    process reads every shard (no node/worker split).

    Returns:
        ``[{"key", "image": uint8 (S, T, H, W), "label": uint8 | None, "meta": dict}, ...]``.
    """
    if isinstance(splits, str):
        raise ValueError(f"splits must be a list of split names, got the string {splits!r}")
    dataset = wds.WebDataset(
        shard_urls(urls),
        shardshuffle=False,
        nodesplitter=None,
        workersplitter=None,
        empty_check=False,
    )
    if splits is not None:
        dataset = dataset.select(partial(_in_splits, splits=frozenset(splits)))
    return sorted((decode(sample) for sample in dataset), key=lambda s: s["key"])
