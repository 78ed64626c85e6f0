"""A benchmark's files: JSON-lines rows (a last line cut by a killed job is dropped) and saved
label maps (compressed npz by subject key). Whole-file writes are atomic."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cmrfm_io.files import json_default, write_atomic


def save_predictions(path: Path, preds: dict[str, np.ndarray]) -> None:
    """Label maps by subject key, compressed (a 10 x 2 x 128 x 128 map takes ~10 kB)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **preds)
    write_atomic(path, buffer.getvalue())  # a killed job never leaves half a file under path


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Replace a JSON-lines file whole: written aside, then renamed over the old one."""
    write_atomic(path, "".join(json.dumps(r, default=json_default) + "\n" for r in rows))


def append_jsonl(path: Path, rows: Sequence[dict]) -> None:
    """Add rows at the end; after a last line cut by a killed job, on a line of their own (glued
    to it, the first would be unreadable too and its finished run lost)."""
    cut = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
    with path.open("a") as f:
        if cut:
            f.write("\n")
        for row in rows:
            f.write(json.dumps(row, default=json_default) + "\n")
        f.flush()


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, 2)
        return f.read(1)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines file; a last line cut by a killed job is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
