"""Every YAML in configs/ instantiates and trains one step on CPU (the configs are the fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from cmrfm import CONFIGS
from cmrfm.train import run_training
from foundation.checkpoint import read_checkpoint

# LightningCLI configs; fewshot_*.yaml are benchmark configs (tests/finetune/test_fewshot.py loads them).
CONFIGS = sorted(p for p in (CONFIGS).glob("*.yaml") if not p.name.startswith("fewshot_"))


PRETRAIN = [p for p in CONFIGS if p.name.startswith("pretrain_")]


@pytest.fixture(scope="module")
def shards(make_phantom_shards: Callable[[int, int], Path]) -> Path:
    return make_phantom_shards(8, 2)


def test_there_are_configs_for_pretraining_and_finetuning() -> None:
    names = {p.name for p in CONFIGS}
    assert {"pretrain_mae_phantom.yaml", "finetune_seg_phantom.yaml"} <= names


def probing_test_shards(config: Path, shards: Path, folder: Path) -> Path:
    """The config with its online probe (finetune.probe.SegProbe), if any, on the test shards."""
    data = yaml.safe_load(config.read_text())
    probes = [
        c for c in data["trainer"].get("callbacks", []) if c["class_path"].endswith("SegProbe")
    ]
    if not probes:
        return config
    for probe in probes:  # few phantom subjects: fit on one, score on the train split
        probe["init_args"] |= {"shards": str(shards), "labels": 1, "eval_split": "train"}
    copy = folder / config.name
    copy.write_text(yaml.safe_dump(data))
    return copy


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_step(config: Path, shards: Path, tmp_path: Path) -> None:
    backbone = yaml.safe_load(config.read_text())["model"]["init_args"].get("backbone", "")
    small = backbone if backbone.startswith("cmr_unet") else "cmr_vit_test"  # both cheap
    config = probing_test_shards(config, shards, tmp_path)
    args = ["--config", str(config), "--shards", str(shards), "--out", str(tmp_path),
            "--model.init_args.backbone", small, "--trainer.fast_dev_run", "1",
            "--data.init_args.batch_size", "2"]  # fmt: skip
    if "finetune" in config.name:
        args += ["--labels", "1"]
    ckpt = read_checkpoint(run_training(args))
    assert ckpt["global_step"] == 1
    assert ckpt["hyper_parameters"]["backbone"] == small


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


@pytest.mark.parametrize("config", PRETRAIN, ids=lambda p: p.stem)
def test_pretraining_configs_save_last_often_enough_to_resume(config: Path) -> None:
    """`--resume last` continues from a ModelCheckpoint's last.ckpt; the one-device (CPU-sized)
    configs write it at least every 10 minutes of training, all a killed run may lose."""
    trainer = yaml.safe_load(config.read_text())["trainer"]
    checkpoints = [c.get("init_args", {}) for c in trainer.get("callbacks", [])
                   if c["class_path"].endswith(".ModelCheckpoint")]  # fmt: skip
    assert any(c.get("save_last") for c in checkpoints), f"{config.name}: no save_last: true"
    if trainer.get("devices") == 1:
        every = [interval(c["train_time_interval"]) for c in checkpoints
                 if c.get("save_last") and c.get("train_time_interval")]  # fmt: skip
        assert any(t <= timedelta(minutes=10) for t in every), f"{config.name}: {every}"


def interval(text: str) -> timedelta:
    """A ModelCheckpoint train_time_interval as configs write it: "H:MM:SS"."""
    hours, minutes, seconds = (float(part) for part in str(text).split(":"))
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def test_out_holds_the_checkpoints_and_the_logs(shards: Path, tmp_path: Path, monkeypatch) -> None:
    """--out is the one folder of a run: the config's CSV logs (and the checkpoints beside
    them) go there, not to the config's runs/<name> under the working directory."""
    config = next(p for p in CONFIGS if p.name == "pretrain_mae_phantom.yaml")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "run"
    last = run_training(["--config", str(config), "--shards", str(shards), "--out", str(out),
                         "--model.init_args.backbone", "cmr_vit_test", "--max-steps", "1",
                         "--data.init_args.batch_size", "2", "--data.init_args.epoch_length", "4"])  # fmt: skip
    assert last.parent == out
    assert list(out.glob("logs/version_*/hparams.yaml"))  # the CSV logger's folder
    assert not any(elsewhere.iterdir())  # nothing written under the working directory


def test_out_moves_the_logger_that_a_later_override_config_leaves_alone(tmp_path: Path) -> None:
    """--config BASE --config OVERRIDE --out DIR: BASE names the logger, OVERRIDE only changes
    the batch size; the logs still follow --out (the merge keeps BASE's logger)."""
    from cmrfm.train import _logs_follow_out

    base, override = tmp_path / "base.yaml", tmp_path / "override.yaml"
    base.write_text("trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.CSVLogger\n")
    override.write_text("data:\n  init_args:\n    batch_size: 4\n")
    argv = ["--config", str(base), "--config", str(override), "--out", "DIR"]
    assert _logs_follow_out(argv)[-2:] == ["--trainer.logger.init_args.save_dir", "DIR"]
    override.write_text("trainer:\n  logger: false\n")  # the override turns logging off
    assert _logs_follow_out(argv) == argv
