"""`cmrfm`: the command line (shard, inspect, pretrain, finetune, evaluate, predict, demo, bench)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from cmrfm import CONFIGS, __version__
from cmrfm.shipped import config_args, config_path


class UsageError(Exception):
    """An argument checked before any work starts: main() prints it as one line, exit 2."""


def fail(command: str, error: object) -> NoReturn:
    """A user's error: one line on stderr naming the command, exit 2 (argparse's code for bad
    usage), no traceback."""
    print(f"cmrfm {command}: error: {error}", file=sys.stderr)
    raise SystemExit(2)


# Errors whose message says what to fix; anything else keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, UsageError)

# `shard --size` bounds: below one 8-pixel patch there is no image the models can take; the upper
# bound is the machine's memory (_shard_memory_bytes).
MIN_SIZE = 8
# Bytes per output voxel while a study converts: a float32 working copy, the uint8 image, the uint8
# label.
BYTES_PER_VOXEL = 4 + 1 + 1
# (slices, frames) of a large study when the source cannot say cheaply: above ACDC's (~10 x 30).
LARGE_STUDY = (20, 50)

# Training subcommands -> (default config in configs/, what they do).
TRAINING = {
    "pretrain": ("pretrain_mae_phantom.yaml", "MAE pretraining"),
    "finetune": ("finetune_seg_phantom.yaml", "few-shot segmentation fine-tuning"),
}


def training_shortcuts(command: str) -> str:
    """The head of `cmrfm pretrain|finetune --help`: the README's shortcuts, before the hundreds
    of generic LightningCLI options."""
    config, what = TRAINING[command]
    lines = [
        f"cmrfm {command}: {what} (LightningCLI). The options that matter most:",
        "",
        f"  --config FILE        YAML that maps onto the constructors (default configs/{config})",
        "  --shards PATH        shard folder, a list, or a {folder: weight} mixture",
        "  --out DIR            where checkpoints and logs go (trainer.default_root_dir)",
        "  --max-steps N        optimiser steps (trainer.max_steps)",
        "  --resume CKPT|last   continue a run exactly; `last` = this run's newest checkpoint",
        "  --extend-to N        train a finished run on to step N",
        "  --seed N             the data draw and the run's seed",
    ]
    if command == "finetune":
        lines += ["  --labels N           labelled training subjects",
                  "  --pretrained PATH    a pretraining checkpoint or hub folder to start from"]  # fmt: skip
    lines += ["  --KEY.SUB VALUE      any config key, e.g. --model.init_args.lr 1e-4", "",
              "LightningCLI's full list follows.", ""]  # fmt: skip
    return "\n".join(lines)


def _shard(args: argparse.Namespace) -> None:
    from data_shards.convert import convert
    from data_shards.preprocess import PreprocessConfig

    try:
        options = json.loads(args.options) if args.options else {}
    except ValueError as error:
        raise UsageError(f"--options is not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise UsageError(f"--options must be a JSON object, got {args.options!r}")
    if args.source == "phantom":
        options.setdefault("n", args.n)
        options.setdefault("seed", args.seed)
    _check_memory(args.source, options, args.size)
    _check_writable(args.out)
    convert(
        args.source,
        args.root,
        args.out,
        preprocess_config=PreprocessConfig(
            spacing=args.spacing,
            size=args.size,
            percentiles=tuple(args.percentiles),
            orientation=args.orientation,
            crop=args.crop,
        ),
        source_options=options,
        maxcount=args.maxcount,
        overwrite=args.overwrite,
        resume=args.resume,
    )


def _shard_memory_bytes(source: str, options: dict, size: int) -> int:
    """Memory one study needs at the output size: slices x frames x size^2 x BYTES_PER_VOXEL.

    The phantom's study shape is its options (defaults 8 x 16); other sources count as a large
    study, LARGE_STUDY. Resampling the input grid adds to this, so it is a floor, not a ceiling.
    """
    slices, frames = LARGE_STUDY
    if source == "phantom":
        # A bad value is the phantom's to report; until then, estimate a large study.
        with contextlib.suppress(TypeError, ValueError):
            slices, frames = int(options.get("slices", 8)), int(options.get("frames", 16))
    return slices * frames * size * size * BYTES_PER_VOXEL


def _check_memory(source: str, options: dict, size: int) -> None:
    import psutil

    need = _shard_memory_bytes(source, options, size)
    available = psutil.virtual_memory().available
    if need > available:
        raise UsageError(
            f"--size {size} needs about {need / 2**30:.1f} GiB per study, more than the "
            f"{available / 2**30:.1f} GiB of memory available"
        )


def _check_writable(out: Path) -> None:
    """Create --out (and its parents) and write a temporary file in it, before converting."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise UsageError(
            f"--out {out} is not a writable folder: {error.strerror or error}"
        ) from None


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of pixels, got {text!r}"
        ) from None
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE} pixels, got {value}")
    return value


