"""Re-measure the README's timing figures in one go, on an otherwise idle machine: `cmrfm shard`
per shared-data folder, `cmrfm predict` per package and study, `cmrfm bench start` and `cmrfm
bench loader`. Writes timings.json and timings.md under --out, with the date, commit and load.

    python benchmarks/readme_timings.py --package runs/fewshot/seg_unet_test_all_seeded/models/pretrained_n80_s0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATA = Path("../shared/data")
SHARD = [  # (name, source, root under DATA)
    ("ACDC training", "acdc", "acdc/training"),
    ("Sunnybrook", "dicom", "sunnybrook"),
    ("M&Ms-2", "nifti", "mnms2"),
    ("EMIDEC", "lge-slices", "emidec"),
    ("npz", "npz", "npz"),
    ("ACDC cine", "acdc-cine", "acdc_cine"),
]
LOADER = [
    ["--workers", "0,1,2", "--seconds", "15", "--augment-on", "loader"],
    ["--workers", "0,1,2", "--seconds", "10", "--augment-on", "device"],
]


def timed(command: list[str], log: Path) -> float:
    """Wall seconds of one command; its output goes to ``log``; a failure stops the run."""
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    print(f"{seconds:7.1f} s  {' '.join(command)}", flush=True)
    return seconds


def synthetic_study(path: Path, slices: int = 10, frames: int = 30, size: int = 160) -> Path:
    """Random noise as a (size, size, slices, frames) cine NIfTI: speed does not depend on it."""
    import nibabel as nib
    import numpy as np

    data = np.random.default_rng(0).integers(0, 1000, (size, size, slices, frames), np.int16)
    image = nib.Nifti1Image(data, np.diag([1.4, 1.4, 8.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)
    return path


def built_vit(folder: Path) -> Path:
    """The registry default ViT segmenter (UNETR, patch 16) with random weights."""
    from cmrfm.bench.runtime import build_package

    return build_package("unetr", folder, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--package",
        type=Path,
        action="append",
        default=[],
        help="fine-tuned package to time predict with (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/readme_timings"))
    parser.add_argument(
        "--skip", default="", help="comma list of parts: shard,predict,start,loader"
    )
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    out = args.out
    if out.is_dir() and any(out.iterdir()) and not (out / "logs").is_dir():
        sys.exit(f"{out} holds other files: give an empty or new --out (this one is replaced)")
    shutil.rmtree(out, ignore_errors=True)  # an earlier run of this script
    (out / "logs").mkdir(parents=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    result: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "load_before": os.getloadavg(),
        "cores": os.cpu_count(),
    }
    cmrfm = [shutil.which("cmrfm") or sys.exit("cmrfm is not on PATH: activate the venv")]
    if "shard" not in skip:
        result["shard"] = {
            name: timed(
                [
                    *cmrfm,
                    "shard",
                    "--source",
                    source,
                    "--root",
                    str(DATA / root),
                    "--out",
                    str(out / "shards" / source),
                ],
                out / "logs" / f"shard_{source}.txt",
            )
            for name, source, root in SHARD
        }
    if "predict" not in skip:
        result["predict"] = predict_part(cmrfm, out, args.package)
    if "start" not in skip:
        timed(
            [*cmrfm, "bench", "start", "--rounds", "2", "--out", str(out / "bench_start.json")],
            out / "logs" / "bench_start.txt",
        )
        result["start"] = json.loads((out / "bench_start.json").read_text())
    if "loader" not in skip:
        result["loader"] = []
        for i, flags in enumerate(LOADER):
            path = out / f"bench_loader_{i}.json"
            timed(
                [*cmrfm, "bench", "loader", *flags, "--out", str(path)],
                out / "logs" / f"bench_loader_{i}.txt",
            )
            result["loader"].append({"flags": flags, "result": json.loads(path.read_text())})
    result["load_after"] = os.getloadavg()
    (out / "timings.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "timings.md").write_text(markdown(result))
    print(
        f"-> {out / 'timings.json'}; load before {result['load_before']}, after {result['load_after']}"
    )


def predict_part(cmrfm: list[str], out: Path, packages: list[Path]) -> dict:
    """Each package on each study alone (predict's own per-step seconds), then one call on all."""
    studies = {
        "synthetic 10 x 30": synthetic_study(out / "synthetic_10x30.nii.gz"),
        "Sunnybrook SCD0000301": DATA / "sunnybrook/dicoms/SCD0000301",
        "ACDC patient008 ED": DATA / "acdc/training/patient008/patient008_frame01.nii.gz",
    }
    packages = [*packages, built_vit(out / "built_unetr_p16")]
    rows = {}
    for p, package in enumerate(packages):
        row = {}
        for s, (name, study) in enumerate(studies.items()):
            folder = out / "predict" / f"p{p}_s{s}"
            wall = timed(
                [*cmrfm, "predict", str(study), "--model", str(package), "--out", str(folder)],
                out / "logs" / f"predict_p{p}_s{s}.txt",
            )
            seconds = json.loads((folder / "volumes.json").read_text())["seconds"]
            row[name] = {"wall": wall, "seconds": seconds}
        row["all three, one call"] = timed(
            [
                *cmrfm,
                "predict",
                *map(str, studies.values()),
                "--model",
                str(package),
                "--out",
                str(out / "predict" / f"p{p}_all"),
            ],
            out / "logs" / f"predict_p{p}_all.txt",
        )
        rows[str(package)] = row
    return rows


def markdown(result: dict) -> str:
    """The figures the README quotes, as tables: seconds per shard folder, predict's own seconds
    (model, loading it) and wall time per package and study, start-up, loader clips/s."""
    lines = [
        f"# README timings, {result['date']} at {result['commit']}",
        f"1-min load before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}",
    ]
    if "shard" in result:
        lines += ["", "| data | seconds |", "|---|---|"]
        lines += [f"| {name} | {sec:.1f} |" for name, sec in result["shard"].items()]
    for package, row in result.get("predict", {}).items():
        lines += [
            "",
            f"predict, `{package}`:",
            "",
            "| study | total (model, load) | wall |",
            "|---|---|---|",
        ]
        for study, cell in row.items():
            if isinstance(cell, dict):
                sec = cell["seconds"]
                lines.append(
                    f"| {study} | {sec['total']:.1f} s ({sec['model']:.1f}, "
                    f"{sec['load_model']:.1f}) | {cell['wall']:.1f} s |"
                )
            else:
                lines.append(f"| {study} | | {cell:.1f} s |")
    if "start" in result:
        lines += ["", "| start-up case | median s |", "|---|---|"]
        lines += [
            f"| {r['case']} ({r['timed']}) | {r['median_s']:.2f} |" for r in result["start"]["rows"]
        ]
    for run in result.get("loader", []):
        lines += [
            "",
            f"`cmrfm bench loader {' '.join(run['flags'])}`:",
            "",
            "| workers | shards clips/s | plain clips/s | ratio |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['workers']} | {r['shards']['clips_per_s']:.0f} | "
            f"{r['plain']['clips_per_s']:.0f} | {r['ratio']:.2f} |"
            for r in run["result"]["runs"]
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
