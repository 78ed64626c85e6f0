"""The synthetic phantom as a source, so tests and demos run the same pipeline as real data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_shards.record import Subject
from data_shards.sources.registry import register_source


@register_source("phantom")
def phantom(
    root: Path | None = None,
    n: int = 24,
    seed: int = 0,
    slices: int = 8,
    frames: int = 16,
    size: int = 80,
    spacing: float = 2.0,
    lge_fraction: float = 0.0,
) -> Iterator[Subject]:
    """Yield ``n`` deterministic phantom subjects; ``root`` is ignored (nothing is read).

    Args:
        root: ignored; accepted so every source has the same call signature.
        n: number of subjects.
        seed: cohort seed; the same seed gives the same subjects.
        slices, frames, size, spacing: acquisition of each subject (S, T, H = W, in-plane mm).
        lge_fraction: share of the subjects that are single-frame LGE instead of cine.
    """
    # Imported here so a registry import stays cheap and independent of the phantom's internals.
    from data_shards.phantom import PhantomConfig, make_cohort

    config = PhantomConfig(slices=slices, frames=frames, size=size, spacing=spacing)
    cohort = make_cohort(n, seed=seed, config=config, lge_fraction=lge_fraction)
    return _with_split_group(cohort)


def _with_split_group(subjects: Iterator[Subject]) -> Iterator[Subject]:
    for subject in subjects:
        subject.meta.setdefault("split_group", subject.subject)
        yield subject
