"""Lightning systems that fine-tune a (pre)trained backbone: per-frame segmentation (UNETR decoder,
or a MONAI U-Net baseline) and subject-level EF regression or diagnosis classification."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.nn import functional as F

from data_shards.record import IGNORE
from finetune.dense import DenseSegmenter
from finetune.light_decoder import LightSegmenter
from finetune.protocols import apply_protocol, check_protocol, eval_frozen, layer_decay_groups
from finetune.subject import ACDC_GROUPS, SubjectModel
from finetune.unet import UNet2DSegmenter
from finetune.unetr import UNETRSegmenter
from foundation.optim import param_groups, warmup_cosine, warmup_cosine_factor
from foundation.registry import create_backbone
from foundation.released import NO_WEIGHTS
from foundation.unet import CardiacUNet
from foundation.vit import CardiacViT

ARCHS = ("unetr", "light", "unet", "dense")
DENSE_PROTOCOLS = ("full", "linear")  # a U-Net backbone has no blocks to pick or adapt
# Frozen modules are put in eval mode on purpose (`_Finetuner.train`); Lightning warns about it.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start")


def build_backbone(
    name: str,
    patch_size: int,
    tubelet: int,
    pretrained: str | None,
    protocol: str,
    last_k: int,
    lora_rank: int,
    backbone_kwargs: dict[str, Any] | None = None,
) -> CardiacViT:
    """A registered backbone, its pretrained weights (a checkpoint or hub folder) loaded by
    create_backbone before LoRA renames its layers, with the protocol's trainable parameters
    (see :func:`finetune.protocols.apply_protocol`)."""
    encoder = create_backbone(
        name,
        pretrained=pretrained or None,
        patch_size=patch_size,
        tubelet=tubelet,
        **(backbone_kwargs or {}),
    )
    return apply_protocol(
        encoder, protocol, last_k=last_k, lora_rank=lora_rank, lora_alpha=2 * lora_rank
    )


def dense_backbone(
    name: str,
    pretrained: str | None,
    protocol: str,
    num_classes: int,
    backbone_kwargs: dict[str, Any] | None = None,
) -> CardiacUNet:
    """A registered dense backbone (cmr_unet_small) whose top layer outputs num_classes, its
    other weights loaded by create_backbone; for protocol "linear" only that top layer trains."""
    if protocol not in DENSE_PROTOCOLS:
        raise ValueError(
            f"arch='dense' takes protocol {' or '.join(map(repr, DENSE_PROTOCOLS))}, not "
            f"{protocol!r}: a U-Net backbone has no transformer blocks to pick or adapt"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes} must be >= 2")
    with torch.device("meta"):  # its class only, no memory
        kind = type(create_backbone(name, **(backbone_kwargs or {})))
    if kind is not CardiacUNet:
        raise ValueError(
            f"arch='dense' needs a dense backbone (e.g. cmr_unet_small); {name} is a "
            f"{kind.__name__}: use arch 'unetr' or 'light' for it"
        )
    kwargs = {**(backbone_kwargs or {}), "features": num_classes}
    backbone = create_backbone(name, pretrained=pretrained or None, **kwargs)
    backbone.requires_grad_(protocol == "full")
    for p in linear_trains(backbone):
        p.requires_grad_(True)
    return backbone


def linear_trains(backbone: nn.Module) -> list[nn.Parameter]:
    """The backbone's parameters that protocol "linear" trains: a dense backbone's top layer (it
    outputs the classes, :func:`dense_backbone`), none of a ViT's (`apply_protocol`)."""
    return list(backbone.top_layer().parameters()) if isinstance(backbone, CardiacUNet) else []


