"""Registry of input formats. A source turns one dataset as released into Subjects.

A source is a function ``(root: Path | None, **options) -> Iterator[Subject | SourceError]``:

* it raises ``FileNotFoundError`` (naming the path) when ``root`` is missing or holds nothing;
* it reads lazily, one subject at a time, in a stable (sorted) order;
* when one subject is unreadable it yields a ``SourceError`` for it and goes on with the next,
  so a converter can record it in quarantine.json without losing the rest.

Adding a format is one new module that decorates its function with ``@register_source("name")``
(from :mod:`data_shards.sources.registry`) and one import line in this file.
"""

from __future__ import annotations

# Imported for their registration side effect, in this order.
from data_shards.sources import (
    acdc,
    acdc_cine,
    dicom,
    lge_slices,
    nifti,
    npz,
    phantom,
)
from data_shards.sources.registry import (
    SOURCES,
    SourceError,
    SourceFn,
    UnknownSourceError,
    get_source,
    named_regex,
    register_source,
)

__all__ = [
    "SOURCES",
    "SourceError",
    "SourceFn",
    "UnknownSourceError",
    "acdc",
    "acdc_cine",
    "dicom",
    "get_source",
    "lge_slices",
    "named_regex",
    "nifti",
    "npz",
    "phantom",
    "register_source",
]
