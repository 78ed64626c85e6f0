"""Lightning system that pretrains a registered backbone with the MAE objective."""

from __future__ import annotations

import lightning as L
import torch

from foundation.optim import param_groups, warmup_cosine
from foundation.registry import create_backbone
from pretext.mae import MAE


class MAEPretrainer(L.LightningModule):
    """Masked-autoencoder pretraining; batches are dicts with "clip" (B, 1, T, H, W) in [0, 1].

    Args:
        backbone: registered backbone name (see `foundation.BACKBONES`).
        patch_size, tubelet: tubelet size (tubelet, patch, patch) of the backbone.
        mask_ratio: fraction of spatial positions masked (the same at every time step).
        decoder_dim, decoder_depth, decoder_heads: the light MAE decoder.
        lr: peak learning rate for AdamW; scaled by global batch / 256 when scale_lr.
        weight_decay, warmup_steps: optimiser settings; cosine decay over the whole run.
    """

    def __init__(
        self,
        backbone: str = "cmr_vit_tiny",
        patch_size: int = 16,
        tubelet: int = 2,
        mask_ratio: float = 0.9,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        lr: float = 1.5e-4,
        scale_lr: bool = True,
        weight_decay: float = 0.05,
        warmup_steps: int = 50,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        encoder = create_backbone(
            backbone, patch_size=patch_size, tubelet=tubelet, drop_path_rate=drop_path_rate
        )
        self.mae = MAE(
            encoder, mask_ratio, decoder_dim, decoder_depth, decoder_heads, norm_pix_loss
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        clip = batch["clip"]  # (B, 1, T, H, W)
        loss, _, _ = self.mae(clip)
        self.log("train/loss", loss, prog_bar=True, batch_size=clip.shape[0])
        return loss

    def configure_optimizers(self) -> dict:
        lr = self.hparams.lr
        if self.hparams.scale_lr and self.trainer is not None:
            batch = getattr(self.trainer.datamodule, "batch_size", 256)
            lr *= batch * self.trainer.world_size * self.trainer.accumulate_grad_batches / 256
        optimizer = torch.optim.AdamW(
            param_groups(self.named_parameters(), self.hparams.weight_decay, lr), betas=(0.9, 0.95)
        )
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1000
        schedule = warmup_cosine(optimizer, self.hparams.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
