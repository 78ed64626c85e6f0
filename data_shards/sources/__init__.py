"""Registry of input formats. A source turns one dataset as released into Subjects.

A source is a function ``(root: Path | None, **options) -> Iterator[Subject | SourceError]``:

* it raises ``FileNotFoundError`` (naming the path) when ``root`` is missing or holds nothing;
* it reads lazily, one subject at a time, in a stable (sorted) order;
* when one subject is unreadable it yields a ``SourceError`` for it and goes on with the next,
  so a converter can record it in quarantine.json without losing the rest.

Adding a format is one new module that decorates its function with ``@register_source("name")``
and one import line at the bottom of this file.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data_shards.record import Subject

SourceFn = Callable[..., Iterator["Subject | SourceError"]]

SOURCES: dict[str, SourceFn] = {}


class SourceError(Exception):
    """One subject that could not be read: ``path`` is the offending file, ``reason`` what is wrong."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep (path, reason) through pickling, e.g. when sources run in worker processes.
        return (type(self), (self.path, self.reason))


class UnknownSourceError(KeyError, ValueError):
    """Raised by :func:`get_source`; catchable as either ``KeyError`` or ``ValueError``."""

    def __str__(self) -> str:  # KeyError would print the message wrapped in quotes
        return str(self.args[0]) if self.args else ""


def named_regex(pattern: str, option: str, groups: set[str], flags: int = 0) -> re.Pattern:
    """Compile a source's file-name pattern option; ValueError if invalid or lacking a group."""
    try:
        regex = re.compile(pattern, flags)
    except re.error as err:
        raise ValueError(f"{option} {pattern!r} is not a valid regex: {err}") from None
    missing = groups - set(regex.groupindex)
    if missing:
        raise ValueError(f"{option} {pattern!r} lacks the named group(s) {sorted(missing)}")
    return regex


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    """Decorator that registers a source function under ``name``."""

    def decorator(fn: SourceFn) -> SourceFn:
        if name in SOURCES and SOURCES[name] is not fn:
            raise ValueError(f"source {name!r} is already registered by {SOURCES[name].__module__}")
        SOURCES[name] = fn
        return fn

    return decorator


def get_source(name: str) -> SourceFn:
    """The source function registered as ``name``; the error lists the known names."""
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES)) or "none"
        raise UnknownSourceError(f"unknown source {name!r}; known sources: {known}") from None


# Imported for their registration side effect; keep at the bottom, after the registry exists.
from data_shards.sources import (  # noqa: E402
    acdc,
    acdc_cine,
    dicom,
    lge_slices,
    nifti,
    npz,
    phantom,
)

__all__ = [
    "SOURCES",
    "SourceError",
    "SourceFn",
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
