"""Write preprocessed subjects into webdataset tar shards and describe them in ``manifest.json``.

A shard sample is one subject under a sanitised key::

    <key>.image.npy   uint8 (S, T, H, W), exactly the array given
    <key>.label.npy   uint8 (S, T, H, W), only for labelled subjects
    <key>.meta.json   meta + subject, spacing, shape, split

Shards are byte-reproducible (fixed member mtime), so the manifest's sha256 of a re-run matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds

from cmrfm_io.files import json_default, read_json, sha256_file, write_atomic
from data_shards.record import Subject
from data_shards.split import SPLITS, subject_split

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitise_key(subject: str) -> str:
    """A webdataset-safe key: only ``[A-Za-z0-9_-]`` (webdataset cuts keys at the first dot)."""
    if not subject:
        raise ValueError("subject id is empty; sources must give every subject an id")
    return _UNSAFE.sub("_", subject)


def write_shards(
    subjects: Iterable[Subject],
    out_dir: Path,
    *,
    prefix: str = "shard",
    maxcount: int = 32,
    start_shard: int = 0,
    taken_keys: Iterable[str] = (),
    on_shard: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Write one webdataset sample per subject into ``out_dir/prefix-000000.tar``, ...

    Args:
        subjects: preprocessed subjects, image uint8 (S, T, H, W). ``meta["split"]`` is kept when
            set, else assigned from ``meta["split_group"]`` (or the subject id).
        out_dir: folder for the shards; created if missing.
        prefix: shard file name prefix.
        maxcount: most samples per shard.
        start_shard: number of the first shard written (resuming after kept shards).
        taken_keys: sample keys already used by kept shards; a colliding key gets a hash suffix.
        on_shard: called with {name, sha256, bytes, count, samples} as soon as a shard is
            complete and closed. A shard open when an exception escapes is not reported: it
            may hold half a sample.

    Returns:
        One record per sample, in writing order: key, shard (file name), subject, split,
        source, modality, shape, has_label.

    Raises:
        ValueError: an image or label is not uint8, or two subjects share an id.
    """
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    ids: set[str] = set()
    keys: set[str] = set(taken_keys)

    def closed(fname: str) -> None:
        path = Path(fname)
        samples = [r for r in records if r["shard"] == path.name]
        if not samples:  # ShardWriter opens a shard eagerly; drop it when nothing went in
            path.unlink(missing_ok=True)
        elif on_shard is not None:
            on_shard(shard_entry(path, samples))

    # ShardWriter opens its first shard on construction; pattern uses printf-style numbering.
    pattern = str(out_dir / f"{prefix}-%06d.tar")
    sink = wds.ShardWriter(
        pattern,
        maxcount=maxcount,
        post=closed,
        start_shard=start_shard,
        verbose=0,
        encoder=False,
        mtime=0,
    )
    try:
        for subject in subjects:
            if subject.subject in ids:
                raise ValueError(f"duplicate subject id {subject.subject!r}: ids must be unique")
            ids.add(subject.subject)
            key = _unique_key(subject.subject, keys)
            keys.add(key)
            sample, record = _encode(subject, key)
            sink.write(sample)
            record["shard"] = Path(sink.fname).name
            records.append(record)
            if sink.count >= maxcount:
                sink.finish()  # close and report a full shard now, not when the next one opens
    except BaseException:
        sink.post = None  # an interrupted shard is not reported; a resumed run replaces it
        sink.close()
        raise
    sink.close()
    return records


def shard_entry(path: Path, samples: list[dict]) -> dict:
    """{name, sha256, bytes, count, samples} of a closed shard file holding ``samples``."""
    return {
        "name": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "count": len(samples),
        "samples": samples,
    }


def _unique_key(subject: str, taken: set[str]) -> str:
    """Sanitised key; on a collision ("a.b" vs "a/b") add a hash of the raw id to keep both."""
    key = sanitise_key(subject)
    if key in taken:
        key = f"{key}-{hashlib.sha256(subject.encode('utf-8')).hexdigest()[:8]}"
    return key


