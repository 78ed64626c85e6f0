"""Sunnybrook-style contour files -> label maps (S, T, H, W) for the dicom source.

Sunnybrook ships ``contourfiles/<case>/i-contours/IM-0001-NNNN-icontour-manual.txt`` (LV
endocardium, ED and ES) and ``o-contours/...-ocontour-manual.txt`` (epicardium, ED only): lines of
``x y`` in pixels, NNNN the DICOM InstanceNumber; ``link.csv`` maps DICOM folders to cases.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from data_shards.record import BACKGROUND, IGNORE, LV, MYO
from data_shards.sources.registry import SourceError

_CONTOUR = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt")
_SUNNYBROOK_GROUP = re.compile(r"SC-(HF-I|HF-NI|HYP|N)-\d+")  # case name -> diagnosis


def sunnybrook_layout(
    root: Path, contours: Path | str | None, link: Path | str | None
) -> tuple[Path, Path | None, Path | None]:
    """Sunnybrook as released: ``root/{dicoms, contourfiles, link.csv}``, or root is its dicoms/."""
    base = None
    if (root / "dicoms").is_dir() and (root / "contourfiles").is_dir():
        base, root = root, root / "dicoms"
    elif (root.parent / "contourfiles").is_dir() and (
        (root.parent / "link.csv").is_file() or root.name == "dicoms"
    ):
        base = root.parent  # Sunnybrook's dicoms/ without link.csv: its contours are reported
    if base is not None and contours is None:
        contours = base / "contourfiles"
        if link is None and (base / "link.csv").is_file():
            link = base / "link.csv"
    return root, None if contours is None else Path(contours), None if link is None else Path(link)


def read_link(path: Path) -> dict[str, str]:
    """``study folder -> contour folder`` from CSV rows; Sunnybrook's header row is skipped."""
    try:
        rows = list(csv.reader(path.read_text().splitlines()))
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read link file ({err.strerror or err})") from None
    rows = [[cell.strip() for cell in row] for row in rows if any(c.strip() for c in row)]
    if rows and rows[0][0].lower() == "patient_id":
        rows = rows[1:]
    for n, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0] or not row[1]:
            raise ValueError(f"{path}: row {n} is not 'study folder,contour folder': {row}")
    return {row[0]: row[1] for row in rows}


def contour_folder(
    study: Path, contours: Path | None, names: dict[str, str], single: bool
) -> Path | None:
    """The contour folder of one study: as ``names`` maps it, same-named, or ``contours`` itself."""
    if contours is None:
        return None
    if study.name in names:
        return contours / names[study.name]  # read_dicom_study reports it if missing
    if (contours / study.name).is_dir():
        return contours / study.name
    if single and (contours / "i-contours").is_dir():
        return contours
    return None  # no contours for this study: it comes out unlabelled


def unmatched_contours(contours: Path | None, used: list[Path | None]) -> list[Path]:
    """Contour folders under ``contours`` that no study was matched to: its sub-folders holding
    contour files, and ``contours`` itself when it holds ``i-contours/`` (one study's layout)."""
    if contours is None or not contours.is_dir():
        return []
    taken = {Path(folder).resolve() for folder in used if folder is not None}
    found = [contours] if _holds_contours(contours, "*-contours/*") else []
    found += [p for p in sorted(contours.iterdir()) if p.is_dir() and _holds_contours(p, "**/*")]
    return [folder for folder in found if folder.resolve() not in taken]


def _holds_contours(folder: Path, pattern: str) -> bool:
    return any(_CONTOUR.fullmatch(p.name) for p in folder.glob(f"{pattern}contour-manual.txt"))


def diagnosis_group(folder: Path) -> str | None:
    """Sunnybrook's diagnosis from a case folder name (``SC-HF-I-4`` -> ``HF-I``), else None."""
    match = _SUNNYBROOK_GROUP.fullmatch(folder.name)
    return match[1] if match else None