def _number(text: str) -> float:
    """The float text spells, NaN when it spells none (every range check then fails)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _spacing(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of mm, got {text!r}")
    return value


def _percentile(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 100:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a percentile in [0, 100], got {text!r}")
    return value


class _Percentiles(argparse.Action):
    """LO HI, each in [0, 100] (_percentile), and LO < HI."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        low, high = values
        if not low < high:
            parser.error(f"argument {option_string}: expected LO < HI, got {low:g} {high:g}")
        setattr(namespace, self.dest, (low, high))


def _fewshot(args: argparse.Namespace) -> None:
    from finetune.fewshot import FewShotBenchmark, load_config

    default = CONFIGS / f"fewshot_{args.task or 'seg'}_acdc.yaml"
    config = config_path(args.config) if args.config else default  # a file or a shipped name
    split = lambda text: None if text is None else [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    overrides = {
        "task": args.task,
        "shards": args.shards,
        "out": args.out,
        "labels": split(args.labels),
        "seeds": args.seeds,
        "methods": split(args.methods),
        "pretrained": args.pretrained,
        "budget_s": args.budget_s,
        "steps": args.steps,
        "eval_split": args.eval_split,
        "seg_from": args.seg_from,
    }
    try:
        cfg = load_config(Path(config), overrides)
    except ValueError as error:  # a bad option is the user's to fix: one line, exit 2
        fail("fewshot", error)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    bench = FewShotBenchmark(cfg)
    if args.rescore:
        bench.rescore()
    else:
        bench.run()
    print(f"results: {cfg.out_dir / 'summary.md'}")


def _evaluate(args: argparse.Namespace) -> None:
    from finetune.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(args.checkpoint, args.shards, split=args.split, frames=args.frames)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    summary = report["summary"]
    print(
        f"{summary['n_subjects']} {args.split} subjects: mean Dice {summary['dice_mean']:.3f} "
        f"(LV {summary['dice_lv']:.3f}, MYO {summary['dice_myo']:.3f}, RV {summary['dice_rv']:.3f}), "
        f"LV EF MAE {summary['lv_ef_mae']:.1f} points -> {args.out}"
    )


def _demo(args: argparse.Namespace) -> None:
    from cmrfm.demo import run_demo

    run_demo(args.out, data=args.data, quick=args.quick, labels=args.labels, seed=args.seed)


def _probe(args: argparse.Namespace) -> None:
    from finetune.probe import SegProbe, probe_checkpoints

    probe = SegProbe(
        args.shards, labels=args.labels, steps=args.steps, seed=args.seed,
        max_eval_subjects=args.max_eval_subjects, tap=args.tap,
    )  # fmt: skip
    missing = [str(p) for p in args.checkpoints if not p.exists()]
    if missing:
        fail("probe", f"no such checkpoint: {', '.join(missing)}")
    rows = probe_checkpoints(args.checkpoints, probe, args.out, random_init=not args.no_random)
    print(f"{len(rows)} probes -> {args.out / 'probe.csv'}, {args.out / 'probe.png'}")


def _inspect(args: argparse.Namespace) -> None:
    from data_shards.inspect import inspect_shards

    summary = inspect_shards(
        args.shards, args.out, clips=args.clips, frames=args.frames, seed=args.seed
    )
    if summary["problems"]:
        raise SystemExit(1)  # a corrupt folder must fail scripts that inspect before training


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
        given = {name: getattr(args, name) for name in BENCH_PRETRAIN_OPTIONS}
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


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected worker counts like 0,1,2, got {text!r}")
    return counts


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="counts, histograms, sha256 check and a contact sheet of a shard folder"
    )
    p.add_argument("shards", type=Path, help="shard folder with manifest.json")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: SHARDS/inspect)")
    p.add_argument("--clips", type=int, default=16, help="contact sheet rows (random clips)")
    p.add_argument("--frames", type=int, default=8, help="contact sheet columns (frames)")
    p.add_argument("--seed", type=int, default=0, help="which subjects, slices and frames")
    p.set_defaults(func=_inspect)


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "probe",
        help="the online segmentation probe on saved pretraining checkpoints, and on a random "
        "initialisation (step 0): probe.csv and probe.png",
    )
    p.add_argument("checkpoints", type=Path, nargs="+", help="pretraining checkpoints (.ckpt)")
    p.add_argument("--shards", required=True, help="labelled shards (e.g. runs/real/acdc)")
    p.add_argument("--out", type=Path, required=True, help="folder for probe.csv and probe.png")
    p.add_argument("--labels", type=int, default=5, help="labelled train subjects to fit on")
    p.add_argument("--steps", type=int, default=300, help="head optimisation steps per probe")
    p.add_argument("--max-eval-subjects", type=int, default=None, help="score only this many")
    p.add_argument("--seed", type=int, default=0, help="the draw, the head and the random init")
    p.add_argument("--no-random", action="store_true", help="leave out the step-0 random init")
    p.add_argument(
        "--tap",
        choices=("output", "input"),
        default=None,
        help="U-Net map probed: the bottom block's output or input (default: the one the "
        "checkpoint's objective trained, else output)",
    )
    p.set_defaults(func=_probe)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: loader, pretrain, seg, runtime")
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