def _encode(subject: Subject, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tar sample (bytes per member) and the manifest record of one subject."""
    for name, array in (("image", subject.image), ("label", subject.label)):
        if array is not None and array.dtype != np.uint8:
            raise ValueError(
                f"{subject.subject}: {name} must be uint8 (run preprocess first), got {array.dtype}"
            )
    split = subject_split(subject.subject, subject.meta)
    shape = [int(n) for n in subject.image.shape]
    meta = dict(subject.meta)
    meta.update(
        subject=subject.subject,
        # JSON has no NaN; an unknown slice spacing is null, as preprocess writes it.
        spacing=[float(v) if math.isfinite(v) else None for v in subject.spacing],
        shape=shape,
        split=split,
    )
    sample: dict[str, Any] = {
        "__key__": key,
        "image.npy": _npy_bytes(subject.image),
        "meta.json": json.dumps(meta, default=json_default, allow_nan=False).encode("utf-8"),
    }
    if subject.label is not None:
        sample["label.npy"] = _npy_bytes(subject.label)
    record = {
        "key": key,
        "subject": subject.subject,
        "split": split,
        "source": meta.get("source"),
        "modality": meta.get("modality"),
        "shape": shape,
        "has_label": subject.label is not None,
    }
    return sample, record


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_manifest(
    out_dir: Path,
    shards: Sequence[str],
    samples: Sequence[dict],
    preprocess: dict,
    extra: dict | None = None,
    checksums: Mapping[str, tuple[str, int]] | None = None,
) -> dict:
    """Write ``out_dir/manifest.json`` describing the shards and return it.

    Args:
        out_dir: the folder holding the shards.
        shards: shard file names relative to ``out_dir``, in order.
        samples: the records :func:`write_shards` returned.
        preprocess: the preprocessing settings the images went through.
        extra: further top-level fields (source, source_options, quarantined, ...).
        checksums: {name: (sha256, bytes)} already known (e.g. just verified), so large shard
            folders are not hashed twice; shards missing from it are hashed here.

    Returns:
        The manifest: version, created (UTC ISO), shards [{name, count, sha256, bytes}],
        samples, splits {split: [keys]}, preprocess, and the ``extra`` fields.
    """
    out_dir = Path(out_dir)
    counts: dict[str, int] = {name: 0 for name in shards}
    for sample in samples:
        if sample["shard"] not in counts:
            raise ValueError(f"sample {sample['key']} is in {sample['shard']}, not in shards")
        counts[sample["shard"]] += 1
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for sample in samples:
        splits.setdefault(sample["split"], []).append(sample["key"])
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards": [
            {"name": name, "count": counts[name], **_checksum(out_dir / name, checksums)}
            for name in shards
        ],
        "samples": list(samples),
        "splits": splits,
        "preprocess": preprocess,
    }
    for field, value in (extra or {}).items():
        if field in manifest:
            raise ValueError(f"extra field {field!r} would overwrite the manifest's own {field!r}")
        manifest[field] = value
    text = json.dumps(manifest, indent=1, default=json_default)
    write_atomic(out_dir / MANIFEST, text + "\n")  # a reader never sees half a manifest
    return json.loads(text)  # exactly what a reader of the file gets (tuples become lists)


def _checksum(path: Path, known: Mapping[str, tuple[str, int]] | None) -> dict[str, Any]:
    sha256, size = (known or {}).get(path.name) or (sha256_file(path), path.stat().st_size)
    return {"sha256": sha256, "bytes": size}


def read_manifest(out_dir: Path) -> dict:
    """The manifest of a shard folder; FileNotFoundError naming the folder when there is none."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {MANIFEST} in {Path(out_dir)}: not a shard folder (run `cmrfm shard` to make one)"
        )
    return read_json(path)


def verify_manifest(out_dir: Path) -> list[str]:
    """Recompute every shard's size and sha256; return the problems, empty when all is well."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    problems = []
    for shard in manifest["shards"]:
        path = out_dir / shard["name"]
        if not path.is_file():
            problems.append(f"{shard['name']}: missing from {out_dir}")
            continue
        size = path.stat().st_size
        if size != shard["bytes"]:
            problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
        digest = sha256_file(path)
        if digest != shard["sha256"]:
            problems.append(
                f"{shard['name']}: sha256 {digest} does not match the manifest's {shard['sha256']}"
                " (corrupt or rewritten shard; re-run the conversion)"
            )
    return problems
