"""Axis-coded cine arrays in .npz archives, and a quiet console."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from rich.console import Console

SHAPE = (2, 3, 6, 5)  # (Z, T, H, W), deliberately not square


def cine(shape=SHAPE, dtype=np.float32) -> np.ndarray:
    """Voxel value 1000 z + 100 t + 10 y + x, so any axis mix-up shows."""
    z, t, y, x = np.indices(shape)
    return (1000 * z + 100 * t + 10 * y + x).astype(dtype)


def save(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)
