"""Training whose output is not a terminal prints a progress line at least every 30 s."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import RichProgressBar

from cmrfm import CONFIGS
from cmrfm.train import run_training
from foundation import progress
from foundation.progress import LogLines, use_stream_bar


def test_every_s_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_s"):
        LogLines(every_s=0)


def test_training_into_a_log_file_prints_lines_on_a_clock(
    make_phantom_shards: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = iter(range(0, 10_000, 20))  # every call 20 s later: a line every other step
    monkeypatch.setattr(progress, "_now", lambda: float(next(clock)))
    shards = make_phantom_shards(4, 2)
    run_training(["--config", str(CONFIGS / "pretrain_mae_phantom.yaml"), "--shards", str(shards),
                  "--out", str(tmp_path), "--model.init_args.backbone", "cmr_vit_test",
                  "--max-steps", "6", "--data.init_args.batch_size", "2",
                  "--trainer.enable_progress_bar", "false"])  # fmt: skip
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split(" | ")[0] for x in lines] == [
        "step 2/6 (33.3%)", "step 4/6 (66.7%)", "step 6/6 (100.0%)"
    ]  # fmt: skip
    assert all("steps/s" in x and "ETA" in x and "train/loss" in x for x in lines)


@pytest.mark.parametrize(("max_epochs", "title"), [(-1, "Epoch 3"), (10, "Epoch 3/9")])
def test_the_bar_of_an_unbounded_stream_has_no_negative_epoch_total(max_epochs, title) -> None:
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=50, logger=False)
    use_stream_bar(trainer)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, progress.StreamBar)
    bar._trainer = trainer  # Lightning sets it at setup
    assert bar._get_train_description(3).strip() == title


def test_a_bar_the_user_configured_keeps_its_settings() -> None:
    mine = RichProgressBar(refresh_rate=7, leave=True)
    trainer = L.Trainer(max_steps=5, logger=False, callbacks=[mine])
    use_stream_bar(trainer)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, progress.StreamBar) and bar.refresh_rate == 7 and bar._leave
