"""Masked autoencoder (VideoMAE-style) on the spatiotemporal ViT: tube or random space-time masks,
the mask ratio set per modality.

A batch may mix modalities whose ratios differ, so its samples keep different numbers of tokens.
Each group of samples sharing a ratio goes through the encoder and decoder as its own sub-batch
(one encoder call per group; a single-ratio batch is one call), and the loss is the mean squared
error over every masked patch of the whole batch: the groups' losses weighted by their masked-token
counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.models.vision_transformer import Block
from torch import nn

from foundation.device import to_device
from foundation.vit import (
    MODALITIES,
    CardiacViT,
    modality_index,
    patchify,
    sincos_3d,
    unpatchify,
)

MASK_TYPES = ("tube", "random")


def _n_masked(ratio: float, n_tokens: int) -> int:
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio={ratio} must be in [0, 1)")
    return min(round(ratio * n_tokens), n_tokens - 1)  # keep at least one visible token


def _noise(
    batch: int, n: int, generator: torch.Generator | None, device: torch.device | None
) -> torch.Tensor:
    """Uniform noise (B, n) on device, drawn where the generator lives (CPU for a CPU one)."""
    if generator is None:
        return torch.rand(batch, n, device=device)
    noise = torch.rand(batch, n, generator=generator, device=generator.device)
    return noise if device is None else to_device(noise, device)


def _draw_mask(
    batch: int, n: int, ratio: float, generator: torch.Generator | None, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """round(ratio*n) of n positions masked per sample, uniformly (at most n - 1): mask (B, n)
    bool, True = masked, and keep (B, n - n_masked) ascending indices of the visible positions."""
    n_masked = _n_masked(ratio, n)
    order = _noise(batch, n, generator, device).argsort(dim=1)  # (B, n)
    mask = torch.zeros(batch, n, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order[:, :n_masked], True)
    # Sorting instead of nonzero(): no device synchronisation on a GPU.
    return mask, order[:, n_masked:].sort(dim=1).values


def token_mask(
    batch: int,
    grid: tuple[int, int, int],
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    mask_type: str = "tube",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random mask per sample over the (t, h, w) token grid, L = t*h*w in t-major order.

    "tube": one spatial mask repeated over every time step, round(ratio*h*w) positions masked
    per step (at most h*w - 1, so every time step keeps a visible patch). "random": round(ratio*L)
    of the L space-time tokens, drawn regardless of time (at most L - 1).

    Returns mask (B, L) bool, True = masked, and keep (B, L_keep) sorted indices of visible tokens.
    """
    t, h, w = grid
    if mask_type == "random":
        return _draw_mask(batch, t * h * w, ratio, generator, device)
    if mask_type != "tube":
        raise ValueError(f"mask_type={mask_type!r} must be one of {MASK_TYPES}")
    n_space = h * w
    space_mask, space_keep = _draw_mask(batch, n_space, ratio, generator, device)
    mask = space_mask.repeat(1, t)  # (B, t*h*w): same spatial pattern at every t
    steps = torch.arange(t, device=space_keep.device)[:, None] * n_space  # (t, 1)
    keep = (steps[None] + space_keep[:, None]).flatten(1)  # (B, t*(h*w - n_masked)), ascending
    return mask, keep


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
    """Encoder (a CardiacViT) on visible tokens + light transformer decoder predicting pixels.

    Args:
        encoder: the backbone; kept as ``self.encoder`` (checkpoints: ``<prefix>.encoder.*``).
        mask_ratio: fraction of tokens masked, one for all, or per modality
            (``{"cine": 0.9, "lge": 0.75}``: every modality of a batch needs an entry).
        decoder_dim, decoder_depth, decoder_heads: the light decoder.
        norm_pix_loss: targets normalised per patch (mean 0, variance 1).
        mask_type: "tube" (one spatial mask repeated over time) or "random" (space-time).
    """

    def __init__(
        self,
        encoder: CardiacViT,
        mask_ratio: float | dict[str, float] = 0.9,
        decoder_dim: int = 128,
        decoder_depth: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        mask_type: str = "tube",
    ) -> None:
        super().__init__()
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type={mask_type!r} must be one of {MASK_TYPES}")
        ratios = mask_ratio.values() if isinstance(mask_ratio, Mapping) else [mask_ratio]
        for ratio in ratios:
            _n_masked(ratio, 2)  # a ratio outside [0, 1) fails now, not at the first batch
        if isinstance(mask_ratio, Mapping):
            modality_index(list(mask_ratio))  # unknown modality names fail now
            mask_ratio = {str(k).lower(): float(v) for k, v in mask_ratio.items()}
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        self.mask_type = mask_type
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

    def ratio_of(self, modality: str | None) -> float:
        """Mask ratio of one modality; None (a batch without "modality") counts as cine, as in
        the encoder."""
        if not isinstance(self.mask_ratio, dict):
            return self.mask_ratio
        name = MODALITIES[0] if modality is None else str(modality).lower()  # as modality_index
        if name not in self.mask_ratio:
            raise ValueError(
                f"mask_ratio has no entry for modality {name!r} (it has {sorted(self.mask_ratio)});"
                " add one to the objective's mask_ratio"
            )
        return self.mask_ratio[name]

    def random_masking(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        ratio: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask for input (B, C, T, H, W): mask (B, L) True=masked, keep (B, L_keep) ascending.

        ratio defaults to the cine (or only) ratio.
        """
        ratio = self.ratio_of(None) if ratio is None else ratio
        grid = self.encoder.grid(x.shape)
        return token_mask(x.shape[0], grid, ratio, generator, x.device, self.mask_type)

    def forward_encoder(
        self, x: torch.Tensor, keep: torch.Tensor, modality: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Visible tokens only: x (B, C, T, H, W), keep (B, L_keep), modality (B,) -> (B, L_keep, D)."""
        return self.encoder.forward_features(x, keep=keep, modality=modality)

    def forward_decoder(
        self, latent: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int, int]
    ) -> torch.Tensor:
        """Visible latents (B, L_keep, D) -> pixel predictions for every token (B, L, P)."""
        b, n_tokens = latent.shape[0], grid[0] * grid[1] * grid[2]
        vis = self.decoder_embed(latent)  # (B, L_keep, Dd)
        # vis.dtype: under autocast the latents are bf16 while the mask token stays float32.
        full = self.mask_token.to(vis.dtype).expand(b, n_tokens, -1).clone()  # (B, L, Dd)
        full.scatter_(1, keep[..., None].expand(-1, -1, vis.shape[-1]), vis)
        full = full + to_device(sincos_3d(self.decoder_dim, grid), full.device).to(full.dtype)[None]
        for block in self.decoder_blocks:
            full = block(full)
        return self.decoder_pred(self.decoder_norm(full))  # (B, L, P)

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error of pred (B, L, P) on the masked patches (mask (B, L)) of x."""
        target = patchify(x, self.encoder.tubelet, self.encoder.patch_size)  # (B, L, P)
        return masked_patch_loss(pred, target, mask, self.norm_pix_loss)

    def forward_masked(
        self,
        x: torch.Tensor,
        modality: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mask, encode the visible tokens, decode every token.

        x (B, C, T, H, W), modality B names or None -> pred (B, L, P), mask (B, L) True=masked,
        pooled (B, D): the mean of each sample's visible-token features. One encoder call per
        group of samples sharing a mask ratio, groups in order of first appearance.
        """
        b, grid = x.shape[0], self.encoder.grid(x.shape)
        names = [None] * b if modality is None else list(modality)
        if len(names) != b:
            raise ValueError(f"batch has {b} clips but {len(names)} modality names")
        index = None if modality is None else to_device(modality_index(names), x.device)  # (B,)
        ratios = [self.ratio_of(name) for name in names]
        groups = {ratio: [i for i, r in enumerate(ratios) if r == ratio] for ratio in ratios}
        outputs = []
        for ratio, rows in groups.items():
            sub = None if len(groups) == 1 else torch.tensor(rows, device=x.device)
            xs = x if sub is None else x[sub]
            mask, keep = self.random_masking(xs, generator, ratio)
            mods = index if index is None or sub is None else index[sub]
            latent = self.forward_encoder(xs, keep, mods)  # (b_g, L_keep_g, D)
            pred = self.forward_decoder(latent, keep, grid)  # (b_g, L, P)
            outputs.append((pred, mask, latent.mean(dim=1)))
        if len(outputs) == 1:
            return outputs[0]
        order = torch.tensor([i for rows in groups.values() for i in rows], device=x.device)
        back = order.argsort()  # batch position -> row of the concatenated groups
        return tuple(torch.cat(parts)[back] for parts in zip(*outputs))  # type: ignore[return-value]

    def loss(
        self,
        x: torch.Tensor,
        modality: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, T, H, W) -> (loss, pred (B, L, P), mask (B, L) True=masked).

        The loss is the mean over every masked patch of the batch, whatever its group.
        """
        pred, mask, _ = self.forward_masked(x, modality, generator)
        return self.forward_loss(x, pred, mask), pred, mask

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict:
        """batch {"clip": (B, 1, T, H, W), "modality": B names (optional)} -> {"loss", "mae"}."""
        if not isinstance(batch, Mapping):
            raise TypeError(
                "MAE.forward takes a batch dict {'clip': (B, C, T, H, W), 'modality': [...]};"
                " for (loss, pred, mask) from a tensor call MAE.loss(clip)"
            )
        loss, _, _ = self.loss(batch["clip"], batch.get("modality"), generator)
        return {"loss": loss, "mae": loss}

    @torch.no_grad()
    def reconstruct(
        self,
        x: torch.Tensor,
        modality: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For pictures: x (B, C, T, H, W) -> (reconstruction (B, C, T, H, W), pixel mask
        (B, C, T, H, W) bool, True where the patch was masked)."""
        _, pred, mask = self.loss(x, modality, generator)
        enc = self.encoder
        pixels = mask[..., None].expand(*mask.shape, pred.shape[-1])  # (B, L, P)
        grid = enc.grid(x.shape)
        pixel_mask = unpatchify(pixels, grid, enc.tubelet, enc.patch_size, enc.in_chans)
        return self.fill_masked(x, pred, mask), pixel_mask

    def fill_masked(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
