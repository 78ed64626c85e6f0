"""Few-shot labelled data: draw N labelled training subjects by seed, serve augmented clips
(segmentation) or whole subjects' slice stacks (EF regression, diagnosis)."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from monai import transforms as mt
from monai.data.utils import worker_init_fn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from data_shards.clips import cyclic_window
from data_shards.record import IGNORE
from data_shards.stream import load_subjects, shard_urls


def draw_labelled(
    subjects: Sequence[dict], n: int, seed: int, source: str | None = None
) -> list[dict]:
    """n subjects with labels, drawn by seed and stratified by diagnosis group (round-robin).

    The same (subjects, n, seed) always gives the same draw, and draws for smaller n are prefixes
    of draws for larger n, so methods compared at N labels see the same studies. source: the
    shards the subjects came from, named when n cannot be drawn.
    """
    labelled = sorted((s for s in subjects if s["label"] is not None), key=lambda s: s["key"])
    if n < 1 or n > len(labelled):
        where = f"{source}: " if source else ""
        raise ValueError(
            f"{where}labels={n} but {len(labelled)} labelled training subjects are available"
        )
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


def augmentation(seed: int = 0) -> mt.Compose:
    """Spatial (affine) and intensity augmentation on (T, H, W) clips, label maps nearest; its draws
    come from ``seed`` (MONAI's transforms otherwise share one generator seeded at import, so
    the same run would augment differently each time).

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
    ).set_random_state(seed=seed)


class LabelledClips(Dataset):
    """Clips (1, frames, H, W) float in [0, 1] with label maps (frames, H, W) from labelled
    subjects; augmented (when ``augment``) with draws from ``seed``."""

    def __init__(self, subjects: Sequence[dict], frames: int, augment: bool, seed: int = 0) -> None:
        self.subjects, self.frames = list(subjects), frames
        self.index = [
            (i, z, start)
            for i, s in enumerate(self.subjects)
            for z, start in clip_windows(s["label"], frames)
        ]
        self.transform = augmentation(seed) if augment else None

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


class _DrawnSubjectsData(L.LightningDataModule):
    """What the few-shot datamodules share: N labelled subjects of the shards' train split, drawn
    once by seed (:func:`draw_labelled`), and epochs of items drawn from them with replacement.

    Args:
        shards: shard folder (with manifest.json), brace pattern or URL.
        labels: number of labelled subjects N to fine-tune on.
        seed: which N subjects (the draw is stratified by diagnosis group).
        frames: frames per clip, a multiple of the backbone's tubelet (a subject's slice clips
            run from ED to ES: :func:`stack_frames`).
        batch_size: items (clips or subjects) per batch.
        epoch_length: items (clips or subjects) per epoch.
        augment: random spatial and intensity augmentation of the training items.
        num_workers: DataLoader worker processes (0 = in the main process).
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
        # Lightning collects a subclass's arguments too (its __init__ frame); checkpoints keep
        # them all, and evaluation reads frames (and max_slices) from there.
        self.save_hyperparameters()
        self.shards, self.labels, self.seed, self.frames = shards, labels, seed, frames
        self.batch_size, self.epoch_length = batch_size, epoch_length
        self.augment, self.num_workers = augment, num_workers
        self.subjects: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.subjects:
            train = load_subjects(shard_urls(self.shards), splits=["train"])
            self.subjects = draw_labelled(train, self.labels, self.seed, str(self.shards))

    def sampled(self, dataset: Dataset) -> DataLoader:
        """dataset in a :func:`sampled_loader` with this module's seed, epoch_length, batch_size."""
        return sampled_loader(
            dataset, self.seed, self.epoch_length, self.batch_size, self.num_workers
        )


class FewShotSegData(_DrawnSubjectsData):
    """N labelled subjects from the shards' train split, drawn by seed; clips sampled with replacement.

    Arguments: as :class:`_DrawnSubjectsData`; its items are clips.
    """

    def train_dataloader(self) -> DataLoader:
        return self.sampled(LabelledClips(self.subjects, self.frames, self.augment, self.seed))


def sampled_loader(
    dataset: Dataset, seed: int, epoch_length: int, batch_size: int, num_workers: int
) -> DataLoader:
    """epoch_length items drawn with replacement by seed, in batches (the last partial one dropped)."""
    generator = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=epoch_length, generator=generator
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=True,
        # each worker re-seeds the dataset's MONAI transforms from its own seed, which comes
        # from this generator: workers augment differently, and alike on every run
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(seed),
    )


# --- subject-level data (EF regression, diagnosis) ----------------------------------------------


def stack_frames(t: int, frames: int, ed: int | None, es: int | None) -> list[int]:
    """Frame indices of a subject-level clip: `frames` frames from ED to ES along the cycle.

    The first is ED and the last ES, the rest evenly between them (wrapping past the last frame),
    so the clip always shows the contraction that EF measures; ACDC (T = 2, ED 0, ES 1) with
    frames = 2 gives [ED, ES]. Without ED / ES (or ED = ES) the frames spread over the cycle.
    """
    if frames < 1:
        raise ValueError(f"frames={frames} must be >= 1")
    start = 0 if ed is None else int(ed) % t
    span = 0 if es is None else (int(es) - start) % t
    if frames == 1:
        return [start]
    if span == 0:
        return [(start + round(i * t / frames)) % t for i in range(frames)]
    return [(start + round(i * span / (frames - 1))) % t for i in range(frames)]