# `bench pretrain` options a --preset sets (cmrfm.bench.pretrain.DEFAULTS; not imported here:
# it loads torch, which `cmrfm --help` should not wait for).
BENCH_PRETRAIN_OPTIONS = {"backbone": str, "frames": int, "size": int, "patch": int,
                          "tubelet": int, "batch": int, "steps": int, "warmup": int,
                          "mask": float, "precision": str, "decoder_dim": int,
                          "decoder_depth": int, "decoder_heads": int}  # fmt: skip


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
        help="cpu (default): cmr_vit_test, 4x32x32 clips, patch 8, batch 8, 32-true; h100: "
        "ViT-B, 16x128x128, patch 16, batch 64, bf16-mixed; the options below override it",
    )
    for name, kind in BENCH_PRETRAIN_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if name == "precision":
            p.add_argument(flag, choices=["32-true", "bf16-mixed"], default=None)
        else:
            p.add_argument(flag, type=kind, default=None)
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


def _patch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected patch sizes like 8,16, got {text!r}")
    return sizes


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


def _export(args: argparse.Namespace) -> None:
    from cmrfm.export import export, read_metrics

    onnx = args.onnx or args.int8
    if args.out is None:  # `export --onnx PACKAGE`: ONNX files into a fine-tuned package
        if not onnx:
            fail("export", "give OUT, the folder to write (only --onnx or --int8 go without)")
        return _export_onnx(args.checkpoint, args.int8, args.int8_ops)
    try:
        summary = export(
            args.checkpoint,
            args.out,
            metrics=read_metrics(args.card_metrics),
            manifests=args.manifest,
            datasets=args.datasets,
            preprocess=json.loads(args.preprocess) if args.preprocess else None,
            backbone=args.backbone,
            prefix=args.prefix,
            overwrite=args.overwrite,
            probe=args.probe,
            fewshot=args.fewshot,
        )
    except ValueError as error:  # a checkpoint or option that does not fit: say which, no trace
        fail("export", error)
    print(
        f"{summary['checkpoint']} (step {summary['steps']}) -> {summary['out']}: "
        f"{summary['architecture']}, data {', '.join(summary['datasets']) or 'unidentified'}"
    )
    if onnx:
        if summary.get("package") != "finetuned":
            fail("export", f"{summary['out']}: a backbone folder; --onnx takes a segmenter")
        _export_onnx(Path(summary["out"]), args.int8, args.int8_ops)


def _export_onnx(folder: Path, int8: bool, ops: list[str]) -> None:
    from cmrfm.onnx_model import export_onnx, summary_lines

    try:
        records = export_onnx(folder, int8=int8, int8_ops=ops)
    except ValueError as error:  # not a segmenter, or an unfaithful export: say which
        fail("export", error)
    print("\n".join(summary_lines(folder, records)))


