"""DICOM layouts: cmrfm's dicom source vs dcm2niix, on real studies rewritten into each layout.

Run from the project root (prints the Markdown table of benchmarks/RESULTS.md):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dicom_layouts.py

Each Sunnybrook study (default: both) is rewritten into every layout of tests/dicom_layouts.py
in a temporary folder, read by the dicom source and converted by dcm2niix, and both results
are compared frame by frame with the study as released, read by the dicom source. dcm2niix
runs with strict options (no JSON sidecar, files named by series number) into that temporary
folder, which is deleted: its NIfTI files still carry header values (the acquisition time), so
only shapes and comparisons leave it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data_shards" / "sources"))  # the layouts are test fixtures

from dicom_layouts import (  # noqa: E402
    LAYOUTS,
    dcm2niix_path,
    load_study,
    locate_frames,
    original,
    run_dcm2niix,
)

from data_shards.record import Subject  # noqa: E402
from data_shards.sources.dicom import dicom  # noqa: E402

SUNNYBROOK = ROOT.parent / "shared" / "data" / "sunnybrook" / "dicoms"
STUDIES = ("SCD0000301", "SCD0000401")


def ours(folder: Path, reference: Subject) -> tuple[str, str]:
    """The dicom source on ``folder`` (a root holding the one study) against the reference:
    (S×T, verdict)."""
    (subject,) = dicom(folder, salt="benchmark")
    if not isinstance(subject, Subject):
        return "–", f"refused: {subject.reason[:60]}"
    s, t = subject.image.shape[:2]
    same = subject.image.shape == reference.image.shape and bool(
        (subject.image == reference.image).all()
    )
    spacing = np.allclose(subject.spacing, reference.spacing, atol=1e-3)
    geometry = all(subject.meta[k] == reference.meta[k] for k in ("direction", "origin"))
    verdict = "identical" if same and spacing and geometry else "DIFFERENT"
    return f"{s}×{t}", f"{verdict}, frames by {subject.meta.get('frame_order')}"


def theirs(folder: Path, out: Path, reference: Subject) -> tuple[str, str]:
    """dcm2niix on ``folder``: (what it wrote, how its frames compare with the reference)."""
    files = run_dcm2niix(folder, out)
    if not files:
        return "nothing", "error: unsupported"
    volumes = [np.asarray(nib.load(f).dataobj) for f in files]
    shapes = sorted({"×".join(map(str, v.shape)) for v in volumes})
    wrote = f"{len(files)} × {', '.join(shapes)}"
    places = locate_frames(volumes, reference.image)
    if any(p is None for p in places):
        return wrote, "pixels differ"
    s, t = reference.image.shape[:2]
    stacked = len(files) == 1 and places[0].shape[:2] == (s, t)
    in_order = all(_in_order(p) for p in places)
    order = "frames in order" if in_order else "FRAMES OUT OF ORDER"
    return wrote, f"{'one stack' if stacked else 'not stacked'}, identical pixels, {order}"


def _in_order(place: np.ndarray) -> bool:
    """Along the volume's time axis the reference frame rises, at one slice; along Z the
    slice moves one way at one frame."""
    slices, frames = place[..., 0], place[..., 1]
    time_ok = all((np.diff(frames[z]) > 0).all() and len(set(slices[z])) == 1 for z in range(len(place)))  # fmt: skip
    steps = np.diff(slices, axis=0)
    space_ok = len(place) == 1 or ((steps > 0).all() or (steps < 0).all())
    return time_ok and space_ok and all(len(set(frames[:, i])) == 1 for i in range(place.shape[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", nargs="+", default=list(STUDIES))
    args = parser.parse_args()
    if dcm2niix_path() is None:
        sys.exit("dcm2niix not found: .venv/bin/pip install dcm2niix")
    warnings.simplefilter("ignore")  # pydicom's notes on Sunnybrook's invalid UIDs
    rows: dict[str, list[tuple[str, ...]]] = {name: [] for name in ["original", *LAYOUTS]}
    with tempfile.TemporaryDirectory() as tmp:
        for study_name in args.studies:
            study = load_study(SUNNYBROOK / study_name)
            base = Path(tmp) / study_name
            original(study, base / "original" / "study")
            (reference,) = dicom(base / "original", salt="benchmark")
            for name in rows:
                root = base / name
                if name != "original":
                    LAYOUTS[name](study, root / "study")
                wrote, compared = theirs(root / "study", base / "dcm2niix" / name, reference)
                rows[name].append((*ours(root, reference), wrote, compared))
    print("| layout | cmrfm S×T | cmrfm vs original | dcm2niix wrote (files × shape) | dcm2niix vs original |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, results in rows.items():  # one value per column, or each study's
        cells = [" / ".join(dict.fromkeys(r[i] for r in results)) for i in range(4)]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
