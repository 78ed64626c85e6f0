"""The online segmentation probe: it scores features by what a linear head can segment from
them, runs inside pretraining without changing it, and keeps its curve across a resume."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from data_shards.datamodule import ClipDataModule
from data_shards.record import IGNORE
from finetune.probe import (
    PROBE_CSV,
    PROBE_PLOT,
    SegProbe,
    probe_checkpoints,
    probe_clips,
    read_history,
)
from foundation.registry import create_backbone
from pretext.system import PretrainSystem


class PixelEncoder(torch.nn.Module):
    """Patch 1, tubelet 2: each pixel of the first frame is a token whose features are `feature`
    of its intensity (an oracle when intensity encodes the class, useless when constant)."""

    tubelet, depth = 2, 1

    def __init__(self, feature: str) -> None:
        super().__init__()
        self.feature = feature

    def default_taps(self, n: int) -> list[int]:
        return [0]

    def grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        return shape[2] // 2, shape[3], shape[4]

    def forward_intermediates(self, x: torch.Tensor, indices, norm: bool = False) -> list:
        first = x[:, 0, 0].flatten(1)  # (B, H*W)
        if self.feature == "oracle":
            levels = torch.tensor([0.0, 0.25, 0.5, 0.75])
            tokens = (first[..., None] - levels).abs().lt(0.1).float()  # (B, H*W, 4) one-hot
        else:
            tokens = torch.ones(*first.shape, 4)
        return [tokens for _ in indices]


def subject(key: str, seed: int) -> dict:
    """4 slices x 3 frames of 16 x 16 whose intensity is the class x 64; frame 1 unlabelled."""
    rng = np.random.default_rng(seed)
    label = np.zeros((4, 3, 16, 16), np.uint8)
    for z in range(4):
        cy, cx = rng.integers(5, 11, 2)
        yy, xx = np.mgrid[:16, :16]
        r = np.hypot(yy - cy, xx - cx)
        label[z, :, r < 5] = 2
        label[z, :, r < 3] = 1
        label[z, :, :, 13:] = 3
    image = label * 64
    label[:, 1] = IGNORE
    return {"key": key, "image": image.astype(np.uint8), "label": label, "meta": {}}


def probe_on(train: list[dict], held: list[dict], **kwargs) -> SegProbe:
    probe = SegProbe("unused", labels=len(train), steps=150, lr=0.05, **kwargs)
    probe._train, probe._eval = train, held  # subjects given directly instead of read from shards
    return probe


def test_clips_start_at_each_labelled_frame_of_every_slice() -> None:
    s = subject("a", 0)
    x, y, where = probe_clips([s], frames=2)
    assert x.shape == (8, 1, 2, 16, 16) and y.shape == (8, 16, 16)  # 4 slices x frames 0 and 2
    assert where == [(0, 0)] * 4 + [(0, 2)] * 4
    assert torch.equal(x[4:, 0, 1], torch.from_numpy(s["image"][:, 0]).float() / 255)  # wraps


def test_features_that_carry_the_classes_score_near_one_and_constant_ones_score_zero() -> None:
    train, held = [subject(f"t{i}", i) for i in range(2)], [subject("v", 9)]
    oracle = probe_on(train, held).score(PixelEncoder("oracle"))
    constant = probe_on(train, held).score(PixelEncoder("constant"))
    assert oracle["dice_mean"] > 0.95
    assert set(oracle) == {"dice_lv", "dice_myo", "dice_rv", "dice_mean"}
    assert constant["dice_mean"] < 0.05  # all background: nothing to tell the classes apart


def test_the_probe_never_scores_the_test_split() -> None:
    with pytest.raises(ValueError, match="val"):
        SegProbe("runs/real/acdc", eval_split="test")


def pretrain(shards: Path, out: Path, steps: int, probe: SegProbe | None, ckpt=None):
    L.seed_everything(0)
    system = PretrainSystem(
        "cmr_vit_test", {"patch_size": 8, "tubelet": 2}, "mae",
        {"mask_ratio": 0.75, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
        lr=1e-3, scale_lr=False, warmup_steps=1,
    )  # fmt: skip
    data = ClipDataModule(str(shards), frames=4, batch_size=4, epoch_length=64, splits=["train"])
    callbacks = [ModelCheckpoint(out, "{step}", every_n_train_steps=2, save_top_k=-1)]
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, default_root_dir=out, enable_progress_bar=False,
        logger=CSVLogger(out, name="logs"), enable_model_summary=False,
        callbacks=callbacks + ([probe] if probe else []),
    )  # fmt: skip
    trainer.fit(system, datamodule=data, ckpt_path=ckpt)
    return system


@pytest.fixture(scope="module")
def shards(make_phantom_shards) -> Path:
    return make_phantom_shards(n=6, slices=2)


def make_probe(shards: Path, tap: str | None = None, every: int = 2) -> SegProbe:
    return SegProbe(str(shards), labels=2, every_n_steps=every, steps=20, eval_split="train",
                    max_eval_subjects=2, tap=tap)  # fmt: skip


def test_probing_changes_nothing_in_the_run_and_logs_a_curve(shards: Path, tmp_path: Path):
    plain = pretrain(shards, tmp_path / "plain", 5, None)
    probed = pretrain(shards, tmp_path / "probed", 5, make_probe(shards))
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values()):
        assert torch.equal(a, b), name  # the probe's own randomness is forked off
    rows = read_history(tmp_path / "probed" / PROBE_CSV)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]  # random init, every 2 steps, the end
    assert all(0 <= r["dice_mean"] <= 1 for r in rows)
    assert (tmp_path / "probed" / PROBE_PLOT).stat().st_size > 0
    with next((tmp_path / "probed" / "logs").glob("version_*/metrics.csv")).open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("probe/dice_mean")]
    assert [int(r["step"]) for r in logged] == [0, 2, 4, 5]


def test_a_resumed_run_keeps_the_curve_of_its_checkpoint(shards: Path, tmp_path: Path):
    pretrain(shards, tmp_path, 4, make_probe(shards))
    probe = make_probe(shards)
    pretrain(shards, tmp_path, 6, probe, ckpt=tmp_path / "step=2.ckpt")
    assert [r["step"] for r in probe.history] == [0, 2, 4, 6]  # 0 and 2 from the checkpoint
    assert [r["step"] for r in read_history(tmp_path / PROBE_CSV)] == [0, 2, 4, 6]


def test_a_resume_at_a_probe_step_whose_probe_was_lost_probes_it(shards: Path, tmp_path: Path):
    pretrain(shards, tmp_path, 2, make_probe(shards))
    ckpt = torch.load(tmp_path / "step=2.ckpt", weights_only=True)
    [key] = [k for k in ckpt["callbacks"] if "SegProbe" in k]
    before = ckpt["callbacks"][key]["history"]
    lost = before[:1]  # as if killed after step 2's checkpoint, before its probe
    ckpt["callbacks"][key]["history"] = lost
    torch.save(ckpt, tmp_path / "lost.ckpt")
    probe = make_probe(shards)
    pretrain(shards, tmp_path / "resumed", 4, probe, ckpt=tmp_path / "lost.ckpt")
    assert [r["step"] for r in probe.history] == [0, 2, 4]
    same_weights = pytest.approx(before[1]["dice_mean"])
    assert probe.history[1]["dice_mean"] == same_weights


def test_a_run_resumed_between_probes_adds_no_point_off_the_grid(shards: Path, tmp_path: Path):
    pretrain(shards, tmp_path, 2, make_probe(shards, every=4))  # checkpoint at step 2, no probe
    probe = make_probe(shards, every=4)
    pretrain(shards, tmp_path, 6, probe, ckpt=tmp_path / "step=2.ckpt")
    assert [r["step"] for r in probe.history] == [0, 4, 6]  # not 2: a resume is no probe step


UNET = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "features": 4}


@pytest.mark.parametrize(("tap", "channels"), [("output", 16), ("input", 8)])
def test_a_dense_backbone_is_probed_on_its_tapped_deep_map_of_the_first_frame(tap, channels):
    encoder = create_backbone("cmr_unet_small", **UNET).eval()
    x = torch.rand(3, 1, 2, 16, 16)
    feats = SegProbe("unused")._features(encoder, x, torch.device("cpu"), tap)
    _, deep = encoder.forward_features(x, bottleneck=True, tap=tap)
    assert feats.shape == (3, channels, 4, 4)  # (N, C, H/4, W/4)
    assert torch.equal(feats, deep[:, 0])


def pretrain_positional(shards: Path, out: Path, steps: int) -> None:
    """A few steps of the U-Net route's pretext, step=N.ckpt every 2 steps in out."""
    L.seed_everything(0)
    objective = {"hidden": 8, "proj_dim": 4, "tap": "input"}
    system = PretrainSystem("cmr_unet_small", UNET, "positional", objective,
                            lr=1e-3, scale_lr=False, warmup_steps=1)  # fmt: skip
    data = ClipDataModule(str(shards), frames=1, batch_size=4, epoch_length=64, splits=["train"])
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, default_root_dir=out, enable_progress_bar=False,
        logger=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(out, "{step}", every_n_train_steps=2, save_top_k=-1)],
    )  # fmt: skip
    trainer.fit(system, datamodule=data)


