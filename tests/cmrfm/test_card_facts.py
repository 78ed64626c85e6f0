"""What a backbone card says about its data: each manifest's dataset, its subjects, and how many
of them training read (the splits it was given; the test split stays unseen)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from cmrfm.card_facts import data_and_preprocess
from data_shards.preprocess import PreprocessConfig
from data_shards.writer import write_manifest
from foundation.card import card_text

SPLITS = {"acdc-patient001": "train", "acdc-patient002": "val", "acdc-patient003": "test"}


def manifest(folder: Path, preprocess: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "shard-000000.tar").write_bytes(b"stub")  # the manifest hashes its shards
    samples = [
        {"key": k, "subject": k, "split": split, "source": "acdc", "modality": "cine",
         "shape": [1, 2, 16, 16], "has_label": True, "shard": "shard-000000.tar"}
        for k, split in SPLITS.items()
    ]  # fmt: skip
    preprocess = preprocess or {"spacing": 1.5, "size": 16, "percentiles": [0.5, 99.5]}
    write_manifest(folder, ["shard-000000.tar"], samples, preprocess, {"source": "acdc"})
    return folder / "manifest.json"


def test_the_card_counts_the_subjects_of_the_splits_training_read(tmp_path: Path) -> None:
    path = manifest(tmp_path / "acdc")
    data, _ = data_and_preprocess([path], frames=1, splits=["train", "val"])
    (row,) = data["manifests"]
    assert (row["subjects"], row["trained_on"], row["splits"]) == (3, 2, ["train", "val"])
    assert row["datasets"] == ["ACDC"]
    data_all, _ = data_and_preprocess([path], frames=1)  # no splits recorded: all were read
    assert data_all["manifests"][0]["trained_on"] == 3
    args = {"channels": [16, 32], "num_res_units": 2, "features": 16}
    config = {"architecture": "cmr_unet_small", "model_args": args, "preprocess": {}}
    card = card_text(config, data=data)
    assert "| ACDC | acdc | 3 | 2 (train, val) |" in card


def test_every_preprocess_setting_reaches_the_config(tmp_path: Path) -> None:
    recorded = PreprocessConfig(size=16, orientation="none", crop="label").to_dict()
    _, pre = data_and_preprocess([manifest(tmp_path / "acdc", recorded)], frames=1)
    assert {k: pre[k] for k in recorded} == recorded  # a new field cannot be left out


@pytest.mark.parametrize("name", [f.name for f in fields(PreprocessConfig)])
def test_manifests_that_differ_in_any_preprocess_setting_are_refused(tmp_path, name) -> None:
    recorded = PreprocessConfig().to_dict()
    paths = [manifest(tmp_path / "a", recorded), manifest(tmp_path / "b", {**recorded, name: "x"})]
    with pytest.raises(ValueError, match="preprocessed differently"):
        data_and_preprocess(paths, frames=1)
