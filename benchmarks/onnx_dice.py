"""Dice of a fine-tuned package under torch, onnxruntime (fp32) and onnxruntime int8, on the
labelled subjects of one split of a shard folder (the project's metric:
finetune.evaluate.evaluate, Dice per structure at ED and ES on the model's grid).

The packages must hold model.onnx and model.int8.onnx (`cmrfm export --int8 PACKAGE`; export
into a copy, not into a run's own package). Run from the project root:

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/onnx_dice.py \
        runs/onnx_check/PKG [...] --shards runs/real/acdc --split test --out runs/onnx_check/dice.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cmrfm.onnx_model import load_onnx
from data_shards.stream import load_subjects, shard_urls
from finetune.evaluate import evaluate_predictions, predict_study
from finetune.package import load_finetuned

KEYS = [f"dice_{s}_{p}" for s in ("lv", "myo", "rv") for p in ("ed", "es")] + ["dice_mean"]


def measure(package: Path, subjects: list[dict]) -> dict:
    """Per runtime: the summary's Dice keys, per-subject rows, seconds; label agreement and the
    Dice drop of each ONNX runtime against torch."""
    torch_model, config = load_finetuned(package)
    models = {"torch": torch_model}
    for runtime in ("onnx", "onnx-int8"):
        models[runtime] = load_onnx(package, runtime)[0]
    frames, classes = int(config["frames"]), len(config.get("classes") or []) or 4
    found: dict = {"package": str(package), "arch": config["model"]["init_args"].get("arch")}
    preds: dict = {}
    for runtime, model in models.items():
        start = time.perf_counter()
        with torch.no_grad():
            preds[runtime] = {s["key"]: predict_study(model, s["image"], frames) for s in subjects}
        seconds = time.perf_counter() - start
        report = evaluate_predictions(preds[runtime], subjects, classes)
        found[runtime] = {
            "seconds": round(seconds, 2),
            **{k: report["summary"][k] for k in KEYS},
            "subjects": {
                r["subject"]: {k: r.get(k) for k in KEYS[:-1]} for r in report["subjects"]
            },
        }
    for runtime in ("onnx", "onnx-int8"):
        same = [np.mean(preds[runtime][k] == preds["torch"][k]) for k in preds["torch"]]
        drops = {k: found["torch"][k] - found[runtime][k] for k in KEYS}
        per_subject = [
            found["torch"]["subjects"][s][k] - found[runtime]["subjects"][s][k]
            for s in found["torch"]["subjects"]
            for k in KEYS[:-1]
            if found["torch"]["subjects"][s][k] is not None
        ]
        found[f"{runtime}_vs_torch"] = {
            "label_agreement": float(np.mean(same)),
            "dice_drop": drops,
            "largest_dice_drop": max(drops[k] for k in KEYS[:-1]),
            "largest_subject_dice_drop": float(np.nanmax(per_subject)),
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", type=Path, nargs="+")
    parser.add_argument("--shards", default="runs/real/acdc")
    parser.add_argument("--split", default="test")
    parser.add_argument("--subjects", type=int, default=None, help="the first N only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    subjects = [s for s in load_subjects(shard_urls(args.shards), splits=[args.split])
                if s["label"] is not None][: args.subjects]  # fmt: skip
    print(f"{len(subjects)} labelled {args.split} subjects of {args.shards}")
    results = []
    for package in args.packages:
        found = measure(package, subjects)
        results.append(found)
        print(f"\n{package} ({found['arch']})")
        print("runtime   " + " ".join(f"{k[5:]:>7}" for k in KEYS) + "  seconds")
        for runtime in ("torch", "onnx", "onnx-int8"):
            row = found[runtime]
            print(
                f"{runtime:9} " + " ".join(f"{row[k]:7.4f}" for k in KEYS) + f"  {row['seconds']}"
            )
        for runtime in ("onnx", "onnx-int8"):
            cmp = found[f"{runtime}_vs_torch"]
            print(
                f"{runtime} vs torch: labels agree {cmp['label_agreement']:.5f}, largest drop of a "
                f"mean Dice {cmp['largest_dice_drop']:+.4f}, of one subject's "
                f"{cmp['largest_subject_dice_drop']:+.4f}"
            )
    if args.out is not None:
        report = {"shards": args.shards, "split": args.split, "n_subjects": len(subjects),
                  "subjects": [s["key"] for s in subjects], "results": results}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
