"""The source registry and what every source module shares: the error for one unreadable
subject and the check of a file-name pattern option.

Source modules import from here, not from ``data_shards.sources``, whose ``__init__`` imports
them all to register them: the package depends on its sources, never the other way round.
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
