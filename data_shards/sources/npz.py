"""Cine arrays saved with numpy: one ``.npz`` archive per subject, ``cine`` as (Z, T, H, W).

Keys read from each archive (anything else is ignored and never unpickled):

* ``cine`` (or the ``key`` option): a real-valued (Z, T, H, W) stack, or (T, H, W) for one slice;
* ``spacing`` (optional): (dy, dx) or (dz, dy, dx) mm; NaN marks one value as unknown;
* ``ed``, ``es`` (optional): 0-based frame indices on the T axis;
* ``label`` (optional): the same shape as the image, already in our label convention.

Spacing the archive does not carry stays NaN unless the ``spacing``/``slice_spacing`` options
supply it: a value is never guessed.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_shards.record import IGNORE, LABEL_NAMES, Subject
from data_shards.sources.registry import SourceError, register_source

# Guards against a wrong or hostile file taking the machine's memory; real cine is far smaller
# (e.g. 20 slices x 50 frames x 512 x 512 = 2.6e8 voxels is already an extreme study).
MAX_VOXELS = 2**28
MAX_SIDE = 4096
LABEL_VALUES = frozenset([*LABEL_NAMES, IGNORE])


@register_source("npz")
def npz(
    root: Path | str | None,
    key: str = "cine",
    spacing: Sequence[float] | None = None,
    slice_spacing: float | None = None,
    limit: int | None = None,
) -> Iterator[Subject | SourceError]:
    """Yield one cine Subject per ``.npz`` file in ``root`` (a folder, or one file), sorted by name.

    Args:
        root: a folder of ``.npz`` archives (not searched recursively), or a single ``.npz`` file.
        key: the archive member holding the image.
        spacing: in-plane (dy, dx) mm for archives without a ``spacing`` member.
        slice_spacing: dz mm for archives whose ``spacing`` does not give one.
        limit: stop after this many files.

    Yields:
        Subject ``npz-<file stem>`` with image (Z, T, H, W) in the file's dtype (a (T, H, W) array
        becomes Z = 1), label uint8 (Z, T, H, W) or None, spacing (dz, dy, dx) mm with NaN where
        unknown. A file that cannot be used comes out as a SourceError naming it. An option that
        contradicts the archive's own ``spacing`` is a SourceError too, not a silent override.

    Raises:
        FileNotFoundError: ``root`` is missing or holds no ``.npz`` file.
        ValueError: ``spacing`` or ``slice_spacing`` is not a positive number of mm.
    """
    if root is None:
        raise ValueError("npz needs root: a folder of .npz files or one .npz file")
    fallback = _spacing_option(spacing, slice_spacing)
    root = Path(root)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(root.glob("*.npz"))
        if not files:
            raise FileNotFoundError(f"{root}: no .npz files found")
    else:
        raise FileNotFoundError(f"{root}: npz root (folder or .npz file) not found")
    if limit is not None:
        files = files[: max(0, limit)]
    return (_read_file_or_error(path, key, fallback) for path in files)


def _spacing_option(
    spacing: Sequence[float] | None, slice_spacing: float | None
) -> tuple[float, float, float]:
    """The options as (dz, dy, dx) with NaN where not given; ValueError on a bad value."""
    if spacing is not None and len(spacing) != 2:
        raise ValueError(f"spacing must be in-plane (dy, dx) mm, got {spacing!r}")
    dy, dx = (math.nan, math.nan) if spacing is None else (float(v) for v in spacing)
    dz = math.nan if slice_spacing is None else float(slice_spacing)
    for name, value in (("spacing", dy), ("spacing", dx), ("slice_spacing", dz)):
        if not (math.isnan(value) or (math.isfinite(value) and value > 0)):
            raise ValueError(f"{name} must be a positive number of mm, got {value}")
    return dz, dy, dx


def _read_file_or_error(
    path: Path, key: str, fallback: tuple[float, float, float]
) -> Subject | SourceError:
    try:
        return read_npz(path, key, fallback)
    except SourceError as err:
        return err


def _is_npy(path: Path) -> bool:
    """A plain ``.npy`` (reported below as a single array, not as a damaged archive)."""
    with open(path, "rb") as f:
        return f.read(6) == b"\x93NUMPY"


def read_npz(
    path: Path, key: str = "cine", fallback: tuple[float, float, float] = (math.nan,) * 3
) -> Subject:
    """Read one archive; raises SourceError naming the file and the problem."""
    if not zipfile.is_zipfile(path) and not _is_npy(path):
        raise SourceError(
            path, "not an .npz archive (no zip structure: truncated or another format)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # zipfile/numpy raise many types for a damaged file
        raise SourceError(
            path, f"not a readable .npz archive ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        archive_type = type(archive).__name__
        raise SourceError(path, f"holds a single array ({archive_type}), not an .npz archive")
    with archive:
        if key not in archive.files:
            raise SourceError(path, f"no {key!r} array; keys present: {sorted(archive.files)}")
        _check_image_header(path, archive, key)
        image = _load(path, archive, key)
        if not np.isfinite(image).all():
            n_bad = int(image.size - np.count_nonzero(np.isfinite(image)))
            raise SourceError(path, f"{key!r} holds {n_bad} non-finite values (NaN/Inf)")
        input_shape = [int(n) for n in image.shape]
        if image.ndim == 3:  # (T, H, W): one slice over the cycle
            image = image[None]
        spacing = _spacing(path, archive, fallback)
        label = _label(path, archive, image.shape) if "label" in archive.files else None
        phase_frames = {name: _frame(path, archive, name, image.shape[1]) for name in ("ed", "es")}

    subject_id = f"npz-{path.stem}"
    meta: dict[str, Any] = {
        "source": "npz",
        "modality": "cine",
        "split_group": subject_id,
        "input_shape": input_shape,
    }
    meta |= {name: frame for name, frame in phase_frames.items() if frame is not None}
    return Subject(subject_id, image, label, spacing, meta)


def _header(path: Path, archive: np.lib.npyio.NpzFile, name: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of member ``name`` from its .npy header, without decompressing the data."""
    try:
        with archive.zip.open(f"{name}.npy") as fp:
            version = np.lib.format.read_magic(fp)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:  # 3.0 only adds utf-8 field names: never a plain array
                raise SourceError(path, f"{name!r}: unsupported .npy format version {version}")
            shape, _, dtype = read_header(fp)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise SourceError(path, f"{name!r}: unreadable array header ({err})") from None
    _check_dtype(path, name, dtype)
    return shape, dtype


