"""PretrainSystem: AdamW groups, LR scaling and schedule, non-finite steps, FLOPs, throughput and
MFU, reconstruction images, bf16 and DeepSpeed on CPU (old MAEPretrainer checkpoints:
tests/pretext/test_migrate.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn
from torch.utils.data import DataLoader, Dataset

import pretext
from cmrfm import CONFIGS
from cmrfm.train import run_training
from foundation.flops import flop_counter
from foundation.optim import decays
from pretext.system import (
    IMAGE_KEY,
    NonFiniteLossError,
    PretrainSystem,
    reconstruction_grid,
)

CLIP = (1, 4, 16, 16)  # (C, T, H, W): a 2 x 2 x 2 token grid at tubelet 2, patch 8
TOKENS = 8
BACKBONE = {"patch_size": 8, "tubelet": 2}
MAE = {"mask_ratio": 0.5, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}


class Probe(nn.Module):
    """Encoder on every token, loss = mean squared feature; NaN on chosen calls (1-based)."""

    def __init__(self, encoder: nn.Module, nan_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.encoder, self.nan_at, self.calls = encoder, set(nan_at), 0
        self.dtypes: list[torch.dtype] = []

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.calls += 1
        features = self.encoder.forward_features(batch["clip"])  # (B, L, D)
        self.dtypes.append(features.dtype)
        loss = features.float().pow(2).mean()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "probe": loss.detach()}


@pytest.fixture(autouse=True)
def probe_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pretext.OBJECTIVES, "probe", Probe)


class Clips(Dataset):
    def __len__(self) -> int:
        return 256

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        return {"clip": torch.rand(CLIP, generator=g), "modality": "cine"}


class ClipData(L.LightningDataModule):
    def __init__(self, batch_size: int = 4) -> None:
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Clips(), batch_size=self.batch_size)


class Recorder(L.Callback):
    """Per micro-batch: the trained batch, lr before the step, a weight after it, and times."""

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.lrs: list[float] = []
        self.weights: list[torch.Tensor] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, i: int) -> None:
        self.batches.append(batch)
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.weights.append(module.encoder.patch_embed.weight.detach().clone())
        self.ends.append(time.perf_counter())


def system(
    objective: str = "probe", objective_kwargs: dict | None = None, **kw: Any
) -> PretrainSystem:
    L.seed_everything(0)
    kw = {"lr": 1e-2, "scale_lr": False, "warmup_steps": 1, **kw}
    return PretrainSystem("cmr_vit_test", BACKBONE, objective, objective_kwargs or {}, **kw)


def train(
    module: PretrainSystem, steps: int, data: ClipData | None = None, **trainer: Any
) -> Recorder:
    recorder = Recorder()
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
               "enable_model_summary": False, **trainer}  # fmt: skip
    callbacks = [recorder, *options.pop("callbacks", [])]
    ckpt = options.pop("ckpt_path", None)
    t = L.Trainer(accelerator="cpu", max_steps=steps, callbacks=callbacks, **options)
    t.fit(module, datamodule=data or ClipData(), ckpt_path=ckpt)
    return recorder


# --- optimiser ---------------------------------------------------------------------------------


def test_weight_decay_spares_norms_biases_tokens_and_embeddings() -> None:
    module = system("mae", MAE)
    optimizer = module.configure_optimizers()["optimizer"]
    decayed, spared = ({id(p) for p in g["params"]} for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [module.weight_decay, 0.0]
    names = {id(p): n for n, p in module.named_parameters()}
    spared_names = {names[i] for i in spared}
    assert {"objective.encoder.modality_embed", "objective.encoder.axis_embed",
            "objective.mask_token"} <= spared_names  # fmt: skip
    assert all(n.endswith(("bias", "norm.weight", "norm1.weight", "norm2.weight", "embed", "token"))
               for n in spared_names)  # fmt: skip
    assert {names[i] for i in decayed} == {
        n for n, p in module.named_parameters()
        if p.ndim > 1 and not n.endswith(("modality_embed", "axis_embed", "mask_token"))
    }  # fmt: skip
    assert len(decayed) + len(spared) == len(list(module.parameters()))


def test_decay_rule_on_names() -> None:
    matrix, vector = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    assert decays("blocks.0.attn.qkv.weight", matrix)
    assert not decays("blocks.0.attn.qkv.bias", vector)
    assert not decays("vit.pos_embed", matrix)
    assert not decays("vit.cls_token", matrix)
    assert not decays("vit.modality_embed.weight", matrix)  # also as an nn.Embedding
    assert not decays("head.weight", matrix, skip={"head.weight"})


def test_lr_is_scaled_by_global_batch_then_warms_up_and_decays_by_cosine() -> None:
    module = system(lr=0.1, scale_lr=True, warmup_steps=3, min_lr_ratio=0.1)
    steps, accumulate = 10, 2
    lrs = train(module, steps, ClipData(batch_size=4), accumulate_grad_batches=accumulate).lrs
    peak = 0.1 * (4 * 1 * accumulate) / 256  # batch x world size x accumulation / 256

    def expected(step: int) -> float:
        if step < 3:
            return peak * (step + 1) / 3
        progress = (step - 3) / (steps - 3)
        return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    per_step = lrs[::accumulate]  # lr in force at each optimizer step
    assert per_step == pytest.approx([expected(s) for s in range(steps)], rel=1e-6)


def test_scale_lr_without_a_batch_size_is_a_clear_error() -> None:
    module = system(scale_lr=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="batch_size"):
        trainer.fit(module, DataLoader(Clips(), batch_size=2))


# --- non-finite losses -------------------------------------------------------------------------


def test_nonfinite_loss_skips_the_update_and_training_goes_on() -> None:
    module = system(objective_kwargs={"nan_at": [3, 4]}, max_nonfinite=3)
    rec = train(module, 6)
    w = rec.weights
    assert torch.equal(w[2], w[1]) and torch.equal(w[3], w[1])  # micro-batches 3, 4: no update
    assert not torch.equal(w[4], w[3]) and not torch.equal(w[1], w[0])
    optimizer_state = next(iter(module.trainer.optimizers[0].state.values()))
    assert int(optimizer_state["step"]) == 4  # AdamW stepped on the 4 finite batches only
    assert module.nonfinite == 0  # the streak ended


def test_too_many_nonfinite_losses_in_a_row_stop_with_step_and_count() -> None:
    module = system(objective_kwargs={"nan_at": [2, 3, 4]}, max_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*3 micro-batches in a row"):
        train(module, 10)


# --- FLOPs, throughput, MFU --------------------------------------------------------------------


def analytic_flops(encoder: nn.Module, batch: int, tokens: int) -> int:
    """Forward + backward matmul FLOPs of the encoder over every token of `batch` clips.

    Linear layers: 2 FLOPs per weight per token forward, twice that backward (input and weight
    gradients): 6 x weights x tokens. Patch embedding: its input needs no gradient, so 4 x.
    Attention per block: QK^T and AV are 2 x L^2 x D each forward; backward, torch's SDPA formula
    counts 5 such products (it recomputes QK^T), explicit attention 4.
    """
    n = batch * tokens
    linear = sum(m.weight.numel() for m in encoder.blocks.modules() if isinstance(m, nn.Linear))
    conv = encoder.patch_embed.weight.numel()
    fused = encoder.blocks[0].attn.fused_attn
    attention = (2 + (5 if fused else 4)) * 2 * batch * tokens**2 * encoder.embed_dim
    return 6 * linear * n + 4 * conv * n + len(encoder.blocks) * attention


def test_counted_step_flops_equal_the_analytic_count() -> None:
    """Exact, not approximate: the counter and the formula cover the same matmuls,
    convolutions and attention products; elementwise work is left out by both."""
    module = system()
    train(module, 2, ClipData(batch_size=4))
    assert module.flops_per_batch == analytic_flops(module.encoder, 4, TOKENS)
    # The rule of thumb 6 x parameters x tokens is the bulk of it at this size.
    n_params = sum(p.numel() for p in module.encoder.parameters())
    assert 0.5 < module.flops_per_batch / (6 * n_params * 4 * TOKENS) < 1.5


def test_cpu_attention_is_counted() -> None:
    q = torch.randn(2, 3, 10, 8, requires_grad=True)
    with flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    assert counter.get_total_flops() == (2 + 5) * 2 * (2 * 3) * 10 * 10 * 8


def logged(module: PretrainSystem) -> dict[str, float]:
    return {k: float(v) for k, v in module.trainer.callback_metrics.items()}


def test_throughput_and_mfu_are_logged_from_step_times_and_counted_flops() -> None:
    module = system(peak_tflops=0.5)
    rec = train(module, 6, ClipData(batch_size=4))
    m = logged(module)
    seconds = float(np.mean(np.diff(rec.ends)))  # the same batch-end to batch-end intervals
    assert m["train/clips_per_s"] == pytest.approx(4 / seconds, rel=0.05)
    assert m["train/tokens_per_s"] == pytest.approx(m["train/clips_per_s"] * TOKENS, rel=1e-5)
    tflops = module.flops_per_batch * m["train/clips_per_s"] / 4 / 1e12
    assert m["train/tflops"] == pytest.approx(tflops, rel=1e-5)
    assert m["train/mfu"] == pytest.approx(m["train/tflops"] / 0.5, rel=1e-5)


def test_cpu_time_is_logged_and_carried_across_a_resume(tmp_path: Path) -> None:
    """The model card's CPU-hours: process time of training, summed over resumed pieces."""
    first = system()
    train(first, 3, enable_checkpointing=True, default_root_dir=tmp_path)
    ckpt = next(tmp_path.rglob("*.ckpt"))
    saved = torch.load(ckpt, weights_only=False)["pretrain_state"]["cpu_seconds"]
    assert 0 < saved == pytest.approx(logged(first)["train/cpu_hours"] * 3600, rel=0.5)
    second = system()
    train(second, 5, ckpt_path=ckpt)
    assert second.cpu_seconds_before == saved
    assert second.cpu_seconds > saved


