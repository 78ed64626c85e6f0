"""`cmrfm bench seg`: seconds per training step of the ViT segmenters against MONAI's 2D U-Net,
as a ratio in one run.

Every contender is the model ``finetune.system.SegFinetuner`` builds, trained on one synthetic
batch (clips (B, 1, T, H, W) in [0, 1], label maps (B, T, H, W)) that stays in memory, so data
loading is not measured. A step is what a fine-tuning step computes: forward, the DiceCE frame
loss (``finetune.system.frame_loss``), backward, an AdamW step over the system's own parameter
groups (``configure_optimizers``: only what the protocol trains), zero_grad.

Rows: the U-Net baseline (``arch="unet"``), then per patch size every variant, named
``ARCH[-fsN][-lastK|-linear]``: ``unetr-fs8`` is the UNETR decoder with feature_size 8,
``light-last4`` the light decoder with the first blocks frozen (protocol "partial", last_k 4).
``none`` is the backbone alone (its step with a loss on the last block's tokens): the floor
under every decoder at that patch size. ``dense`` (no patch size) is the pretrainable U-Net
(``cmr_unet_small`` + a 1x1 class layer, ``arch="dense"``), ``dense-linear`` with it frozen.

Every contender first runs ``warmup`` untimed steps (allocations, lazy initialisation); then all
take turns in rounds of ``steps`` steps (A B C, C B A, ...), so drifting machine load reaches
all alike. Wall-clock and CPU time (``time.process_time``) are both kept: with one torch thread
the CPU time is the time on a core, which other jobs on the machine inflate less.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from cmrfm.bench.machine import load_average, synchronize, torch_threads
from cmrfm.bench.results import machine_caption, ratio_cell, show_and_write

BASELINE = "unet"
DECODERS = ("unetr", "light")
GOAL = 2.0  # issue: a ViT segmenter step at most 2x the U-Net's
DEFAULT_VARIANTS = (
    *("none", "unetr", "unetr-fs8", "light", "light-fs8"),
    *("light-last4", "light-last2", "light-linear"),  # frozen early blocks: what patch 8 needs
)
_VARIANT = re.compile(
    r"^(?P<arch>none|unetr|light|dense)(-fs(?P<fs>\d+))?(-last(?P<k>\d+)|-(?P<lin>linear))?$"
)
DENSE_BACKBONE = "cmr_unet_small"  # the backbone of the "dense" rows


def variant_args(name: str) -> dict[str, Any]:
    """SegFinetuner arguments of a variant name ``ARCH[-fsN][-lastK|-linear]``.

    ARCH is "unetr", "light" or "none" (the backbone alone, no decoder); fsN sets feature_size,
    lastK trains only the last K blocks (protocol "partial"), linear freezes the backbone.
    """
    match = _VARIANT.match(name)
    if match is None:
        raise ValueError(
            f"variant {name!r} is not ARCH[-fsN][-lastK|-linear] with ARCH one of "
            f"{['none', *DECODERS, 'dense']}, e.g. 'light', 'unetr-fs8', 'light-fs8-last4'"
        )
    args: dict[str, Any] = {"arch": match["arch"]}
    if match["arch"] == "dense":
        if match["fs"] or match["k"]:
            raise ValueError(f"variant {name!r}: a dense backbone has no decoder width or blocks")
        args["backbone"] = DENSE_BACKBONE
    if match["fs"]:
        args["feature_size"] = int(match["fs"])
    if match["k"]:
        args |= {"protocol": "partial", "last_k": int(match["k"])}
    if match["lin"]:
        if match["arch"] == "none":
            raise ValueError(f"variant {name!r}: the backbone alone with nothing to train")
        args["protocol"] = "linear"
    return args


def bench_seg(
    *,
    backbone: str = "cmr_vit_tiny",
    patches: Sequence[int] = (8, 16),
    variants: Sequence[str] | None = None,
    tubelet: int = 2,
    frames: int = 2,
    size: int = 128,
    batch: int = 4,
    num_classes: int = 4,
    steps: int = 2,
    rounds: int = 5,
    warmup: int = 2,
    threads: int = 1,
    seed: int = 0,
    device: str | None = None,
    out: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measure the U-Net and every patch x variant segmenter, print the table, return results.

    Args:
        backbone, tubelet: the registered backbone of the ViT segmenters and its tubelet.
        patches: patch sizes to build the ViT segmenters at.
        variants: names ``ARCH[-fsN][-lastK|-linear]`` (:func:`variant_args`); None:
            DEFAULT_VARIANTS.
        frames, size, batch, num_classes: the synthetic batch (batch, 1, frames, size, size)
            and its label maps in 0 .. num_classes - 1.
        steps, rounds: timed steps per contender and round; rounds alternate the order.
        warmup: untimed steps per contender before the first round.
        threads: torch threads (default 1: one core, as the other benches).
        seed: model initialisation (the same for every contender) and the batch.
        device: "cpu" or "cuda"; None: CUDA when available, else the CPU. On a GPU a step is
            timed from a device sync to the next, so its queued kernels count.
        out: a JSON file for the results (not written when None).
        console: where the table goes (default: a new stdout console).

    Returns:
        ``{"config", "rows": [{name, patch, variant, args, params, trainable, steps,
        seconds (per step), cpu_seconds (per step), s_per_step, cpu_s_per_step, ratio,
        ratio_cpu, meets_goal}]}``; ratios divide by the U-Net row of the same run.
    """
    console = console or Console()
    if steps < 1 or rounds < 1 or warmup < 0 or threads < 1:
        raise ValueError(
            f"steps, rounds and threads must be >= 1 and warmup >= 0, got steps={steps}, "
            f"rounds={rounds}, threads={threads}, warmup={warmup}"
        )
    if not patches or min(patches) < 1:
        raise ValueError(f"patches must be a non-empty list of sizes >= 1, got {list(patches)}")
    parsed = {name: variant_args(name) for name in dict.fromkeys(variants or DEFAULT_VARIANTS)}
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if where.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device here (torch {torch.__version__})")
    config: dict[str, Any] = {
        "backbone": backbone,
        "patches": list(patches),
        "variants": list(parsed),
        "tubelet": tubelet,
        "clip_shape": [batch, 1, frames, size, size],
        "num_classes": num_classes,
        "steps": steps,
        "rounds": rounds,
        "warmup": warmup,
        "seed": seed,
        "goal": GOAL,
        "device": torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_average(),
    }
    with torch_threads(threads):
        config["threads"] = torch.get_num_threads()
        clip, label = (t.to(where) for t in make_batch(batch, frames, size, num_classes, seed))
        plan = [(BASELINE, None, {"arch": "unet"})]
        dense = {name: args for name, args in parsed.items() if args["arch"] == "dense"}
        plan += [(name, None, args) for name, args in dense.items()]  # no patch size
        plan += [(name, p, args) for p in patches for name, args in parsed.items()
                 if name not in dense]  # fmt: skip
        contenders = []
        with console.status("building the segmenters"):
            for name, patch, args in plan:
                torch.manual_seed(seed)  # the same initialisation for every contender
                model_args = {"backbone": backbone, "patch_size": patch or 16,
                              "tubelet": tubelet, "num_classes": num_classes}  # fmt: skip
                contenders.append(Contender(name, patch, args, model_args, where))
        with console.status(f"{len(contenders)} contenders x {rounds} rounds x {steps} steps"):
            measure(contenders, clip, label, steps, rounds, warmup)
    config["load_average_after"] = load_average()
    result = {"config": config, "rows": contender_rows(contenders)}
    show_and_write(result, [results_table(result)], out, console)
    return result


