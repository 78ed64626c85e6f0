"""Open and read webdataset shards: urls, local random access, streamed remote reads, decoding.

Local shards are read by random access (tar headers, then seek), so a subject costs what a plain
``.npy`` read costs (webdataset's streaming tar reader spends 3-4x longer per clip on CPU);
``pipe:`` and remote shards stream through webdataset's tar reader and grouping.

Remote shards: ``pipe:`` urls run a shell command (webdataset's gopen: ``pipe:curl -s URL``,
``pipe:aws s3 cp s3://b/shard-000000.tar -``); any other ``scheme://`` url but ``file://``
(a local path) is opened with fsspec (``memory://``, ``http(s)://``; ``s3://`` needs s3fs,
``gs://`` gcsfs). Brace patterns expand (``s3://b/cine/shard-{000000..000099}.tar``), and a
remote ``.../manifest.json`` lists its shards.

Unreadable data is skipped, not fatal: a sample whose members fail to decode, or the rest of a
shard that fails to open or read (truncated tar), is passed to a ``skip`` callback with a
message naming the shard url and sample key.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import fsspec
import numpy as np
import webdataset as wds
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

from data_shards.writer import MANIFEST, read_manifest

ShardSet = str | os.PathLike | Sequence[str]


def _is_remote(url: str) -> bool:
    return "://" in url


def _check_protocol(url: str) -> None:
    """A ValueError now, rather than a skipped shard per draw, when fsspec cannot read ``url``."""
    for part in url.split("::"):  # fsspec chains: simplecache::s3://...
        if "://" not in part:
            continue
        protocol = part.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as error:
            raise ValueError(
                f"{url}: cannot read {protocol}:// urls ({error}); install its fsspec plugin "
                "(s3fs for s3://, gcsfs for gs://) or use a pipe: url"
            ) from error


def shard_urls(shards: ShardSet) -> list[str]:
    """Shard urls from a shard folder (its manifest), a brace pattern or a list of those.

    Args:
        shards: a folder holding ``manifest.json`` (or the manifest itself, also as an fsspec
            url), a path or url with an optional brace pattern (``data/shard-{000000..000003}.tar``,
            ``pipe:cat data/shard-000000.tar``, ``s3://bucket/shard-{000000..000009}.tar``), or a
            list of those (concatenated).

    Raises:
        FileNotFoundError: a local folder without ``manifest.json``, or a local path that does
            not exist.
        ValueError: a url scheme that fsspec cannot open here.
    """
    if not isinstance(shards, (str, os.PathLike)):
        return [url for item in shards for url in shard_urls(item)]
    text = os.fspath(shards)
    if text.startswith("pipe:"):
        return list(braceexpand(text))
    if _is_remote(text):
        _check_protocol(text)
        if text.endswith(MANIFEST):
            with fsspec.open(text, "rt") as stream:
                try:
                    manifest = json.load(stream)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{text}: not valid JSON ({err})") from None
            base = text.rsplit("/", 1)[0]
            return [f"{base}/{shard['name']}" for shard in manifest["shards"]]
        return list(braceexpand(text))
    path = Path(text)
    if path.name == MANIFEST and path.is_file():
        path = path.parent
    if path.is_dir():
        manifest = read_manifest(path)
        return [str(path / shard["name"]) for shard in manifest["shards"]]
    if "{" not in text and not path.exists():
        raise FileNotFoundError(f"{text}: no such shard folder or shard file")
    return list(braceexpand(text))


def open_shard(url: str) -> IO[bytes]:
    """A readable binary stream of one shard: local path, ``pipe:`` command or fsspec url."""
    path = _local_path(url)
    if path is not None:
        return open(path, "rb")
    if url.startswith("pipe:"):
        return wds.gopen(url, "rb")
    return fsspec.open(url, "rb").open()


def decode(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw webdataset sample (member bytes) -> key, image, label and meta.

    Returns:
        ``{"key": str, "image": uint8 (S, T, H, W), "label": uint8 (S, T, H, W) | None,
        "meta": dict}``, byte-exact with what the writer stored.
    """
    label = sample.get("label.npy")
    return {
        "key": sample["__key__"],
        "image": _load_npy(sample["image.npy"]),
        "label": None if label is None else _load_npy(label),
        "meta": json.loads(sample["meta.json"]),
    }


def _load_npy(data: bytes, writable: bool = True) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    # np.load over bytes gives a read-only view; users (and torch.from_numpy) expect writable.
    return array.copy() if writable and not array.flags.writeable else array


Skip = Callable[[str], None]


def shard_subjects(url: str, splits: frozenset[str], skip: Skip) -> Iterator[dict[str, Any]]:
    """The subjects of one shard in the kept splits: ``{"key", "image", "meta"}``.

    ``image`` is uint8 (S, T, H, W), read-only. Labels are never read. A sample that fails to
    decode, or the rest of a shard that fails to open or read, is passed over: ``skip`` gets a
    message naming the url and the sample key (or the last member read).
    """
    path = _local_path(url)
    if path is None:
        yield from _streamed_subjects(url, splits, skip)
    else:
        yield from _local_subjects(url, path, splits, skip)


def _local_path(url: str) -> str | None:
    if url.startswith("file://"):
        return url2pathname(urlparse(url).path)
    return None if url.startswith("pipe:") or _is_remote(url) else url


def _local_subjects(
    url: str, path: str, splits: frozenset[str], skip: Skip
) -> Iterator[dict[str, Any]]:
    """Random access: read tar headers and seek, so that only the meta of every subject and the
    image of kept ones are read, straight into their array (as fast as a plain ``.npy``)."""
    last = ""
    try:
        with open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
            for key, members in _tar_groups(tar):
                last = list(members.values())[-1].name  # tar order
                try:
                    subject = _read_subject(stream, tar, key, members, splits)
                except Exception as error:
                    skip(f"{url}: sample {key!r} skipped ({type(error).__name__}: {error})")
                    continue
                if subject is not None:
                    yield subject
            # tarfile ends quietly at a cut-off header; a whole shard ends in two zero blocks.
            if os.fstat(stream.fileno()).st_size - tar.offset < 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("the file ends before the end-of-archive marker")
    except Exception as error:
        after = f" after member {last!r}" if last else ""
        skip(
            f"{url}: unreadable tar data{after}, rest of the shard skipped"
            f" ({type(error).__name__}: {error})"
        )


def _tar_groups(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {suffix: member}) of consecutive members sharing a key (webdataset's grouping)."""
    key, members = None, {}
    for info in tar:
        if not info.isreg():
            continue
        name_key, suffix = base_plus_ext(info.name)
        if name_key is None:
            continue
        if name_key != key and members:
            yield key, members
            members = {}
        key = name_key
        members[suffix.lower()] = info
    if members:
        yield key, members


def _read_subject(
    stream: io.BufferedReader,
    tar: tarfile.TarFile,
    key: str,
    members: dict[str, tarfile.TarInfo],
    splits: frozenset[str],
) -> dict[str, Any] | None:
    for suffix in ("meta.json", "image.npy"):
        if suffix not in members:
            raise ValueError(f"no {suffix} member")
    meta = json.loads(tar.extractfile(members["meta.json"]).read())
    if meta.get("split") not in splits:
        return None
    info = members["image.npy"]
    stream.seek(info.offset_data)
    image = np.load(stream, allow_pickle=False)  # reads the data straight into the array
    if stream.tell() > info.offset_data + info.size:
        raise ValueError(f"image.npy holds {info.size} bytes, less than its header describes")
    return {"key": key, "image": _checked(image), "meta": meta}


def _checked(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 4 or 0 in image.shape:
        raise ValueError(f"image is {image.dtype} {image.shape}, not uint8 (S, T, H, W)")
    return image


def _streamed_subjects(url: str, splits: frozenset[str], skip: Skip) -> Iterator[dict[str, Any]]:
    """Sequential read through webdataset (pipes and remote files cannot seek cheaply)."""
    where = {"member": ""}
    files = tar_file_expander(_opened(url, skip), handler=partial(_tar_error, url, where, skip))
    samples = group_by_keys(_track(files, where), handler=partial(_file_error, url, where, skip))
    for sample in samples:
        key = sample.get("__key__")
        try:
            meta = json.loads(sample["meta.json"])
            if meta.get("split") not in splits:
                continue
            image = _checked(_load_npy(sample["image.npy"], writable=False))
        except Exception as error:
            skip(f"{url}: sample {key!r} skipped ({type(error).__name__}: {error})")
            continue
        yield {"key": key, "image": image, "meta": meta}


def _opened(url: str, skip: Skip) -> Iterator[dict[str, Any]]:
    try:
        stream = open_shard(url)
    except Exception as error:
        skip(f"{url}: cannot open the shard ({type(error).__name__}: {error})")
        return
    try:
        yield {"url": url, "stream": stream}
    finally:
        try:
            stream.close()  # a pipe: reports its command's exit status here
        except Exception as error:
            skip(f"{url}: closing the stream failed ({type(error).__name__}: {error})")


def _track(files: Iterable[dict[str, Any]], where: dict[str, str]) -> Iterator[dict[str, Any]]:
    for file in files:
        where["member"] = file.get("fname", "")
        yield file


def _tar_error(url: str, where: dict[str, str], skip: Skip, error: Exception) -> bool:
    """webdataset handler for unreadable tar data: skip the rest of the shard.

    webdataset calls it from inside the shard's member loop (False ends that loop) and from the
    loop over shards, with the url appended to the error's arguments (True goes on).
    """
    detail = str(error.args[0]).split(" @ ")[0] if error.args else ""
    after = f" after member {where['member']!r}" if where["member"] else ""
    skip(
        f"{url}: unreadable tar data{after}, rest of the shard skipped"
        f" ({type(error).__name__}: {detail})"
    )
    where["member"] = ""
    return len(error.args) > 1 and error.args[-1] == url


def _file_error(url: str, where: dict[str, str], skip: Skip, error: Exception) -> bool:
    """webdataset handler for a member that does not group into a sample: skip the member."""
    skip(f"{url}: member {where['member']!r} skipped ({error.args[0]})")
    return True
