"""`cmrfm shard` (a source -> webdataset shards + manifest.json) and `cmrfm inspect`."""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

from cmrfm.cli.args import MIN_SIZE, _percentile, _Percentiles, _size, _spacing
from cmrfm.cli.errors import UsageError, fail

# Bytes per output voxel while a study converts: a float32 working copy, the uint8 image, the uint8
# label.
BYTES_PER_VOXEL = 4 + 1 + 1
# (slices, frames) of a large study when the source cannot say cheaply: above ACDC's (~10 x 30).
LARGE_STUDY = (20, 50)


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


def add_shard(sub: argparse._SubParsersAction) -> None:
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


def _inspect(args: argparse.Namespace) -> None:
    from data_shards.inspect import inspect_shards
    from data_shards.writer import read_manifest

    try:  # a manifest that is not JSON: named, with where it breaks
        read_manifest(args.shards)
    except ValueError as error:
        fail("inspect", error)
    summary = inspect_shards(
        args.shards, args.out, clips=args.clips, frames=args.frames, seed=args.seed
    )
    if summary["problems"]:
        raise SystemExit(1)  # a corrupt folder must fail scripts that inspect before training


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect", help="counts, histograms, sha256 check and a contact sheet of a shard folder"
    )
    p.add_argument("shards", type=Path, help="shard folder with manifest.json")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: SHARDS/inspect)")
    p.add_argument("--clips", type=int, default=16, help="contact sheet rows (random clips)")
    p.add_argument("--frames", type=int, default=8, help="contact sheet columns (frames)")
    p.add_argument("--seed", type=int, default=0, help="which subjects, slices and frames")
    p.set_defaults(func=_inspect)
