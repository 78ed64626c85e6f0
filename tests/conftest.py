"""Shared test settings and fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers.predict import PACKAGE_PREPROCESS

from data_shards.convert import convert
from data_shards.preprocess import PreprocessConfig

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


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fine-tuned package (cmr_vit_test, patch 8, 2 frames) for `cmrfm predict` tests."""
    from finetune.package import save_finetuned
    from finetune.system import SegFinetuner

    torch.manual_seed(0)
    model = SegFinetuner(backbone="cmr_vit_test", patch_size=8, tubelet=2, feature_size=8)
    out = tmp_path_factory.mktemp("pkg")
    return save_finetuned(
        model.eval(), out, preprocess=PACKAGE_PREPROCESS, frames=2, datasets=["phantom"]
    )
