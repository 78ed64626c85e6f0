"""Folders of 3D (LGE) or 4D (cine) NIfTI images with optional label files; work in progress."""
