"""Positional contrastive learning for a dense backbone (Zeng et al., MICCAI 2021; the partition
positives of Chaitanya et al., NeurIPS 2020).

Short-axis slices at the same height of the stack show the same anatomy in every subject, so
images from the same part of the stack (one of ``parts`` equal parts, base to apex) are
positives, whoever they come from, and the rest negatives: a supervised contrastive loss whose
labels cost nothing. At CPU scale it is what made a U-Net better at 1 and 2 labels than its
random start (`benchmarks/RESULTS.md`, "Few labels on a CPU"), where masked inpainting did not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from data_shards.augment import AugmentConfig, BatchClipAugment
from foundation.unet import CardiacUNet


def stack_part(slice_index: torch.Tensor, slices: torch.Tensor, parts: int) -> torch.Tensor:
    """Which of ``parts`` equal parts of its stack each slice lies in: (B,) long in [0, parts)."""
    if parts < 1:
        raise ValueError(f"parts={parts} must be >= 1")
    if bool((slices < 1).any()) or bool((slice_index < 0).any() or (slice_index >= slices).any()):
        raise ValueError("every slice index must lie in 0 .. slices - 1")
    return (slice_index * parts).div(slices, rounding_mode="floor").long()


def supervised_contrastive(
    z: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SupCon loss (Khosla et al. 2020) of unit embeddings z (N, D) with labels (N,).

    Each anchor's loss is minus the mean log-probability of its positives (same label, not
    itself) among all others; anchors without a positive are left out. Returns (loss, mean
    number of positives per anchor).
    """
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))  # (N, N)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None]) & ~self_mask  # (N, N)
    count = positive.sum(1)
    has = count > 0
    if not bool(has.any()):
        raise ValueError("no anchor has a positive: the batch needs two images of a part")
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1)[has] / count[has]
    return -mean_log_prob.mean(), count.float().mean()


class PositionalContrastive(nn.Module):
    """Two augmented views of every frame of every clip; the backbone's bottleneck, pooled to a
    ``pool`` x ``pool`` grid (a plain mean would be zero after instance norm), through an MLP to
    unit vectors; SupCon with the stack part as label.

    Batches: {"clip": float (B, 1, T, H, W) in [0, 1], "slice": (B,), "slices": (B,)}. Only
    the encoder half of the U-Net (down to the bottleneck) learns from it; the decoder keeps its
    initialisation.

    Args:
        encoder: a dense backbone with ``forward_features(x, bottleneck=True)``.
        parts: equal parts of the stack, base to apex (Chaitanya et al. used 4).
        temperature: of the softmax over similarities.
        hidden, proj_dim: the projection MLP's widths.
        pool: side of the pooled bottleneck grid.
        augment: options of the views' augmentation (``data_shards.augment.AugmentConfig``).
        tap: the map contrasted: the bottom block's "output" (the bottleneck) or its "input"
            (the deepest encoder level; the bottom block then stays as initialised).
        instance_weight: weight of an instance term added to the part loss: SimCLR's NT-Xent
            (the other view of the same image is the one positive), which position alone
            cannot solve. 0 leaves it out.
    """

    def __init__(
        self,
        encoder: CardiacUNet,
        parts: int = 4,
        temperature: float = 0.1,
        hidden: int = 256,
        proj_dim: int = 128,
        pool: int = 2,
        augment: dict | None = None,
        tap: str = "output",
        instance_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if instance_weight < 0:
            raise ValueError(f"instance_weight={instance_weight} must be >= 0")
        if tap not in encoder.tap_dims:
            raise ValueError(f"tap={tap!r}: choose {' or '.join(map(repr, encoder.tap_dims))}")
        self.encoder, self.parts, self.temperature, self.pool = encoder, parts, temperature, pool
        self.tap, self.instance_weight = tap, instance_weight
        self.head = nn.Sequential(
            nn.Linear(encoder.tap_dims[tap] * pool * pool, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, proj_dim),
        )
        self.augment = BatchClipAugment(AugmentConfig.from_dict(augment or {}))

    def embed(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (B, 1, T, H, W) -> unit embeddings (B*T, proj_dim), b-major."""
        _, deep = self.encoder.forward_features(clips, bottleneck=True, tap=self.tap)  # (B,T,C,h,w)
        pooled = F.adaptive_avg_pool2d(deep.flatten(0, 1), self.pool).flatten(1)  # (B*T, C*p*p)
        return F.normalize(self.head(pooled), dim=1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        clips = batch["clip"]  # (B, 1, T, H, W)
        t = clips.shape[2]
        part = stack_part(batch["slice"], batch["slices"], self.parts).to(clips.device)
        seed = int(torch.randint(2**62, (1,)))  # from the system's per-micro-batch seed
        generator = torch.Generator().manual_seed(seed)
        views = torch.cat([self.augment(clips, generator), self.augment(clips, generator)])
        z = self.embed(views)  # (2*B*T, D)
        labels = part.repeat_interleave(t).repeat(2)  # (2*B*T,), as z
        loss, positives = supervised_contrastive(z, labels, self.temperature)
        out = {"loss": loss, "positives": positives.detach()}
        if self.instance_weight > 0:
            image = torch.arange(z.shape[0] // 2, device=z.device).repeat(2)  # view i ~ view i+BT
            instance, _ = supervised_contrastive(z, image, self.temperature)
            total = loss + self.instance_weight * instance
            out |= {"loss": total, "part_loss": loss.detach(), "instance_loss": instance.detach()}
        return out
