"""MAE and InfoNCE in one pass of the encoder over each view's visible tokens.

Each view is masked and encoded once; the MAE decoder reconstructs that view's masked patches,
and the mean of its visible-token features goes through the projection head into InfoNCE
against the other view. total = w_mae * mae + w_con * contrastive.
"""

from __future__ import annotations

from typing import Any

import torch

from foundation.vit import CardiacViT
from pretext.contrastive import ProjectionHead, gather_with_grad, info_nce, second_modality
from pretext.mae import MAE


class MAEContrastive(MAE):
    """Masked reconstruction of both views plus InfoNCE between them, one encoder pass per view
    (per mask-ratio group of a mixed-modality batch, as in :class:`MAE`).

    Args:
        encoder: the backbone, as :class:`~pretext.mae.MAE`'s.
        proj_hidden, proj_dim, temperature: as :class:`~pretext.contrastive.Contrastive`.
        w_mae, w_con: weights of the two losses in the total.
        mae_kwargs: the other arguments of :class:`~pretext.mae.MAE` (mask_ratio, decoder_dim,
            decoder_depth, decoder_heads, norm_pix_loss, mask_type), under its names so that MAE
            weights load.
    """

    def __init__(
        self,
        encoder: CardiacViT,
        *,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        temperature: float = 0.1,
        w_mae: float = 1.0,
        w_con: float = 1.0,
        **mae_kwargs: Any,
    ) -> None:
        super().__init__(encoder, **mae_kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        if w_mae < 0 or w_con < 0 or w_mae + w_con == 0:
            raise ValueError(f"w_mae={w_mae} and w_con={w_con} must be >= 0, not both 0")
        self.head = ProjectionHead(encoder.embed_dim, proj_hidden, proj_dim)
        self.temperature, self.w_mae, self.w_con = temperature, w_mae, w_con

    def forward(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """batch {"clip", "clip2": (B, 1, T, H, W), "modality", "modality2": B names (optional)}
        -> {"loss", "mae", "contrastive"}; masks of view 1 are drawn before those of view 2."""
        x1, x2 = batch["clip"], batch["clip2"]
        pred1, mask1, pooled1 = self.forward_masked(x1, batch.get("modality"), generator)
        pred2, mask2, pooled2 = self.forward_masked(x2, second_modality(batch), generator)
        # Mean over the masked patches of both views (each view's loss weighted by its count).
        n1, n2 = mask1.sum(), mask2.sum()
        mae = self.forward_loss(x1, pred1, mask1) * n1 + self.forward_loss(x2, pred2, mask2) * n2
        mae = mae / (n1 + n2).clamp(min=1)
        z1 = gather_with_grad(self.head(pooled1))  # (world*B, proj_dim)
        z2 = gather_with_grad(self.head(pooled2))
        con = info_nce(z1, z2, self.temperature)
        return {"loss": self.w_mae * mae + self.w_con * con, "mae": mae, "contrastive": con}
