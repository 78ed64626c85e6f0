"""Train/val/test assignment that never changes: a subject's split is a hash of its group.

The split is a pure function of a string, so re-running a conversion, adding a source or
converting on another machine never moves a subject between train and test. Subjects that share
images (the same patient in two datasets, two timepoints of one study) carry the same
``meta["split_group"]`` and so always land together.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_FRACTIONS: tuple[tuple[str, float], ...] = (("train", 0.7), ("val", 0.1), ("test", 0.2))
SPLITS = tuple(name for name, _ in DEFAULT_FRACTIONS)


def unit_interval(group: str) -> float:
    """Map a string to a uniform number in [0, 1) with sha256 (stable across runs and Pythons).

    Python's ``hash`` is salted per process, so it would reshuffle the splits on every run.
    """
    digest = hashlib.sha256(group.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(group: str, fractions: Sequence[tuple[str, float]] = DEFAULT_FRACTIONS) -> str:
    """The split of a group: the cumulative fraction bin its hash falls into.

    Args:
        group: the split group, ``meta["split_group"]`` or else the subject id.
        fractions: ``(name, fraction)`` pairs in order, non-negative and summing to 1.

    Returns:
        One of the names in ``fractions``.
    """
    if not fractions:
        raise ValueError("fractions must name at least one split")
    if any(f < 0 for _, f in fractions) or not math.isclose(sum(f for _, f in fractions), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    u = unit_interval(group)
    cumulative = 0.0
    for name, fraction in fractions:
        cumulative += fraction
        if u < cumulative:
            return name
    return fractions[-1][0]  # u is within float rounding of 1


def split_group(subject: str, meta: Mapping[str, Any]) -> str:
    """The string a subject's split is drawn from: ``meta["split_group"]``, else its id."""
    group = meta.get("split_group")
    return subject if group is None else str(group)


def subject_split(
    subject: str,
    meta: Mapping[str, Any],
    fractions: Sequence[tuple[str, float]] = DEFAULT_FRACTIONS,
) -> str:
    """``meta["split"]`` when a caller already chose one, else the hash split of its group."""
    split = meta.get("split")
    return str(split) if split is not None else assign_split(split_group(subject, meta), fractions)
