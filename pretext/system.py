"""Lightning system that pretrains a registered backbone with a registered objective.

Training concerns only: AdamW groups and the warmup + cosine schedule, non-finite losses,
per-micro-batch seeding (exact resume), throughput and MFU, and reconstruction images.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_warn

from foundation.checkpoint import refuse_legacy_keys
from foundation.flops import flop_counter, peak_tflops
from foundation.optim import no_weight_decay_names, param_groups, warmup_cosine
from foundation.registry import create_backbone
from pretext import create_objective

IMAGE_KEY = "train/reconstruction"


class NonFiniteLossError(FloatingPointError):
    """The loss was NaN or infinite on too many micro-batches in a row."""


class PretrainSystem(L.LightningModule):
    """Self-supervised pretraining; batches are dicts {"clip": float (B, 1, T, H, W) in [0, 1],
    "modality": [str] * B (optional), "clip2": second views for two-view objectives}.

    The objective (``pretext.OBJECTIVES``) is kept as ``self.objective`` and the backbone as
    ``self.objective.encoder`` (checkpoint keys ``objective.encoder.*``). Checkpoints of the
    removed ``MAEPretrainer`` load once rewritten by :mod:`pretext.migrate`.

    Args:
        backbone: registered backbone name (``foundation.BACKBONES``).
        backbone_kwargs: its arguments (patch_size, tubelet, drop_path_rate, compile, ...).
        objective: registered objective name ("mae", "contrastive", "mae_contrastive",
            "positional", "local").
        objective_kwargs: its arguments (mask_ratio, mask_type, decoder_dim, w_mae, ...).
        lr: peak AdamW learning rate, multiplied by global batch / 256 when scale_lr (global
            batch = batch_size x world size x gradient accumulation).
        weight_decay: AdamW decay of weight matrices (not norms, biases, tokens, positions,
            modality/axis embeddings).
        warmup_steps, min_lr_ratio: linear warmup, then cosine decay to min_lr_ratio x lr at
            trainer.max_steps.
        betas: AdamW betas.
        max_nonfinite: a NaN/inf loss skips its micro-batch (no update from it); this many in a
            row stop training with :class:`NonFiniteLossError`.
        log_images_every_n_steps: every n optimizer steps, loggers that have ``log_image``
            (WandbLogger) get input / masked / reconstruction of the first ``images`` clips;
            0 = never. Needs an objective with ``reconstruct`` (MAE).
        images: how many clips those pictures show.
        peak_tflops: the device's peak (TFLOP/s) for MFU; None = a known CUDA card's dense bf16
            peak (``foundation.flops.PEAK_TFLOPS``), and no MFU on CPU.
        grad_checkpointing: recompute the backbone's blocks in backward (less memory).
        pretrained: weights the backbone starts from (``create_backbone``'s ``pretrained``: a
            checkpoint, a hub folder or a released model's name, e.g. "cmr-unet-small-cine", to
            pretrain its decoder with objective "local"); None = random init. Not through
            ``backbone_kwargs``: those are the architecture `cmrfm export` rebuilds.

    Randomness (masks, drop path) is seeded per micro-batch from (the seed_everything seed,
    micro-batch index, rank), so a resumed run draws what an uninterrupted one would.
    """

    def __init__(
        self,
        backbone: str = "cmr_vit_tiny",
        backbone_kwargs: dict[str, Any] | None = None,
        objective: str = "mae",
        objective_kwargs: dict[str, Any] | None = None,
        lr: float = 1.5e-4,
        scale_lr: bool = True,
        weight_decay: float = 0.05,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        max_nonfinite: int = 5,
        log_images_every_n_steps: int = 0,
        images: int = 4,
        peak_tflops: float | None = None,
        grad_checkpointing: bool = False,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if max_nonfinite < 1:
            raise ValueError(f"max_nonfinite must be >= 1, got {max_nonfinite}")
        if log_images_every_n_steps < 0:
            raise ValueError(
                f"log_images_every_n_steps must be >= 0, got {log_images_every_n_steps}"
            )
        encoder = create_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        encoder.set_grad_checkpointing(grad_checkpointing)
        self.objective = create_objective(objective, encoder, **(objective_kwargs or {}))
        self.lr, self.scale_lr, self.weight_decay = lr, scale_lr, weight_decay
        self.warmup_steps, self.min_lr_ratio, self.betas = warmup_steps, min_lr_ratio, tuple(betas)
        self.max_nonfinite = max_nonfinite
        self.log_images_every_n_steps, self.images = log_images_every_n_steps, images
        self.peak_tflops = peak_tflops
        self.base_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything
        # Run state; micro_batches, base_seed and nonfinite travel in checkpoints.
        self.micro_batches = 0  # training micro-batches started so far
        self.nonfinite = 0  # non-finite losses in a row
        self.flops_per_batch: float | None = None  # one micro-batch, forward + backward
        self._skipped = False
        self._batch_times: deque[float] = deque(maxlen=20)
        self._last_batch_end: float | None = None
        self._clips, self._tokens = 0, 0  # clips and patch tokens of the last batch
        self._last_image_step = -1
        # CPU seconds this process spent training, added to those of the checkpoint it resumed
        # (the model card's CPU-hours); process time counts every thread of this process.
        self.cpu_seconds_before = 0.0
        self._cpu_start: float | None = None

    @property
    def encoder(self) -> torch.nn.Module:
        return self.objective.encoder

    # --- the step ---------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        self._seed_micro_batch()
        self.micro_batches += 1
        out = self.objective(batch)
        loss = out["loss"]
        clip = batch["clip"]
        self._clips = clip.shape[0]
        grid = getattr(self.encoder, "grid", None)  # a dense backbone has pixels, not tokens
        self._tokens = math.prod(grid(clip.shape)) if grid else 0
        if self._any_rank(not bool(torch.isfinite(loss))):
            return self._skip(loss, out)
        self.nonfinite, self._skipped = 0, False
        for name, value in out.items():
            self.log(
                f"train/{name}", value.detach(), prog_bar=name == "loss", batch_size=clip.shape[0]
            )
        self.log("train/lr", self._lr(), batch_size=clip.shape[0])
        self._maybe_log_images(batch)
        return loss

    def _skip(self, loss: torch.Tensor, out: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """Skip a micro-batch whose loss is not finite on some rank; raise after too many."""
        self.nonfinite += 1
        self._skipped = True
        parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in out.items())
        where = f"step {self.global_step} (micro-batch {self.micro_batches})"
        if self.nonfinite >= self.max_nonfinite:
            raise NonFiniteLossError(
                f"non-finite loss at {where}: {self.nonfinite} micro-batches in a row "
                f"(max_nonfinite={self.max_nonfinite}); last parts: {parts}. Lower lr, clip "
                "gradients (trainer.gradient_clip_val), or check the data for NaN clips."
            )
        rank_zero_warn(f"non-finite loss at {where} ({parts}): skipped ({self.nonfinite} in a row)")
        if isinstance(self.trainer.strategy, DeepSpeedStrategy):
            # Lightning cannot skip backward under DeepSpeed; its engine finds the non-finite
            # gradients and skips the optimizer step itself.
            return loss
        return None  # Lightning skips backward and the update

    def _any_rank(self, flag: bool) -> bool:
        """True when flag is true on any rank (every rank must skip together under DDP)."""
        if self._trainer is None:
            return flag
        return bool(self.trainer.strategy.reduce_boolean_decision(flag, all=False))

    def _seed_micro_batch(self) -> None:
        """Seed torch from (seed, micro-batch index, rank): masks and drop path are a function of
        the position in the run, so a run resumed from a checkpoint draws the same ones."""
        rank = self.global_rank if self._trainer is not None else 0
        entropy = [self.base_seed, self.micro_batches, rank]
        state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
        torch.manual_seed(int(state[0] >> 1))

    def _lr(self) -> float:
        return float(self.trainer.optimizers[0].param_groups[0]["lr"])

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        # The closure runs this micro-batch's forward and backward: count its FLOPs once.
        if self.flops_per_batch is not None:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        with flop_counter() as counter:
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not self._skipped:  # a skipped micro-batch ran no backward
            self.flops_per_batch = float(counter.get_total_flops())

    # --- throughput -------------------------------------------------------------------------

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # No device sync here: the non-finite check syncs once per step already, so in steady
        # state the host's batch period is the device's.
        now = time.perf_counter()
        if self._last_batch_end is not None:
            self._batch_times.append(now - self._last_batch_end)
        self._last_batch_end = now
        if self._batch_times:
            self._log_throughput(sum(self._batch_times) / len(self._batch_times))

    def on_train_start(self) -> None:
        self._cpu_start = time.process_time()

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of training so far over the whole run (this rank's process)."""
        now = 0.0 if self._cpu_start is None else time.process_time() - self._cpu_start
        return self.cpu_seconds_before + now

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None  # the gap between epochs is not a training step

    def _log_throughput(self, seconds: float) -> None:
        """clips/s and tokens/s over all ranks; TFLOP/s and MFU per device."""
        clips = self._clips * self.trainer.world_size / seconds
        metrics = {"train/clips_per_s": clips, "train/cpu_hours": self.cpu_seconds / 3600}
        if self._tokens:
            metrics["train/tokens_per_s"] = clips * self._tokens
        if self.flops_per_batch:
            achieved = self.flops_per_batch / seconds / 1e12
            metrics["train/tflops"] = achieved
            if self.peak_tflops is None:
                self.peak_tflops = peak_tflops(self.device) or 0.0  # 0: unknown, no MFU
            peak = self.peak_tflops
            if peak:
                metrics["train/mfu"] = achieved / peak
        self.log_dict(metrics, batch_size=self._clips)

    # --- reconstruction pictures ------------------------------------------------------------

    def _maybe_log_images(self, batch: dict) -> None:
        every = self.log_images_every_n_steps
        if not every or self.global_step % every or self.global_step == self._last_image_step:
            return
        loggers = [lg for lg in self.loggers if callable(getattr(lg, "log_image", None))]
        reconstruct = getattr(self.objective, "reconstruct", None)
        if not loggers or reconstruct is None:
            return
        self._last_image_step = self.global_step
        clip = batch["clip"][: self.images]
        modality = batch.get("modality")
        with torch.no_grad():  # every rank runs it: ZeRO-3 gathers weights collectively
            recon, mask = reconstruct(clip, None if modality is None else modality[: self.images])
        if self.trainer.is_global_zero:
            grid = reconstruction_grid(clip, recon, mask)
            for logger in loggers:
                logger.log_image(key=IMAGE_KEY, images=[grid], step=self.global_step)

    # --- optimiser --------------------------------------------------------------------------

    def configure_optimizers(self) -> dict:
        lr = self.lr * (self._global_batch() / 256 if self.scale_lr else 1.0)
        skip = no_weight_decay_names(self)
        groups = param_groups(self.named_parameters(), self.weight_decay, lr, skip)
        groups = [g for g in groups if g["params"]]
        deepspeed = self._trainer is not None and isinstance(
            self.trainer.strategy, DeepSpeedStrategy
        )
        fused = self.device.type == "cuda" and not deepspeed  # one kernel for all tensors
        optimizer = torch.optim.AdamW(groups, betas=self.betas, fused=fused or None)
        schedule = warmup_cosine(
            optimizer, self.warmup_steps, self._total_steps(), self.min_lr_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _global_batch(self) -> int:
        trainer = self.trainer
        batch = getattr(trainer.datamodule, "batch_size", None)
        if batch is None:
            raise ValueError(
                "scale_lr needs the datamodule's batch_size to scale lr by the global batch; "
                "train with a datamodule that has batch_size, or set scale_lr: false"
            )
        return batch * trainer.world_size * trainer.accumulate_grad_batches

    def _total_steps(self) -> int:
        if self._trainer is None:
            return 1000
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "the cosine schedule needs a run length: set trainer.max_steps (the pretraining "
                "stream has no fixed number of batches per epoch)"
            )
        return int(total)

    # --- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pretrain_state"] = {
            "micro_batches": self.micro_batches,
            "base_seed": self.base_seed,
            "nonfinite": self.nonfinite,
            "cpu_seconds": self.cpu_seconds,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        refuse_legacy_keys(checkpoint)  # mae.* keys: pretext.migrate rewrites the file once
        state = checkpoint.get("pretrain_state")
        if state is not None:  # resuming: continue the run's seed sequence and streak
            self.micro_batches = int(state["micro_batches"])
            self.base_seed = int(state["base_seed"])
            if "cpu_seconds" not in state:
                rank_zero_warn("checkpoint from before CPU time was recorded: train/cpu_hours "
                               "counts from this resume on")  # fmt: skip
            self.cpu_seconds_before = float(state.get("cpu_seconds", 0.0))
            self.nonfinite = int(state["nonfinite"])


def reconstruction_grid(
    clip: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor, max_frames: int = 8
) -> np.ndarray:
    """One picture of MAE inputs and outputs: uint8 (3 * B * H, F * W).

    clip, recon (B, 1, T, H, W) in [0, 1], mask (B, 1, T, H, W) True where masked. For each clip
    three rows: the input, the input with masked patches black, the reconstruction; one column
    per frame (the first max_frames).
    """
    frames = min(clip.shape[2], max_frames)
    x, r, m = (t[:, 0, :frames].detach().float().cpu() for t in (clip, recon, mask))
    rows = torch.stack([x, x * ~m.bool(), r.clamp(0, 1)], dim=1)  # (B, 3, F, H, W)
    b, _, f, h, w = rows.shape
    grid = rows.permute(0, 1, 3, 2, 4).reshape(b * 3 * h, f * w)
    return (grid * 255).round().to(torch.uint8).numpy()
