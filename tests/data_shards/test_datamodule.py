"""ClipDataModule from YAML: one set or weighted sets, stride and augmentation options; uint8
batches augmented on the device after the transfer (augment_on: device)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser

from cmrfm import CONFIGS
from cmrfm.train import run_training
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


def batches(module: ClipDataModule) -> list[dict]:
    """The DataLoader's batches, then through the transfer hook as the trainer runs it."""
    return [module.on_after_batch_transfer(b, 0) for b in module.train_dataloader()]


def on_255_grid(clip: torch.Tensor) -> bool:
    """Every value is some k / 255: a converted uint8 clip that no transform touched."""
    return torch.equal(torch.round(clip * 255) / 255, clip)


def test_device_mode_ships_uint8_and_the_hook_converts_exactly(sets: dict[str, Path]) -> None:
    options = {"shards": str(sets["cine"]), "frames": 4, "batch_size": 4, "epoch_length": 16}
    loader_side = batches(ClipDataModule(**options))
    device = ClipDataModule(**options, augment_on="device")
    raw = next(iter(device.train_dataloader()))["clip"]
    assert raw.dtype == torch.uint8 and raw.shape == (4, 1, 4, *HW)  # a quarter of the bytes
    device_side = batches(device)
    assert len(device_side) == len(loader_side) == 4
    for a, b in zip(loader_side, device_side, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["slice"], b["slice"])
        assert b["clip"].dtype == torch.float32 and torch.equal(a["clip"], b["clip"])


def test_device_augmentation_only_while_training(sets: dict[str, Path]) -> None:
    options = {"shards": str(sets["cine"]), "frames": 4, "batch_size": 8, "epoch_length": 16,
               "augment": {"spatial_prob": 1.0, "noise_prob": 0.0},
               "augment_on": "device"}  # fmt: skip
    module = ClipDataModule(**options)
    uint8 = next(iter(module.train_dataloader()))
    augmented = module.on_after_batch_transfer(uint8, 0)["clip"]  # no trainer: augments
    assert augmented.dtype == torch.float32 and augmented.shape == (8, 1, 4, *HW)
    assert augmented.min() >= 0 and augmented.max() <= 1
    assert not any(on_255_grid(clip) for clip in augmented)
    again = ClipDataModule(**options)
    assert torch.equal(again.on_after_batch_transfer(uint8, 0)["clip"], augmented)  # seeded
    module.trainer = SimpleNamespace(training=False, current_epoch=0, global_rank=0)
    converted = module.on_after_batch_transfer(uint8, 0)["clip"]
    assert torch.equal(converted, uint8["clip"].float() / 255)
    with pytest.raises(ValueError, match="augment_on"):
        ClipDataModule(shards=str(sets["cine"]), augment_on="gpu")


class _Recorder(L.LightningModule):
    """Records the clips its training steps receive."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch["clip"])
        return self.weight * batch["clip"].mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_runs_the_hook_on_the_batches(sets: dict[str, Path]) -> None:
    def fit(augment: bool) -> list[torch.Tensor]:
        module = ClipDataModule(shards=str(sets["cine"]), frames=4, batch_size=4,
                                augment=augment, augment_on="device")  # fmt: skip
        model = _Recorder()
        trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False,
                            enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        trainer.fit(model, datamodule=module)
        return model.seen

    plain, augmented = fit(False), fit(True)
    assert len(plain) == len(augmented) == 2
    for clip in (*plain, *augmented):
        assert clip.dtype == torch.float32 and clip.shape == (4, 1, 4, *HW)
    assert all(on_255_grid(clip) for clip in plain)  # converted only
    assert not any(on_255_grid(clip) for clip in augmented)  # augmented in the hook


def test_mae_pretraining_config_trains_with_device_augmentation(
    make_phantom_shards, tmp_path: Path
) -> None:
    config = CONFIGS / "pretrain_mae_phantom.yaml"
    shards = make_phantom_shards(4, 2)
    args = ["--config", str(config), "--shards", str(shards), "--out", str(tmp_path),
            "--model.init_args.backbone", "cmr_vit_test", "--trainer.fast_dev_run", "1",
            "--data.init_args.batch_size", "2", "--data.init_args.augment", "true",
            "--data.init_args.augment_on", "device"]  # fmt: skip
    ckpt = torch.load(run_training(args), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 1
    assert ckpt["datamodule_hyper_parameters"]["augment_on"] == "device"
