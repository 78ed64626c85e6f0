"""ACDC-style 4D cines (int16, axis-coded voxel values) as the acdc-cine source reads them."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE_XYZT = (12, 10, 3, 5)  # (X, Y, Z, T) as nibabel stores them, deliberately not square


ZOOMS = (1.25, 1.5, 8.0)  # dx, dy, dz


def cine_xyzt(shape=SHAPE_XYZT) -> np.ndarray:
    """int16 (X, Y, Z, T) with voxel value x + 20 y + 400 z + 2000 t, so any axis mix-up shows."""
    x, y, z, t = np.indices(shape)
    return (x + 20 * y + 400 * z + 2000 * t).astype(np.int16)


def write_nifti(path: Path, data: np.ndarray, zooms=ZOOMS) -> Path:
    """A NIfTI with a plausible axis-aligned affine, like the cropping tool's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine=np.diag([-zooms[0], *zooms[1:3], 1.0]))
    img.header.set_zooms(tuple(zooms[:3]) + (1.0,) * (data.ndim - 3))
    nib.save(img, path)
    return path


def write_cine(root: Path, name: str = "patient001", data: np.ndarray | None = None) -> Path:
    return write_nifti(root / f"{name}_4d.nii.gz", cine_xyzt() if data is None else data)
