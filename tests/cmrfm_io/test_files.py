"""cmrfm_io.files: a file's sha256, JSON for numpy values, and files written whole or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from cmrfm_io import files
from cmrfm_io.files import (
    json_default,
    sha256_file,
    usual_permissions,
    write_atomic,
    write_json_atomic,
)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 200])
def test_sha256_matches_hashlib_across_chunk_boundaries(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path, chunk=64) == hashlib.sha256(data).hexdigest()


def test_sha256_default_chunk_matches_hashlib(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes((1 << 20) + 17)  # one full chunk and a bit
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_json_default_turns_numpy_paths_and_sets_into_json() -> None:
    value = {
        "scalar": np.float32(0.5),
        "int": np.int64(3),
        "array": np.arange(4, dtype=np.uint8).reshape(2, 2),
        "path": Path("a") / "b.nii.gz",
        "pure": PurePosixPath("/x/y"),
        "set": {3, 1, 2},
        "frozen": frozenset({"b", "a"}),
    }
    assert json.loads(json.dumps(value, default=json_default)) == {
        "scalar": 0.5,
        "int": 3,
        "array": [[0, 1], [2, 3]],
        "path": str(Path("a") / "b.nii.gz"),
        "pure": "/x/y",
        "set": [1, 2, 3],
        "frozen": ["a", "b"],
    }
    assert type(json_default(np.int64(3))) is int


def test_json_default_names_the_type_it_cannot_serialise() -> None:
    with pytest.raises(TypeError, match="object"):
        json_default(object())
    with pytest.raises(TypeError, match="complex"):
        json.dumps({"z": 1j}, default=json_default)


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text("old contents, longer than the new ones\n")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_write_atomic_writes_bytes_exactly_and_str_as_utf8(tmp_path: Path) -> None:
    write_atomic(tmp_path / "b.bin", b"\x00\r\n\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\r\n\xff"
    write_atomic(tmp_path / "t.csv", "a,b\r\nµ,1\r\n")  # csv line ends are not translated
    assert (tmp_path / "t.csv").read_bytes() == "a,b\r\nµ,1\r\n".encode()


def test_write_atomic_creates_the_parent_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    write_atomic(path, "x")
    assert path.read_text() == "x"


def test_last_of_two_writes_wins(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    write_atomic(path, "first")
    write_atomic(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_rename_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    temps: list[str] = []

    def failing_replace(src: os.PathLike, dst: os.PathLike) -> None:
        temps.append(Path(src).name)
        assert Path(src).read_text() == "new"  # the new data was written aside first
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    # hidden, in the same folder, and naming the writer's process
    assert len(temps) == 1
    assert temps[0].startswith(".out.txt.") and temps[0].endswith(".tmp")
    assert f".{os.getpid()}." in temps[0]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    real_open = open

    class Failing:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data: bytes) -> None:
            self.f.write(data[:2])  # half written, then the disk fills up
            raise OSError("no space left")

    monkeypatch.setattr(files, "open", lambda *a, **k: Failing(real_open(*a, **k)), raising=False)
    with pytest.raises(OSError, match="no space left"):
        write_atomic(path, "new contents")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_atomic_rejects_what_is_not_text_or_bytes(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(TypeError, match="dict"):
        write_atomic(path, {"a": 1})  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_json_atomic_indents_ends_with_newline_and_knows_numpy(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json_atomic(path, {"a": np.int32(2), "b": [1]})
    assert path.read_text() == '{\n "a": 2,\n "b": [\n  1\n ]\n}\n'
    write_json_atomic(path, {"p": object()}, indent=None, default=lambda v: "obj")
    assert path.read_text() == '{"p": "obj"}\n'


def test_usual_permissions_follow_the_umask(tmp_path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    os.chmod(path, 0o600)  # as safetensors writes
    old = os.umask(0o022)
    try:
        usual_permissions(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_json_file_cut_short_is_named_with_where_it_breaks(tmp_path: Path) -> None:
    from cmrfm_io.files import read_json
    from data_shards.shard_io import shard_urls

    path = tmp_path / "manifest.json"
    path.write_text('{"shards": [{"name": "shard-000000.tar", "sam')
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON \(Unterminated string .*line 1"):
        read_json(path)
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON"):  # what every reader meets
        shard_urls(tmp_path)
    path.write_text('{"shards": []}\n')
    assert read_json(path) == {"shards": []}
