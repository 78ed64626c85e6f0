"""A/B of the tubelet embedding in the MAE pretraining step on a GPU: ``foundation.vit``'s
matmul over unfolded tubelets (``tubelet_tokens``) against the strided Conv3d it replaced, in one
process on one model: the two take turns every round (A B, B A, ...), so both see the same
weights, optimizer and device state. `cmrfm bench pretrain --preset h100`'s bare loop (ViT-B,
16 x 128 x 128, patch 16, tubelet 2, batch 64, bf16 autocast, fused AdamW: ``bare_step``) at 90 % and 0 % masking.

    PYTHONPATH=. python3 benchmarks/gpu_tubelet_embed.py [ROUNDS] [STEPS]
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

import foundation.vit as vit
from cmrfm.bench.pretrain_cases import Setup
from cmrfm.bench.pretrain_options import PRESETS
from cmrfm.bench.pretrain_runs import Clock, bare_step, make_batch

MATMUL = vit.tubelet_tokens


def conv3d(x: torch.Tensor, conv: torch.nn.Conv3d) -> torch.Tensor:
    """The embedding as it was: the strided convolution, flattened to tokens (B, L, D)."""
    return conv(x).flatten(2).transpose(1, 2)


ARMS: dict[str, Callable[[torch.Tensor, torch.nn.Conv3d], torch.Tensor]] = {
    "conv3d": conv3d,
    "matmul": MATMUL,
}


def main(rounds: int, steps: int) -> None:
    o = PRESETS["h100"]
    setup = Setup(o.backbone, o.frames, o.size, o.patch, o.tubelet, o.batch, steps, 10,
                  o.precision, o.decoder_dim, o.decoder_depth, o.decoder_heads)  # fmt: skip
    batch = make_batch(setup, torch.device("cuda"))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; {rounds} rounds x {steps}")
    for mask in (0.9, 0.0):
        ms = compare(setup, batch, mask, rounds)
        mean = {arm: sum(v) / len(v) for arm, v in ms.items()}
        rows = ", ".join(f"{a} {m:.2f} ms/step ({' / '.join(f'{x:.2f}' for x in ms[a])})"
                         for a, m in mean.items())  # fmt: skip
        print(f"mask {mask:g}: {rows}; conv3d / matmul {mean['conv3d'] / mean['matmul']:.3f}x")
        torch.cuda.empty_cache()


def compare(setup: Setup, batch: dict, mask: float, rounds: int) -> dict[str, list[float]]:
    """ms per step of each arm per round, on one model and optimizer, the order alternated."""
    step, clock = bare_step(setup, mask, batch), Clock(batch["clip"].device)
    ms: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for embed in ARMS.values():  # warm-up, each arm
        vit.tubelet_tokens = embed
        for _ in range(setup.warmup):
            step()
    for r in range(rounds):
        for arm in list(ARMS) if r % 2 == 0 else list(ARMS)[::-1]:
            vit.tubelet_tokens = ARMS[arm]
            clock.start()
            for _ in range(setup.steps):
                step()
            seconds, _ = clock.stop()
            ms[arm].append(seconds * 1e3 / setup.steps)
    vit.tubelet_tokens = MATMUL
    return ms


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 4, int(sys.argv[2]) if len(sys.argv) > 2 else 20
    )
