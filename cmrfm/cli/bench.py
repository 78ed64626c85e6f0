"""`cmrfm bench loader|pretrain|seg|runtime`: the benchmarks' options (cmrfm.bench runs them)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

from cmrfm.bench.pretrain_options import PRESETS, PretrainBenchOptions
from cmrfm.cli.args import _patch_sizes, _worker_counts
from cmrfm.cli.errors import fail


def _bench_loader(args: argparse.Namespace) -> None:
    from cmrfm.bench.loader import bench_loader

    bench_loader(
        args.shards,
        workers=args.workers,
        frames=args.frames,
        size=args.size,
        seconds=args.seconds,
        augment=args.augment,
        augment_on=args.augment_on,
        batch=args.batch,
        seed=args.seed,
        rounds=args.rounds,
        cache=args.cache,
        out=args.out,
    )


def _bench_pretrain(args: argparse.Namespace) -> None:
    from cmrfm.bench.pretrain import bench_pretrain, resolve_options

    try:
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainBenchOptions)}
        options = resolve_options(args.preset, **given)
        bench_pretrain(
            **options,
            compile=args.compile,
            strategies=args.strategies,
            peak_tflops=args.peak_tflops,
            rounds=args.rounds,
            threads=args.threads,
            seed=args.seed,
            out=args.out,
        )
    except ValueError as error:  # an option that does not fit: say which, no trace
        fail("bench pretrain", error)


def _bench_seg(args: argparse.Namespace) -> None:
    from cmrfm.bench.seg import bench_seg

    try:
        bench_seg(
            backbone=args.backbone,
            patches=args.patches,
            variants=args.variants,
            tubelet=args.tubelet,
            frames=args.frames,
            size=args.size,
            batch=args.batch,
            num_classes=args.classes,
            steps=args.steps,
            rounds=args.rounds,
            warmup=args.warmup,
            threads=args.threads,
            seed=args.seed,
            out=args.out,
        )
    except ValueError as error:  # a variant or size that does not fit: say which, no trace
        fail("bench seg", error)


def add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: loader, pretrain, seg, runtime, start")
    group = bench.add_subparsers(dest="benchmark", required=True)
    p = group.add_parser(
        "loader", help="clips/s streaming from shards vs a plain .npy reader of the same arrays"
    )
    p.add_argument("--shards", type=Path, default=None, help="default: phantom shards in --cache")
    p.add_argument("--workers", type=_worker_counts, default=[0, 1, 2], help="e.g. 0,1,2")
    p.add_argument("--frames", type=int, default=16, help="clip length")
    p.add_argument("--size", type=int, default=128, help="phantom image size (no --shards)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed run per loader and count")
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pretraining augmentation in both loaders",
    )
    p.add_argument(
        "--augment-on",
        choices=["loader", "device"],
        default="device",
        help="augment in the loader workers (float32 clips), or ship uint8 and time the batched"
        " device-side augmentation apart, as a GPU job runs it (default)",
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="alternating time slices per loader")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(".cache/bench"), help="phantom shards")
    p.add_argument("--out", type=Path, default=Path("runs/bench/loader.json"))
    p.set_defaults(func=_bench_loader)
    _add_bench_pretrain(group)
    _add_bench_seg(group)
    _add_bench_runtime(group)
    _add_bench_start(group)


def _add_options(p: argparse.ArgumentParser, options: type, presets: dict[str, object]) -> None:
    """A flag per field of the dataclass ``options``, typed by its annotation, default None (the
    preset's value); the help gives each preset's value."""
    hints = typing.get_type_hints(options)
    for f in dataclasses.fields(options):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        values = ", ".join(f"{name} {getattr(preset, f.name)}" for name, preset in presets.items())
        if typing.get_origin(kind) is typing.Literal:
            p.add_argument(flag, choices=typing.get_args(kind), default=None, help=values)
        else:
            p.add_argument(flag, type=kind, default=None, help=values)


def _add_bench_pretrain(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "pretrain",
        help="clips/s and MFU of the MAE step: Lightning vs a bare loop, compiled or not, "
        "masked or not, DDP vs DeepSpeed ZeRO-2",
    )
    p.add_argument(
        "--preset",
        choices=["cpu", "h100"],
        default=None,
        help="the model and batch (default cpu: a test ViT on 4x32x32 clips; h100: ViT-B on "
        "16x128x128, bf16-mixed); the options below override it",
    )
    _add_options(p, PretrainBenchOptions, PRESETS)
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure torch.compile'd backbone blocks",
    )
    p.add_argument(
        "--strategies", default="ddp,deepspeed_stage_2", help="Lightning strategies, one device"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak for MFU (default: the GPU's dense bf16 peak; none on a CPU)",
    )
    p.add_argument("--rounds", type=int, default=2, help="measurements per run, order alternated")
    p.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/pretrain.json"))
    p.set_defaults(func=_bench_pretrain)


def _add_bench_seg(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "seg",
        help="seconds per training step of the ViT segmenters (patch x decoder variant) against"
        " MONAI's 2D U-Net, as ratios in one run",
    )
    p.add_argument("--backbone", default="cmr_vit_tiny")
    p.add_argument("--patches", type=_patch_sizes, default=[8, 16], help="e.g. 8,16")
    p.add_argument(
        "--variants",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        default=None,
        help="ARCH[-fsN][-lastK|-linear], ARCH unetr, light, dense (the U-Net backbone) or none (backbone alone), e.g. "
        "unetr,unetr-fs8,light,light-last4 (default: cmrfm.bench.seg.DEFAULT_VARIANTS)",
    )
    p.add_argument("--tubelet", type=int, default=2)
    p.add_argument("--frames", type=int, default=2, help="clip length")
    p.add_argument("--size", type=int, default=128, help="H = W")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--classes", type=int, default=4, help="classes including background")
    p.add_argument("--steps", type=int, default=2, help="timed steps per contender and round")
    p.add_argument("--rounds", type=int, default=5, help="rounds, order alternated")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/seg.json"))
    p.set_defaults(func=_bench_seg)


def _bench_runtime(args: argparse.Namespace) -> None:
    from cmrfm.bench.runtime import bench_runtime

    try:
        bench_runtime(
            models=args.model, archs=args.archs, slices=args.slices, frames=args.frames,
            batch=args.batch, rounds=args.rounds, threads=args.threads, seed=args.seed,
            int8_ops=args.int8_ops, out=args.out,
        )  # fmt: skip
    except ValueError as error:  # a package or size that does not fit: say which, no trace
        fail("bench runtime", error)


def _add_bench_runtime(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "runtime",
        help="seconds to segment one study under torch, onnxruntime and onnxruntime int8, as "
        "ratios to torch in one run",
    )
    p.add_argument("--model", type=Path, action="append", default=None,
                   help="fine-tuned package (repeatable; exported into a temporary copy)")  # fmt: skip
    p.add_argument(
        "--archs",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        default=["unet", "light"],
        help="without --model: packages built with random weights, e.g. unet,light,dense",
    )
    p.add_argument("--slices", type=int, default=10, help="phantom study slices")
    p.add_argument("--frames", type=int, default=30, help="phantom study frames")
    p.add_argument("--batch", type=int, default=16, help="clips per forward pass")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per runtime")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--int8-ops", type=lambda text: text.split(","), default=["MatMul", "Conv"],
                   help="op types the int8 model quantises (export --int8-ops)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/bench/runtime.json"))
    p.set_defaults(func=_bench_runtime)


def _bench_start(args: argparse.Namespace) -> None:
    from cmrfm.bench.start import bench_start

    try:
        bench_start(model=args.model, rounds=args.rounds, seed=args.seed, out=args.out)
    except (ValueError, RuntimeError) as error:  # a package that does not load: say which
        fail("bench start", error)


def _add_bench_start(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "start",
        help="seconds until `cmrfm --help` answers and `cmrfm predict` starts reading a study, "
        "against `python -c pass`, in one run",
    )
    p.add_argument("--model", type=Path, default=None,
                   help="fine-tuned package (default: a dense U-Net with random weights)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=5, help="fresh processes per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/start.json"))
    p.set_defaults(func=_bench_start)
