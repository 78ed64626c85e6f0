"""Fine-tuning really learns: a few dozen steps on phantom labels beat the untrained network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cmrfm import CONFIGS
from cmrfm.train import run_training
from finetune.evaluate import evaluate_checkpoint

CONFIG = CONFIGS / "finetune_seg_phantom.yaml"


@pytest.fixture(scope="module")
def shards(make_phantom_shards: Callable[[int, int], Path]) -> Path:
    return make_phantom_shards(12, 4)


def finetune(shards: Path, out: Path, steps: int) -> dict:
    args = ["--config", str(CONFIG), "--shards", str(shards), "--out", str(out),
            "--trainer.logger", "false", "--labels", "4", "--max-steps", str(steps),
            "--model.init_args.backbone", "cmr_vit_test", "--model.init_args.warmup_steps", "5",
            "--data.init_args.epoch_length", str(8 * max(steps, 1))]  # fmt: skip
    return evaluate_checkpoint(run_training(args), str(shards), split="test")["summary"]


def test_finetuning_beats_the_untrained_network_on_held_out_subjects(
    shards: Path, tmp_path: Path
) -> None:
    untrained = finetune(shards, tmp_path / "untrained", steps=0)
    trained = finetune(shards, tmp_path / "trained", steps=80)
    assert trained["dice_mean"] > untrained["dice_mean"] + 0.2
    assert trained["dice_lv"] > 0.5
