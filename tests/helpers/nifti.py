"""NIfTI header surgery that nibabel would undo on save."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib


def patch_header(path: Path, **fields) -> None:
    """Overwrite header fields of a saved .nii.gz in place (nibabel 'fixes' them on save)."""
    raw = gzip.decompress(path.read_bytes())
    hdr = nib.Nifti1Header(binaryblock=raw[:348])
    for key, value in fields.items():
        hdr[key] = value
    path.write_bytes(gzip.compress(hdr.binaryblock + raw[348:]))
