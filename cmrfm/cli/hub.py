"""`cmrfm export` (a checkpoint -> a hub folder or fine-tuned package, optionally ONNX) and
`cmrfm publish` (a hub folder -> the Hugging Face Hub)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmrfm.cli.errors import fail


def _export(args: argparse.Namespace) -> None:
    from cmrfm.card_facts import read_metrics
    from cmrfm.export import export

    onnx = args.onnx or args.int8
    if args.out is None and args.fewshot is not None and not onnx:
        return _add_fewshot(args.checkpoint, args.fewshot)
    if args.out is None:  # `export --onnx PACKAGE`: ONNX files into a fine-tuned package
        if not onnx:
            fail(
                "export",
                "give OUT, the folder to write (only --onnx, --int8 or --fewshot go without)",
            )
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


def _add_fewshot(folder: Path, fewshot: Path) -> None:
    """`export HUB_FOLDER --fewshot summary.csv`: the card of a released folder gets the table."""
    from cmrfm.export import add_fewshot

    try:
        card = add_fewshot(folder, fewshot)
    except (ValueError, FileNotFoundError) as error:
        fail("export", error)
    print(f"{fewshot} -> {card}: few-shot table and model-index (weights untouched)")


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


def add_export(sub: argparse._SubParsersAction) -> None:
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
        "package folder to add ONNX files to; with --fewshot and no OUT, a hub folder whose card "
        "gets the few-shot table (weights untouched)",
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


def add_publish(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "publish", help="upload a hub folder written by `cmrfm export` to the Hugging Face Hub"
    )
    p.add_argument("folder", type=Path, help="hub folder (model.safetensors, config, card)")
    p.add_argument("--repo-id", required=True, help="owner/name of the model repo")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    p.set_defaults(func=_publish)