def stack_slices(s: int, max_slices: int) -> list[int]:
    """All s slices, or max_slices of them evenly spaced from base to apex when there are more."""
    if s <= max_slices:
        return list(range(s))
    return np.linspace(0, s - 1, max_slices).round().astype(int).tolist()


def subject_stack(
    subject: dict, frames: int, max_slices: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """A subject's slice clips for the subject-level heads (training and evaluation alike).

    subject: {"image" (S, T, H, W) uint8, "meta" with ed / es} -> stack (max_slices, 1, frames,
    H, W) float in [0, 1], zero-padded past the real slices, and mask (max_slices,) bool (True =
    a real slice). Frames: :func:`stack_frames`; slices: :func:`stack_slices`.
    """
    image = subject["image"]
    s, t = image.shape[:2]
    meta = subject.get("meta", {})
    rows = stack_slices(s, max_slices)
    cols = stack_frames(t, frames, meta.get("ed"), meta.get("es"))
    clips = image[np.ix_(rows, cols)].astype(np.float32) / 255.0  # (S', frames, H, W)
    stack = torch.zeros(max_slices, 1, frames, *image.shape[2:])
    stack[: len(rows), 0] = torch.from_numpy(clips)
    mask = torch.zeros(max_slices, dtype=torch.bool)
    mask[: len(rows)] = True
    return stack, mask


def subject_augmentation(seed: int = 0) -> mt.Compose:
    """One random affine + intensity change per subject, the same for all its slices and frames
    (slices are channels of one 2D image), so the stack stays a consistent heart.

    Rotation, translation and a small scale (+-5%: the heart's size is a diagnostic cue, e.g.
    dilated cardiomyopathy); no flips (see :func:`augmentation`).
    """
    return mt.Compose(
        [
            mt.RandAffine(
                prob=0.8,
                rotate_range=np.pi / 6,
                scale_range=0.05,
                translate_range=6,
                padding_mode="zeros",
            ),
            mt.RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
            mt.RandScaleIntensity(prob=0.5, factors=0.15),
            mt.RandGaussianNoise(prob=0.3, std=0.03),
        ]
    ).set_random_state(seed=seed)  # as augmentation()


class LabelledSubjects(Dataset):
    """Whole subjects for the subject-level heads: items {"stack" (max_slices, 1, frames, H, W)
    float in [0, 1], "mask" (max_slices,) bool, "ef" (2,) LVEF and RVEF in percent (NaN =
    unknown), "group" index in ACDC_GROUPS or -1}; targets come from the unaugmented ground
    truth (:func:`finetune.subject.subject_targets`). task ("ef" or "cls"), when given, only
    warns when no subject has that target."""

    def __init__(
        self,
        subjects: Sequence[dict],
        frames: int,
        max_slices: int = 16,
        task: str | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        from finetune.subject import subject_targets

        self.subjects, self.frames, self.max_slices = list(subjects), frames, max_slices
        self.targets = [subject_targets(s) for s in self.subjects]
        known = {
            "ef": any(np.isfinite(t["ef"]).any() for t in self.targets),
            "cls": any(t["group"] >= 0 for t in self.targets),
        }
        if task is not None and not known.get(task, True):
            warnings.warn(
                f"none of the {len(self.subjects)} subjects has a {task} target: the loss is 0",
                stacklevel=2,
            )
        self.transform = subject_augmentation(seed) if augment else None

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict:
        stack, mask = subject_stack(self.subjects[i], self.frames, self.max_slices)
        if self.transform is not None:
            n, frames = int(mask.sum()), self.frames
            real = stack[:n, 0].reshape(
                n * frames, *stack.shape[-2:]
            )  # slices x frames as channels
            moved = torch.as_tensor(self.transform(real)).float().clamp(0, 1)
            stack[:n, 0] = moved.reshape(n, frames, *stack.shape[-2:])
        target = self.targets[i]
        return {
            "stack": stack,
            "mask": mask,
            "ef": torch.from_numpy(target["ef"]),
            "group": torch.tensor(target["group"], dtype=torch.long),
        }


class FewShotSubjectData(_DrawnSubjectsData):
    """N labelled subjects drawn exactly as for segmentation (:func:`draw_labelled`); whole
    subjects sampled with replacement for EF regression or diagnosis.

    Args:
        shards: shard folder (with manifest.json), brace pattern or URL.
        batch_size: subjects per batch.
        max_slices: slices per subject (padded, or evenly subsampled when there are more).
        kwargs: labels, seed, frames, epoch_length, augment and num_workers, as in
            :class:`_DrawnSubjectsData`.
    """

    def __init__(
        self, shards: str, *, batch_size: int = 4, max_slices: int = 16, **kwargs: Any
    ) -> None:
        super().__init__(shards, batch_size=batch_size, **kwargs)
        self.max_slices = max_slices

    def train_dataloader(self) -> DataLoader:
        dataset = LabelledSubjects(
            self.subjects, self.frames, self.max_slices, None, self.augment, self.seed
        )
        return self.sampled(dataset)
