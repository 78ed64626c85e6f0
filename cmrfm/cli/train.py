"""The training and scoring subcommands: pretrain and finetune (parsed by LightningCLI in
`cmrfm.cli.main`), evaluate, fewshot, demo and probe."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmrfm import CONFIGS
from cmrfm.cli.errors import fail
from cmrfm.shipped import config_path

# Training subcommands -> (default config in configs/, what they do).
TRAINING = {
    "pretrain": (
        "pretrain_mae_phantom.yaml",
        "self-supervised pretraining (MAE, contrastive or positional, by config)",
    ),
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
                  "  --pretrained PATH    a pretraining checkpoint, hub folder or released model's name",
                  "                       to start from; none: from scratch"]  # fmt: skip
    lines += ["  --KEY.SUB VALUE      any config key, e.g. --model.init_args.lr 1e-4", "",
              "LightningCLI's full list follows.", ""]  # fmt: skip
    return "\n".join(lines)


def add_training(sub: argparse._SubParsersAction) -> None:
    for name, (config, what) in TRAINING.items():
        # Parsed by LightningCLI in main(); listed here so `cmrfm --help` shows them.
        sub.add_parser(
            name,
            help=f"{what} (LightningCLI: --config FILE, --key.sub value; --resume CKPT|last, "
            f"--extend-to STEPS; default {config})",
            add_help=False,
        )


def _fewshot(args: argparse.Namespace) -> None:
    from finetune.fewshot import FewShotBenchmark, load_config

    if args.merge:
        return _merge_fewshot(args.merge, args.out)
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
        "seg_method": args.seg_method,
    }
    try:
        cfg = load_config(Path(config), overrides)
    except ValueError as error:  # a bad option is the user's to fix: one line, exit 2
        fail("fewshot", error)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:  # shards without labelled subjects, weights that cannot be read or do not fit
        bench = FewShotBenchmark(cfg)
        if not args.rescore:
            bench.check_weights()
    except ValueError as error:  # the user's to fix before any run: one line, exit 2
        fail("fewshot", error)
    if args.rescore:
        bench.rescore()
    else:
        bench.run()
    print(f"results: {cfg.out_dir / 'summary.md'}")


def _merge_fewshot(folders: list[str], out: str | None) -> None:
    from finetune.fewshot_merge import merge_benchmarks

    if out is None:
        fail("fewshot", "--merge needs --out, the folder for the merged report")
    try:
        merge_benchmarks(Path(out), folders)
    except ValueError as error:  # folders that do not belong together: say which
        fail("fewshot", error)
    print(f"results: {Path(out) / 'summary.md'}")


def _evaluate(args: argparse.Namespace) -> None:
    from cmrfm.train import our_error
    from finetune.evaluate import evaluate_checkpoint

    try:  # a checkpoint that cannot be read, a split without labelled subjects: named, one line
        report = evaluate_checkpoint(
            args.checkpoint, args.shards, split=args.split, frames=args.frames
        )
    except (ValueError, FileNotFoundError) as error:
        ours = our_error(error)  # what our code refused on purpose; a bug keeps its traceback
        if ours is None:
            raise
        fail("evaluate", ours)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    summary = report["summary"]
    print(
        f"{summary['n_subjects']} {args.split} subjects: mean Dice {summary['dice_mean']:.3f} "
        f"(LV {summary['dice_lv']:.3f}, MYO {summary['dice_myo']:.3f}, RV {summary['dice_rv']:.3f}), "
        f"LV EF MAE {summary['lv_ef_mae']:.1f} points -> {args.out}"
    )


def _demo(args: argparse.Namespace) -> None:
    from cmrfm.demo import make_plan, run_demo

    try:  # what cannot run is refused before any work: --pretrained without --data, or absent
        make_plan(args.data, args.quick, args.pretrained)
    except (ValueError, FileNotFoundError) as error:
        fail("demo", error)
    from cmrfm.train import BuildError

    try:
        run_demo(args.out, data=args.data, quick=args.quick, labels=args.labels, seed=args.seed,
                 pretrained=args.pretrained)  # fmt: skip
    except BuildError as error:  # weights that cannot be read or do not fit: named, one line
        fail("demo", error)


def _probe(args: argparse.Namespace) -> None:
    from finetune.probe import SegProbe, probe_checkpoints

    probe = SegProbe(
        args.shards, labels=args.labels, steps=args.steps, seed=args.seed,
        max_eval_subjects=args.max_eval_subjects, tap=args.tap,
    )  # fmt: skip
    missing = [str(p) for p in args.checkpoints if not p.exists()]
    if missing:
        fail("probe", f"no such checkpoint: {', '.join(missing)}")
    try:  # the shards are read now: damaged or unlabelled ones stop here, before any checkpoint
        _ = probe.subjects
    except ValueError as error:
        fail("probe", error)
    rows, skipped = probe_checkpoints(
        args.checkpoints, probe, args.out, random_init=not args.no_random
    )
    if rows:
        print(f"{len(rows)} probes -> {args.out / 'probe.csv'}, {args.out / 'probe.png'}")
    if skipped:  # each was named as it was skipped; the rest were probed
        print(f"{len(skipped)} checkpoint(s) skipped", file=sys.stderr)
        raise SystemExit(1)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a fine-tuned checkpoint on held-out subjects")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--shards", required=True, help="shard folder with manifest.json")
    p.add_argument("--split", default="test", help="which split to score (default: test)")
    p.add_argument(
        "--frames", type=int, default=None, help="clip length; default from the checkpoint"
    )
    p.add_argument("--out", type=Path, default=Path("runs/report.json"))
    p.set_defaults(func=_evaluate)


def add_fewshot(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--pretrained",
        default=None,
        help="weights of the pretrained methods: a hub folder, a pretraining checkpoint or a "
        "released model's name (default: the config's, else cmr-unet-small-cine); none: no "
        "weights (then leave those methods out)",
    )
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per run")
    p.add_argument(
        "--steps", type=int, default=None, help="optimiser steps per run instead of --budget-s"
    )
    p.add_argument("--eval-split", default=None, help="evaluation split (default: test)")
    p.add_argument("--seg-from", default=None, help="segmentation benchmark folder to reuse")
    p.add_argument(
        "--seg-method",
        default=None,
        help="whose masks from_seg and radiomics use in --seg-from (default: pretrained)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="score the finished segmentation runs again from their saved label maps (no training)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR[:METHOD,...]",
        help="no training: one report in --out over these benchmark folders of one task and data "
        "(e.g. N <= 10 at one step budget, N = all at a longer one); DIR:unet takes only that "
        "folder's unet runs",
    )
    p.set_defaults(func=_fewshot)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="phantom -> shards -> pretrain -> fine-tune -> evaluate -> report; with --data: "
        "ACDC -> shards -> fine-tune from the released backbone -> evaluate -> report",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument(
        "--data", type=Path, default=None, help="an ACDC training folder instead of the phantom"
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="with --data: the weights fine-tuning starts from (default: the release "
        "cmr-unet-small-cine; none: random)",
    )
    p.add_argument("--labels", type=int, default=4, help="labelled subjects for fine-tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="tiny model and few steps (tests, smoke runs)"
    )
    p.set_defaults(func=_demo)


def add_probe(sub: argparse._SubParsersAction) -> None:
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
