"""Every YAML in configs/ instantiates and trains one step on CPU (the configs are the fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cmrfm.train import run_training
from foundation.checkpoint import read_checkpoint

# LightningCLI configs; fewshot_*.yaml are benchmark configs (tests/test_fewshot.py loads them).
CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")
    if not p.name.startswith("fewshot_")
)


@pytest.fixture(scope="module")
def shards(make_phantom_shards: Callable[[int, int], Path]) -> Path:
    return make_phantom_shards(8, 2)


def test_there_are_configs_for_pretraining_and_finetuning() -> None:
    names = {p.name for p in CONFIGS}
    assert {"pretrain_mae_phantom.yaml", "finetune_seg_phantom.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_step(config: Path, shards: Path, tmp_path: Path) -> None:
    args = ["--config", str(config), "--shards", str(shards), "--out", str(tmp_path),
            "--model.init_args.backbone", "cmr_vit_test", "--trainer.fast_dev_run", "1",
            "--data.init_args.batch_size", "2"]  # fmt: skip
    if "finetune" in config.name:
        args += ["--labels", "1"]
    ckpt = read_checkpoint(run_training(args))
    assert ckpt["global_step"] == 1
    assert ckpt["hyper_parameters"]["backbone"] == "cmr_vit_test"


def test_wandb_logs_offline_when_chosen(shards: Path, tmp_path: Path) -> None:
    config = next(p for p in CONFIGS if p.name == "pretrain_mae_phantom.yaml")
    args = ["--config", str(config), "--shards", str(shards), "--out", str(tmp_path),
            "--model.init_args.backbone", "cmr_vit_test", "--max-steps", "2",
            "--data.init_args.batch_size", "2", "--data.init_args.epoch_length", "4",
            "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
            "--trainer.logger.init_args.offline", "true",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    run_training(args)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
