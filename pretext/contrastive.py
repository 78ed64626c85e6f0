"""Contrastive objective: symmetric InfoNCE between two views of each subject, with a projection
head, negatives gathered from every rank with gradients flowing back to the rank that made them.

Every rank computes the same loss over the global batch (N = world x B pairs, an N x N similarity
matrix: tiny next to the encoder). Backward through the gather sums every rank's gradient into
the embeddings it came from, so each rank's embedding gradient is world x the global loss's
gradient; DDP and DeepSpeed average gradients over ranks, which cancels that factor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from foundation.device import to_device
from foundation.vit import CardiacViT, modality_index


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (B, ...) from every rank in rank order -> (world*B, ...); backward sends each
    rank's gradient to the rank that made the rows. Single process: x itself.

    Every rank must pass the same shape (DDP batches are equal-sized; drop the last partial one).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # differentiable, unlike dist's

    return torch.cat(all_gather(x), dim=0)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of paired embeddings z1, z2 (N, E): row i of z1 and of z2 are positives,
    every other row of the other view a negative. Cosine similarity / temperature; the mean of the
    view-1 -> view-2 and view-2 -> view-1 cross-entropies."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be (N, E)")
    # float32: bf16 similarities / a small temperature lose the differences that matter.
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    logits = z1 @ z2.T / temperature  # (N, N)
    labels = torch.arange(z1.shape[0], device=z1.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ProjectionHead(nn.Module):
    """MLP (B, D) -> (B, out_dim): Linear, LayerNorm, GELU, Linear.

    LayerNorm rather than SimCLR's BatchNorm: it does not depend on the batch, so small per-rank
    batches (and a batch of one) behave the same as large ones.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def modality_tensor(names: Sequence[str] | None, device: torch.device) -> torch.Tensor | None:
    """Modality names of a batch -> LongTensor (B,) on device; None stays None (the encoder's
    default, cine)."""
    return None if names is None else to_device(modality_index(list(names)), device)


def second_modality(batch: Mapping[str, Any]) -> Sequence[str] | None:
    """Modality names of the second view: "modality2", else the first view's "modality"."""
    names = batch.get("modality2")
    return batch.get("modality") if names is None else names


class Contrastive(nn.Module):
    """InfoNCE between the mean-pooled encoder features of two views of each subject.

    Args:
        encoder: the backbone; kept as ``self.encoder`` (checkpoints: ``<prefix>.encoder.*``).
        proj_hidden, proj_dim: the projection head's hidden and output widths.
        temperature: softmax temperature of the cosine similarities.
    """

    def __init__(
        self,
        encoder: CardiacViT,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        self.encoder, self.temperature = encoder, temperature
        self.head = ProjectionHead(encoder.embed_dim, proj_hidden, proj_dim)

    def embed(self, x: torch.Tensor, modality: Sequence[str] | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) -> projected embedding (B, proj_dim) of the mean of all tokens."""
        tokens = self.encoder.forward_features(x, modality=modality_tensor(modality, x.device))
        return self.head(tokens.mean(dim=1))  # (B, proj_dim)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """batch {"clip", "clip2": (B, 1, T, H, W), "modality", "modality2": B names (optional)}
        -> {"loss", "contrastive"}, over the batches of every rank."""
        z1 = self.embed(batch["clip"], batch.get("modality"))
        z2 = self.embed(batch["clip2"], second_modality(batch))
        loss = info_nce(gather_with_grad(z1), gather_with_grad(z2), self.temperature)
        return {"loss": loss, "contrastive": loss}
