"""Files written whole or not at all, their sha256, and JSON for numpy values."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read ``chunk`` bytes at a time (shards can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays, paths and sets (sorted);
    TypeError naming the type for anything else."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{value!r} of type {type(value).__name__} is not JSON-serialisable")


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Replace ``path`` whole with ``data`` (str as UTF-8): a reader, or a job killed mid-write,
    sees the old file or the new one, never half of one. The parent folder is created."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, bytes):
        raise TypeError(f"write_atomic takes str or bytes, not {type(data).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the rename stays on one file system; pid and token, so two writers
    # (processes or threads) never share a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(
    path: str | os.PathLike,
    value: Any,
    indent: int | None = 1,
    default: Callable[[Any], Any] = json_default,
) -> None:
    """``value`` as JSON plus a trailing newline, written with :func:`write_atomic`."""
    write_atomic(path, json.dumps(value, indent=indent, default=default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's value; ValueError naming the file and where it breaks when it is not JSON
    (a file cut short or edited by hand). FileNotFoundError as open raises it."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); a damaged or hand-edited file") from None


def usual_permissions(path: str | os.PathLike) -> None:
    """Give a file the mode a plain new file gets (0666 less the umask, usually group- and
    world-readable): safetensors writes its files 0600, unreadable to a lab's shared group."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
