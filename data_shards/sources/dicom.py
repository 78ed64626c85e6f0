"""Folders of single-frame DICOM files (e.g. Sunnybrook) -> cine Subjects; work in progress."""