def make_batch(
    batch: int, frames: int, size: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded clip (B, 1, T, H, W) in [0, 1] and label maps (B, T, H, W) in 0 .. K-1."""
    generator = torch.Generator().manual_seed(seed)
    clip = torch.rand(batch, 1, frames, size, size, generator=generator)
    label = torch.randint(0, num_classes, (batch, frames, size, size), generator=generator)
    return clip, label


class Contender:
    """One model, its optimizer and its training step, with per-step wall and CPU times.

    Segmenters are built by SegFinetuner (``model_args`` plus the variant's ``args``); "none" is
    the backbone as SegFinetuner builds it, its loss the mean square of the last block's tokens.
    The model lives on ``device``, where the batch must be.
    """

    def __init__(
        self,
        name: str,
        patch: int | None,
        args: dict[str, Any],
        model_args: dict[str, Any],
        device: torch.device | None = None,
    ) -> None:
        from finetune.system import SegFinetuner, build_backbone, frame_loss

        self.name, self.patch, self.args = name, patch, args
        self.device = device = device or torch.device("cpu")
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        if args["arch"] == "none":
            encoder = build_backbone(
                name=model_args["backbone"],
                patch_size=model_args["patch_size"],
                tubelet=model_args["tubelet"],
                pretrained=None,
                protocol=args.get("protocol", "full"),
                last_k=args.get("last_k", 2),
                lora_rank=8,
            )
            encoder.to(device).train()
            self.module: torch.nn.Module = encoder
            trainable = [p for p in encoder.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable)
            taps = encoder.default_taps(1)

            def loss_of(clip: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
                (tokens,) = encoder.forward_intermediates(clip, taps, norm=True)  # (B, L, D)
                return tokens.square().mean()
        else:
            system = SegFinetuner(**{**model_args, **args}).to(device)
            self.module = system.model
            optimizer = system.configure_optimizers()["optimizer"]

            def loss_of(clip: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
                return frame_loss(system.loss_fn, system(clip), label)  # logits (B, K, T, H, W)

        self.optimizer = optimizer
        self.loss_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = loss_of

    def step(self, clip: torch.Tensor, label: torch.Tensor) -> None:
        """One training step: forward, loss, backward, optimizer step, zero_grad."""
        self.loss_of(clip, label).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, clip: torch.Tensor, label: torch.Tensor, steps: int, timed: bool = True) -> None:
        """``steps`` steps; each one's wall and CPU seconds kept when ``timed``."""
        for _ in range(steps):
            synchronize(self.device)  # queued work of the step before stays out
            start, cpu_start = time.perf_counter(), time.process_time()
            self.step(clip, label)
            synchronize(self.device)
            if timed:
                self.seconds.append(time.perf_counter() - start)
                self.cpu_seconds.append(time.process_time() - cpu_start)

    def params(self) -> tuple[int, int]:
        """(all, trainable) parameter counts."""
        params = list(self.module.parameters())
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def measure(
    contenders: Sequence[Contender],
    clip: torch.Tensor,
    label: torch.Tensor,
    steps: int,
    rounds: int,
    warmup: int,
) -> None:
    """Warm every contender up, then time them in rounds; the order reverses every round."""
    for contender in contenders:
        contender.run(clip, label, warmup, timed=False)
    for r in range(rounds):
        for contender in contenders if r % 2 == 0 else contenders[::-1]:
            contender.run(clip, label, steps)


def contender_rows(contenders: Sequence[Contender]) -> list[dict[str, Any]]:
    """One row per contender; ratios of mean seconds per step to the baseline's (wall, CPU)."""
    base = contenders[0]
    base_wall = sum(base.seconds) / len(base.seconds)
    base_cpu = sum(base.cpu_seconds) / len(base.cpu_seconds)
    rows = []
    for c in contenders:
        wall, cpu = sum(c.seconds) / len(c.seconds), sum(c.cpu_seconds) / len(c.cpu_seconds)
        params, trainable = c.params()
        ratio = wall / base_wall
        rows.append({
            "name": c.name if c.patch is None else f"{c.name} p{c.patch}",
            "patch": c.patch,
            "variant": c.name,
            "args": c.args,
            "params": params,
            "trainable": trainable,
            "steps": len(c.seconds),
            "seconds": c.seconds,
            "cpu_seconds": c.cpu_seconds,
            "s_per_step": wall,
            "cpu_s_per_step": cpu,
            "ratio": ratio,
            "ratio_cpu": cpu / base_cpu if base_cpu > 0 else None,
            "meets_goal": None if c is base or c.args["arch"] == "none" else ratio <= GOAL,
        })  # fmt: skip
    return rows


def results_table(result: dict[str, Any]) -> Table:
    """Per row: patch, variant, trainable and all parameters, seconds per step (wall, CPU) and
    their ratios to the U-Net's, and whether the ratio meets the goal."""
    config = result["config"]
    b, _, t, h, w = config["clip_shape"]
    title = (
        f"segmenter training step vs U-Net: {config['backbone']}, tubelet {config['tubelet']},"
        f" clips {b}x1x{t}x{h}x{w}, {config['num_classes']} classes, DiceCE + AdamW"
    )
    table = Table(title=title)
    names = max(len(row["variant"]) for row in result["rows"])
    columns = ("patch", "segmenter", "params M", "s/step", "CPU s", "ratio", "by CPU",
               f"≤ {GOAL:g}x")  # fmt: skip
    for column in columns:
        if column == "segmenter":  # whole names: they are the options to pass
            table.add_column(column, min_width=names, no_wrap=True)
        else:
            table.add_column(column, justify="right")
    patch = None
    for row in result["rows"]:
        if row["patch"] is not None and row["patch"] != patch:
            table.add_section()
            patch = row["patch"]
        goal = {None: "", True: "yes", False: "no"}[row["meets_goal"]]
        params = f"{row['trainable'] / 1e6:.2f}"
        if row["trainable"] != row["params"]:
            params += f"/{row['params'] / 1e6:.2f}"
        table.add_row(
            "–" if row["patch"] is None else str(row["patch"]),
            row["variant"],
            params,
            f"{row['s_per_step']:.3f}",
            f"{row['cpu_s_per_step']:.3f}",
            ratio_cell(row["ratio"]),
            ratio_cell(row["ratio_cpu"]),
            goal,
        )
    table.caption = (
        "params: trainable/all when they differ; ratio: seconds per step over the U-Net's,"
        f" by wall-clock and by CPU time; {config['rounds']} rounds x {config['steps']} timed"
        f" steps after {config['warmup']} warm-up; {config['threads']} torch threads,"
        f" {machine_caption(config)}"
    )
    return table
