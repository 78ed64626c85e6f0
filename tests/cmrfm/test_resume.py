"""Exact resume: a run killed after its step-k checkpoint and resumed from it ends at step n with
the weights, step count and data of a run that was never interrupted.

The pretraining stream is an IterableDataset, so resuming means continuing the stream where the
checkpoint left it. The datamodule here follows the contract ClipDataModule needs (see
``StreamDataModule``): it counts the batches handed to training, saves that count in the
checkpoint (``state_dict``) and, on resume, starts Lightning's current epoch's pass of the stream
with the clips each worker had already delivered drawn and dropped. Masks and drop path are
seeded per micro-batch by the system, so they need no saved random state.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cmrfm import CONFIGS
from cmrfm.train import ResumeError, newest_checkpoint, pop_flag, run_training
from pretext.system import PretrainSystem

CLIP = (1, 4, 16, 16)  # (C, T, H, W): a 2 x 2 x 2 token grid at tubelet 2, patch 8


class ClipStream(IterableDataset):
    """Clips drawn in sequence from one generator per (seed, pass, worker), like ClipSource.

    Resume contract: ``epoch`` counts passes (the next pass is epoch + 1); before the first pass
    after a resume, ``skip[worker]`` clips are drawn and dropped (so the generator ends where the
    interrupted run's did), or ``empty`` makes that pass yield nothing.
    """

    def __init__(self, clips_per_worker: int, seed: int) -> None:
        self.clips_per_worker, self.seed = clips_per_worker, seed
        self.epoch = -1
        self.skip: dict[int, int] = {}
        self.empty = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.epoch += 1
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if self.empty:
            self.empty = False
            return iter(())
        rng = np.random.default_rng([self.seed, self.epoch, worker])
        clips = (
            {"clip": torch.from_numpy(rng.random(CLIP, dtype=np.float32)), "modality": "cine"}
            for _ in range(self.clips_per_worker)
        )
        return itertools.islice(clips, self.skip.pop(worker, 0), None)


def resume_position(
    stream: ClipStream, batches: int, epoch: int, workers: int, batch_size: int
) -> None:
    """Position stream so that its next pass continues Lightning's epoch `epoch` after `batches`
    batches of the whole run were trained on (workers deliver batches round-robin)."""
    per_epoch = workers * math.ceil(stream.clips_per_worker / batch_size)
    done = batches - epoch * per_epoch  # batches of this epoch already trained on
    stream.epoch = epoch - 1
    if done >= per_epoch:  # saved at the epoch's last batch; Lightning still has to end it
        stream.empty = True
    else:
        stream.skip = {w: len(range(w, done, workers)) * batch_size for w in range(workers)}


class StreamDataModule(L.LightningDataModule):
    """The resume contract on a deterministic stream; ``resume=False`` restarts the stream
    (what a datamodule without the contract does), the control that shows the test can fail."""

    def __init__(
        self, batch_size: int = 4, epoch_length: int = 16, num_workers: int = 0, resume: bool = True
    ) -> None:
        super().__init__()
        self.batch_size, self.epoch_length = batch_size, epoch_length
        self.num_workers, self.resume = num_workers, resume
        self.batches = 0  # batches handed to training since the run began (saved)

    def train_dataloader(self) -> DataLoader:
        workers = max(1, self.num_workers)
        stream = ClipStream(math.ceil(self.epoch_length / workers), seed=7)
        if self.resume and self.batches:
            resume_position(stream, self.batches, self.trainer.current_epoch, workers,
                            self.batch_size)  # fmt: skip
        return DataLoader(stream, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)  # fmt: skip

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Counted here, not when the loader yields: Lightning fetches one batch ahead.
        if self.trainer is not None and self.trainer.training:
            self.batches += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches = state["batches"]


class Kill(L.Callback):
    """Crash at the start of the batch after step k (its checkpoint is already written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise SystemError(f"killed at step {self.step}")


class Seen(L.Callback):
    """Fingerprint of each trained batch, by the step it was trained at."""

    def __init__(self) -> None:
        self.sums: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, *args: Any) -> None:
        self.sums.setdefault(trainer.global_step, []).append(float(batch["clip"].sum()))


def make_system(seed: int) -> PretrainSystem:
    L.seed_everything(seed)
    return PretrainSystem(
        "cmr_vit_test",
        {"patch_size": 8, "tubelet": 2, "drop_path_rate": 0.1},
        "mae",
        {"mask_ratio": 0.5, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
        lr=3e-3, scale_lr=False, warmup_steps=2,
    )  # fmt: skip


def fit(
    out: Path, steps: int, every: int, data: StreamDataModule, seed: int = 0,
    accumulate: int = 1, callbacks: tuple = (), ckpt: Path | None = None,
) -> tuple[PretrainSystem, L.Trainer]:  # fmt: skip
    system = make_system(seed)
    checkpoints = ModelCheckpoint(out, "{step}", every_n_train_steps=every, save_top_k=-1)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[checkpoints, *callbacks],
    )  # fmt: skip
    trainer.fit(system, datamodule=data, ckpt_path=ckpt)
    return system, trainer


@pytest.mark.parametrize(
    ("k", "n", "accumulate", "workers"),
    [(3, 6, 1, 0), (4, 6, 1, 2), (2, 4, 2, 0)],
    ids=["mid-epoch", "epoch-end-2-workers", "accumulate-2"],
)
def test_resumed_run_matches_the_uninterrupted_one(
    tmp_path: Path, k: int, n: int, accumulate: int, workers: int
) -> None:
    # 16 clips per epoch in batches of 4: 4 batches an epoch, so both runs cross an epoch.
    seen_full, seen_resumed = Seen(), Seen()
    full, full_trainer = fit(tmp_path / "full", n, k, StreamDataModule(num_workers=workers),
                             accumulate=accumulate, callbacks=(seen_full,))  # fmt: skip
    with pytest.raises(SystemError, match=f"killed at step {k}"):
        fit(tmp_path / "killed", n, k, StreamDataModule(num_workers=workers),
            accumulate=accumulate, callbacks=(Kill(k),))  # fmt: skip
    ckpt = tmp_path / "killed" / f"step={k}.ckpt"
    # Another initialisation seed: everything must come from the checkpoint.
    resumed, trainer = fit(tmp_path / "resumed", n, k, StreamDataModule(num_workers=workers),
                           seed=1, accumulate=accumulate, callbacks=(seen_resumed,), ckpt=ckpt)  # fmt: skip

    assert trainer.global_step == full_trainer.global_step == n
    assert resumed.micro_batches == full.micro_batches == n * accumulate
    assert seen_resumed.sums == {s: seen_full.sums[s] for s in range(k, n)}  # same data
    torch.testing.assert_close(resumed.state_dict(), full.state_dict())


def test_restarting_the_stream_instead_breaks_the_match(tmp_path: Path) -> None:
    """The control: resuming weights but not the stream position trains on other data."""
    full, _ = fit(tmp_path / "full", 6, 3, StreamDataModule())
    with pytest.raises(SystemError):
        fit(tmp_path / "killed", 6, 3, StreamDataModule(), callbacks=(Kill(3),))
    restarted, trainer = fit(tmp_path / "restarted", 6, 3, StreamDataModule(resume=False),
                             ckpt=tmp_path / "killed" / "step=3.ckpt")  # fmt: skip
    assert trainer.global_step == 6
    weights, reference = restarted.state_dict(), full.state_dict()
    assert any(not torch.allclose(weights[key], reference[key]) for key in reference)


def test_checkpoints_are_written_every_n_steps_and_carry_the_stream_position(
    tmp_path: Path,
) -> None:
    fit(tmp_path, 6, 2, StreamDataModule())
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]
    ckpt = torch.load(tmp_path / "step=4.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["StreamDataModule"] == {"batches": 4}
    assert ckpt["pretrain_state"]["micro_batches"] == 4


def test_cli_resume_continues_a_run_from_its_checkpoint(
    make_phantom_shards: Callable[..., Path], tmp_path: Path
) -> None:
    config = CONFIGS / "pretrain_mae_phantom.yaml"
    args = ["--config", str(config), "--shards", str(make_phantom_shards(4, 2)),
            "--model.init_args.backbone", "cmr_vit_test", "--trainer.logger", "false",
            "--data.init_args.batch_size", "2", "--data.init_args.epoch_length", "8"]  # fmt: skip
    first = run_training([*args, "--out", str(tmp_path / "a"), "--max-steps", "2"])
    resumed = run_training([*args, "--out", str(tmp_path / "b"), "--max-steps", "3",
                            "--resume", str(first)])  # fmt: skip
    state = torch.load(resumed, weights_only=True)
    assert state["global_step"] == 3  # 2 restored + 1 trained, not 3 from scratch
    assert state["pretrain_state"]["micro_batches"] == 3


def test_resume_flag_is_taken_out_of_the_lightning_arguments() -> None:
    assert pop_flag(["--a", "1", "--resume", "x.ckpt", "--b"], "--resume") == (
        ["--a", "1", "--b"],
        "x.ckpt",
    )
    assert pop_flag(["--resume=last"], "--resume") == ([], "last")
    assert pop_flag(["--a"], "--resume") == (["--a"], None)


@pytest.fixture(scope="module")
def phantom(make_phantom_shards: Callable[..., Path]) -> Path:
    return make_phantom_shards(6, 2)


@pytest.mark.parametrize(
    ("k", "workers", "augment_on"),
    [(3, 0, "loader"), (4, 2, "loader"), (3, 2, "device")],
    ids=["mid-epoch", "epoch-end-2-workers", "device-augment-2-workers"],
)
def test_clip_datamodule_resumes_its_stream_exactly(
    phantom: Path, tmp_path: Path, k: int, workers: int, augment_on: str
) -> None:
    from data_shards.datamodule import ClipDataModule

    def data() -> ClipDataModule:
        return ClipDataModule(str(phantom), frames=4, batch_size=4, num_workers=workers,
                              shuffle=8, epoch_length=16, augment=True, augment_on=augment_on)  # fmt: skip

    seen_full, seen_resumed = Seen(), Seen()
    full, _ = fit(tmp_path / "full", 6, k, data(), callbacks=(seen_full,))
    with pytest.raises(SystemError):
        fit(tmp_path / "killed", 6, k, data(), callbacks=(Kill(k),))
    resumed, trainer = fit(tmp_path / "resumed", 6, k, data(), seed=1, callbacks=(seen_resumed,),
                           ckpt=tmp_path / "killed" / f"step={k}.ckpt")  # fmt: skip
    assert trainer.global_step == 6
    assert seen_resumed.sums == {s: seen_full.sums[s] for s in range(k, 6)}
    torch.testing.assert_close(resumed.state_dict(), full.state_dict())


# --- `--resume last` and `--extend-to` through the command line ------------------------------

CONFIG = CONFIGS / "pretrain_mae_phantom.yaml"
EVERY_2 = ('[{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": '
           '{"every_n_train_steps": 2, "save_top_k": -1, "save_last": true}}]')  # fmt: skip


class Watch(L.Callback):
    """The step each training batch starts at and the lr it trains with; raises at `kill` (after
    that step's checkpoint was written), as a killed job stops."""

    def __init__(self, kill: int | None = None) -> None:
        self.kill, self.steps, self.lrs = kill, [], []

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.kill:
            raise SystemError(f"killed at step {self.kill}")
        self.steps.append(trainer.global_step)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def watched(monkeypatch: pytest.MonkeyPatch, watch: Watch) -> Watch:
    """Add watch to the trainer run_training builds."""
    from lightning.pytorch.cli import LightningCLI

    class WatchedCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
            trainer = super().instantiate_trainer(**kwargs)
            trainer.callbacks.append(watch)
            return trainer

    monkeypatch.setattr("cmrfm.train.LightningCLI", WatchedCLI)
    return watch


def run_args(shards: Path, run: Path, steps: int) -> list[str]:
    """The phantom config at test size: 4 batches an epoch, 2 warmup steps, checkpoints every 2
    steps into the CSV logger's version folders under run/logs, as a real run writes them."""
    return ["--config", str(CONFIG), "--shards", str(shards), "--out", str(run),
            "--trainer.logger.init_args.save_dir", str(run), "--trainer.callbacks", EVERY_2,
            "--model.init_args.backbone", "cmr_vit_test", "--max-steps", str(steps),
            "--model.init_args.warmup_steps", "2",
            "--data.init_args.batch_size", "2", "--data.init_args.epoch_length", "8"]  # fmt: skip


@pytest.fixture(scope="module")
def full_run(phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Watch]:
    """A 6-step run never interrupted: its folder and what it trained."""
    run = tmp_path_factory.mktemp("full")
    with pytest.MonkeyPatch.context() as monkeypatch:
        watch = watched(monkeypatch, Watch())
        run_training(run_args(phantom, run, 6))
    return run, watch


def test_resume_last_continues_a_killed_run_from_its_newest_checkpoint(
    phantom: Path, full_run: tuple[Path, Watch], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    with pytest.raises(SystemError, match="killed at step 4"), monkeypatch.context() as patch:
        watched(patch, Watch(kill=4))
        run_training(run_args(phantom, run, 6))
    assert not (run / "last.ckpt").exists()  # only the callbacks' checkpoints survive a kill
    watch = watched(monkeypatch, Watch())
    resumed = run_training([*run_args(phantom, run, 6), "--resume", "last"])
    assert watch.steps == [4, 5]  # from the step-4 checkpoint, not from step 0
    full, full_watch = full_run
    assert watch.lrs == full_watch.lrs[4:]
    torch.testing.assert_close(
        torch.load(resumed, weights_only=True)["state_dict"],
        torch.load(full / "last.ckpt", weights_only=True)["state_dict"],
    )


def test_resume_last_without_a_checkpoint_is_an_error_before_training(
    phantom: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from cmrfm.cli import main

    watch = watched(monkeypatch, Watch())
    with pytest.raises(SystemExit) as exit:
        main(["pretrain", *run_args(phantom, tmp_path, 6), "--resume", "last"])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("cmrfm pretrain: error: --resume last: no checkpoint of this run in")
    assert str(tmp_path / "logs" / "*" / "checkpoints") in error
    assert "leave out --resume to start a new run" in error
    assert watch.steps == [] and not list(tmp_path.rglob("*.ckpt"))


def test_resume_from_a_missing_or_damaged_path_is_an_error_naming_it(
    phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cmrfm.cli import main

    missing = tmp_path / "nope.ckpt"
    with pytest.raises(SystemExit) as exit:
        main(["pretrain", *run_args(phantom, tmp_path, 6), "--resume", str(missing)])
    assert exit.value.code == 2
    assert f"--resume {missing}: {missing} does not exist" in capsys.readouterr().err
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit) as exit:
        main(["pretrain", *run_args(phantom, tmp_path, 6), "--resume", str(cut)])
    assert exit.value.code == 2
    assert f"--resume {cut}: {cut} is not a complete checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_missing_shard_folder_is_one_line_naming_it(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cmrfm.cli import main

    missing = tmp_path / "no_shards"
    with pytest.raises(SystemExit) as exit:
        main([command, "--shards", str(missing), "--max-steps", "2", "--out", str(tmp_path)])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error == f"cmrfm {command}: error: {missing}: no such shard folder or shard file\n"


def test_weights_that_cannot_be_read_stop_finetune_in_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cmrfm.cli import main

    bad = tmp_path / "copied.ckpt"
    bad.write_bytes(b"PK\x03\x04 a checkpoint cut short")
    with pytest.raises(SystemExit) as exit:
        main(["finetune", "--config", "finetune_seg_phantom", "--pretrained", str(bad),
              "--max-steps", "2", "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"cmrfm finetune: error: {bad}: cannot read as a Lightning checkpoint")
    assert error.count("\n") == 1  # not jsonargparse's wrapping of it, nor a traceback


def test_more_labels_than_the_shards_hold_stop_finetune_in_one_line_naming_them(
    phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cmrfm.cli import main

    with pytest.raises(SystemExit) as exit:  # refused in the data's setup, before any step
        main(["finetune", "--config", "finetune_seg_phantom", "--shards", str(phantom),
              "--labels", "50", "--max-steps", "2", "--out", str(tmp_path / "out")])  # fmt: skip
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and re.fullmatch(
        rf"cmrfm finetune: error: {phantom}: labels=50 but \d labelled training subjects are "
        r"available\n", error.splitlines(keepends=True)[-1]
    )  # fmt: skip


def test_extend_to_trains_a_finished_run_on_with_the_schedule_resized(
    phantom: Path, full_run: tuple[Path, Watch], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    from cmrfm.cli import main
    from foundation.optim import warmup_cosine

    run = tmp_path / "run"
    shutil.copytree(full_run[0], run)
    watch = watched(monkeypatch, Watch())
    extended = run_training([*run_args(phantom, run, 6), "--extend-to", "8"])
    assert watch.steps == [6, 7]
    assert torch.load(extended, weights_only=True)["global_step"] == 8
    # Step 6 trains with the lr the 6-step run had reached (its floor, 0.01 lr); from step 7 on,
    # the lr is the one a run planned for 8 steps has there: back up, no new warmup.
    lr = torch.load(extended, weights_only=True)["hyper_parameters"]["lr"]
    planned = warmup_cosine(torch.optim.SGD([torch.zeros(1)], lr=lr), 2, 8, 0.01).lr_lambdas[0]
    assert watch.lrs == pytest.approx([lr * 0.01, lr * planned(7)])
    assert watch.lrs[1] > watch.lrs[0]

    with pytest.raises(SystemExit) as exit:  # nothing to extend
        main(["pretrain", *run_args(phantom, run, 6), "--extend-to", "8"])
    assert exit.value.code == 2
    assert "--extend-to 8: " in capsys.readouterr().err


def write_checkpoint(path: Path, step: int | None, age: float = 0.0) -> Path:
    """A stand-in checkpoint holding only its step (None: no step stored), `age` s old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({} if step is None else {"global_step": step}, path)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_resume_last_picks_the_highest_step_over_every_logger_version(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    run = tmp_path / "run"
    versions = run / "logs"
    trainer = L.Trainer(default_root_dir=run, logger=CSVLogger(run, name="logs"),
                        callbacks=[ModelCheckpoint()], accelerator="cpu")  # fmt: skip
    write_checkpoint(versions / "version_0" / "checkpoints" / "epoch=0-step=4.ckpt", 4, age=50)
    write_checkpoint(versions / "version_0" / "checkpoints" / "last.ckpt", 4, age=50)
    newest = write_checkpoint(versions / "version_1" / "checkpoints" / "last.ckpt", 7, age=30)
    write_checkpoint(versions / "version_1" / "checkpoints" / "epoch=0-step=6.ckpt", 6, age=20)
    write_checkpoint(run / "last.ckpt", 5, age=10)
    write_checkpoint(versions / "version_1" / "checkpoints" / "no_step.ckpt", None)
    # Another run (another --out) logging into the same folder does not count.
    other = write_checkpoint(versions / "version_2" / "checkpoints" / "last.ckpt", 9)
    (other.parent.parent / "config.yaml").write_text(f"trainer:\n  default_root_dir: {tmp_path}\n")
    assert newest_checkpoint(trainer) == (newest, 7)

    # Without a readable step: `step=N` in the name, then the latest modified.
    for path in run.rglob("*.ckpt"):
        path.unlink()
    by_name = write_checkpoint(versions / "version_0" / "checkpoints" / "epoch=0-step=3.ckpt",
                               None, age=20)  # fmt: skip
    assert newest_checkpoint(trainer) == (by_name, 3)
    by_name.unlink()
    write_checkpoint(versions / "version_0" / "checkpoints" / "a.ckpt", None, age=20)
    latest = write_checkpoint(versions / "version_0" / "checkpoints" / "b.ckpt", None, age=10)
    assert newest_checkpoint(trainer) == (latest, None)


def test_resume_last_skips_a_checkpoint_cut_short_and_takes_the_newest_complete_one(
    tmp_path: Path,
) -> None:
    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu",
                        callbacks=[ModelCheckpoint(tmp_path / "checkpoints")])  # fmt: skip
    complete = write_checkpoint(tmp_path / "checkpoints" / "epoch=0-step=4.ckpt", 4, age=20)
    cut = write_checkpoint(tmp_path / "checkpoints" / "epoch=0-step=6.ckpt", 6)
    cut.write_bytes(cut.read_bytes()[:100])  # a copy that stopped early: highest step by name
    with pytest.warns(UserWarning, match=rf"{cut.name}: not a complete checkpoint"):
        assert newest_checkpoint(trainer) == (complete, 4)
    complete.write_bytes(b"")
    with pytest.raises(ResumeError, match="every checkpoint of this run is damaged"):
        newest_checkpoint(trainer)


def test_resume_last_of_a_deepspeed_run_takes_checkpoint_folders(tmp_path: Path) -> None:
    from cmrfm.strategies import DeepSpeed

    def folder(path: Path, step: int) -> Path:
        (path / "latest").parent.mkdir(parents=True)
        (path / "latest").write_text("checkpoint")
        write_checkpoint(path / "checkpoint" / "mp_rank_00_model_states.pt", step)
        return path

    trainer = L.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu",
                        strategy=DeepSpeed(stage=2))  # fmt: skip
    folder(tmp_path / "checkpoints" / "epoch=0-step=4.ckpt", 4)
    write_checkpoint(tmp_path / "last.ckpt", 5)  # consolidated weights: DeepSpeed cannot resume it
    last = folder(tmp_path / "last-zero", 5)
    assert newest_checkpoint(trainer) == (last, 5)
    optim = last / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(b"PK\x03\x04 cut short")  # one rank's part of the newest, copied short
    with pytest.warns(UserWarning, match="last-zero: not a complete checkpoint"):
        assert newest_checkpoint(trainer) == (tmp_path / "checkpoints" / "epoch=0-step=4.ckpt", 4)


def _caught(make) -> BaseException:
    try:
        make()
    except Exception as error:
        return error
    raise AssertionError("nothing raised")


def test_only_errors_our_code_raises_on_purpose_become_one_line(tmp_path: Path) -> None:
    from cmrfm.train import our_error
    from finetune.data import draw_labelled
    from finetune.probe import read_history

    ours = _caught(lambda: draw_labelled([], 1, 0))  # a `raise ValueError(...)` of ours
    assert our_error(ours) is ours

    def wrapped() -> None:  # as jsonargparse wraps what building the model raised
        try:
            draw_labelled([], 1, 0)
        except ValueError as error:
            raise ValueError("Does not validate against any of the Union subtypes") from error

    assert str(our_error(_caught(wrapped))).startswith("labels=1 but 0 labelled")

    def crash_while_handling() -> None:  # e.g. out of memory inside an except block of ours
        try:
            draw_labelled([], 1, 0)
        except ValueError:
            raise RuntimeError("out of memory")  # noqa: B904 - the context is the point

    assert our_error(_caught(crash_while_handling)) is None
    (tmp_path / "probe.csv").write_text("step,dice_mean\nabc,0.5\n")  # int("abc") in our code
    assert our_error(_caught(lambda: read_history(tmp_path / "probe.csv"))) is None


def test_stored_step_reads_a_deepspeed_folder_without_latest_and_its_tag_folder(
    tmp_path: Path,
) -> None:
    from cmrfm.train import stored_step

    run = tmp_path / "epoch=0-step=3.ckpt"  # the name says 3, the stored step 7
    part = write_checkpoint(run / "global_step7" / "mp_rank_00_model_states.pt", 7)
    assert stored_step(run) == 7  # no `latest` file: its one tag folder
    assert stored_step(part.parent) == 7  # the tag folder itself
    (run / "global_step9").mkdir()  # a second tag, but empty: still one with model states
    assert stored_step(run) == 7
    write_checkpoint(run / "global_step9" / "mp_rank_00_model_states.pt", 9)
    assert stored_step(run) == 3  # two tags and no `latest`: only the name tells
    (run / "latest").write_text("global_step9")
    assert stored_step(run) == 9