def check_head_first(steps: int, protocol: str) -> int:
    """head_first_steps, or a ValueError: an int >= 0, and 0 with protocol "linear"."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"head_first_steps={steps!r} must be an int >= 0 (0 = off)")
    if steps and protocol == "linear":
        raise ValueError(
            f"head_first_steps={steps} means nothing with protocol 'linear' (freeze_backbone=True "
            "is 'linear' too): it trains the head alone throughout; set head_first_steps to 0 "
            "or another protocol"
        )
    return steps


class _Finetuner(L.LightningModule):
    """What the fine-tuning systems share: a backbone (ViT: built by :func:`build_backbone`),
    the protocol that picks what of it trains, an AdamW optimiser with the head at lr and the
    backbone by layer-wise decay, and frozen modules kept in eval mode.

    Args:
        backbone: a registered backbone's name (`foundation.registry`).
        patch_size: the backbone's patch size in pixels.
        tubelet: the backbone's frames per token.
        pretrained: a pretraining checkpoint (Lightning .ckpt), a hub folder (`cmrfm export`) or
            a released model's name (e.g. "cmr-unet-small-cine") to start from; None or "none" =
            from scratch.
        protocol: "linear", "partial" (last_k blocks + final norm), "full" or "lora" (adapters of
            rank lora_rank, alpha 2 x rank, on the attention layers).
        last_k: blocks that "partial" trains.
        layer_decay: each backbone layer's lr is this times the lr of the layer above it.
        lora_rank: the rank of "lora"'s adapters.
        lr: learning rate of the head; the backbone's top layer gets lr * backbone_lr_scale,
            each layer below layer_decay times less (`finetune.protocols.layer_decay_groups`).
        backbone_lr_scale: the backbone's top layer's lr over the head's.
        weight_decay: AdamW's, on weight matrices only (`foundation.optim.decays`).
        warmup_steps: linear warm-up steps before the cosine decay.
        head_first_steps: first steps train what "linear" would (LP-FT); the rest warm up after.
    """

    model: nn.Module

    def __init__(
        self,
        backbone: str = "cmr_vit_tiny",
        patch_size: int = 16,
        tubelet: int = 2,
        pretrained: str | None = None,
        protocol: str = "full",
        last_k: int = 2,
        layer_decay: float = 0.75,
        lora_rank: int = 8,
        lr: float = 1e-3,
        backbone_lr_scale: float = 0.3,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        head_first_steps: int = 0,
    ) -> None:
        super().__init__()
        # Lightning collects the subclass's arguments too (its __init__ frame): checkpoints
        # keep them all, and a system is rebuilt from them.
        self.save_hyperparameters()
        check_protocol(protocol)
        check_head_first(head_first_steps, protocol)

    def vit_backbone(
        self, protocol: str, backbone_kwargs: dict[str, Any] | None = None
    ) -> CardiacViT:
        """:func:`build_backbone` with this system's backbone arguments and ``protocol``."""
        hp = self.hparams
        return build_backbone(
            hp.backbone, hp.patch_size, hp.tubelet, hp.pretrained, protocol, hp.last_k,
            hp.lora_rank, backbone_kwargs,
        )  # fmt: skip

    def train(self, mode: bool = True) -> _Finetuner:
        # Frozen parts (linear probe backbone, partial's frozen blocks) never see dropout or
        # drop-path noise; Lightning keeps the mode the module is in, so set it here and at each
        # training epoch start.
        super().train(mode)
        if mode:
            eval_frozen(self.model)
        return self

    def on_train_epoch_start(self) -> None:
        eval_frozen(self.model)

    def head_parameters(self) -> list[nn.Parameter]:
        """What protocol "linear" trains: the model's parameters outside its backbone (all of a
        model without one, arch "unet") and those :func:`linear_trains` picks in it."""
        backbone = getattr(self.model, "backbone", None)
        if backbone is None:
            return list(self.model.parameters())
        in_backbone = {id(p) for p in backbone.parameters()}
        head = [p for p in self.model.parameters() if id(p) not in in_backbone]
        return head + linear_trains(backbone)

    def configure_optimizers(self) -> dict:
        """AdamW and its per-step schedule (warm-up, then cosine decay over the run's steps).

        With head_first_steps K > 0 each group is split into :meth:`head_parameters` (marked
        "head_first": True, on the run's schedule) and the rest, whose lr is 0 for steps < K
        (AdamW then moves them not at all: decoupled decay is lr * weight_decay) and which then
        warm up and decay over the steps left, as if their run began at step K.
        """
        hp = self.hparams
        backbone = getattr(self.model, "backbone", None)
        in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        head = [(n, p) for n, p in self.model.named_parameters() if id(p) not in in_backbone]
        groups = param_groups(head, hp.weight_decay, hp.lr)
        if isinstance(backbone, CardiacUNet):  # no blocks to decay layer by layer
            groups += param_groups(
                backbone.named_parameters(), hp.weight_decay, hp.lr * hp.backbone_lr_scale
            )
        elif backbone is not None:
            groups += layer_decay_groups(
                backbone.named_parameters(),
                hp.lr * hp.backbone_lr_scale,
                hp.layer_decay,
                hp.weight_decay,
                matcher=backbone.group_matcher(),
            )
        first = hp.head_first_steps
        if first:
            groups = split_head_first(groups, self.head_parameters())
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1000
        if first:
            schedule = head_first_schedule(optimizer, first, hp.warmup_steps, total)
        else:
            schedule = warmup_cosine(optimizer, hp.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def split_head_first(groups: list[dict], head: list[nn.Parameter]) -> list[dict]:
    """Each group in two with its settings: its parameters in head ("head_first": True), then
    the others ("head_first": False); either may be empty."""
    ids = {id(p) for p in head}
    return [
        {**g, "params": [p for p in g["params"] if (id(p) in ids) is part], "head_first": part}
        for g in groups
        for part in (True, False)
    ]


def head_first_schedule(
    optimizer: torch.optim.Optimizer, first: int, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Groups marked "head_first" on warmup_cosine over total_steps; the others at lr 0 for the
    first ``first`` steps, then on warmup_cosine over the total_steps - first left."""
    if first >= total_steps:
        warnings.warn(
            f"head_first_steps={first} >= the run's {total_steps} optimiser steps: only the "
            "head trains",
            stacklevel=2,
        )
    run = warmup_cosine_factor(warmup_steps, total_steps)
    rest = warmup_cosine_factor(warmup_steps, total_steps - first)

    def held(step: int) -> float:
        return rest(step - first) if step >= first else 0.0

    factors = [run if g["head_first"] else held for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


# Constructor arguments of SegFinetuner that an arch never reads: "unet" is MONAI's U-Net from
# scratch (no backbone, one lr); "dense" a U-Net backbone (protocols full and linear, no layers
# to decay, no patches).
_VIT_ONLY = frozenset(
    {"patch_size", "tubelet", "last_k", "layer_decay", "lora_rank", "feature_size"}
)
UNUSED_BY_ARCH = {
    "unet": _VIT_ONLY | {"backbone", "backbone_kwargs", "pretrained", "protocol",
                         "freeze_backbone", "backbone_lr_scale"},
    "dense": _VIT_ONLY,
}  # fmt: skip


class SegFinetuner(_Finetuner):
    """Per-frame segmentation; batches are dicts with "clip" (B, 1, T, H, W), "label" (B, T, H, W).

    Frames holding any IGNORE pixel (no or partial ground truth) are left out of the loss.

    Args:
        num_classes: output classes including background (cine: 4).
        feature_size: decoder width at full resolution.
        freeze_backbone: the same as protocol="linear" (kept for older configs and checkpoints).
        arch: "unetr" (backbone + UNETR decoder), "light" (backbone + the light decoder of
            `finetune.light_decoder`, a cheaper step: `cmrfm bench seg`), "unet" (MONAI 2D
            U-Net from scratch: the backbone arguments are ignored, pretrained and non-"full"
            protocols are errors) or "dense" (a dense backbone such as cmr_unet_small whose top
            layer outputs the classes: the baseline U-Net, pretrained but for that layer,
            `finetune.dense`; patch_size and tubelet are ignored, protocols "full" and "linear",
            the latter training the top layer only).
        backbone_kwargs: further constructor arguments of the backbone (a U-Net's channels, a
            ViT's depth); pretrained weights must have been trained with the same.
        kwargs: the backbone and training arguments of :class:`_Finetuner` (backbone,
            pretrained, protocol, lr, ...).
    """

    def __init__(
        self,
        num_classes: int = 4,
        feature_size: int = 16,
        freeze_backbone: bool = False,
        arch: str = "unetr",
        backbone_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        pretrained, protocol = self.hparams.pretrained, self.hparams.protocol
        self.protocol = _resolve_protocol(protocol, freeze_backbone)
        check_head_first(self.hparams.head_first_steps, self.protocol)
        if arch == "unet":
            if pretrained not in (None, "", NO_WEIGHTS):
                raise ValueError(
                    f"arch='unet' trains MONAI's U-Net from scratch; pretrained={pretrained!r} "
                    "has no backbone to load into (set pretrained: null or arch: unetr)"
                )
            if self.protocol != "full":
                raise ValueError(f"arch='unet' has no backbone to apply protocol {protocol!r} to")
            self.model: nn.Module = UNet2DSegmenter(num_classes)
        elif arch == "dense":
            encoder = dense_backbone(
                self.hparams.backbone, pretrained, self.protocol, num_classes, backbone_kwargs
            )
            self.model = DenseSegmenter(encoder)
        elif arch in ("unetr", "light"):
            encoder = self.vit_backbone(self.protocol, backbone_kwargs)
            decoder = LightSegmenter if arch == "light" else UNETRSegmenter
            self.model = decoder(encoder, num_classes, feature_size)
        else:
            raise ValueError(f"unknown arch {arch!r}; choose one of {list(ARCHS)}")
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.train()

    @staticmethod
    def card_arguments(init_args: dict[str, Any]) -> dict[str, Any]:
        """The arguments that describe this model, for its card: those its ``arch`` does not
        read (a U-Net's patch_size, lora_rank, ...) left out; config.json keeps them all."""
        unused = UNUSED_BY_ARCH.get(init_args.get("arch", "unetr"), frozenset())
        return {k: v for k, v in init_args.items() if k not in unused}

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.model(clip)  # (B, K, T, H, W)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["clip"])  # (B, K, T, H, W)
        loss = frame_loss(self.loss_fn, logits, batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss


class SubjectFinetuner(_Finetuner):
    """Subject-level EF regression or diagnosis; batches are dicts with "stack"
    (B, S, 1, T, H, W), "mask" (B, S) bool, "ef" (B, 2) percent (NaN = unknown), "group" (B,)
    (index in ACDC_GROUPS, -1 = unknown).

    forward(stack, mask) -> (B, 2) (LVEF, RVEF) in percent for task "ef", (B, num_classes)
    logits for "cls". EF loss: smooth L1 on EF / 100 over the known targets; cls loss:
    cross-entropy with label_smoothing over subjects with a known group.

    Args:
        task: "ef" (LVEF and RVEF regression) or "cls" (diagnosis group).
        num_classes: diagnosis groups of "cls" (ACDC's five).
        hidden: width of the attention pooling over slices and of the MLP head.
        dropout: of the MLP head.
        label_smoothing: of the "cls" cross-entropy.
        kwargs: the backbone and training arguments of :class:`_Finetuner` (backbone,
            pretrained, protocol, lr, ...).
    """

    def __init__(
        self,
        task: str = "ef",
        num_classes: int = len(ACDC_GROUPS),
        hidden: int = 128,
        dropout: float = 0.1,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        encoder = self.vit_backbone(self.hparams.protocol)
        outputs = 2 if task == "ef" else num_classes
        self.model = SubjectModel(encoder, task, outputs, hidden, dropout)
        self.task = task
        self.train()

    def forward(self, stack: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(stack, mask)

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        """Loss of outputs (B, K) against the batch's targets; 0 (with grad) when none is known."""
        if self.task == "ef":
            target = batch["ef"].to(outputs.dtype)  # (B, 2) percent
            known = torch.isfinite(target)
            if not known.any():
                return outputs.sum() * 0.0
            return F.smooth_l1_loss(outputs[known] / 100, target[known] / 100, beta=0.05)
        group = batch["group"].long()
        known = group >= 0
        if not known.any():
            return outputs.sum() * 0.0
        smoothing = self.hparams.label_smoothing
        return F.cross_entropy(outputs[known], group[known], label_smoothing=smoothing)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch["stack"], batch["mask"]), batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["mask"].shape[0])
        return loss


def _resolve_protocol(protocol: str, freeze_backbone: bool) -> str:
    if freeze_backbone and protocol not in ("full", "linear"):
        raise ValueError(
            f"freeze_backbone=True means protocol 'linear' but protocol={protocol!r} was given: "
            "set one of them"
        )
    return "linear" if freeze_backbone else protocol


def frame_loss(loss_fn: DiceCELoss, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Loss over labelled frames only: logits (B, K, T, H, W), label (B, T, H, W) with IGNORE."""
    k = logits.shape[1]
    per_frame = logits.permute(0, 2, 1, 3, 4).reshape(-1, k, *logits.shape[-2:])  # (B*T, K, H, W)
    target = label.reshape(-1, 1, *label.shape[-2:]).long()  # (B*T, 1, H, W)
    labelled = (target != IGNORE).flatten(1).all(dim=1)  # (B*T,) a stray 255 would break one-hot
    if not labelled.any():
        return logits.sum() * 0.0  # keeps the graph; nothing to learn from this batch
    return loss_fn(per_frame[labelled], target[labelled])
