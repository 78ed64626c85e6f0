"""Spatiotemporal ViT backbone: tubelet embedding, factorised sin-cos positions, timm blocks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1D positions (N,) -> (N, dim); dim must be even."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


@lru_cache(maxsize=32)
def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Factorised sin-cos positions for a (t, h, w) token grid -> (t*h*w, dim), t-major order.

    A quarter of the channels encode time, the rest height and width equally; computed for any
    grid so one model runs on any number of frames and any image size.
    """
    t, h, w = grid
    d_t = 2 * (dim // 8)
    d_h = 2 * ((dim - d_t) // 4)
    d_w = dim - d_t - d_h
    if min(d_t, d_h, d_w) <= 0 or d_w % 2:
        raise ValueError(f"embed_dim={dim} too small or odd for factorised 3D sin-cos positions")
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    parts = [
        sincos_1d(d_t, tt.flatten()),
        sincos_1d(d_h, hh.flatten()),
        sincos_1d(d_w, ww.flatten()),
    ]
    return torch.cat(parts, dim=1)  # (L, dim)


class CardiacViT(nn.Module):
    """ViT over cine clips (B, C, T, H, W) cut into tubelets of (tubelet, patch, patch).

    Tokens are ordered t-major (time, then rows, then columns); no class token. Public methods
    follow timm: `forward_features`, `forward_intermediates`, `no_weight_decay`,
    `set_grad_checkpointing`, `group_matcher`.
    """

    def __init__(
        self,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        tubelet: int = 2,
        in_chans: int = 1,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if patch_size < 1 or tubelet < 1:
            raise ValueError(f"patch_size={patch_size} and tubelet={tubelet} must be >= 1")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_size, self.tubelet, self.in_chans = patch_size, tubelet, in_chans
        kernel = (tubelet, patch_size, patch_size)
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.grad_checkpointing = False
        self.apply(_init_weights)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid (t, h, w) of an input of shape (B, C, T, H, W); raises on indivisible sizes."""
        _, c, t, h, w = shape
        if c != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channel(s), got {c}")
        if t % self.tubelet or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"input (T={t}, H={h}, W={w}) must be divisible by tubelet={self.tubelet} and "
                f"patch_size={self.patch_size}"
            )
        return t // self.tubelet, h // self.patch_size, w // self.patch_size

    def pos_embed(self, grid: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
        """Positions for a token grid -> (1, t*h*w, D) on like's device and dtype."""
        return sincos_3d(self.embed_dim, grid).to(like.device, like.dtype)[None]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> tokens with positions (B, L, D), L = t*h*w."""
        grid = self.grid(x.shape)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, L, D)
        return tokens + self.pos_embed(grid, tokens)

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode (B, C, T, H, W); with keep (B, L_keep) token indices, only those tokens.

        Returns normed tokens (B, L or L_keep, D).
        """
        tokens = self.embed(x)  # (B, L, D)
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        for block in self.blocks:
            tokens = self._run_block(block, tokens)
        return self.norm(tokens)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Sequence[int],
        keep: torch.Tensor | None = None,
        norm: bool = False,
    ) -> list[torch.Tensor]:
        """Tokens (B, L, D) after each block in indices (0-based; negatives count from the end)."""
        wanted = sorted({i % self.depth for i in indices})
        if not wanted:
            raise ValueError("indices must name at least one block")
        tokens = self.embed(x)
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        taken: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self.blocks[: wanted[-1] + 1]):
            tokens = self._run_block(block, tokens)
            if i in wanted:
                taken[i] = self.norm(tokens) if norm else tokens
        return [taken[i % self.depth] for i in indices]

    def default_taps(self, n: int) -> list[int]:
        """n block indices evenly spread over depth, the last one the final block."""
        if not 1 <= n <= self.depth:
            raise ValueError(f"n={n} taps must be between 1 and depth={self.depth}")
        return [round(self.depth * (k + 1) / n) - 1 for k in range(n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # positions are fixed buffers; norms and biases are excluded by ndim

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter-name patterns for layer-wise LR decay, as in timm."""
        return {"stem": r"^patch_embed", "blocks": r"^blocks\.(\d+)"}


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def n_upsample(patch_size: int) -> int:
    """log2(patch_size) for decoders that double resolution per stage; patch must be 2^k."""
    k = round(math.log2(patch_size))
    if 2**k != patch_size:
        raise ValueError(f"patch_size={patch_size} must be a power of two for this decoder")
    return k
