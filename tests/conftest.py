"""Shared test settings and fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine they oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_phantom_shards(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory of small phantom shards (48 x 48 at 3 mm, 4 frames) for tests that train.

    Further keyword arguments are phantom source options, e.g. ``lge_fraction=0.3``.
    """

    def make(n: int, slices: int, **extra: object) -> Path:
        out = tmp_path_factory.mktemp("shards")
        options = {"n": n, "slices": slices, "frames": 4, "size": 48, **extra}
        convert("phantom", None, out, preprocess_config=PreprocessConfig(spacing=3.0, size=48),
                source_options=options)  # fmt: skip
        return out

    return make