def _publish(args: argparse.Namespace) -> None:
    from cmrfm.export import publish

    try:
        url = publish(args.folder, args.repo_id, private=args.private, revision=args.revision)
    except (ValueError, OSError) as error:  # a bad folder, no network, no login
        fail("publish", error)
    print(f"published {args.folder} -> {url}")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="a Lightning checkpoint or DeepSpeed ZeRO folder -> hub folder (model.safetensors, "
        "config.json, README.md model card); a fine-tuning checkpoint -> a fine-tuned model "
        "folder for `cmrfm predict`",
    )
    p.add_argument(
        "checkpoint",
        type=Path,
        help="a .ckpt file, or a DeepSpeed ZeRO-2/3 folder; with --onnx and no OUT, a fine-tuned "
        "package folder to add ONNX files to",
    )
    p.add_argument("out", type=Path, nargs="?", default=None, help="the folder to write")
    p.add_argument(
        "--card-metrics",
        default=None,
        metavar="JSON",
        help="metrics for the card: a JSON object, or a .json file (an evaluate report's summary)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        action="append",
        default=None,
        help="shard folder or manifest.json the model trained on (repeatable); default: the "
        "checkpoint's data module shards, from the working directory",
    )
    p.add_argument("--datasets", nargs="+", default=None, help="dataset names for the card")
    p.add_argument(
        "--preprocess", default=None, metavar="JSON", help="config.json preprocess overrides"
    )
    p.add_argument("--backbone", default=None, help="registered backbone, if hparams lack it")
    p.add_argument("--prefix", default=None, help="backbone key prefix, if several fit")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument(
        "--probe", type=Path, default=None, help="probe.csv for the card (probe.png beside it)"
    )
    p.add_argument("--fewshot", type=Path, default=None, help="few-shot summary.csv for the card")
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also write the fine-tuned segmenter as model.onnx (batch axis dynamic), checked "
        "against torch, for `predict --runtime onnx`",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="--onnx plus model.int8.onnx, dynamic int8 quantisation, for --runtime onnx-int8",
    )
    p.add_argument(
        "--int8-ops",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        default=["MatMul", "Conv"],
        help="op types --int8 quantises: MatMul,Conv (default) or MatMul (a ViT: faster and "
        "closer to torch on a CPU, where int8 Convs run slower than fp32) or Conv",
    )
    p.set_defaults(func=_export)


def _predict(args: argparse.Namespace) -> None:
    """One study: outputs in --out. Several: each in --out/NNN_NAME, with the model loaded once;
    a study that fails is reported by name and the others go on (exit 1 if any failed)."""
    import time

    from cmrfm.predict import Predictor, predict, study_folder_name
    from data_shards.sources import SourceError

    def say(error: Exception) -> None:  # one line; the other studies go on
        if os.environ.get("CMRFM_DEBUG"):
            raise error
        print(f"cmrfm predict: error: {error}", file=sys.stderr)

    options = {"batch": args.batch, "ed": args.ed, "es": args.es, "affine_space": args.affine_space,
               "deidentify": args.deidentify}  # fmt: skip
    try:
        model = Predictor.load(args.model, args.frames, runtime=args.runtime)
    except (SourceError, ValueError) as error:  # an unusable model folder: one line
        say(error)
        raise SystemExit(2) from None
    several, failed = len(args.study) > 1, []
    for i, study in enumerate(args.study, start=1):
        out = args.out / study_folder_name(i, study) if several else args.out
        start = time.perf_counter()
        try:
            volumes = predict(study, model, out, **options)
        except (SourceError, ValueError, OSError) as error:  # an unreadable study: one line
            say(error)
            failed.append(str(study))
            continue
        _print_volumes(volumes, out, time.perf_counter() - start)
    if several:
        print(
            f"{len(args.study) - len(failed)} of {len(args.study)} studies segmented -> {args.out}"
        )
    if failed:
        raise SystemExit(1 if several else 2)


