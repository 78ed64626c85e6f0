"""Streaming clips: exact frames (cyclic wrap, stride), splits, exactly once over ranks x workers,
weighted mixing, unreadable data skipped and counted, pipe: and fsspec urls."""

from __future__ import annotations

import io
import math
import shutil
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_shards.clips import cyclic_window
from data_shards.datamodule import ClipDataModule
from data_shards.record import Subject
from data_shards.stream import (
    SkippedDataWarning,
    load_subjects,
    pretrain_dataset,
    shard_urls,
)
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
        assert batch["slices"].tolist() == [SHAPE[0]] * 3  # where the slice sits in its stack
    with pytest.raises(ValueError, match="frames"):
        ClipDataModule(shards=str(shards), frames=0)


def is_window_of(clip: torch.Tensor, stored: np.ndarray) -> bool:
    """clip (1, F, H, W) in [0, 1] is a cyclic window of stored (T, H, W) uint8."""
    frames, n_frames = clip.shape[1], stored.shape[0]
    return any(
        torch.equal(clip[0], torch.from_numpy(stored[(s + np.arange(frames)) % n_frames]) / 255)
        for s in range(n_frames)
    )


def test_two_views_are_other_slices_of_the_same_subject(shards: Path, images) -> None:
    samples = list(pretrain_dataset(shards, frames=3, shuffle=8, seed=2, views=2))
    assert {(s["key"], s["slice"]) for s in samples} == kept()  # every slice once as view 1
    for sample in samples:
        stored = images[sample["key"]]
        assert sample["slice2"] != sample["slice"]  # S = 3: always another slice
        assert is_window_of(sample["clip"], stored[sample["slice"]])
        assert is_window_of(sample["clip2"], stored[sample["slice2"]])
    module = ClipDataModule(shards=str(shards), frames=3, batch_size=4, epoch_length=4, views=2,
                            augment={"spatial_prob": 1.0}, augment_on="device")  # fmt: skip
    raw = next(iter(module.train_dataloader()))
    raw["clip2"] = raw["clip"].clone()  # identical views: only the augmentation can differ
    batch = module.on_after_batch_transfer(raw, 0)
    assert batch["clip"].dtype == batch["clip2"].dtype == torch.float32
    assert batch["clip2"].shape == batch["clip"].shape == (4, 1, 3, SHAPE[2], SHAPE[3])
    assert not torch.equal(batch["clip"], batch["clip2"])  # each view its own draw
    with pytest.raises(ValueError, match="views"):
        pretrain_dataset(shards, frames=3, views=3)


# --- one pass over ranks x workers ----------------------------------------------------------


def stream_pairs(dataset, workers: int) -> list[tuple[str, int]]:
    loader = DataLoader(dataset, batch_size=4, num_workers=workers)
    return [
        pair for batch in loader for pair in zip(batch["key"], batch["slice"].tolist(), strict=True)
    ]


