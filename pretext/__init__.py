"""Self-supervised objectives (one per file) and the Lightning systems that train them.

Every objective is an ``nn.Module`` built as ``cls(encoder, **kwargs)`` whose
``forward(batch: dict) -> dict`` returns {"loss": scalar, <named parts>: scalars}.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pretext.combined import MAEContrastive
from pretext.contrastive import Contrastive
from pretext.local import LocalContrastive
from pretext.mae import MAE
from pretext.positional import PositionalContrastive

OBJECTIVES: dict[str, type[nn.Module]] = {
    "mae": MAE,
    "contrastive": Contrastive,
    "mae_contrastive": MAEContrastive,
    "positional": PositionalContrastive,  # for a dense backbone (cmr_unet_*)
    "local": LocalContrastive,  # its decoder, after "positional" (pretrained=...)
}

__all__ = [
    "MAE",
    "OBJECTIVES",
    "Contrastive",
    "LocalContrastive",
    "MAEContrastive",
    "PositionalContrastive",
    "create_objective",
]


def create_objective(name: str, encoder: nn.Module, **kwargs: Any) -> nn.Module:
    """Build a registered objective around encoder; kwargs are the objective's own arguments."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; registered: {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](encoder, **kwargs)
