"""Fixtures of the foundation tests: a trained backbone and hub folders saved from one."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import hub_folder
from helpers.backbones import PREPROCESS, trained

from foundation import CardiacViT, save_pretrained


@pytest.fixture
def source() -> CardiacViT:
    return trained()


@pytest.fixture
def folder(tmp_path: Path, source: CardiacViT) -> Path:
    return save_pretrained(source, tmp_path / "hub", preprocess=PREPROCESS)


@pytest.fixture
def saved(tmp_path):
    model = hub_folder.trained_backbone()
    folder = save_pretrained(
        model, tmp_path / "hub", preprocess=hub_folder.PREPROCESS, data=hub_folder.DATA,
        training=hub_folder.TRAINING, metrics={"dice_mean": 0.81},
    )  # fmt: skip
    return model, folder