def contour_labels(
    folder: Path, instances: dict[int, tuple[int, int]], shape: tuple[int, ...]
) -> tuple[np.ndarray, int, int]:
    """Labels (S, T, H, W) uint8 from i- (endocardium) and o- (epicardium) contours, and ED, ES.

    ED and ES are the two frames with i-contours, ED the one enclosing more area. On them, a
    slice with both contours is fully labelled (LV inside the i-contour, MYO between, background
    outside); with only an i-contour (every ES slice in Sunnybrook) LV inside, IGNORE outside,
    since the myocardium there is unknown; with only an o-contour IGNORE inside, background
    outside; with none IGNORE. Other frames are IGNORE. Training drops any slice-frame holding
    IGNORE, so unknown pixels never become background. Papillary (p1/p2) contours are skipped.
    """
    h, w = shape[2:]
    inner: dict[tuple[int, int], np.ndarray] = {}
    outer: dict[tuple[int, int], np.ndarray] = {}
    for path in sorted(folder.rglob("*contour-manual.txt")):
        match = _CONTOUR.fullmatch(path.name)
        if match is None:
            continue
        number, kind = int(match[1]), match[2]
        if number not in instances:
            raise SourceError(
                path,
                f"instance {number} is not in the DICOM series (instances {min(instances)} to "
                f"{max(instances)}): contours of another study?",
            )
        (inner if kind == "i" else outer)[instances[number]] = rasterise(
            read_contour(path, h, w), h, w
        )
    phases = sorted({t for _, t in inner})
    if len(phases) != 2:
        raise SourceError(
            folder, f"i-contours on {len(phases)} frames {phases}; expected two (ED and ES)"
        )
    area = {t: sum(int(m.sum()) for (_, u), m in inner.items() if u == t) for t in phases}
    if area[phases[0]] == area[phases[1]]:
        raise SourceError(folder, "i-contours enclose the same area at both frames: ED or ES?")
    ed, es = sorted(phases, key=area.__getitem__, reverse=True)
    stray = sorted(t for _, t in outer if t not in phases)
    if stray:
        raise SourceError(folder, f"o-contours on frame {stray[0]}, which has no i-contours")
    label = np.full(shape, IGNORE, np.uint8)
    for (s, t), mask in outer.items():
        label[s, t][~mask] = BACKGROUND
        label[s, t][mask] = MYO if (s, t) in inner else IGNORE
    for (s, t), mask in inner.items():
        label[s, t][mask] = LV
    return label, ed, es


def read_contour(path: Path, h: int, w: int) -> np.ndarray:
    """(N, 2) points (x = column, y = row) in pixels; SourceError if malformed or off the image."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise SourceError(path, f"cannot read contour ({err.strerror or err})") from None
    points = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            x, y = (float(v) for v in line.split())
        except ValueError:
            raise SourceError(
                path, f"line {n}: expected 'x y', got {line.strip()[:40]!r}"
            ) from None
        points.append((x, y))
    if len(points) < 3:
        raise SourceError(path, f"{len(points)} points: a contour needs at least 3")
    pts = np.array(points)
    if not (np.all(pts >= -1) and np.all(pts[:, 0] <= w) and np.all(pts[:, 1] <= h)):
        raise SourceError(path, f"points outside the {w} x {h} image: contour of another image?")
    return pts


def rasterise(points: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre is inside the polygon; pixel (i, j) is centred at x=j, y=i.

    That is the DICOM convention too (ImagePositionPatient is the centre of the first pixel).
    """
    from matplotlib.path import Path as Polygon  # only needed with contours

    mask = np.zeros((h, w), dtype=bool)
    # Only pixels in the bounding box can be inside; testing the rest would cost 10x the time.
    (c0, r0), (c1, r1) = np.floor(points.min(0)), np.ceil(points.max(0))
    r0, r1, c0, c1 = int(max(r0, 0)), int(min(r1, h - 1)), int(max(c0, 0)), int(min(c1, w - 1))
    rows, cols = np.mgrid[r0 : r1 + 1, c0 : c1 + 1]
    centres = np.column_stack([cols.ravel(), rows.ravel()])
    mask[r0 : r1 + 1, c0 : c1 + 1] = Polygon(points).contains_points(centres).reshape(rows.shape)
    return mask