def test_saved_checkpoints_are_probed_at_their_steps_beside_a_random_start(shards, tmp_path):
    pretrain_positional(shards, tmp_path, 4)
    checkpoints = sorted(tmp_path.glob("step=*.ckpt"), reverse=True)  # any order in
    rows, skipped = probe_checkpoints(checkpoints, make_probe(shards), tmp_path / "probe")
    assert [r["step"] for r in rows] == [0, 2, 4] and skipped == []
    written = read_history(tmp_path / "probe" / PROBE_CSV)
    assert [r["dice_mean"] for r in written] == pytest.approx([r["dice_mean"] for r in rows])
    trained = create_backbone("cmr_unet_small", pretrained=tmp_path / "step=4.ckpt", **UNET)
    # the map the objective trained (its tap, "input") is probed, not the bottom block's output
    on_input = make_probe(shards, tap="input").score(trained)["dice_mean"]
    assert on_input == pytest.approx(rows[-1]["dice_mean"])
    assert make_probe(shards, tap="output").score(trained)["dice_mean"] != pytest.approx(on_input)


def test_a_checkpoint_that_cannot_be_read_is_skipped_naming_it_and_the_rest_are_probed(
    shards, tmp_path, capsys
):
    pretrain_positional(shards, tmp_path, 2)
    good = tmp_path / "step=2.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:1000])  # a copy that stopped early
    hub = tmp_path / "hub"  # a hub folder: no step, no objective tap
    hub.mkdir()
    (hub / "config.json").write_text("{}")
    rows, skipped = probe_checkpoints([cut, hub, good], make_probe(shards), tmp_path / "probe",
                                      False)  # fmt: skip
    assert [r["step"] for r in rows] == [2]  # the good one, after the bad ones
    assert len(skipped) == 2 and skipped[0].startswith(f"{cut}: cannot read")
    assert skipped[1].startswith(f"{hub}: a folder; the probe takes pretraining checkpoint files")
    assert f"skipped {cut}" in capsys.readouterr().err


def test_cmrfm_probe_reads_the_shards_first_and_names_a_damaged_manifest(shards, tmp_path, capsys):
    import shutil

    from cmrfm.cli import main

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    (copy / "manifest.json").write_text('{"shards": [')  # a copy cut short
    (tmp_path / "a.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        main(["probe", str(tmp_path / "a.ckpt"), "--shards", str(copy), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"cmrfm probe: error: {copy / 'manifest.json'}: not valid JSON")
