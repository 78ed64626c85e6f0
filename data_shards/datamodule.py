"""Lightning DataModule streaming per-slice clips from shards for pretraining."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from data_shards.stream import pretrain_dataset


class ClipDataModule(LightningDataModule):
    """Pretraining clips from webdataset shards; every argument is a plain YAML ``init_args`` value.

    Batches are ``{"clip": float32 (B, 1, frames, H, W) in [0, 1], "modality": [str] * B,
    "key": [str] * B, "slice": int64 (B,)}``.

    Args:
        shards: a shard folder (with ``manifest.json``), a brace pattern or a single tar.
        frames: clip length; windows wrap cyclically over the cardiac cycle.
        batch_size: clips per batch.
        num_workers: DataLoader workers; each streams its own shards (give it >= workers shards).
        shuffle: clip shuffle buffer length per worker.
        splits: which subject splits to pretrain on (test is left out by default).
        epoch_length: clips per epoch per process (rank), shared among the workers. Shards are
            resampled with replacement, so an epoch is a fixed budget of clips, not one pass.
        seed: seeds shard sampling, clip start frames and shuffling.
    """

    def __init__(
        self,
        shards: str,
        frames: int = 16,
        batch_size: int = 16,
        num_workers: int = 0,
        shuffle: int = 256,
        splits: list[str] = ["train", "val"],  # noqa: B006  (plain list for LightningCLI YAML)
        epoch_length: int = 512,
        seed: int = 0,
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
        self.shards = shards
        self.frames = frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.splits = list(splits)
        self.epoch_length = epoch_length
        self.seed = seed
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        # with_epoch counts per worker, so split the epoch's clips among the workers.
        per_worker = math.ceil(self.epoch_length / max(1, self.num_workers))
        dataset = pretrain_dataset(
            self.shards,
            frames=self.frames,
            splits=self.splits,
            shuffle=self.shuffle,
            resampled=True,
            epoch_length=per_worker,
            seed=self.seed,
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