def _print_volumes(volumes: dict, out: Path, seconds: float) -> None:
    lv, rv, f = volumes["lv"], volumes["rv"], volumes["frames"]

    def show(value: float | None, unit: str) -> str:
        return "n/a" if value is None else f"{value:.1f}{unit}"

    s, t, h, w = volumes["shape_stwh"]
    cycle = volumes["cycle"]
    print(
        f"{volumes['study']} ({s} x {t} x {h} x {w}, ED frame {f['ed']} ({f['ed_from']}), "
        f"ES frame {f['es']} ({f['es_from']})): "
        f"LV EDV {show(lv['edv_ml'], ' ml')}, ESV {show(lv['esv_ml'], ' ml')}, "
        f"EF {show(lv['ef_percent'], '%')}, mass {show(lv['mass_g'], ' g')}, "
        f"PER {show(cycle['lv_peak_ejection_rate_ml_s'], ' ml/s')}, "
        f"PFR {show(cycle['lv_peak_filling_rate_ml_s'], ' ml/s')}; "
        f"RV EDV {show(rv['edv_ml'], ' ml')}, EF {show(rv['ef_percent'], '%')} -> {out}"
    )
    steps = ", ".join(f"{k} {v:.2f}" for k, v in volumes["seconds"].items() if k != "total")
    print(f"predicted in {seconds:.2f} s ({steps})")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment a NIfTI file or DICOM series folder with a fine-tuned model folder: label "
        "map in the study's geometry, volumes (JSON, CSV), an overlay PNG and the volume curves "
        "over the cycle (CSV, PNG) with the LV's peak ejection and filling rates",
    )
    p.add_argument(
        "study",
        type=Path,
        nargs="+",
        help="a .nii/.nii.gz file (3D or 4D cine) or a DICOM folder; several share one model load",
    )
    p.add_argument("--model", type=Path, required=True, help="fine-tuned model folder (export)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (several studies: one sub-folder each)",
    )
    p.add_argument("--frames", type=int, default=None, help="clip length (default: the model's)")
    p.add_argument("--batch", type=int, default=16, help="clips per forward pass")
    p.add_argument("--ed", type=int, default=None, help="ED frame (default: largest LV volume)")
    p.add_argument("--es", type=int, default=None, help="ES frame (default: smallest LV volume)")
    p.add_argument(
        "--affine-space",
        choices=("ras", "lps"),
        default=None,
        help="NIfTI affine convention (default: lps for M&Ms-2 file names, else ras)",
    )
    p.add_argument(
        "--deidentify",
        action="store_true",
        help="DICOM input: strip the patient and study references from seg.dcm and sr.dcm "
        "(DICOM Basic Confidentiality Profile: new UIDs, no names, ids or dates), for sharing",
    )
    p.add_argument(
        "--runtime",
        choices=("torch", "onnx", "onnx-int8"),
        default="torch",
        help="run the model with torch, or with onnxruntime on the package's model.onnx or "
        "model.int8.onnx (`cmrfm export --onnx|--int8 PACKAGE` writes them)",
    )
    p.set_defaults(func=_predict)