@pytest.mark.parametrize("maxcount", [1, 3])  # 8 shards (2 per stream); 3 (one stream gets none)
def test_ranks_times_workers_see_every_clip_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, maxcount: int
) -> None:
    shards = write(tmp_path, make_subjects(), maxcount=maxcount)
    assert len(shard_urls(shards)) == {1: 8, 3: 3}[maxcount]
    per_rank = []
    for rank in range(2):  # webdataset reads the rank from RANK/WORLD_SIZE, as torchrun sets them
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append(stream_pairs(pretrain_dataset(shards, frames=2, shuffle=4), workers=2))
    seen = Counter(pair for pairs in per_rank for pair in pairs)
    assert set(seen) == kept()
    assert set(seen.values()) == {1}
    # Whole shards go to ranks: rank r reads shards r, r + 2, ... (shard i // maxcount holds sub i).
    for rank, pairs in enumerate(per_rank):
        assert {key for key, _ in pairs} == {
            key for key, _ in kept() if (int(key[3:]) // maxcount) % 2 == rank
        }


# --- temporal stride ------------------------------------------------------------------------


@pytest.mark.parametrize("stride", [2, (1, 2)])
def test_clips_follow_the_stride(shards: Path, images, stride) -> None:
    allowed = (stride,) if isinstance(stride, int) else stride
    used = Counter()
    for sample in pretrain_dataset(shards, frames=3, stride=stride, resampled=True,
                                   epoch_length=60, seed=2):  # fmt: skip
        stored = torch.from_numpy(images[sample["key"]][sample["slice"]]).float() / 255
        matches = [
            (start, step)
            for start in range(SHAPE[1])
            for step in allowed
            if torch.equal(sample["clip"][0], stored[cyclic_window(start, 3, SHAPE[1], step)])
        ]
        assert len(matches) == 1
        used[matches[0][1]] += 1
    assert set(used) == set(allowed)  # a range of strides draws each of them


def test_bad_stride_is_an_error(shards: Path) -> None:
    for stride in (0, [1, 0], [], 1.5):
        with pytest.raises(ValueError, match="stride"):
            pretrain_dataset(shards, frames=2, stride=stride)


# --- mixing shard sets by weight ------------------------------------------------------------


@pytest.fixture
def two_sets(tmp_path: Path) -> tuple[Path, Path]:
    cine = write(tmp_path / "cine", make_subjects("cine"))
    lge = write(tmp_path / "lge", make_subjects("lge", shape=(2, 1, SHAPE[2], SHAPE[3])))
    return cine, lge


def test_mix_draws_each_clip_by_weight(two_sets: tuple[Path, Path]) -> None:
    cine, lge = two_sets
    n, p_lge = 3000, 0.2
    dataset = pretrain_dataset({str(cine): 1 - p_lge, str(lge): p_lge}, frames=3, shuffle=0,
                               resampled=True, epoch_length=n, seed=3)  # fmt: skip
    modalities = Counter(sample["modality"] for sample in dataset)
    assert sum(modalities.values()) == n
    # Every clip is an independent draw: the lge count is Binomial(n, 0.2); allow 4 std.
    assert abs(modalities["lge"] - n * p_lge) < 4 * math.sqrt(n * p_lge * (1 - p_lge))


def test_mix_forms_agree_and_batches_collate(two_sets: tuple[Path, Path]) -> None:
    cine, lge = two_sets

    def run(sets) -> list:
        dataset = pretrain_dataset(sets, frames=3, shuffle=8, resampled=True, epoch_length=24)
        return [(s["modality"], s["key"], s["slice"], s["clip"].sum().item()) for s in dataset]

    assert run({str(cine): 0.5, str(lge): 0.5}) == run([(cine, 0.5), (lge, 0.5)])
    dataset = pretrain_dataset({str(cine): 0.5, str(lge): 0.5}, frames=3, resampled=True,
                               epoch_length=64, shuffle=16)  # fmt: skip
    modalities = set()
    for batch in DataLoader(dataset, batch_size=16):
        assert batch["clip"].shape == (16, 1, 3, SHAPE[2], SHAPE[3])
        modalities.update(batch["modality"])
    assert modalities == {"cine", "lge"}  # the modality rides with every clip through the mix


def test_mix_needs_resampling_and_positive_weights(two_sets: tuple[Path, Path]) -> None:
    cine, lge = two_sets
    with pytest.raises(ValueError, match="resampled"):
        pretrain_dataset({str(cine): 0.8, str(lge): 0.2}, frames=2)
    with pytest.raises(ValueError, match="weight"):
        pretrain_dataset({str(cine): 0.8, str(lge): 0}, frames=2, resampled=True)
    # A plain list is one set made of all the shards: one pass reads both folders once.
    seen = Counter((s["modality"], s["key"], s["slice"])
                   for s in pretrain_dataset([cine, lge], frames=2))  # fmt: skip
    assert set(seen.values()) == {1}
    assert {m for m, _, _ in seen} == {"cine", "lge"}


def test_resampled_set_without_clips_is_an_error(shards: Path) -> None:
    dataset = pretrain_dataset(shards, frames=2, splits=["nope"], resampled=True)
    with pytest.raises(RuntimeError, match="no clip"):
        next(iter(dataset))


# --- unreadable data is skipped, counted and named ------------------------------------------


def rewrite_member(shard: Path, name: str, data: bytes) -> None:
    """Replace one member's bytes in a tar, keeping every other member as it was."""
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    assert name in {info.name for info, _ in members}
    with tarfile.open(shard, "w") as tar:
        for info, content in members:
            content = data if info.name == name else content
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


@pytest.fixture(scope="module")
def phantom(make_phantom_shards) -> Path:
    return make_phantom_shards(4, 2)


ALL = ["train", "val", "test"]
VIA = {"path": str, "pipe": lambda url: f"pipe:cat {url}"}  # random access / webdataset stream


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("member", ["image.npy", "meta.json"])
def test_corrupt_member_is_skipped_with_a_counted_warning(
    phantom: Path, tmp_path: Path, member: str, via: str
) -> None:
    shards = Path(shutil.copytree(phantom, tmp_path / "shards"))
    keys = [s["key"] for s in load_subjects(shards)]
    (path,) = shard_urls(shards)
    bad = keys[1]
    rewrite_member(Path(path), f"{bad}.{member}", b"\x93NUMPY garbage {not json")
    dataset = pretrain_dataset(VIA[via](path), frames=2, splits=ALL, shuffle=0)
    with pytest.warns(SkippedDataWarning) as record:
        seen = {s["key"] for s in dataset}
    assert seen == set(keys) - {bad}
    assert dataset.skipped == 1
    (message,) = [str(w.message) for w in record if w.category is SkippedDataWarning]
    assert path in message and repr(bad) in message and "[1 skipped" in message


@pytest.mark.parametrize("via", VIA)
def test_truncated_shard_keeps_what_came_before(phantom: Path, tmp_path: Path, via: str) -> None:
    shards = Path(shutil.copytree(phantom, tmp_path / "shards"))
    (path,) = shard_urls(shards)
    with tarfile.open(path) as tar:
        infos = tar.getmembers()
    cut = next(i for i in infos if i.name.endswith(".image.npy") and i.offset > 0)
    before = {i.name.split(".")[0] for i in infos if i.offset_data + i.size <= cut.offset}
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: cut.offset_data + cut.size // 2])
    dataset = pretrain_dataset(VIA[via](path), frames=2, splits=ALL, shuffle=0)
    with pytest.warns(SkippedDataWarning, match="unreadable tar data") as record:
        seen = {s["key"] for s in dataset}
    assert seen == before
    messages = [str(w.message) for w in record if w.category is SkippedDataWarning]
    assert dataset.skipped == len(messages) >= 1
    assert all(path in message for message in messages)


def test_local_shard_cut_at_a_member_boundary_is_noticed(phantom: Path, tmp_path: Path) -> None:
    # tarfile reads a cut at a header as the end of the archive; the missing end marker tells.
    shards = Path(shutil.copytree(phantom, tmp_path / "shards"))
    (path,) = shard_urls(shards)
    with tarfile.open(path) as tar:
        cut = [i for i in tar.getmembers() if i.name.endswith(".image.npy")][1]
    Path(path).write_bytes(Path(path).read_bytes()[: cut.offset])
    dataset = pretrain_dataset(path, frames=2, splits=ALL, shuffle=0)
    with pytest.warns(SkippedDataWarning, match="end-of-archive"):
        assert len({s["key"] for s in dataset}) == 1
    assert dataset.skipped == 1


def test_missing_shard_is_skipped(shards: Path, tmp_path: Path) -> None:
    missing = f"pipe:cat {tmp_path / 'gone.tar'}"  # the command fails: nothing to read
    dataset = pretrain_dataset([*shard_urls(shards), missing], frames=2, shuffle=0)
    with pytest.warns(SkippedDataWarning, match="gone.tar"):
        seen = Counter((s["key"], s["slice"]) for s in dataset)
    assert set(seen) == kept() and set(seen.values()) == {1}
    assert dataset.skipped >= 1


# --- remote shards: pipe: commands and fsspec urls ------------------------------------------


def test_pipe_and_fsspec_urls(shards: Path) -> None:
    local = shard_urls(shards)
    pipes = [f"pipe:cat {url}" for url in local]
    file_pattern = f"file://{shards}/shard-{{000000..000001}}.tar"
    assert shard_urls(file_pattern) == [f"file://{url}" for url in local]
    for urls in (pipes, file_pattern):
        seen = Counter((s["key"], s["slice"]) for s in pretrain_dataset(urls, frames=2))
        assert set(seen) == kept() and set(seen.values()) == {1}


def test_fsspec_manifest_url(shards: Path) -> None:
    memory = fsspec.filesystem("memory")
    root = "memory://cmrfm-test-shards"
    try:
        for path in [shards / "manifest.json", *map(Path, shard_urls(shards))]:
            memory.pipe(f"{root}/{path.name}", path.read_bytes())
        urls = shard_urls(f"{root}/manifest.json")
        assert urls == [f"{root}/shard-000000.tar", f"{root}/shard-000001.tar"]
        seen = {(s["key"], s["slice"]) for s in pretrain_dataset(f"{root}/manifest.json", frames=2)}
        assert seen == kept()
    finally:
        memory.rm(root, recursive=True)


def test_a_remote_manifest_that_is_not_json_is_named() -> None:
    memory = fsspec.filesystem("memory")
    url = "memory://cmrfm-test-cut/manifest.json"
    memory.pipe(url, b'{"shards": [')  # an upload cut short
    try:
        with pytest.raises(ValueError, match=rf"{url}: not valid JSON \("):
            shard_urls(url)
    finally:
        memory.rm("memory://cmrfm-test-cut", recursive=True)


def test_unknown_url_scheme_is_an_error_up_front() -> None:
    with pytest.raises(ValueError, match="nosuchscheme"):
        pretrain_dataset("nosuchscheme://bucket/shard-000000.tar", frames=2)
