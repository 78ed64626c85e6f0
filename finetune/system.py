"""Lightning system that fine-tunes a (pre)trained backbone + UNETR decoder for segmentation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from monai.losses import DiceCELoss

from data_shards.record import IGNORE
from finetune.unetr import UNETRSegmenter
from foundation.checkpoint import load_backbone_weights
from foundation.optim import param_groups, warmup_cosine
from foundation.registry import create_backbone


class SegFinetuner(L.LightningModule):
    """Per-frame segmentation; batches are dicts with "clip" (B, 1, T, H, W), "label" (B, T, H, W).

    Frames holding any IGNORE pixel (no or partial ground truth) are left out of the loss.

    Args:
        backbone, patch_size, tubelet: registered backbone and its tubelet size.
        pretrained: a pretraining checkpoint (Lightning .ckpt) or a hub folder (`cmrfm export`)
            to start from; None = from scratch.
        num_classes: output classes including background (cine: 4).
        feature_size: decoder width at full resolution.
        lr: learning rate of the decoder; the backbone gets lr * backbone_lr_scale.
        freeze_backbone: linear-probe style: train the decoder only.
    """

    def __init__(
        self,
        backbone: str = "cmr_vit_tiny",
        patch_size: int = 16,
        tubelet: int = 2,
        pretrained: str | None = None,
        num_classes: int = 4,
        feature_size: int = 16,
        lr: float = 1e-3,
        backbone_lr_scale: float = 0.3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        encoder = create_backbone(backbone, patch_size=patch_size, tubelet=tubelet)
        if pretrained:
            load_backbone_weights(encoder, Path(pretrained))
        encoder.requires_grad_(not freeze_backbone)
        self.model = UNETRSegmenter(encoder, num_classes, feature_size)
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.model(clip)  # (B, K, T, H, W)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["clip"])  # (B, K, T, H, W)
        loss = frame_loss(self.loss_fn, logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        named = list(self.model.named_parameters())
        backbone = [(n, p) for n, p in named if n.startswith("backbone.")]
        decoder = [(n, p) for n, p in named if not n.startswith("backbone.")]
        groups = param_groups(decoder, hp.weight_decay, hp.lr)
        groups += param_groups(backbone, hp.weight_decay, hp.lr * hp.backbone_lr_scale)
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1000
        schedule = warmup_cosine(optimizer, hp.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def frame_loss(loss_fn: DiceCELoss, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Loss over labelled frames only: logits (B, K, T, H, W), label (B, T, H, W) with IGNORE."""
    k = logits.shape[1]
    per_frame = logits.permute(0, 2, 1, 3, 4).reshape(-1, k, *logits.shape[-2:])  # (B*T, K, H, W)
    target = label.reshape(-1, 1, *label.shape[-2:]).long()  # (B*T, 1, H, W)
    labelled = (target != IGNORE).flatten(1).all(dim=1)  # (B*T,) a stray 255 would break one-hot
    if not labelled.any():
        return logits.sum() * 0.0  # keeps the graph; nothing to learn from this batch
    return loss_fn(per_frame[labelled], target[labelled])
