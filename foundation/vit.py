"""Spatiotemporal ViT backbone: tubelet embedding, factorised sin-cos positions, modality and
axis embeddings, timm blocks."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from foundation.device import to_device
from foundation.names import AXES, MODALITIES

CONTEXT_EMBEDDINGS = ("modality_embed", "axis_embed")  # learned (len, D) tables added to tokens
Index = torch.Tensor | Sequence[str] | None


def _names_to_index(names: Sequence[str], known: tuple[str, ...], what: str) -> torch.Tensor:
    if isinstance(names, str):
        raise TypeError(f"expected a sequence of {what} names, got the single string {names!r}")
    lookup = {name: i for i, name in enumerate(known)}
    unknown = sorted({str(n) for n in names if str(n).lower() not in lookup})
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))}; known: {list(known)}")
    return torch.tensor([lookup[str(n).lower()] for n in names], dtype=torch.long)


def modality_index(names: Sequence[str]) -> torch.Tensor:
    """Modality names (B) -> LongTensor (B,) of rows in MODALITIES; unknown names raise."""
    return _names_to_index(names, MODALITIES, "modality")


def axis_index(names: Sequence[str]) -> torch.Tensor:
    """Axis names (B) ("time" or "depth") -> LongTensor (B,) of rows in AXES."""
    return _names_to_index(names, AXES, "axis")


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sin-cos embedding of 1D positions (N,) -> (N, dim); dim must be even."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Factorised sin-cos positions for a (t, h, w) token grid -> (t*h*w, dim), t-major order.

    A quarter of the channels encode time, the rest height and width equally; computed for any
    grid so one model runs on any number of frames and any image size. A new tensor each call
    from a cached NumPy table: a cached tensor made while torch.export traces would be a fake
    one, and would break every later call of the process.
    """
    return torch.tensor(_sincos_3d_table(dim, tuple(grid)))


