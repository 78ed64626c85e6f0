"""The backbone: a spatiotemporal ViT, its registry of sizes, and hub folders (save/load).

Names load on first use (PEP 562): `import foundation.names` or reading a card must not pay
for torch, timm and torchvision, which `cmrfm predict` would otherwise import before any work.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "from_pretrained": "foundation.hub",
    "save_pretrained": "foundation.hub",
    "BACKBONES": "foundation.registry",
    "create_backbone": "foundation.registry",
    "register_backbone": "foundation.registry",
    "AXES": "foundation.names",
    "MODALITIES": "foundation.names",
    "CardiacViT": "foundation.vit",
    "axis_index": "foundation.vit",
    "modality_index": "foundation.vit",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'foundation' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
