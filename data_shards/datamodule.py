"""Lightning DataModule streaming per-slice clips from shards for pretraining."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_shards.augment import AugmentConfig, BatchClipAugment, clip_augment, to_unit
from data_shards.stream import ClipDataset, pretrain_dataset


class ClipDataModule(LightningDataModule):
    """Pretraining clips from webdataset shards; every argument is a plain YAML ``init_args`` value.

    Batches reach the model as ``{"clip": float32 (B, 1, frames, H, W) in [0, 1], "modality":
    [str] * B, "key": [str] * B, "slice", "slices": int64 (B,)}``. Mixed shard sets must share
    H and W.
    With ``augment_on: device`` the DataLoader yields uint8 clips and
    :meth:`on_after_batch_transfer` makes them float (and augments them) on the model's device.

    Args:
        shards: a shard folder (with ``manifest.json``), a brace pattern, a single tar or a url
            (``pipe:...``, ``s3://...``); a list of those read as one set; or a mapping
            ``{set: weight}`` whose sets are mixed so that each clip comes from set i with
            probability w_i / sum(w) (``{runs/real/acdc_cine: 0.8, runs/real/emidec: 0.2}``).
        frames: clip length; windows wrap cyclically over the cardiac cycle.
        batch_size: clips per batch.
        num_workers: DataLoader workers; each draws its own shards.
        shuffle: clip shuffle buffer length per worker.
        splits: which subject splits to pretrain on (test is left out by default).
        epoch_length: clips per epoch per process (rank), shared among the workers. Shards are
            resampled with replacement, so an epoch is a fixed budget of clips, not one pass,
            and every DDP rank runs the same number of batches.
        seed: seeds shard sampling, clip start frames, strides, shuffling and augmentation.
        stride: frame step inside a clip window, or a list of steps to draw one from per clip.
        augment: False for none, True for :class:`~data_shards.augment.AugmentConfig`'s
            defaults, or a mapping of its fields (``{rotate: 15, noise_prob: 0}``).
        augment_on: ``"loader"``: each DataLoader worker augments its clips and ships float32;
            ``"device"``: workers ship uint8 (a quarter of the bytes) and the batch is
            converted and augmented after the transfer, batched on the accelerator
            (:class:`~data_shards.augment.BatchClipAugment`, same distributions; only while
            the trainer trains). The GPU choice: it frees the loader cores of the augmentation.
        views: 1, or 2 for contrastive objectives (``clip2``: another slice of the same
            subject, its own window and augmentation).

    Exact resume: the number of batches handed to training is saved in checkpoints
    (``state_dict``); a run resumed from one continues the stream where it stopped (the
    epoch's pass starts again and each worker draws and drops the clips it had delivered, so
    shard order, windows, shuffle and augmentation come out as in an uninterrupted run).
    """

    def __init__(
        self,
        shards: str | dict[str, float] | list[str],
        frames: int = 16,
        batch_size: int = 16,
        num_workers: int = 0,
        shuffle: int = 256,
        splits: list[str] = ["train", "val"],  # noqa: B006  (plain list for LightningCLI YAML)
        epoch_length: int = 512,
        seed: int = 0,
        stride: int | list[int] = 1,
        augment: bool | dict[str, Any] = False,
        augment_on: str = "loader",
        views: int = 1,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("frames", frames, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("shuffle", shuffle, 0),
            ("epoch_length", epoch_length, 1),
            ("seed", seed, 0),
        ):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if augment_on not in ("loader", "device"):
            raise ValueError(f"augment_on must be 'loader' or 'device', got {augment_on!r}")
        self.augment_config = _augment_config(augment)  # an unknown option fails here, early
        self.augment_on = augment_on
        self._batch_augment: BatchClipAugment | None = None
        self._batches = 0  # batches handed to training since the run began (checkpointed)
        self.shards = shards
        self.frames = frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.splits = list(splits)
        self.epoch_length = epoch_length
        self.seed = seed
        self.stride = stride if isinstance(stride, int) else list(stride)
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views}")
        self.views = views
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        # with_epoch counts per worker, so split the epoch's clips among the workers.
        per_worker = math.ceil(self.epoch_length / max(1, self.num_workers))
        on_loader = self.augment_on == "loader" and self.augment_config is not None
        augment = clip_augment(self.augment_config) if on_loader else None
        dataset = pretrain_dataset(
            self.shards,
            frames=self.frames,
            splits=self.splits,
            shuffle=self.shuffle,
            resampled=True,
            epoch_length=per_worker,
            seed=self.seed,
            stride=self.stride,
            augment=augment,
            output="float" if self.augment_on == "loader" else "uint8",
            views=self.views,
        )
        if self._batches and self.trainer is not None:
            dataset = _resume(dataset, self._batches, self.trainer.current_epoch,
                              max(1, self.num_workers), self.batch_size, per_worker)  # fmt: skip
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Counted here, when training takes the batch: Lightning fetches one batch ahead.
        if self.trainer is not None and self.trainer.training:
            self._batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self._batches, "layout": self._layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("layout") != self._layout():
            warnings.warn(
                f"the checkpoint's stream had batch_size, num_workers, epoch_length, seed = "
                f"{state.get('layout')}, this run {self._layout()}: the stream restarts its "
                "epoch instead of resuming exactly where it stopped",
                stacklevel=2,
            )
            return
        self._batches = int(state["batches"])

    def _layout(self) -> list[int]:
        """What maps a batch count onto each worker's position in the stream."""
        return [self.batch_size, self.num_workers, self.epoch_length, self.seed]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``augment_on: device``: uint8 clips (B, 1, F, H, W) -> float32 in [0, 1] on the
        batch's device, augmented while training (or when no trainer is attached)."""
        if self.augment_on != "device" or batch["clip"].dtype != torch.uint8:
            return batch
        trainer = self.trainer
        augmenting = self.augment_config is not None and (trainer is None or trainer.training)
        # Seeded once per batch, so the two views of a pair take different draws.
        augment = self._device_augment(trainer) if augmenting else to_unit
        views = {key: augment(batch[key]) for key in ("clip", "clip2") if key in batch}
        return {**batch, **views}

    def _device_augment(self, trainer: Any) -> BatchClipAugment:
        """The batch augmentation, reseeded for every batch from (seed, rank, batch count): each
        rank draws its own, and a resumed run draws what an uninterrupted one would."""
        rank = 0 if trainer is None else trainer.global_rank
        if self._batch_augment is None:
            self._batch_augment = BatchClipAugment(self.augment_config)
        entropy = [self.seed, rank, self._batches]
        state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
        self._batch_augment.set_random_state(int(state[0] >> 1))  # manual_seed: < 2**63
        return self._batch_augment


class _Resumed(IterableDataset):
    """A clip stream whose first pass continues a checkpointed one: each worker drops the clips
    it had delivered (``skip``), or the pass is empty when the epoch had ended (``empty``)."""

    def __init__(self, dataset: ClipDataset, skip: list[int], empty: bool) -> None:
        self.dataset, self.skip, self.empty = dataset, skip, empty
        self.first = True  # per process: each DataLoader worker has its own copy

    def __iter__(self) -> Iterator[dict[str, Any]]:
        first, self.first = self.first, False
        if first and self.empty:
            self.dataset.source.epoch += 1  # that pass is over; the next one is the next epoch
            return iter(())
        clips = iter(self.dataset)
        if not first:
            return clips
        info = get_worker_info()
        return islice(clips, self.skip[0 if info is None else info.id], None)


def _resume(
    dataset: ClipDataset, batches: int, epoch: int, workers: int, batch_size: int, per_worker: int
) -> _Resumed:
    """Position dataset so that its next pass continues Lightning's epoch `epoch` after `batches`
    batches of the whole run (workers deliver whole batches round-robin)."""
    per_epoch = workers * math.ceil(per_worker / batch_size)
    done = batches - epoch * per_epoch  # batches of this epoch already trained on
    dataset.source.epoch = epoch - 1  # ClipSource counts passes; the next is this epoch's
    skip = [len(range(w, done, workers)) * batch_size for w in range(workers)]
    return _Resumed(dataset, skip, empty=done >= per_epoch)


def _augment_config(augment: bool | dict[str, Any]) -> AugmentConfig | None:
    if isinstance(augment, bool):
        return AugmentConfig() if augment else None
    if isinstance(augment, dict):
        return AugmentConfig.from_dict(augment)
    raise ValueError(f"augment must be true, false or a mapping of options, got {augment!r}")
