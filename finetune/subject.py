"""Subject-level heads: every slice's clip encoded, slices pooled by gated attention, then EF
regression or diagnosis classification."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from data_shards.record import LV, RV
from data_shards.volumes import ejection_fraction, volumes_ml
from foundation.vit import CardiacViT

ACDC_GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")  # class index order of the diagnosis head
TASKS = ("ef", "cls")
EF_PRIOR = 0.55  # initial EF output (fraction): a typical ejection fraction, not 0


class SliceAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018) over slices with a padding mask.

    x (B, S, D), mask (B, S) bool (True = a real slice) -> pooled (B, D), weights (B, S) that sum
    to 1 over the real slices and are 0 on padding. Invariant to the order of the slices.
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.value = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not mask.any(dim=1).all():
            raise ValueError("every subject needs at least one real slice (mask all False)")
        scores = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x)))[..., 0]
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)  # (B, S)
        # where(): padded rows may hold anything (even NaN) without reaching the sum.
        pooled = torch.where(mask[..., None], x * weights[..., None], 0.0).sum(dim=1)
        return pooled, weights


class SubjectModel(nn.Module):
    """Backbone per slice clip + attention pooling over slices + MLP head.

    stack (B, S, 1, T, H, W) in [0, 1], mask (B, S) bool -> (B, num_outputs). Each real slice's
    clip is encoded by `backbone.forward_features`; its feature is the mean of the normed tokens.
    task "ef": (LVEF, RVEF) in percent: the head predicts the fraction (its last bias starts at
    EF_PRIOR), scaled by 100 on the way out; task "cls": logits over the classes.
    """

    def __init__(
        self,
        backbone: CardiacViT,
        task: str = "ef",
        num_outputs: int = 2,
        hidden: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
        self.backbone, self.task = backbone, task
        dim = backbone.embed_dim
        self.pool = SliceAttentionPool(dim, hidden)
        self.head = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )
        if task == "ef":
            nn.init.constant_(self.head[-1].bias, EF_PRIOR)

    def slice_features(self, stack: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, 1, T, H, W), mask (B, S) -> (B, S, D); padded slices are zeros, never encoded."""
        b, s = mask.shape
        tokens = self.backbone.forward_features(stack[mask])  # (N real, L, D)
        features = tokens.new_zeros(b, s, tokens.shape[-1])
        features[mask] = tokens.mean(dim=1)
        return features

    def forward(
        self, stack: torch.Tensor, mask: torch.Tensor, return_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        mask = mask.bool()
        pooled, weights = self.pool(self.slice_features(stack, mask), mask)
        out = self.head(pooled)  # (B, num_outputs)
        if self.task == "ef":
            out = out * 100.0  # fraction -> percent
        return (out, weights) if return_weights else out


def subject_targets(subject: dict) -> dict:
    """Targets from a subject dict {"label" (S, T, H, W) or None, "meta"}: "ef" (LVEF, RVEF) in
    percent from the ground truth at meta ed / es (NaN where a cavity, a label or ES is missing),
    "group": the index of meta group in ACDC_GROUPS, or -1 when unknown."""
    meta = subject.get("meta", {})
    group = meta.get("group")
    index = ACDC_GROUPS.index(group) if group in ACDC_GROUPS else -1
    ef = (float("nan"), float("nan"))
    label, ed, es = subject.get("label"), meta.get("ed"), meta.get("es")
    if label is not None and ed is not None and es is not None and ed != es:
        spacing = tuple(meta.get("spacing") or subject.get("spacing") or (1.0, 1.0, 1.0))
        ef = tuple(
            ejection_fraction(*volumes_ml(label[:, [ed, es]], spacing, cls)) for cls in (LV, RV)
        )
    return {"ef": np.asarray(ef, np.float32), "group": index}
