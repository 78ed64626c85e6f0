"""Masked autoencoder with tube masking (VideoMAE-style) on the spatiotemporal ViT."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from foundation.vit import CardiacViT, sincos_3d


def tube_mask(
    batch: int, grid: tuple[int, int, int], ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random spatial mask per sample, repeated over every time step.

    Returns mask (B, L) bool, True = masked, and keep (B, L_keep) sorted indices of visible tokens,
    with L = t*h*w in t-major order and round(ratio*h*w) masked positions per time step (at most
    h*w - 1, so every time step keeps a visible patch).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio={ratio} must be in [0, 1)")
    t, h, w = grid
    n_space = h * w
    n_masked = round(ratio * n_space)
    if n_masked == n_space:
        n_masked -= 1  # keep at least one visible patch per time step
    noise = torch.rand(batch, n_space, generator=generator)  # (B, h*w)
    order = noise.argsort(dim=1)
    space_mask = torch.zeros(batch, n_space, dtype=torch.bool)
    space_mask.scatter_(1, order[:, :n_masked], True)  # (B, h*w)
    mask = space_mask.repeat(1, t)  # (B, t*h*w): same spatial pattern at every t
    keep = (~mask).nonzero()[:, 1].view(batch, -1)  # (B, L_keep), ascending
    return mask, keep


def patchify(x: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, L, tubelet*patch*patch*C) in the backbone's t-major token order."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, t, h, w, tubelet, p, p, C)
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), -1)


def unpatchify(
    tokens: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int, chans: int = 1
) -> torch.Tensor:
    """Inverse of patchify: (B, L, tubelet*p*p*C) -> (B, C, T, H, W)."""
    t, h, w = grid
    b = tokens.shape[0]
    x = tokens.reshape(b, t, h, w, tubelet, patch, patch, chans)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C, t, tubelet, h, p, w, p)
    return x.reshape(b, chans, t * tubelet, h * patch, w * patch)


def masked_patch_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """Mean squared error over masked patches only; pred, target (B, L, P), mask (B, L) True=masked.

    With norm_pix, each target patch is normalised by its own mean and variance (MAE).
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # (B, L)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum().clamp(min=1.0)


class MAE(nn.Module):
    """Encoder (a CardiacViT) on visible tokens + light transformer decoder predicting pixels."""

    def __init__(
        self,
        encoder: CardiacViT,
        mask_ratio: float = 0.9,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        self.decoder_dim = decoder_dim
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        patch_dim = encoder.tubelet * encoder.patch_size**2 * encoder.in_chans
        self.decoder_pred = nn.Linear(decoder_dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)

    def random_masking(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tube mask for input (B, C, T, H, W): mask (B, L) True=masked, keep (B, L_keep)."""
        mask, keep = tube_mask(x.shape[0], self.encoder.grid(x.shape), self.mask_ratio, generator)
        return mask.to(x.device), keep.to(x.device)

    def forward_encoder(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x, keep=keep)  # (B, L_keep, D)

    def forward_decoder(
        self, latent: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int, int]
    ) -> torch.Tensor:
        """Visible latents (B, L_keep, D) -> pixel predictions for every token (B, L, P)."""
        b, n_tokens = latent.shape[0], grid[0] * grid[1] * grid[2]
        vis = self.decoder_embed(latent)  # (B, L_keep, Dd)
        full = self.mask_token.expand(b, n_tokens, -1).clone()  # (B, L, Dd)
        full.scatter_(1, keep[..., None].expand(-1, -1, vis.shape[-1]), vis)
        full = full + sincos_3d(self.decoder_dim, grid).to(full.device, full.dtype)[None]
        for block in self.decoder_blocks:
            full = block(full)
        return self.decoder_pred(self.decoder_norm(full))  # (B, L, P)

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = patchify(x, self.encoder.tubelet, self.encoder.patch_size)  # (B, L, P)
        return masked_patch_loss(pred, target, mask, self.norm_pix_loss)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, T, H, W) -> (loss, pred (B, L, P), mask (B, L))."""
        mask, keep = self.random_masking(x, generator)
        latent = self.forward_encoder(x, keep)
        pred = self.forward_decoder(latent, keep, self.encoder.grid(x.shape))
        return self.forward_loss(x, pred, mask), pred, mask

    def reconstruct(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pixel reconstruction (B, C, T, H, W): visible patches from x, masked ones predicted.

        Predictions are in per-patch normalised units when norm_pix_loss; they are mapped back with
        each patch's own statistics, which is what MAE papers show.
        """
        enc = self.encoder
        target = patchify(x, enc.tubelet, enc.patch_size)
        if self.norm_pix_loss:
            mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
            pred = pred * std + mean
        merged = torch.where(mask[..., None], pred, target)
        return unpatchify(merged, enc.grid(x.shape), enc.tubelet, enc.patch_size, enc.in_chans)
