"""ClipDataModule from YAML: one set or weighted sets, stride and augmentation options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from data_shards.datamodule import ClipDataModule
from data_shards.record import Subject
from data_shards.writer import write_manifest, write_shards

HW = (8, 8)


def make_shards(out: Path, modality: str, frames: int) -> Path:
    rng = np.random.default_rng(len(modality))
    subjects = [
        Subject(f"{modality}{i}", rng.integers(0, 256, (2, frames, *HW), dtype=np.uint8), None,
                (8.0, 1.5, 1.5), {"modality": modality, "split": "train"})
        for i in range(4)
    ]  # fmt: skip
    samples = write_shards(subjects, out, maxcount=2)
    write_manifest(out, sorted({s["shard"] for s in samples}), samples, {}, {})
    return out


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    return {
        "cine": make_shards(tmp_path / "cine", "cine", frames=6),
        "lge": make_shards(tmp_path / "lge", "lge", frames=1),
    }


def from_yaml(text: str) -> ClipDataModule:
    """The module as LightningCLI builds it from a config's ``data.init_args``."""
    parser = ArgumentParser()
    parser.add_class_arguments(ClipDataModule, "data")
    return parser.instantiate(parser.parse_string(text)).data


def clips(module: ClipDataModule) -> list[tuple[str, str, int, float]]:
    return [
        (modality, key, index, clip.sum().item())
        for batch in module.train_dataloader()
        for modality, key, index, clip in zip(
            batch["modality"], batch["key"], batch["slice"].tolist(), batch["clip"], strict=True
        )
    ]


def test_weighted_sets_from_yaml(sets: dict[str, Path]) -> None:
    module = from_yaml(
        f"data:\n  shards: {{{sets['cine']}: 0.5, {sets['lge']}: 0.5}}\n"
        "  frames: 4\n  batch_size: 8\n  epoch_length: 64\n  stride: [1, 2]\n"
    )
    seen = clips(module)
    assert len(seen) == 64
    assert {m for m, *_ in seen} == {"cine", "lge"}
    assert all(key.startswith(modality) for modality, key, _, _ in seen)
    batch = next(iter(module.train_dataloader()))
    assert batch["clip"].shape == (8, 1, 4, *HW) and batch["clip"].dtype == torch.float32


def test_list_of_folders_is_one_set(sets: dict[str, Path]) -> None:
    module = ClipDataModule(shards=[str(p) for p in sets.values()], frames=2, epoch_length=200)
    assert {m for m, *_ in clips(module)} == {"cine", "lge"}


def test_augment_option(sets: dict[str, Path]) -> None:
    def run(augment) -> list:
        module = ClipDataModule(shards=str(sets["lge"]), frames=2, batch_size=4, epoch_length=16,
                                augment=augment)  # fmt: skip
        return clips(module)

    plain, augmented = run(False), run({"spatial_prob": 1.0, "noise_prob": 0.0})
    assert [x[:3] for x in plain] == [x[:3] for x in augmented]  # same clips drawn ...
    assert [x[3] for x in plain] != [x[3] for x in augmented]  # ... but transformed
    assert run(True) == run(True)
    module = from_yaml(
        f"data:\n  shards: {sets['lge']}\n  augment: {{rotate: 5, gamma: [0.9, 1.1]}}\n"
    )
    assert module.augment_config.rotate == 5 and module.augment_config.gamma == (0.9, 1.1)
    with pytest.raises(ValueError, match="rotation"):
        ClipDataModule(shards=str(sets["lge"]), augment={"rotation": 5})