def _check_image_header(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> None:
    """Rank, dtype and size of the image, before its data is decompressed."""
    shape, _ = _header(path, archive, key)
    if len(shape) not in (3, 4):
        raise SourceError(
            path, f"{key!r} has shape {shape}; expected (Z, T, H, W) or one slice (T, H, W)"
        )
    if 0 in shape:
        raise SourceError(path, f"{key!r} has shape {shape} with an empty axis")
    n_voxels = math.prod(shape)
    if n_voxels > MAX_VOXELS or max(shape[-2:]) > MAX_SIDE:
        raise SourceError(
            path,
            f"{key!r} has shape {shape} ({n_voxels:.3g} voxels): beyond {MAX_VOXELS:.3g} voxels "
            f"or {MAX_SIDE} pixels a side, so likely not a cine stack",
        )


def _check_dtype(path: Path, key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise SourceError(path, f"{key!r}: pickled object arrays are not loaded")
    if dtype.kind not in "iuf":  # bool, complex, strings, datetimes, structured...
        raise SourceError(path, f"{key!r} has dtype {dtype}; expected a real integer or float type")


def _load(path: Path, archive: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except Exception as err:  # truncated member, CRC error, object array
        if "allow_pickle" in str(err):
            raise SourceError(path, f"{key!r}: pickled object arrays are not loaded") from None
        raise SourceError(
            path, f"{key!r}: unreadable array ({type(err).__name__}: {err})"
        ) from None


def _spacing(
    path: Path, archive: np.lib.npyio.NpzFile, fallback: tuple[float, float, float]
) -> tuple[float, float, float]:
    """(dz, dy, dx) from the archive, filled in from the options; NaN where neither knows."""
    stored = (math.nan,) * 3
    if "spacing" in archive.files:
        _header(path, archive, "spacing")
        values = np.asarray(_load(path, archive, "spacing"), dtype=np.float64).ravel()
        if values.size not in (2, 3):
            raise SourceError(
                path, f"'spacing' has {values.size} values {values.tolist()}; expected (dy, dx) "
                "or (dz, dy, dx) mm",
            )  # fmt: skip
        if np.isinf(values).any() or (values <= 0).any():
            raise SourceError(
                path, f"'spacing' {values.tolist()} mm must be positive (NaN for unknown)"
            )
        stored = tuple(float(v) for v in ([math.nan, *values] if values.size == 2 else values))
    merged = []
    for axis, mine, given in zip(("dz", "dy", "dx"), stored, fallback):
        if not (math.isnan(mine) or math.isnan(given) or math.isclose(mine, given, rel_tol=1e-4)):
            raise SourceError(
                path,
                f"'spacing' in the file gives {axis} = {mine} mm but the options give {given} mm; "
                "drop the option or fix the file",
            )
        merged.append(given if math.isnan(mine) else mine)
    return tuple(merged)


def _label(path: Path, archive: np.lib.npyio.NpzFile, shape: tuple[int, ...]) -> np.ndarray:
    """The ``label`` member as uint8 (Z, T, H, W); values must already be in our convention."""
    label_shape, _ = _header(path, archive, "label")
    if math.prod(label_shape) != math.prod(shape):  # checked before decompressing the data
        raise SourceError(path, f"'label' shape {label_shape} != image shape {shape}")
    label = _load(path, archive, "label")
    if label.ndim == 3:
        label = label[None]
    if label.shape != shape:
        raise SourceError(path, f"'label' shape {label.shape} != image shape {shape}")
    values = np.unique(label)
    bad = [v.item() for v in values if v not in LABEL_VALUES]
    if bad:
        raise SourceError(
            path, f"'label' values {bad[:10]} outside our convention {sorted(LABEL_VALUES)}"
        )
    return label.astype(np.uint8)


def _frame(path: Path, archive: np.lib.npyio.NpzFile, name: str, n_frames: int) -> int | None:
    """A 0-based frame index member (``ed``/``es``), or None when absent."""
    if name not in archive.files:
        return None
    _header(path, archive, name)
    value = _load(path, archive, name)
    if value.size != 1 or value.dtype.kind not in "iu":
        raise SourceError(path, f"{name!r} must be one integer frame index, got {value!r}")
    frame = int(value.ravel()[0])
    if not 0 <= frame < n_frames:
        raise SourceError(path, f"{name!r} = {frame} is outside the {n_frames} frames (0-based)")
    return frame
