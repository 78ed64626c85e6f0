"""The modality names every layer shares: sources accept them, shards record them, and the
backbone keeps one row of its modality embedding for each."""

from __future__ import annotations

# Append only: checkpoints index CardiacViT.modality_embed by position in this tuple.
MODALITIES = ("cine", "lge")
