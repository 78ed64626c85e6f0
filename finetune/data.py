"""Few-shot labelled data: draw N labelled training subjects by seed, serve augmented clips."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from monai import transforms as mt
from torch.utils.data import DataLoader, Dataset, RandomSampler

from data_shards.record import IGNORE
from data_shards.stream import cyclic_window, load_subjects, shard_urls


def draw_labelled(subjects: Sequence[dict], n: int, seed: int) -> list[dict]:
    """n subjects with labels, drawn by seed and stratified by diagnosis group (round-robin).

    The same (subjects, n, seed) always gives the same draw, and draws for smaller n are prefixes
    of draws for larger n, so methods compared at N labels see the same studies.
    """
    labelled = sorted((s for s in subjects if s["label"] is not None), key=lambda s: s["key"])
    if n < 1 or n > len(labelled):
        raise ValueError(f"labels={n} but {len(labelled)} labelled training subjects are available")
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for i in rng.permutation(len(labelled)):
        by_group[str(labelled[i]["meta"].get("group"))].append(labelled[i])
    groups = [by_group[g] for g in sorted(by_group)]
    order = [groups[g] for g in rng.permutation(len(groups))]
    drawn: list[dict] = []
    while len(drawn) < n:
        for members in order:
            if members and len(drawn) < n:
                drawn.append(members.pop(0))
    return drawn


def clip_windows(label: np.ndarray, frames: int) -> list[tuple[int, int]]:
    """(slice, start) of every cyclic window of `frames` frames that holds a labelled frame."""
    s, t = label.shape[:2]
    known = [(label[:, f] != IGNORE).any() for f in range(t)]
    return [
        (z, start)
        for z in range(s)
        for start in range(t)
        if any(known[f] for f in cyclic_window(start, frames, t))
    ]


def take_window(array: np.ndarray, z: int, start: int, frames: int) -> np.ndarray:
    """(S, T, H, W) -> (frames, H, W) from slice z, wrapping around the cycle."""
    return array[z, cyclic_window(start, frames, array.shape[1])]


def augmentation() -> mt.Compose:
    """Spatial (affine) and intensity augmentation on (T, H, W) clips, labels nearest.

    Rotations stay within +-30 degrees and there are no flips: short-axis views keep the RV on
    one side of the LV, and with few labels that prior is what tells the two blood pools apart.
    """
    keys = ["clip", "label"]
    return mt.Compose(
        [
            mt.RandAffined(
                keys,
                prob=0.8,
                rotate_range=np.pi / 6,
                scale_range=0.15,
                translate_range=6,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            mt.RandAdjustContrastd("clip", prob=0.5, gamma=(0.7, 1.5)),
            mt.RandScaleIntensityd("clip", prob=0.5, factors=0.15),
            mt.RandGaussianNoised("clip", prob=0.3, std=0.03),
        ]
    )


class LabelledClips(Dataset):
    """Clips (1, frames, H, W) float in [0, 1] with labels (frames, H, W) from labelled subjects."""

    def __init__(self, subjects: Sequence[dict], frames: int, augment: bool) -> None:
        self.subjects, self.frames = list(subjects), frames
        self.index = [
            (i, z, start)
            for i, s in enumerate(self.subjects)
            for z, start in clip_windows(s["label"], frames)
        ]
        self.transform = augmentation() if augment else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        subject_i, z, start = self.index[i]
        s = self.subjects[subject_i]
        clip = take_window(s["image"], z, start, self.frames).astype(np.float32) / 255.0
        label = take_window(s["label"], z, start, self.frames)
        unknown = (label == IGNORE).all(axis=(1, 2))  # (frames,) frames without ground truth
        item = {"clip": torch.from_numpy(clip), "label": torch.from_numpy(label.astype(np.float32))}
        if self.transform is not None:
            item = self.transform(item)
        label_t = torch.as_tensor(item["label"]).round().long()
        label_t[torch.from_numpy(unknown)] = IGNORE
        clip_t = torch.as_tensor(item["clip"]).float().clamp(0, 1)
        return {"clip": clip_t[None], "label": label_t}  # (1, T, H, W), (T, H, W)


class FewShotSegData(L.LightningDataModule):
    """N labelled subjects from the shards' train split, drawn by seed; clips sampled with replacement.

    Args:
        shards: shard folder (with manifest.json), brace pattern or URL.
        labels: number of labelled subjects N to fine-tune on.
        seed: which N subjects (the draw is stratified by diagnosis group).
        frames: frames per clip (a multiple of the backbone's tubelet).
        epoch_length: clips per epoch.
    """

    def __init__(
        self,
        shards: str,
        labels: int = 4,
        seed: int = 0,
        frames: int = 2,
        batch_size: int = 8,
        epoch_length: int = 256,
        augment: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()  # stored in checkpoints, so evaluation knows `frames`
        self.shards, self.labels, self.seed, self.frames = shards, labels, seed, frames
        self.batch_size, self.epoch_length = batch_size, epoch_length
        self.augment, self.num_workers = augment, num_workers
        self.subjects: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.subjects:
            train = load_subjects(shard_urls(self.shards), splits=["train"])
            self.subjects = draw_labelled(train, self.labels, self.seed)

    def train_dataloader(self) -> DataLoader:
        dataset = LabelledClips(self.subjects, self.frames, self.augment)
        generator = torch.Generator().manual_seed(self.seed)
        sampler = RandomSampler(
            dataset, replacement=True, num_samples=self.epoch_length, generator=generator
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=True,
        )
