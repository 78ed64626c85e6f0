"""The subcommands' argument types: each refuses bad text with a message that names what it
expected (argparse then prints it as a usage error, exit 2)."""

from __future__ import annotations

import argparse
import math

# `shard --size` bounds: below one 8-pixel patch there is no image the models can take; the upper
# bound is the machine's memory (_shard_memory_bytes).
MIN_SIZE = 8


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of pixels, got {text!r}"
        ) from None
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_SIZE} pixels, got {value}")
    return value


def _number(text: str) -> float:
    """The float text spells, NaN when it spells none (every range check then fails)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _spacing(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of mm, got {text!r}")
    return value


def _percentile(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 100:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a percentile in [0, 100], got {text!r}")
    return value


class _Percentiles(argparse.Action):
    """LO HI, each in [0, 100] (_percentile), and LO < HI."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        low, high = values
        if not low < high:
            parser.error(f"argument {option_string}: expected LO < HI, got {low:g} {high:g}")
        setattr(namespace, self.dest, (low, high))


def _worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected worker counts like 0,1,2, got {text!r}")
    return counts


def _patch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected patch sizes like 8,16, got {text!r}")
    return sizes
