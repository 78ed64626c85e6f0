"""What `cmrfm bench pretrain` measures: the settings every run shares (:class:`Setup`), one
measured configuration (:class:`Case`), and the plan of all of them in measuring order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("auto", "ddp", "deepspeed_stage_2", "deepspeed_stage_3")
SHORT = {
    "auto": "single",
    "ddp": "ddp",
    "deepspeed_stage_2": "zero-2",
    "deepspeed_stage_3": "zero-3",
}
PRECISIONS = ("32-true", "bf16-mixed")


@dataclass(frozen=True)
class Setup:
    """What every run shares: model, clip and batch sizes, precision, step counts."""

    backbone: str
    frames: int
    size: int
    patch: int
    tubelet: int
    batch: int
    steps: int
    warmup: int
    precision: str
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    seed: int = 0

    def backbone_kwargs(self, compile: bool) -> dict[str, Any]:
        return {"patch_size": self.patch, "tubelet": self.tubelet, "compile": compile}

    def objective_kwargs(self, mask: float) -> dict[str, Any]:
        return {
            "mask_ratio": mask,
            "decoder_dim": self.decoder_dim,
            "decoder_depth": self.decoder_depth,
            "decoder_heads": self.decoder_heads,
        }


@dataclass(frozen=True)
class Case:
    """One measured configuration: loop ("bare" or "lightning"), strategy, compile, mask ratio."""

    loop: str
    strategy: str | None
    compile: bool
    mask: float

    @property
    def label(self) -> str:
        return "bare" if self.loop == "bare" else f"lightning {SHORT[self.strategy]}"

    @property
    def id(self) -> str:
        return f"{self.label}, {'compiled' if self.compile else 'eager'}, mask {self.mask:g}"


def plan(strategies: Sequence[str], compiles: Sequence[bool], masks: Sequence[float]) -> list[Case]:
    """Every loop (bare, then Lightning per strategy) x compile x mask, in measuring order."""
    loops = [("bare", None), *(("lightning", s) for s in strategies)]
    return [Case(loop, s, c, m) for c in compiles for m in masks for loop, s in loops]