def _add_publish(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish", help="upload a hub folder written by `cmrfm export` to the Hugging Face Hub"
    )
    p.add_argument("folder", type=Path, help="hub folder (model.safetensors, config, card)")
    p.add_argument("--repo-id", required=True, help="owner/name of the model repo")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    p.set_defaults(func=_publish)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmrfm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cmrfm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    from data_shards.sources import SOURCES

    p = sub.add_parser("shard", help="convert a source into webdataset shards + manifest.json")
    p.add_argument(
        "--source",
        required=True,
        choices=sorted(SOURCES),
        metavar="SOURCE",
        help=f"registered source: {', '.join(sorted(SOURCES))}",
    )
    p.add_argument("--root", type=Path, default=None, help="dataset folder as released")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder for the shards (must be writable)"
    )
    p.add_argument("--spacing", type=_spacing, default=1.5, help="target in-plane spacing, mm > 0")
    p.add_argument(
        "--size",
        type=_size,
        default=128,
        help=f"crop/pad to size x size pixels, at least {MIN_SIZE}. Refused up front when one "
        f"study would not fit in the available memory, estimated as slices x frames x size^2 x "
        f"{BYTES_PER_VOXEL} bytes (float32 working copy + uint8 image + uint8 label); the "
        f"phantom's slices/frames come from its options, other sources count as "
        f"{LARGE_STUDY[0]} x {LARGE_STUDY[1]}. Resampling adds to this: a floor, not a ceiling",
    )
    p.add_argument(
        "--percentiles",
        type=_percentile,
        action=_Percentiles,
        nargs=2,
        default=(0.5, 99.5),
        metavar=("LO", "HI"),
        help="intensity percentiles mapped to 0 and 255 (default: 0.5 99.5)",
    )
    p.add_argument(
        "--orientation",
        choices=("canonical", "none"),
        default="canonical",
        help="canonical: reorient where the source knows the patient geometry (default)",
    )
    p.add_argument(
        "--crop",
        choices=("centre", "label"),
        default="centre",
        help="centre the crop on the image, or on the labelled heart (default: centre)",
    )
    p.add_argument("--maxcount", type=int, default=32, help="subjects per shard")
    p.add_argument("--n", type=int, default=24, help="phantom: number of subjects")
    p.add_argument("--seed", type=int, default=0, help="phantom: cohort seed")
    p.add_argument("--options", default=None, help="source options as JSON, e.g. '{\"limit\": 5}'")
    p.add_argument(
        "--overwrite", action="store_true", help="replace shards converted with other settings"
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start over instead of keeping the verified shards of an earlier run",
    )
    p.set_defaults(func=_shard)

    for name, (config, what) in TRAINING.items():
        # Parsed by LightningCLI in main(); listed here so `cmrfm --help` shows them.
        sub.add_parser(
            name,
            help=f"{what} (LightningCLI: --config FILE, --key.sub value; --resume CKPT|last, "
            f"--extend-to STEPS; default {config})",
            add_help=False,
        )

    p = sub.add_parser("evaluate", help="score a fine-tuned checkpoint on held-out subjects")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--shards", required=True, help="shard folder with manifest.json")
    p.add_argument("--split", default="test", help="which split to score (default: test)")
    p.add_argument(
        "--frames", type=int, default=None, help="clip length; default from the checkpoint"
    )
    p.add_argument("--out", type=Path, default=Path("runs/report.json"))
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "fewshot",
        help="few-shot benchmark: methods x labelled subjects x seeds on a fixed evaluation split",
    )
    p.add_argument(
        "--config", type=Path, default=None, help="YAML (default configs/fewshot_TASK_acdc.yaml)"
    )
    p.add_argument("--task", choices=["seg", "ef", "cls"], default=None)
    p.add_argument("--shards", default=None, help="labelled shard folder (default: the config's)")
    p.add_argument("--out", default=None, help="results folder; a re-run resumes it")
    p.add_argument("--labels", default=None, help="labelled subjects per run, e.g. 1,2,5,10,20,all")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..SEEDS-1 (different draws)")
    p.add_argument("--methods", default=None, help="e.g. pretrained,scratch,unet")
    p.add_argument("--pretrained", default=None, help="hub folder or pretraining checkpoint")
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per run")
    p.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per run instead of --budget-s"
    )
    p.add_argument("--eval-split", default=None, help="evaluation split (default: test)")
    p.add_argument("--seg-from", default=None, help="segmentation benchmark folder to reuse")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score the finished segmentation runs again from their saved label maps (no training)",
    )
    p.set_defaults(func=_fewshot)

    p = sub.add_parser(
        "demo", help="phantom -> shards -> pretrain -> fine-tune -> evaluate -> report"
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument(
        "--data", type=Path, default=None, help="an ACDC training folder instead of the phantom"
    )
    p.add_argument("--labels", type=int, default=4, help="labelled subjects for fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="tiny model and few steps (tests, smoke runs)"
    )
    p.set_defaults(func=_demo)
    _add_inspect(sub)
    _add_probe(sub)
    _add_bench(sub)
    _add_export(sub)
    _add_predict(sub)
    _add_publish(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINING:
        from cmrfm.train import ConfigError, ResumeError, run_training

        rest = argv[1:]
        if "--help" in rest or "-h" in rest:  # ours first, at once; then Lightning's (slow)
            print(training_shortcuts(argv[0]), flush=True)
        if (
            not any(a == "--config" or a.startswith("--config=") for a in rest)
            and "--help" not in rest
        ):
            rest = ["--config", str(CONFIGS / TRAINING[argv[0]][0]), *rest]
        try:
            path = run_training(config_args(rest))  # --config NAME: a shipped one too
        except (
            ConfigError,
            ResumeError,
            *USER_ERRORS,
        ) as error:  # no checkpoint to resume, no shard folder:
            # the user's to fix, one line (CMRFM_DEBUG=1 shows the traceback)
            if os.environ.get("CMRFM_DEBUG"):
                raise
            fail(argv[0], error)
        print(f"checkpoint: {path}")
        return
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        # A missing folder or a refused overwrite is the user's to fix: one line, not a traceback
        # (CMRFM_DEBUG=1 shows it).
        if os.environ.get("CMRFM_DEBUG"):
            raise
        fail(args.command, error)


if __name__ == "__main__":
    main()
