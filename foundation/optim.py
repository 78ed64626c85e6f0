"""AdamW parameter groups and the warmup + cosine schedule shared by pretraining and fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable

import torch
from torch import nn

# Parameter names (any dotted component) that AdamW must not decay even when they are matrices:
# learned tokens (MAE mask token, class tokens) and positional codes (learned positions, the
# backbone's modality and axis tables). Decay would pull these codes towards zero.
NO_DECAY_NAMES = ("pos_embed", "modality_embed", "axis_embed")


def decays(name: str, param: nn.Parameter, skip: Collection[str] = ()) -> bool:
    """Whether AdamW decays this parameter: weight matrices and kernels do; norms and biases
    (ndim <= 1), tokens, positions, modality/axis embeddings and names in skip do not."""
    if param.ndim <= 1 or name in skip:
        return False
    parts = name.split(".")
    return not any(p.endswith("token") or p in NO_DECAY_NAMES for p in parts)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full names of the parameters that submodules list in timm's ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names |= {f"{prefix}.{n}" if prefix else n for n in listed()}
    return names


def param_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    weight_decay: float,
    lr: float,
    skip: Collection[str] = (),
) -> list[dict]:
    """Two AdamW groups: decayed weights, and undecayed parameters (see :func:`decays`).

    Frozen parameters (requires_grad False) are left out.
    """
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (decay if decays(name, p, skip) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to each group's lr, then cosine decay to min_ratio of it (stepped per step)."""
    factor = warmup_cosine_factor(warmup_steps, total_steps, min_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_cosine_factor(
    warmup_steps: int, total_steps: int, min_ratio: float = 0.01
) -> Callable[[int], float]:
    """:func:`warmup_cosine`'s multiplier of the lr at each step (0-based), for LambdaLR."""
    total_steps = max(total_steps, warmup_steps + 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
