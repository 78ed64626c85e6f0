"""`cmrfm bench pretrain`'s model and batch as one typed dataclass, and the presets that replace
them. Torch-free: the command line builds its flags from these fields without loading torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal


@dataclass(frozen=True)
class PretrainBenchOptions:
    """The model and the synthetic batch of one benchmark: clips (batch, 1, frames, size, size)
    through ``backbone`` (patch, tubelet) and the MAE decoder, ``steps`` timed after ``warmup``."""

    backbone: str = "cmr_vit_test"
    frames: int = 4
    size: int = 32
    patch: int = 8
    tubelet: int = 2
    batch: int = 8
    steps: int = 20
    warmup: int = 3
    mask: float = 0.9
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    decoder_dim: int = 32
    decoder_depth: int = 1
    decoder_heads: int = 2


PRESETS: dict[str, PretrainBenchOptions] = {
    "cpu": PretrainBenchOptions(),
    # ViT-B on 16 x 128 x 128 clips with the decoder of configs/pretrain_mae_deepspeed2.yaml;
    # more warm-up: compilation and the cuDNN/cuBLAS autotuning settle in the first steps.
    "h100": PretrainBenchOptions(
        backbone="cmr_vit_base",
        frames=16,
        size=128,
        patch=16,
        tubelet=2,
        batch=64,
        steps=30,
        warmup=10,
        mask=0.9,
        precision="bf16-mixed",
        decoder_dim=384,
        decoder_depth=4,
        decoder_heads=6,
    ),
}
DEFAULTS: dict[str, Any] = asdict(PretrainBenchOptions())


def resolve_options(preset: str | None = None, **given: Any) -> dict[str, Any]:
    """The preset's options (default "cpu"), then every option in ``given`` that is not None."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown options {unknown}; known: {sorted(DEFAULTS)}")
    chosen = {k: v for k, v in given.items() if v is not None}
    return asdict(replace(PRESETS[preset or "cpu"], **chosen))
