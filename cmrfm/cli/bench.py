"""`cmrfm bench loader|pretrain|seg|runtime|start`: each benchmark's flags are made from its
function's signature (cmrfm.cli.signature), with the help written here; cmrfm.bench runs them."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cmrfm.bench.pretrain_options import PRESETS, PretrainBenchOptions
from cmrfm.cli.args import _patch_sizes, _worker_counts
from cmrfm.cli.errors import fail
from cmrfm.cli.signature import Flag, LazyFlagsParser, add_signature_flags, call_arguments


@dataclass(frozen=True)
class Bench:
    """One `cmrfm bench NAME`: its function (``module:name``, imported when the command is
    used), the command's help, the help (or add_argument keywords) of its flags, and the errors
    that are the user's to fix (one line, exit 2)."""

    function: str
    help: str
    flags: Mapping[str, Flag]
    errors: tuple[type[Exception], ...] = (ValueError,)

    def load(self) -> Callable[..., Any]:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)


BENCHES = {
    "loader": Bench(
        "cmrfm.bench.loader:bench_loader",
        "clips/s streaming from shards vs a plain .npy reader of the same arrays",
        {
            "shards": "default: phantom shards in --cache",
            "workers": {"type": _worker_counts, "help": "e.g. 0,1,2"},
            "frames": "clip length",
            "size": "phantom image size (no --shards)",
            "seconds": "timed run per loader and count",
            "augment": "pretraining augmentation in both loaders",
            "augment_on": "augment in the loader workers (float32 clips), or ship uint8 and time "
            "the batched device-side augmentation apart, as a GPU job runs it (default)",
            "rounds": "alternating time slices per loader",
            "cache": "phantom shards",
        },
    ),
    "seg": Bench(
        "cmrfm.bench.seg:bench_seg",
        "seconds per training step of the ViT segmenters (patch x decoder variant) against"
        " MONAI's 2D U-Net, as ratios in one run",
        {
            "patches": {"type": _patch_sizes, "help": "e.g. 8,16"},
            "variants": "ARCH[-fsN][-lastK|-linear], ARCH unetr, light, dense (the U-Net "
            "backbone) or none (backbone alone), e.g. unetr,unetr-fs8,light,light-last4 "
            "(default: cmrfm.bench.seg.DEFAULT_VARIANTS)",
            "frames": "clip length",
            "size": "H = W",
            "num_classes": {"flag": "--classes", "help": "classes including background"},
            "steps": "timed steps per contender and round",
            "rounds": "rounds, order alternated",
            "warmup": "untimed steps per contender first",
            "threads": "torch threads (on a CPU)",
            "device": "cpu or cuda (default: CUDA when available)",
        },
    ),
    "runtime": Bench(
        "cmrfm.bench.runtime:bench_runtime",
        "seconds to segment one study under torch, onnxruntime and onnxruntime int8, as ratios "
        "to torch in one run",
        {
            "models": {
                "flag": "--model",
                "help": "fine-tuned package (repeatable; exported into a temporary copy)",
            },
            "archs": "without --model: packages built with random weights, e.g. unet,light,dense",
            "slices": "phantom study slices",
            "frames": "phantom study frames",
            "batch": "clips per forward pass",
            "rounds": "timed runs per runtime",
            "threads": "torch and onnxruntime threads",
            "int8_ops": "op types the int8 model quantises (export --int8-ops)",
        },
    ),
    "start": Bench(
        "cmrfm.bench.start:bench_start",
        "seconds until `cmrfm --help` answers and `cmrfm predict` starts reading a study, "
        "against `python -c pass`, in one run",
        {
            "model": "fine-tuned package (default: a dense U-Net with random weights)",
            "rounds": "fresh processes per case",
        },
        errors=(ValueError, RuntimeError),  # RuntimeError: a package that does not load
    ),
}

PRETRAIN_FLAGS: dict[str, Flag] = {
    "compile": "also measure torch.compile'd backbone blocks",
    "strategies": "Lightning strategies, one device",
    "peak_tflops": "peak for MFU (default: the GPU's dense bf16 peak; none on a CPU)",
    "rounds": "measurements per run, order alternated",
    "threads": "torch threads on a CPU (default 1)",
}


def _out(name: str) -> dict[str, Flag]:
    """Where every benchmark writes its results from the command line (the functions: nowhere)."""
    return {"out": {"default": Path(f"runs/bench/{name}.json")}}


def _add_flags(parser: argparse.ArgumentParser, name: str) -> None:
    bench = BENCHES[name]
    add_signature_flags(parser, bench.load(), {**bench.flags, **_out(name)})


def _run(name: str, args: argparse.Namespace) -> None:
    bench = BENCHES[name]
    function = bench.load()
    try:
        function(**call_arguments(function, args))
    except bench.errors as error:  # an option that does not fit: say which, no trace
        fail(f"bench {name}", error)


def _add_pretrain_flags(parser: argparse.ArgumentParser) -> None:
    """--preset; a flag per PretrainBenchOptions field, default None (the preset's value, which
    the help gives); then bench_pretrain's other parameters."""
    from cmrfm.bench.pretrain import bench_pretrain

    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="the model and batch (default cpu: a test ViT on 4x32x32 clips; h100: ViT-B on "
        "16x128x128, bf16-mixed); the options below override it",
    )
    fields = [f.name for f in dataclasses.fields(PretrainBenchOptions)]
    by_preset = {
        f: {"default": None, "help": ", ".join(f"{n} {getattr(p, f)}" for n, p in PRESETS.items())}
        for f in fields
    }
    add_signature_flags(parser, PretrainBenchOptions, by_preset)
    flags = {**PRETRAIN_FLAGS, **_out("pretrain")}
    add_signature_flags(parser, bench_pretrain, flags, skip=(*fields, "device", "console"))


def _bench_pretrain(args: argparse.Namespace) -> None:
    from cmrfm.bench.pretrain import bench_pretrain, resolve_options

    try:
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainBenchOptions)}
        options = resolve_options(args.preset, **given)
        bench_pretrain(**{**call_arguments(bench_pretrain, args), **options})
    except ValueError as error:  # an option that does not fit: say which, no trace
        fail("bench pretrain", error)


def add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: loader, pretrain, seg, runtime, start")
    group = bench.add_subparsers(dest="benchmark", required=True, parser_class=LazyFlagsParser)
    _add_signature_bench(group, "loader")
    p = group.add_parser(
        "pretrain",
        help="clips/s and MFU of the MAE step: Lightning vs a bare loop, compiled or not, "
        "masked or not, DDP vs DeepSpeed ZeRO-2",
        flags=_add_pretrain_flags,
    )
    p.set_defaults(func=_bench_pretrain)
    for name in ("seg", "runtime", "start"):
        _add_signature_bench(group, name)


def _add_signature_bench(group: argparse._SubParsersAction, name: str) -> None:
    p = group.add_parser(name, help=BENCHES[name].help, flags=partial(_add_flags, name=name))
    p.set_defaults(func=partial(_run, name))
