"""`cmrfm predict`: segment studies with a fine-tuned package and print their volumes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _predict(args: argparse.Namespace) -> None:
    """One study: outputs in --out. Several: each in --out/NNN_NAME, with the model loaded once;
    a study that fails is reported by name and the others go on (exit 1 if any failed)."""
    import time

    from cmrfm.predict import ModelError, Predictor, predict, study_folder_name
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
        # Work starts here, before the network's imports (`cmrfm bench start` times this line);
        # the study is not named: a DICOM folder's name is often a patient id.
        print(f"study {i} of {len(args.study)}: reading", flush=True)
        try:
            volumes = predict(study, model, out, **options)
        except ModelError as error:  # no study can be segmented with this model: stop
            say(error)
            raise SystemExit(2) from None
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
    lv, rv, f = volumes["lv"], volumes["rv"], volumes["phases"]

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


def add_predict(sub: argparse._SubParsersAction) -> None:
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
