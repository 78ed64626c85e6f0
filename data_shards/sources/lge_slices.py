"""2D LGE images with masks, one PNG per slice, grouped into subjects by case id (EMIDEC).

EMIDEC's export: ``train/`` and ``val/`` hold images, ``trainannot/`` and ``valannot/`` the masks
under the same names, ``Case_P012_slice003.png``, 256 x 256 uint8, mask 0 background, 1 LV cavity,
2 myocardium, 3 infarct, 4 microvascular obstruction; ``N`` cases are normal, ``P`` infarcted.
PNGs carry no geometry, so spacing is NaN (preprocessing keeps the native pixel grid).

Splits: the export's own ``val/`` holds 15 normal cases and no infarct (EMIDEC's real test set is
not in it), so it would make a test set without the disease. The folder is kept in
``meta["dataset_split"]`` and our hash split decides, unless ``split_map`` asks for the folders.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from data_shards.record import BACKGROUND, IGNORE, INFARCT, LABEL_NAMES, LV, MVO, MYO, Subject
from data_shards.sources.registry import SourceError, named_regex, register_source
from data_shards.split import SPLITS

PATTERN = r"(?P<case>Case_(?P<group>[NP])\d+)_slice(?P<slice>\d+)"
EMIDEC_TO_OURS = {0: BACKGROUND, 1: LV, 2: MYO, 3: INFARCT, 4: MVO}
EMIDEC_GROUPS = {"N": "normal", "P": "infarct"}
# EMIDEC numbers slices from the apex: the heart's cross-section grows with the slice number in
# 99 of its 100 cases. Our stacks run base to apex, so that order is reversed.
SLICE_ORDERS = ("apex-to-base", "base-to-apex")
_KEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "F"}  # greyscale beyond 8 bits: keep the values


@dataclass
class _Case:
    """The files of one case: slice number -> image path, slice number -> mask path."""

    images: dict[int, Path] = field(default_factory=dict)
    masks: dict[int, Path] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)
    group: str | None = None
    problem: SourceError | None = None


@register_source("lge-slices")
def lge_slices(
    root: Path | str | None,
    pattern: str = PATTERN,
    image_dirs: Sequence[str] | None = None,
    mask_dirs: Sequence[str] | None = None,
    label_map: Mapping[int | str, int] | None = None,
    groups: Mapping[str, str] | None = None,
    slice_order: str = "apex-to-base",
    split_map: Mapping[str, str] | None = None,
    dataset: str = "emidec",
    limit: int | None = None,
) -> Iterator[Subject | SourceError]:
    """Yield one LGE Subject per case, sorted by case id.

    Args:
        root: the dataset folder. Its image folders are ``image_dirs`` when given, else every
            ``<x>/`` with a ``<x>annot/`` beside it, else ``images/`` with ``masks/``.
        pattern: regex that must match a PNG's whole stem, with named groups ``case`` and
            ``slice`` (an integer) and optionally ``group`` (looked up in ``groups``).
        image_dirs: image folders relative to ``root``.
        mask_dirs: mask folder per image folder; by default ``<x>annot``, and where that is
            absent those images have no masks (label None).
        label_map: mask value -> our label (default EMIDEC's); other values are an error.
        groups: the ``group`` match -> ``meta["group"]`` (default N normal, P infarct).
        slice_order: how the dataset numbers slices, "apex-to-base" (EMIDEC) or "base-to-apex".
        split_map: image folder -> our split (e.g. ``{"train": "train", "val": "test"}``) to
            keep the dataset's own split; default None lets our hash split decide.
        dataset: name for subject ids (``<dataset>-<case>``) and ``meta["dataset"]``.
        limit: stop after this many cases.

    Yields:
        Subject with image float32 (S, 1, H, W) from base to apex, label uint8 (S, 1, H, W) in
        our convention with IGNORE slices where a mask file is missing (None when a case has no
        masks), spacing (NaN, NaN, NaN). A case that cannot be used, or a PNG whose name does not
        match ``pattern``, comes out as a SourceError naming the file.

    Raises:
        FileNotFoundError: ``root`` or an image folder is missing, or holds no PNG.
        ValueError: an option is invalid (pattern groups, label values, slice order, split).
    """
    if root is None:
        raise ValueError("lge-slices needs root: the folder holding image and mask folders")
    regex = _compile(pattern)
    lut = _label_lut(EMIDEC_TO_OURS if label_map is None else label_map)
    if slice_order not in SLICE_ORDERS:
        raise ValueError(f"slice_order must be one of {SLICE_ORDERS}, got {slice_order!r}")
    _check_split_map(split_map)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: lge-slices root folder not found")
    pairs = _folder_pairs(root, image_dirs, mask_dirs)
    unmatched, cases = _scan(pairs, regex, EMIDEC_GROUPS if groups is None else groups)
    if not cases and not unmatched:
        raise FileNotFoundError(f"{root}: no .png images in {[p[0].name for p in pairs]}")
    names = sorted(cases)[: None if limit is None else max(0, limit)]
    options = {"lut": lut, "slice_order": slice_order, "split_map": split_map, "dataset": dataset}
    errors = [
        SourceError(path, f"file name does not match pattern {pattern!r}") for path in unmatched
    ]
    subjects = (_read_case_or_error(name, cases[name], **options) for name in names)
    return itertools.chain(errors, subjects)


def _compile(pattern: str) -> re.Pattern:
    return named_regex(pattern, "pattern", {"case", "slice"})


def _label_lut(label_map: Mapping[int | str, int]) -> np.ndarray:
    """Mask value -> our label as a lookup table; unmapped values hold -1 (rejected on read)."""
    mapping = {int(k): int(v) for k, v in label_map.items()}  # JSON options give str keys
    allowed = {*LABEL_NAMES, IGNORE}
    bad = {k: v for k, v in mapping.items() if k < 0 or v not in allowed}
    if not mapping or bad:
        raise ValueError(
            f"label_map must map mask values >= 0 to our labels {sorted(allowed)}, got {bad or {}}"
        )
    lut = np.full(max(mapping) + 1, -1, dtype=np.int16)
    for value, ours in mapping.items():
        lut[value] = ours
    return lut


def _check_split_map(split_map: Mapping[str, str] | None) -> None:
    bad = {k: v for k, v in (split_map or {}).items() if v not in SPLITS}
    if bad:
        raise ValueError(f"split_map values must be among {SPLITS}, got {bad}")


def _folder_pairs(
    root: Path, image_dirs: Sequence[str] | None, mask_dirs: Sequence[str] | None
) -> list[tuple[Path, Path]]:
    """(image folder, mask folder) pairs; the mask folder may be missing (no masks)."""
    if image_dirs is None:
        if mask_dirs is not None:
            raise ValueError("mask_dirs needs image_dirs: one mask folder per image folder")
        pairs = [
            (folder, root / f"{folder.name}annot")
            for folder in sorted(root.iterdir())
            if folder.is_dir() and (root / f"{folder.name}annot").is_dir()
        ]
        if not pairs and (root / "images").is_dir():
            pairs = [(root / "images", root / "masks")]
        if not pairs:
            raise FileNotFoundError(
                f"{root}: no image folders found; expected <x>/ beside <x>annot/ (EMIDEC's "
                "train/ and trainannot/) or images/ with masks/, or pass image_dirs"
            )
        return pairs
    masks = [f"{d}annot" for d in image_dirs] if mask_dirs is None else list(mask_dirs)
    if len(masks) != len(image_dirs):
        raise ValueError(f"mask_dirs {masks} must pair one to one with image_dirs {image_dirs}")
    pairs = [(root / i, root / m) for i, m in zip(image_dirs, masks)]
    # Only a defaulted <x>annot may be absent (unlabelled images): a named one is a typo otherwise.
    named = [] if mask_dirs is None else [m for _, m in pairs]
    missing = [str(folder) for folder in [i for i, _ in pairs] + named if not folder.is_dir()]
    if missing:
        raise FileNotFoundError(f"folders not found: {', '.join(missing)}")
    return pairs


def _scan(
    pairs: list[tuple[Path, Path]], regex: re.Pattern, groups: Mapping[str, str]
) -> tuple[list[Path], dict[str, _Case]]:
    """PNG names that do not match, and the files of each case (names only, nothing decoded)."""
    unmatched: list[Path] = []
    cases: dict[str, _Case] = defaultdict(_Case)
    for image_dir, mask_dir in pairs:
        for folder, is_mask in ((image_dir, False), (mask_dir, True)):
            if not folder.is_dir():
                continue
            for path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png"):
                match = regex.fullmatch(path.stem)
                if match is None or not match["slice"].isdigit():
                    unmatched.append(path)
                    continue
                case = cases[match["case"]]
                files = case.masks if is_mask else case.images
                number = int(match["slice"])
                if number in files and case.problem is None:
                    case.problem = SourceError(path, f"slice {number} is also {files[number]}")
                files[number] = path
                case.folders.add(image_dir.name)  # a mask counts for its image folder
                if match.groupdict().get("group") is not None:
                    case.group = groups.get(match["group"], match["group"])
    return unmatched, dict(cases)


def _read_case_or_error(name: str, case: _Case, **options: Any) -> Subject | SourceError:
    try:
        return read_case(name, case, **options)
    except SourceError as err:
        return err


def read_case(
    name: str,
    case: _Case,
    lut: np.ndarray,
    slice_order: str = "apex-to-base",
    split_map: Mapping[str, str] | None = None,
    dataset: str = "emidec",
) -> Subject:
    """Read and stack one case's slices; raises SourceError naming the file and the problem."""
    numbers = _check_files(name, case)
    if slice_order == "apex-to-base":
        numbers = numbers[::-1]
    images = [_read_image(case.images[n]) for n in numbers]
    first = case.images[numbers[0]]
    for n, image in zip(numbers, images):
        if image.shape != images[0].shape:
            raise SourceError(
                case.images[n], f"size {image.shape} differs from {first.name}'s {images[0].shape}"
            )
    image = np.stack(images)[:, None]  # (S, 1, H, W)

    label, unlabelled = None, [n for n in numbers if n not in case.masks]
    if len(unlabelled) < len(numbers):
        unknown = np.full(images[0].shape, IGNORE, dtype=np.uint8)
        slices = [_read_mask(case.masks[n], lut, images[0].shape) if n in case.masks else unknown
                  for n in numbers]  # fmt: skip
        label = np.stack(slices)[:, None]  # (S, 1, H, W)

    (folder,) = case.folders
    subject_id = f"{dataset}-{name}"
    meta: dict[str, Any] = {
        "source": "lge-slices",
        "dataset": dataset,
        "modality": "lge",
        "ed": 0,  # one frame: as for every LGE subject, ED and ES index it
        "es": 0,
        "split_group": subject_id,
        "dataset_split": folder,
        "slice_numbers": numbers,  # the file's slice number of each stack index
    }
    if case.group is not None:
        meta["group"] = case.group
    if unlabelled and label is not None:
        meta["unlabelled_slice_numbers"] = sorted(unlabelled)
    if split_map and folder in split_map:
        meta["split"] = split_map[folder]
    return Subject(subject_id, image, label, (math.nan, math.nan, math.nan), meta)


def _check_files(name: str, case: _Case) -> list[int]:
    """The case's slice numbers, ascending, once its files make one gap-free stack."""
    if case.problem is not None:
        raise case.problem
    files = case.images or case.masks
    any_file = files[min(files)]  # the folder-level errors name its folder
    if len(case.folders) > 1:
        raise SourceError(
            any_file.parent, f"case {name} has files in several folders {sorted(case.folders)}"
        )
    orphans = sorted(set(case.masks) - set(case.images))
    if orphans:
        mask = case.masks[orphans[0]]
        raise SourceError(mask, f"mask without an image (case {name}, slice {orphans[0]})")
    numbers = sorted(case.images)
    gaps = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if gaps:
        raise SourceError(
            any_file.parent,
            f"case {name} lacks slices {gaps} between {numbers[0]} and {numbers[-1]}; a stack "
            "with a hole would misplace every slice after it",
        )
    return numbers


def _read_image(path: Path) -> np.ndarray:
    """(H, W) float32; colour or palette PNGs become greyscale with PIL's luma, the same rule
    for every file (exact for grey stored as RGB)."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here
            if im.mode not in _KEEP_MODES:
                im = im.convert("L")
            return np.asarray(im, dtype=np.float32)
    except Exception as err:  # PIL raises many types for a damaged file
        raise SourceError(path, f"unreadable PNG ({type(err).__name__}: {err})") from None


def _read_mask(path: Path, lut: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) uint8 in our convention; the mask must hold one dataset label per pixel."""
    try:
        with Image.open(path) as im:
            im.load()
            mask = np.asarray(im)  # palette PNGs give their indices, which are the labels
    except Exception as err:
        raise SourceError(path, f"unreadable PNG ({type(err).__name__}: {err})") from None
    if mask.ndim == 3:  # RGB(A) or LA: every colour channel must agree, alpha is ignored
        colour = mask[..., :3] if mask.shape[-1] >= 3 else mask[..., :1]
        if (colour != colour[..., :1]).any():
            raise SourceError(
                path, "colour mask with differing channels; save masks single-channel, one "
                "label value per pixel",
            )  # fmt: skip
        mask = colour[..., 0]
    if mask.shape != shape:
        raise SourceError(path, f"mask size {mask.shape} != image size {shape}")
    # bincount is several times faster than unique on the usual 8/16-bit masks
    integer = mask.dtype.kind in "ub"
    values = np.flatnonzero(np.bincount(mask.ravel())) if integer else np.unique(mask)
    known = np.flatnonzero(lut >= 0)
    bad = [v.item() for v in values if v not in known]
    if bad:
        raise SourceError(path, f"mask values {bad[:10]} outside the label map's {known.tolist()}")
    return lut[mask.astype(np.int64)].astype(np.uint8)
