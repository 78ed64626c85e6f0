"""Shard writer, manifest and the convert job: byte-exact round trips and honest manifests."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from data_shards import sources
from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig
from data_shards.privacy import default_salt, input_ref
from data_shards.record import IGNORE, Subject
from data_shards.sources import SourceError
from data_shards.split import assign_split
from data_shards.stream import load_subjects
from data_shards.writer import sanitise_key, verify_manifest, write_manifest, write_shards


def make_subject(name: str, seed: int, labelled: bool, shape=(2, 3, 8, 8), **meta) -> Subject:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    label = None
    if labelled:
        label = rng.integers(0, 4, size=shape, dtype=np.uint8)
        label[:, 1] = IGNORE
    meta = {"source": "test", "modality": "cine", "ed": 0, **meta}
    return Subject(name, image, label, (8.0, 1.5, 1.5), meta)


def write(out_dir: Path, subjects: list[Subject], maxcount: int = 32) -> dict:
    samples = write_shards(subjects, out_dir, maxcount=maxcount)
    shards = list(dict.fromkeys(s["shard"] for s in samples))
    return write_manifest(out_dir, shards, samples, preprocess={"size": 8}, extra={"source": "t"})


@pytest.fixture
def subjects() -> list[Subject]:
    return [make_subject(f"sub{i:02d}", i, labelled=i % 2 == 0) for i in range(7)]


def test_round_trip_is_byte_exact(tmp_path: Path, subjects: list[Subject]) -> None:
    subjects[3].spacing = (float("nan"), 1.5, 1.5)  # unknown slice spacing
    write(tmp_path, subjects, maxcount=3)
    loaded = {s["meta"]["subject"]: s for s in load_subjects(tmp_path)}
    assert sorted(loaded) == sorted(s.subject for s in subjects)
    for subject in subjects:
        back = loaded[subject.subject]
        assert back["key"] == subject.subject
        assert back["image"].dtype == np.uint8
        assert back["image"].shape == subject.image.shape
        assert back["image"].tobytes() == subject.image.tobytes()
        if subject.label is None:
            assert back["label"] is None
        else:
            assert back["label"].dtype == np.uint8
            assert back["label"].tobytes() == subject.label.tobytes()
        spacing = [None if np.isnan(v) else v for v in subject.spacing]
        expected = {
            **subject.meta,
            "subject": subject.subject,
            "spacing": spacing,
            "shape": list(subject.image.shape),
            "split": assign_split(subject.subject),
        }
        assert back["meta"] == expected


def test_load_subjects_filters_splits_and_sorts(tmp_path: Path) -> None:
    splits = ["train", "test", "val", "train", "test"]
    names = ["e", "d", "c", "b", "a"]
    write(
        tmp_path,
        [
            make_subject(n, i, False, split=s)
            for i, (n, s) in enumerate(zip(names, splits, strict=True))
        ],
    )
    assert [s["key"] for s in load_subjects(tmp_path)] == ["a", "b", "c", "d", "e"]
    assert [s["key"] for s in load_subjects(tmp_path, splits=["test"])] == ["a", "d"]
    assert [s["key"] for s in load_subjects(tmp_path, splits=["train", "val"])] == ["b", "c", "e"]


def test_manifest_lists_every_shard_and_verifies(tmp_path: Path, subjects: list[Subject]) -> None:
    manifest = write(tmp_path, subjects, maxcount=3)
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["version"] == 1
    assert [s["name"] for s in manifest["shards"]] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == [s["name"] for s in manifest["shards"]]
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 1]
    for shard in manifest["shards"]:
        data = (tmp_path / shard["name"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
        assert shard["bytes"] == len(data)
    keys = [s["key"] for s in manifest["samples"]]
    assert keys == [s.subject for s in subjects]
    assert sorted(k for split in manifest["splits"].values() for k in split) == sorted(keys)
    for name, split_keys in manifest["splits"].items():
        assert all(assign_split(k) == name for k in split_keys)
    record = manifest["samples"][0]
    assert record["shard"] == "shard-000000.tar"
    assert (record["source"], record["modality"], record["shape"]) == ("test", "cine", [2, 3, 8, 8])
    assert [s["has_label"] for s in manifest["samples"]] == [s.label is not None for s in subjects]
    assert manifest["preprocess"] == {"size": 8}
    assert manifest["source"] == "t"
    assert verify_manifest(tmp_path) == []


def test_corrupt_byte_is_named(tmp_path: Path, subjects: list[Subject]) -> None:
    write(tmp_path, subjects, maxcount=3)
    path = tmp_path / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF  # inside the first member's payload
    path.write_bytes(bytes(data))
    problems = verify_manifest(tmp_path)
    assert len(problems) == 1
    assert "shard-000001.tar" in problems[0] and "sha256" in problems[0]


def test_missing_shard_and_missing_manifest(tmp_path: Path, subjects: list[Subject]) -> None:
    write(tmp_path, subjects, maxcount=3)
    (tmp_path / "shard-000002.tar").unlink()
    assert any("shard-000002.tar" in p for p in verify_manifest(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "empty"))):
        verify_manifest(tmp_path / "empty")


def test_keys_are_sanitised(tmp_path: Path) -> None:
    ids = ["site.A/patient 01", "1.2.840.113619.2.55", "a.b", "a/b", "ok-id_1"]
    subjects = [make_subject(name, i, False) for i, name in enumerate(ids)]
    manifest = write(tmp_path, subjects)
    keys = [s["key"] for s in manifest["samples"]]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", k) for k in keys), keys
    assert len(set(keys)) == len(keys)  # "a.b" and "a/b" collide after sanitising; both kept
    assert keys[0] == "site_A_patient_01" and keys[4] == "ok-id_1"
    loaded = load_subjects(tmp_path)
    assert sorted(s["meta"]["subject"] for s in loaded) == sorted(ids)
    for s in loaded:
        original = next(x for x in subjects if x.subject == s["meta"]["subject"])
        assert s["image"].tobytes() == original.image.tobytes()


def test_sanitise_key() -> None:
    assert sanitise_key("a.b/c d") == "a_b_c_d"
    with pytest.raises(ValueError, match="empty"):
        sanitise_key("")


def test_maxcount_splits_shards(tmp_path: Path) -> None:
    manifest = write(tmp_path, [make_subject(f"s{i}", i, False) for i in range(5)], maxcount=2)
    assert [(s["name"], s["count"]) for s in manifest["shards"]] == [
        ("shard-000000.tar", 2),
        ("shard-000001.tar", 2),
        ("shard-000002.tar", 1),
    ]


def test_rejects_non_uint8_and_duplicates(tmp_path: Path) -> None:
    bad = make_subject("f", 0, False)
    bad.image = bad.image.astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        write_shards([bad], tmp_path / "a")
    with pytest.raises(ValueError, match="duplicate"):
        write_shards([make_subject("x", 0, False), make_subject("x", 1, False)], tmp_path / "b")


def test_no_subjects_no_shards(tmp_path: Path) -> None:
    assert write_shards([], tmp_path) == []
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- convert


def standin_source(root: Path | None, n: int = 5, bad_spacing: bool = False):
    """Five good cine subjects and one unreadable file; optionally one that preprocess rejects."""
    for i in range(n):
        yield make_subject(f"case{i}", i, labelled=i < 2, shape=(2, 4, 20, 16), source="standin")
        if i == 2:
            yield SourceError(Path("/data/case_bad/image.nii.gz"), "truncated gzip stream")
    if bad_spacing:
        subject = make_subject("nan_spacing", 99, False, shape=(1, 2, 10, 10))
        subject.spacing = (8.0, 0.0, 1.5)  # a broken header (NaN, unknown, would be kept)
        yield subject


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(sources.SOURCES, "standin", standin_source)
    monkeypatch.setitem(sources.SOURCES, "other", standin_source)
    return "standin"


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def test_convert_quarantines_and_continues(tmp_path: Path, standin: str) -> None:
    out = tmp_path / "shards"
    console = quiet()
    config = PreprocessConfig(spacing=1.5, size=12)
    manifest = convert(
        standin,
        None,
        out,
        preprocess_config=config,
        source_options={"bad_spacing": True},
        maxcount=2,
        console=console,
    )
    assert [s["key"] for s in manifest["samples"]] == [f"case{i}" for i in range(5)]
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["source"] == "standin" and manifest["quarantined"] == 2
    assert manifest["preprocess"] == {
        "spacing": 1.5,
        "size": 12,
        "percentiles": [0.5, 99.5],
        "orientation": "canonical",
        "crop": "centre",
    }
    quarantine = json.loads((out / "quarantine.json").read_text())
    assert quarantine[0] == {  # the 4th item of the source, by keyed id: never its path
        "input": input_ref("/data/case_bad/image.nii.gz", None, default_salt()),
        "position": 4,
        "reason": "truncated gzip stream",
    }
    assert quarantine[1]["subject"] == "nan_spacing" and "spacing" in quarantine[1]["reason"]
    assert verify_manifest(out) == []
    loaded = load_subjects(out)
    assert {s["image"].shape for s in loaded} == {(2, 4, 12, 12)}
    assert all(s["meta"]["split"] == assign_split(s["key"]) for s in loaded)
    assert [s["label"] is not None for s in loaded] == [True, True, False, False, False]
    text = console.file.getvalue()
    assert "quarantined" in text and "total MB" in text


def test_convert_refuses_other_source_unless_overwrite(tmp_path: Path, standin: str) -> None:
    config = PreprocessConfig(size=8)
    convert(standin, None, tmp_path, preprocess_config=config, maxcount=1, console=quiet())
    assert len(list(tmp_path.glob("shard-*.tar"))) == 5
    with pytest.raises(FileExistsError, match=r"'standin'.*overwrite"):
        convert("other", None, tmp_path, preprocess_config=config, console=quiet())
    # Re-running with other options and overwrite replaces the files, leaving no stale shards.
    convert(
        standin,
        None,
        tmp_path,
        preprocess_config=config,
        source_options={"n": 2},
        console=quiet(),
        overwrite=True,
    )
    assert [p.name for p in tmp_path.glob("shard-*.tar")] == ["shard-000000.tar"]
    manifest = convert(
        "other", None, tmp_path, preprocess_config=config, console=quiet(), overwrite=True
    )
    assert manifest["source"] == "other" and verify_manifest(tmp_path) == []
