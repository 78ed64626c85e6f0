"""Streaming clips: shapes, exact frames with cyclic wrap, split filter, workers see each clip once."""

from __future__ import annotations

from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_shards.datamodule import ClipDataModule
from data_shards.record import Subject
from data_shards.stream import load_subjects, pretrain_dataset, shard_urls
from data_shards.writer import write_manifest, write_shards

SPLITS = ["train", "val", "test", "train", "train", "test", "val", "train"]
SHAPE = (3, 5, 6, 7)  # (S, T, H, W): T = 5 so 3-frame windows can wrap and 7-frame ones must


def make_subjects(modality: str = "cine", shape=SHAPE) -> list[Subject]:
    rng = np.random.default_rng(0)
    return [
        Subject(
            f"sub{i}",
            rng.integers(0, 256, size=shape, dtype=np.uint8),
            None,
            (8.0, 1.5, 1.5),
            {"source": "test", "modality": modality, "split": split},
        )
        for i, split in enumerate(SPLITS)
    ]


def write(out_dir: Path, subjects: list[Subject], maxcount: int = 4) -> Path:
    samples = write_shards(subjects, out_dir, maxcount=maxcount)
    write_manifest(out_dir, list(dict.fromkeys(s["shard"] for s in samples)), samples, {}, {})
    return out_dir


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    return write(tmp_path, make_subjects())  # 8 subjects, 2 shards


@pytest.fixture
def images() -> dict[str, np.ndarray]:
    return {s.subject: s.image for s in make_subjects()}


def kept(splits=("train", "val")) -> set[tuple[str, int]]:
    return {
        (f"sub{i}", s) for i, split in enumerate(SPLITS) if split in splits for s in range(SHAPE[0])
    }


@pytest.mark.parametrize("frames", [3, 7])
def test_clips_are_the_stored_frames_with_cyclic_wrap(shards: Path, images, frames: int) -> None:
    starts = set()
    for sample in pretrain_dataset(shards, frames=frames, shuffle=8, seed=1):
        clip = sample["clip"]
        assert clip.shape == (1, frames, SHAPE[2], SHAPE[3]) and clip.dtype == torch.float32
        assert clip.min() >= 0.0 and clip.max() <= 1.0
        assert sample["modality"] == "cine"
        stored = images[sample["key"]][sample["slice"]]  # (T, H, W) uint8
        matches = [
            start
            for start in range(SHAPE[1])
            if torch.equal(
                clip[0],
                torch.from_numpy(stored[(start + np.arange(frames)) % SHAPE[1]]).float() / 255,
            )
        ]
        assert len(matches) == 1, (sample["key"], sample["slice"])
        starts.add(matches[0])
    if frames == 3:  # windows starting at frame 3 or 4 run past the end and wrap
        assert starts & {3, 4}


def test_single_frame_studies_repeat(tmp_path: Path) -> None:
    subjects = make_subjects("lge", shape=(2, 1, 4, 4))
    write(tmp_path, subjects)
    by_key = {s.subject: s.image for s in subjects}
    for sample in pretrain_dataset(tmp_path, frames=4, shuffle=0):
        assert sample["modality"] == "lge"
        frame = torch.from_numpy(by_key[sample["key"]][sample["slice"], 0]).float() / 255
        assert all(torch.equal(sample["clip"][0, f], frame) for f in range(4))


def test_split_filter(shards: Path) -> None:
    seen = {(s["key"], s["slice"]) for s in pretrain_dataset(shards, frames=2)}
    assert seen == kept()
    only_test = {
        (s["key"], s["slice"]) for s in pretrain_dataset(shards, frames=2, splits=["test"])
    }
    assert only_test == kept(("test",))


def test_deterministic_given_seed(shards: Path) -> None:
    def run(seed: int, resampled: bool) -> list:
        dataset = pretrain_dataset(
            shards, frames=3, shuffle=16, seed=seed, resampled=resampled, epoch_length=30
        )
        return [(s["key"], s["slice"], s["clip"].sum().item()) for s in dataset]

    for resampled in (False, True):
        first = run(0, resampled)
        assert len(first) == 30
        assert first == run(0, resampled)
        assert first != run(1, resampled)


def test_epochs_differ(shards: Path) -> None:
    dataset = pretrain_dataset(shards, frames=3, shuffle=16)
    first, second = (
        [(s["key"], s["slice"], s["clip"].sum().item()) for s in dataset] for _ in range(2)
    )
    assert sorted(x[:2] for x in first) == sorted(x[:2] for x in second)
    assert first != second  # new start frames and order each pass


def test_two_workers_see_every_clip_once(shards: Path) -> None:
    assert len(shard_urls(shards)) == 2
    dataset = pretrain_dataset(shards, frames=3, shuffle=4)
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    seen = Counter()
    for batch in loader:
        assert batch["clip"].shape[1:] == (1, 3, SHAPE[2], SHAPE[3])
        seen.update(zip(batch["key"], batch["slice"].tolist(), strict=True))
    assert set(seen) == kept()
    assert set(seen.values()) == {1}


def test_resampled_epoch_length(shards: Path) -> None:
    dataset = pretrain_dataset(shards, frames=2, resampled=True, epoch_length=50)
    samples = list(dataset)
    assert len(samples) == 50
    assert {(s["key"], s["slice"]) for s in samples} <= kept()
    assert len(list(islice(dataset, 7))) == 7


def test_shard_urls(shards: Path, tmp_path: Path) -> None:
    expected = [str(shards / "shard-000000.tar"), str(shards / "shard-000001.tar")]
    assert shard_urls(shards) == expected
    assert shard_urls(str(shards)) == expected
    assert shard_urls(shards / "manifest.json") == expected
    assert shard_urls(f"{shards}/shard-{{000000..000001}}.tar") == expected
    assert shard_urls(expected) == expected
    empty = tmp_path / "no_manifest_here"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no_manifest_here"):
        shard_urls(empty)
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        shard_urls(tmp_path / "missing_folder")


def test_load_subjects_from_brace_pattern(shards: Path, images) -> None:
    loaded = load_subjects(f"{shards}/shard-{{000000..000001}}.tar", splits=["val"])
    assert [s["key"] for s in loaded] == ["sub1", "sub6"]
    assert all(s["image"].tobytes() == images[s["key"]].tobytes() for s in loaded)


def test_datamodule_batches(shards: Path) -> None:
    module = ClipDataModule(shards=str(shards), frames=4, batch_size=3, epoch_length=9, shuffle=8)
    batches = list(module.train_dataloader())
    assert len(batches) == 3
    for batch in batches:
        assert batch["clip"].shape == (3, 1, 4, SHAPE[2], SHAPE[3])
        assert batch["clip"].dtype == torch.float32
        assert batch["modality"] == ["cine"] * 3
        assert {
            (k, s) for k, s in zip(batch["key"], batch["slice"].tolist(), strict=True)
        } <= kept()
    with pytest.raises(ValueError, match="frames"):
        ClipDataModule(shards=str(shards), frames=0)
