"""Read one NIfTI file into our (S, T, H, W) order with spacing and patient-LPS geometry.

nibabel hands voxels back as (X, Y, Z[, T]) = (column, row, slice[, frame]) and affines in RAS+
(+x towards the patient's right, +y anterior); our geometry is LPS, so x and y change sign. Every
check that the header allows runs before any voxel is read, so a header claiming absurd sizes
costs nothing. Every problem is a SourceError naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from data_shards.sources.registry import SourceError

MAX_DIM = 4096  # longest plausible axis (pixels, slices or frames) of a cardiac MRI
MAX_VOXELS = 2**31  # beyond this a "volume" is a damaged header, not an acquisition
# Deflate cannot compress better than about 1032:1, so a .gz file of N bytes holds at most about
# 1032 * N bytes: a header claiming more is lying, and reading it would only allocate memory.
_MAX_GZIP_RATIO = 1100
_UNIT_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3, "unknown": 1.0}
# World space an affine is written in -> LPS sign per axis. The NIfTI standard is RAS; some
# releases (M&Ms-2) store DICOM's LPS values unconverted, which only anatomy can reveal.
TO_LPS = {"ras": np.array([-1.0, -1.0, 1.0]), "lps": np.array([1.0, 1.0, 1.0])}


@dataclass
class NiftiVolume:
    """One NIfTI file in our axis order.

    data: (S, T, H, W) as stored (any real dtype, scl_slope applied); T = 1 for a 3D file.
    spacing: (dz, dy, dx) in mm.
    direction: [[S], [H], [W]] unit vectors in patient LPS, or None where the file's geometry
      is unknown or not trustworthy (see ``geometry_note``).
    origin: LPS mm of voxel [0, 0, 0, 0], or None with ``direction``.
    affine_space: the world space the file's affine was read in ("ras" or "lps").
    """

    path: Path
    data: np.ndarray
    spacing: tuple[float, float, float]
    direction: list[list[float]] | None = None
    origin: list[float] | None = None
    geometry_note: str | None = None
    affine_space: str = "ras"

    def geometry_meta(self) -> dict[str, Any]:
        """``direction`` and ``origin`` for Subject meta; empty when the geometry is unknown."""
        if self.direction is None or self.origin is None:
            return {}
        return {"direction": self.direction, "origin": self.origin}


def read_nifti(
    path: Path | str, ndims: tuple[int, ...] = (3, 4), affine_space: str = "ras"
) -> NiftiVolume:
    """Read ``path`` (.nii or .nii.gz) as (S, T, H, W); SourceError naming the file if unusable.

    Args:
        path: the NIfTI file.
        ndims: accepted dimensionalities after dropping trailing length-1 axes beyond the third
            (so (X, Y, Z, 1) counts as 3D): 3 for a volume, 4 for a cine (X, Y, Z, T).
        affine_space: "ras" (the NIfTI standard, nibabel's) or "lps" for files whose affine
            holds DICOM patient coordinates unconverted.
    """
    if affine_space not in TO_LPS:
        raise ValueError(f"affine_space must be one of {list(TO_LPS)}, got {affine_space!r}")
    path = Path(path)
    if not path.is_file():
        raise SourceError(path, "file not found")
    try:
        img = nib.load(path)  # reads the header only; voxels stay on disk until asked for
    except Exception as err:  # nibabel/gzip/zlib raise many types for a damaged file
        raise SourceError(path, f"unreadable NIfTI header ({type(err).__name__}: {err})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise SourceError(path, f"not a NIfTI-1/2 image (nibabel read a {type(img).__name__})")
    shape = _checked_shape(path, img, ndims)
    _check_dtype(path, img.header.get_data_dtype())
    _check_file_holds_data(path, img, shape)
    spacing_xyz = _checked_zooms(path, img)

    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise SourceError(path, f"unreadable NIfTI voxels ({type(err).__name__}: {err})") from None
    data = data.reshape(shape)
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise SourceError(path, f"{n_bad} non-finite voxels (NaN/Inf)")
    if data.ndim == 3:
        data = data[..., None]
    # (X, Y, Z, T) -> (Z, T, Y, X) = (S, T, H, W): rows run along Y, columns along X.
    data = np.ascontiguousarray(data.transpose(2, 3, 1, 0))
    dx, dy, dz = spacing_xyz
    direction, origin, note = _geometry(img, spacing_xyz, TO_LPS[affine_space])
    return NiftiVolume(path, data, (dz, dy, dx), direction, origin, note, affine_space)


def _checked_shape(path: Path, img: Any, ndims: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in img.shape)
    if any(n == 0 for n in shape):
        raise SourceError(path, f"header shape {shape} has an empty (0-length) axis")
    if any(n > MAX_DIM for n in shape) or math.prod(shape) > MAX_VOXELS:
        raise SourceError(
            path,
            f"header shape {shape} is absurd (an axis > {MAX_DIM} or > {MAX_VOXELS} voxels): "
            "a damaged header, not an image",
        )
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) not in ndims:
        want = " or ".join(f"{n}D" for n in ndims)
        raise SourceError(path, f"expected a {want} image (X, Y, Z[, T]), got shape {shape}")
    return shape


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    # Complex (phase data), bool masks and RGB (structured) voxels are not MR magnitudes.
    if dtype.fields is not None or dtype.kind not in "iuf":
        raise SourceError(path, f"voxel type {dtype} is not a real number (int/uint/float)")


def _check_file_holds_data(path: Path, img: Any, shape: tuple[int, ...]) -> None:
    needed = math.prod(shape) * img.header.get_data_dtype().itemsize
    size = path.stat().st_size
    if path.name.endswith(".gz"):
        if needed > _MAX_GZIP_RATIO * size + 2**16:
            raise SourceError(
                path,
                f"header claims {needed} bytes of voxels, more than a {size}-byte gzip file can "
                "hold: the header or the file is damaged",
            )
    elif size < int(img.header.get_data_offset()) + needed:
        raise SourceError(
            path, f"truncated: header needs {needed} bytes of voxels, file has {size}"
        )


def _checked_zooms(path: Path, img: Any) -> tuple[float, float, float]:
    # nib.load "fixes" a zero pixdim to 1 and a negative one to its absolute value, which would
    # turn a missing voxel size into a plausible one: judge the header as it is on disk.
    try:
        with nib.openers.ImageOpener(path) as fobj:
            raw = type(img.header).from_fileobj(fobj, check=False)
    except Exception as err:
        raise SourceError(path, f"unreadable NIfTI header ({type(err).__name__}: {err})") from None
    zooms = [float(z) for z in raw["pixdim"][1:4]]
    if not all(math.isfinite(z) and z > 0 for z in zooms):
        raise SourceError(
            path, f"voxel size {tuple(zooms)} must be three finite positive numbers (pixdim 1-3)"
        )
    unit = img.header.get_xyzt_units()[0]
    scale = _UNIT_TO_MM.get(unit, 1.0)
    return (zooms[0] * scale, zooms[1] * scale, zooms[2] * scale)


def _geometry(
    img: Any, spacing_xyz: tuple[float, float, float], to_lps: np.ndarray
) -> tuple[list[list[float]] | None, list[float] | None, str | None]:
    """LPS direction [[S], [H], [W]] and origin, or None with the reason it is not trusted."""
    header = img.header
    if int(header["sform_code"]) == 0 and int(header["qform_code"]) == 0:
        return None, None, "no qform/sform: orientation unknown"
    unit = header.get_xyzt_units()[0]
    affine = np.asarray(img.affine, dtype=np.float64) * _UNIT_TO_MM.get(unit, 1.0)
    columns = affine[:3, :3]  # column i: mm moved per step along voxel axis i (X, Y, Z)
    norms = np.linalg.norm(columns, axis=0)
    # An affine whose steps disagree with the voxel size (ACDC's release: pure flips, norm 1)
    # was written by a tool that dropped the real geometry; do not present it as patient space.
    if not np.allclose(norms, spacing_xyz, rtol=1e-2):
        return (
            None,
            None,
            (
                f"affine steps {np.round(norms, 3).tolist()} mm != voxel size "
                f"{np.round(spacing_xyz, 3).tolist()} mm: orientation not trusted"
            ),
        )
    unit_xyz = columns / norms * to_lps[:, None]  # RAS -> LPS: flip x and y
    direction = [unit_xyz[:, 2].tolist(), unit_xyz[:, 1].tolist(), unit_xyz[:, 0].tolist()]
    origin = (affine[:3, 3] * to_lps).tolist()
    return direction, origin, None


def frames_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two frames hold the same image up to float rounding (float32 cine, uint8 frame)."""
    if a.shape != b.shape:
        return False
    scale = max(1.0, float(np.abs(b).max()))
    return np.allclose(a.astype(np.float64), b.astype(np.float64), rtol=0, atol=1e-4 * scale)