def test_no_mfu_on_cpu_without_a_peak() -> None:
    module = system()
    train(module, 3)
    m = logged(module)
    assert "train/tflops" in m and "train/mfu" not in m


# --- reconstruction images ---------------------------------------------------------------------


class ImageLogger(Logger):
    """Keeps log_image calls, like WandbLogger's signature."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list, int]] = []

    name, version = "images", 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs: Any) -> None:
        self.images.append((key, images, step))


def test_mae_reconstructions_go_to_loggers_that_log_images(tmp_path: Path) -> None:
    images = ImageLogger()
    module = system("mae", MAE, log_images_every_n_steps=2, images=2)
    rec = train(module, 5, logger=[images, CSVLogger(tmp_path)])  # CSV has no log_image
    assert [(key, step) for key, _, step in images.images] == [(IMAGE_KEY, s) for s in (0, 2, 4)]
    first = images.images[0][1][0]
    assert first.dtype == np.uint8 and first.shape == (3 * 2 * 16, 4 * 16)  # 2 clips, 4 frames
    clip = rec.batches[0]["clip"][0, 0]  # (T, H, W) of the first clip at step 0
    frames = np.concatenate(list((clip * 255).round().numpy()), axis=1)  # (H, T*W)
    np.testing.assert_array_equal(first[:16], frames.astype(np.uint8))


def test_reconstruction_grid_rows_are_input_masked_input_and_clamped_output() -> None:
    clip = torch.rand(1, 1, 2, 4, 4)
    recon = torch.full_like(clip, 1.5)
    mask = torch.zeros_like(clip, dtype=torch.bool)
    mask[..., :2, :] = True  # top half of every frame masked
    grid = reconstruction_grid(clip, recon, mask).astype(float) / 255
    assert grid.shape == (12, 8)
    np.testing.assert_allclose(grid[0:4, 0:4], clip[0, 0, 0].numpy(), atol=1 / 255)
    assert (grid[4:6] == 0).all()  # masked patches black
    np.testing.assert_allclose(grid[6:8, 4:8], clip[0, 0, 1, 2:].numpy(), atol=1 / 255)
    assert (grid[8:12] == 1).all()  # the reconstruction, clamped to [0, 1]


# --- precision and strategies ------------------------------------------------------------------


def test_bf16_mixed_trains_on_cpu_in_bfloat16() -> None:
    module = system()
    rec = train(module, 2, precision="bf16-mixed")
    assert module.objective.dtypes == [torch.bfloat16] * 2  # the encoder ran under autocast
    assert not torch.equal(rec.weights[0], rec.weights[1])
    assert math.isfinite(logged(module)["train/loss"])


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_on_cpu_trains_skips_nonfinite_steps_and_shards_checkpoints(
    tmp_path: Path, stage: int
) -> None:
    from cmrfm.strategies import DeepSpeed

    module = system(objective_kwargs={"nan_at": [2]})
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=DeepSpeed(stage=stage), max_steps=3,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule=ClipData())
    trainer.save_checkpoint(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").rglob("*.pt")}
    assert any(name.startswith("zero_pp_rank_0") and "optim_states" in name for name in files)
    assert trainer.global_step == 3
    # The engine found the non-finite gradients and skipped that update: 2 Adam steps in 3.
    state = trainer.optimizers[0].optimizer.state.values()
    assert {int(s["step"]) for s in state} == {2}


class TwoViews(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        return {"clip": torch.rand(CLIP, generator=g), "clip2": torch.rand(CLIP, generator=g),
                "modality": "cine"}  # fmt: skip


class TwoViewData(ClipData):
    def train_dataloader(self) -> DataLoader:
        return DataLoader(TwoViews(), batch_size=self.batch_size)


def test_combined_objective_trains_and_logs_its_parts() -> None:
    weights = {"w_mae": 1.0, "w_con": 0.5, "proj_hidden": 32, "proj_dim": 8}
    module = system("mae_contrastive", {**MAE, **weights})
    rec = train(module, 2, TwoViewData())
    m = logged(module)
    assert m["train/loss"] == pytest.approx(m["train/mae"] + 0.5 * m["train/contrastive"], rel=1e-5)
    assert not torch.equal(rec.weights[0], rec.weights[1])


def test_wandb_config_logs_reconstructions_offline(
    make_phantom_shards: Callable[..., Path], tmp_path: Path
) -> None:
    config = CONFIGS / "pretrain_mae_wandb.yaml"
    run_training(["--config", str(config), "--shards", str(make_phantom_shards(4, 2)),
                  "--out", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
                  "--model.init_args.backbone", "cmr_vit_test", "--max-steps", "2",
                  "--model.init_args.log_images_every_n_steps", "1",
                  "--data.init_args.batch_size", "2", "--data.init_args.epoch_length", "4"])  # fmt: skip
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    pictures = sorted(run.rglob("media/images/train/reconstruction_*.png"))
    assert len(pictures) == 2  # steps 0 and 1
