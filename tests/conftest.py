"""Shared test settings and fixtures."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from data_shards.convert import QUARANTINE, convert
from data_shards.preprocess import PreprocessConfig
from data_shards.privacy import default_salt, local_inputs

os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(autouse=True, scope="session")
def private_salt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keyed ids (DICOM subjects, quarantined inputs) use a salt of the test session, not the
    user's ``~/.cache/cmrfm/id_salt``; a test may still point CMRFM_CACHE elsewhere."""
    before = os.environ.get("CMRFM_CACHE")
    os.environ["CMRFM_CACHE"] = str(tmp_path_factory.mktemp("cmrfm_cache"))
    yield
    if before is None:
        os.environ.pop("CMRFM_CACHE", None)
    else:
        os.environ["CMRFM_CACHE"] = before


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


def quarantined_inputs(out: Path, root: Path) -> list[Path]:
    """The local paths of the inputs ``out/quarantine.json`` names (by keyed id), in its order."""
    entries = [e for e in json.loads((out / QUARANTINE).read_text()) if "input" in e]
    found = local_inputs(root, {e["input"] for e in entries}, default_salt())
    return [found[e["input"]] for e in entries]
