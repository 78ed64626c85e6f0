"""`cmrfm`: the one command-line entry (shard, pretrain, finetune, evaluate, demo)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cmrfm import CONFIGS

# Training subcommands -> (default config in configs/, what they do).
TRAINING = {
    "pretrain": ("pretrain_mae_phantom.yaml", "MAE pretraining"),
    "finetune": ("finetune_seg_phantom.yaml", "few-shot segmentation fine-tuning"),
}


def _shard(args: argparse.Namespace) -> None:
    from data_shards.convert import convert
    from data_shards.preprocess import PreprocessConfig

    options = json.loads(args.options) if args.options else {}
    if args.source == "phantom":
        options.setdefault("n", args.n)
        options.setdefault("seed", args.seed)
    convert(
        args.source,
        args.root,
        args.out,
        preprocess_config=PreprocessConfig(spacing=args.spacing, size=args.size),
        source_options=options,
        maxcount=args.maxcount,
        overwrite=args.overwrite,
    )


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmrfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shard", help="convert a source into webdataset shards + manifest.json")
    p.add_argument("--source", required=True, help="registered source: phantom, acdc")
    p.add_argument("--root", type=Path, default=None, help="dataset folder as released")
    p.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    p.add_argument("--spacing", type=float, default=1.5, help="target in-plane spacing, mm")
    p.add_argument("--size", type=int, default=128, help="crop/pad to size x size pixels")
    p.add_argument("--maxcount", type=int, default=32, help="subjects per shard")
    p.add_argument("--n", type=int, default=24, help="phantom: number of subjects")
    p.add_argument("--seed", type=int, default=0, help="phantom: cohort seed")
    p.add_argument("--options", default=None, help="source options as JSON, e.g. '{\"limit\": 5}'")
    p.add_argument("--overwrite", action="store_true", help="replace shards of another source")
    p.set_defaults(func=_shard)

    for name, (config, what) in TRAINING.items():
        # Parsed by LightningCLI in main(); listed here so `cmrfm --help` shows them.
        sub.add_parser(
            name,
            help=f"{what} (LightningCLI: --config FILE, --key.sub value; default {config})",
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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINING:
        from cmrfm.train import run_training

        rest = argv[1:]
        if (
            not any(a == "--config" or a.startswith("--config=") for a in rest)
            and "--help" not in rest
        ):
            rest = ["--config", str(CONFIGS / TRAINING[argv[0]][0]), *rest]
        path = run_training(rest)
        print(f"checkpoint: {path}")
        return
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
