"""AdamW parameter groups and the warmup + cosine schedule shared by pretraining and fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr: float
) -> list[dict]:
    """Split parameters into decayed weights and undecayed norms, biases and tokens (ndim <= 1)."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("token") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to each group's lr, then cosine decay to min_ratio of it (stepped per step)."""
    total_steps = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