@lru_cache(maxsize=32)
def _sincos_3d_table(dim: int, grid: tuple[int, int, int]) -> np.ndarray:
    """sincos_3d's table, float32 (t*h*w, dim), in NumPy (float64 angles, as sincos_1d)."""
    t, h, w = grid
    d_t = 2 * (dim // 8)
    d_h = 2 * ((dim - d_t) // 4)
    d_w = dim - d_t - d_h
    if min(d_t, d_h, d_w) <= 0 or d_w % 2:
        raise ValueError(f"embed_dim={dim} too small or odd for factorised 3D sin-cos positions")
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")

    def one_axis(d: int, positions: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2))
        angles = positions.astype(np.float64)[:, None] * omega[None]  # (L, d/2)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    parts = [one_axis(d_t, tt.ravel()), one_axis(d_h, hh.ravel()), one_axis(d_w, ww.ravel())]
    table = np.concatenate(parts, axis=1).astype(np.float32)  # (L, dim)
    table.flags.writeable = False  # shared by every call
    return table


def _fits(n: int, step: int) -> str:
    """The valid sizes nearest n for a stride of step, e.g. '32 or 48'."""
    below, above = (n // step) * step, (n // step + 1) * step
    if below == n:
        return str(n)
    return f"{above}" if below == 0 else f"{below} or {above}"


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


def tubelet_tokens(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """(B, C, T, H, W) -> tokens (B, L, D), t-major: what ``conv(x).flatten(2).transpose(1, 2)``
    gives when the kernel is the stride, as one matmul over :func:`patchify`'s tubelets. The same
    numbers, but a GEMM: cuDNN's 3-D convolution cost ViT-B MAE ~3.6 ms a step on an H200, and
    the CPU's is ~4x slower than this (benchmarks/RESULTS.md)."""
    tubelet, patch, _ = conv.kernel_size
    # (D, C, tubelet, p, p) -> (D, tubelet*p*p*C), patchify's order within a tubelet
    weight = conv.weight.permute(0, 2, 3, 4, 1).reshape(conv.out_channels, -1)
    return F.linear(patchify(x, tubelet, patch), weight, conv.bias)


class CardiacViT(nn.Module):
    """ViT over cine clips (B, C, T, H, W) cut into tubelets of (tubelet, patch, patch).

    Tokens are ordered t-major (time, then rows, then columns); no class token. Every token gets
    the fixed sin-cos position of its grid cell plus two learned rows: its clip's modality
    (MODALITIES) and whether the third axis is time or slice depth (AXES). Public methods follow
    timm: `forward_features`, `forward_intermediates`, `no_weight_decay`,
    `set_grad_checkpointing`, `group_matcher`.

    Args:
        compile: torch.compile every block (`compile_blocks`); a runtime switch, not part of the
            architecture, so it is left out of `model_args`.
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
        compile: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by num_heads={num_heads}")
        if patch_size < 1 or tubelet < 1:
            raise ValueError(f"patch_size={patch_size} and tubelet={tubelet} must be >= 1")
        # Everything needed to rebuild this architecture (saved in hub config.json).
        self.model_args: dict[str, Any] = {
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "patch_size": patch_size,
            "tubelet": tubelet,
            "in_chans": in_chans,
            "qkv_bias": qkv_bias,
            "drop_path_rate": drop_path_rate,
        }
        self.architecture: str | None = None  # the registry name, set by registered entry points
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.num_features = embed_dim  # timm's name for what heads take
        self.patch_size, self.tubelet, self.in_chans = patch_size, tubelet, in_chans
        kernel = (tubelet, patch_size, patch_size)
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        # Zero rows: a new model starts as one without these embeddings, and a checkpoint from
        # before they existed loads with zeros and computes exactly what it computed then.
        self.modality_embed = nn.Parameter(torch.zeros(len(MODALITIES), embed_dim))
        self.axis_embed = nn.Parameter(torch.zeros(len(AXES), embed_dim))
        # Plain Python so the model can be built on the meta device (parameter counts).
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=dpr[i])
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.grad_checkpointing = False
        self.apply(_init_weights)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if compile:
            self.compile_blocks()

    def grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid (t, h, w) of an input of shape (B, C, T, H, W); raises on indivisible sizes.

        Indivisible sizes are refused rather than padded: padding adds empty tokens that every
        real token attends to, and a crop size that is no multiple of the patch is usually a
        configuration mistake.
        """
        _, c, t, h, w = shape
        if c != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channel(s), got {c}")
        if t % self.tubelet or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"input (T={t}, H={h}, W={w}) must be divisible by tubelet={self.tubelet} (T) and "
                f"patch_size={self.patch_size} (H, W): crop or pad it, e.g. to "
                f"T={_fits(t, self.tubelet)}, H={_fits(h, self.patch_size)}, "
                f"W={_fits(w, self.patch_size)}"
            )
        return t // self.tubelet, h // self.patch_size, w // self.patch_size

    def pos_embed(self, grid: tuple[int, int, int], like: torch.Tensor) -> torch.Tensor:
        """Positions for a token grid -> (1, t*h*w, D) on like's device and dtype."""
        return to_device(sincos_3d(self.embed_dim, grid), like.device).to(like.dtype)[None]

    def context_embed(self, batch: int, modality: Index = None, axis: Index = None) -> torch.Tensor:
        """Modality + axis rows for each clip -> (B or 1, 1, D); None means cine / time (row 0).

        modality, axis: LongTensor (B,) of rows, or B names (see modality_index, axis_index).
        """
        rows = []
        for table, index, to_index, what in (
            (self.modality_embed, modality, modality_index, "modality"),
            (self.axis_embed, axis, axis_index, "axis"),
        ):
            if index is None:
                rows.append(table[:1])  # (1, D), broadcast over the batch
                continue
            if not isinstance(index, torch.Tensor):
                index = to_index(index)
            if index.shape != (batch,) or index.dtype != torch.long:
                raise ValueError(
                    f"{what} must be a LongTensor of shape ({batch},), got {index.dtype} "
                    f"{tuple(index.shape)}"
                )
            rows.append(table[to_device(index, table.device)])  # (B, D)
        return (rows[0] + rows[1])[:, None]

    def embed(self, x: torch.Tensor, modality: Index = None, axis: Index = None) -> torch.Tensor:
        """(B, C, T, H, W) -> tokens with positions, modality and axis (B, L, D), L = t*h*w."""
        grid = self.grid(x.shape)
        tokens = tubelet_tokens(x, self.patch_embed)  # (B, L, D)
        context = self.context_embed(x.shape[0], modality, axis).to(tokens.dtype)
        return tokens + self.pos_embed(grid, tokens) + context

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def _visible(self, tokens: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if keep is None:
            return tokens
        return torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))

    def forward_features(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        modality: Index = None,
        axis: Index = None,
    ) -> torch.Tensor:
        """Encode (B, C, T, H, W); with keep (B, L_keep) token indices, only those tokens.

        modality, axis: (B,) rows of MODALITIES / AXES, or None for cine / time.
        Returns normed tokens (B, L or L_keep, D).
        """
        tokens = self._visible(self.embed(x, modality, axis), keep)  # (B, L or L_keep, D)
        for block in self.blocks:
            tokens = self._run_block(block, tokens)
        return self.norm(tokens)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Sequence[int],
        keep: torch.Tensor | None = None,
        norm: bool = False,
        modality: Index = None,
        axis: Index = None,
    ) -> list[torch.Tensor]:
        """Tokens (B, L, D) after each block in indices (0-based; negatives count from the end)."""
        wanted = sorted({i % self.depth for i in indices})
        if not wanted:
            raise ValueError("indices must name at least one block")
        tokens = self._visible(self.embed(x, modality, axis), keep)
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

    def forward(self, x: torch.Tensor, modality: Index = None, axis: Index = None) -> torch.Tensor:
        return self.forward_features(x, modality=modality, axis=axis)

    def compile_blocks(self, **options: Any) -> CardiacViT:
        """torch.compile each transformer block in place (options go to torch.compile).

        Per block rather than the whole model: the token count changes with the grid and the
        mask, and small per-block graphs recompile cheaply; parameter names (and so checkpoints)
        stay the same, and gradient checkpointing still wraps each block.
        """
        for block in self.blocks:
            block.compile(**options)
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any):
        # Checkpoints from before the modality/axis embeddings lack them: zeros reproduce the
        # model they came from exactly; every other key is still loaded strictly.
        missing = [prefix + name for name in CONTEXT_EMBEDDINGS if prefix + name not in state_dict]
        if missing:
            warnings.warn(
                f"{' and '.join(missing)} not in the state dict (a checkpoint from before "
                "modality/axis embeddings): loading zeros, which computes what it computed then",
                stacklevel=2,
            )
        for key in missing:
            state_dict[key] = torch.zeros_like(getattr(self, key[len(prefix) :]), device="cpu")
        # Tables from before a modality or axis was appended get zero rows for the new ones.
        for name in CONTEXT_EMBEDDINGS:
            theirs, ours = state_dict[prefix + name], getattr(self, name)
            if theirs.ndim != 2 or theirs.shape[1] != ours.shape[1]:
                continue  # a real mismatch: the strict load reports it
            if theirs.shape[0] < ours.shape[0]:
                extra = theirs.new_zeros(ours.shape[0] - theirs.shape[0], ours.shape[1])
                state_dict[prefix + name] = torch.cat([theirs, extra])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        # Positions are fixed buffers; norms and biases are excluded by ndim; the modality and
        # axis tables are positional codes, pulled towards zero by decay.
        return set(CONTEXT_EMBEDDINGS)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter-name patterns for layer-wise LR decay, as in timm."""
        return {"stem": r"^patch_embed|^modality_embed|^axis_embed", "blocks": r"^blocks\.(\d+)"}


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
