"""The ``cmrfm shard`` job: source -> preprocess -> split -> shards + manifest + quarantine.

A subject the source cannot read (a yielded ``SourceError``) or that preprocessing rejects is
recorded in ``quarantine.json`` and the conversion goes on; the work lives in writer and split.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from data_shards.preprocess import PreprocessConfig, preprocess
from data_shards.record import Subject
from data_shards.sources import SourceError, get_source
from data_shards.split import SPLITS, subject_split
from data_shards.writer import MANIFEST, write_manifest, write_shards

QUARANTINE = "quarantine.json"


def convert(
    source: str,
    root: Path | None,
    out_dir: Path,
    *,
    preprocess_config: PreprocessConfig,
    source_options: dict | None = None,
    maxcount: int = 32,
    console: Console | None = None,
    overwrite: bool = False,
    prefix: str = "shard",
) -> dict:
    """Convert one source into webdataset shards under ``out_dir``.

    Args:
        source: registered source name (see ``data_shards.sources``).
        root: the dataset folder as released, or None for sources that need none.
        out_dir: output folder; shards, ``manifest.json`` and ``quarantine.json`` go here.
        preprocess_config: target grid and intensity window.
        source_options: keyword arguments for the source function.
        maxcount: most subjects per shard.
        console: where the progress bar and summary go (default: a new stdout console).
        overwrite: replace shards of a different source already in ``out_dir``.
        prefix: shard file name prefix.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        FileExistsError: ``out_dir`` holds a manifest of another source and not ``overwrite``.
    """
    options = dict(source_options or {})
    source_fn = get_source(source)  # fail on an unknown name before touching out_dir
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, source, prefix, overwrite)
    console = console or Console()
    quarantine: list[dict[str, str]] = []

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{source}: 0 written", total=None)

        def subjects() -> Iterator[Subject]:
            seen: set[str] = set()
            written = 0
            for item in source_fn(root, **options):
                subject = _prepare(item, source, preprocess_config, seen, quarantine)
                if subject is not None:
                    yield subject
                    written += 1
                skipped = f", {len(quarantine)} quarantined" if quarantine else ""
                progress.update(task, description=f"{source}: {written} written{skipped}")

        samples = write_shards(subjects(), out_dir, prefix=prefix, maxcount=maxcount)

    _write_json(out_dir / QUARANTINE, quarantine)
    shards = list(dict.fromkeys(sample["shard"] for sample in samples))  # in writing order
    manifest = write_manifest(
        out_dir,
        shards,
        samples,
        preprocess=dataclasses.asdict(preprocess_config),
        extra={
            "source": source,
            "root": None if root is None else str(root),
            "source_options": options,
            "quarantined": len(quarantine),
        },
    )
    console.print(summary_table(manifest, out_dir))
    return manifest


def _prepare(
    item: Subject | SourceError,
    source: str,
    config: PreprocessConfig,
    seen: set[str],
    quarantine: list[dict[str, str]],
) -> Subject | None:
    """The preprocessed subject with its split, or None after recording why it was skipped."""
    if isinstance(item, SourceError):
        quarantine.append({"path": str(item.path), "reason": str(item.reason)})
        return None
    if item.subject in seen:
        quarantine.append({"subject": item.subject, "reason": "duplicate subject id in source"})
        return None
    seen.add(item.subject)
    try:
        subject = preprocess(item, config)
    except Exception as exc:  # one bad study must not stop a cohort conversion
        quarantine.append({"subject": item.subject, "reason": f"{type(exc).__name__}: {exc}"})
        return None
    subject.meta.setdefault("source", source)
    subject.meta["split"] = subject_split(subject.subject, subject.meta)
    return subject


def _prepare_out_dir(out_dir: Path, source: str, prefix: str, overwrite: bool) -> None:
    """Refuse to mix sources in one folder; clear our own files from an earlier run."""
    manifest_path = out_dir / MANIFEST
    if manifest_path.is_file() and not overwrite:
        try:
            previous = json.loads(manifest_path.read_text()).get("source")
        except (json.JSONDecodeError, AttributeError):
            previous = "<unreadable manifest>"
        if previous != source:
            raise FileExistsError(
                f"{out_dir} already holds shards of source {previous!r}; converting {source!r} "
                "there would mix them. Choose another out_dir, or pass overwrite=True "
                "(--overwrite) to replace them."
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    # Only files this job writes: stale shards would otherwise outlive a smaller re-run.
    for stale in [manifest_path, out_dir / QUARANTINE, *out_dir.glob(f"{prefix}-*.tar")]:
        stale.unlink(missing_ok=True)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def summary_table(manifest: dict, out_dir: Path) -> Table:
    """Subjects per split and per source/modality, quarantined, shards and size."""
    table = Table(title=f"shards in {out_dir}", show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    for split in [*SPLITS, *sorted(set(manifest["splits"]) - set(SPLITS))]:
        table.add_row(f"split {split}", str(len(manifest["splits"].get(split, []))))
    table.add_section()
    per_kind = Counter((s["source"], s["modality"]) for s in manifest["samples"])
    for (source, modality), count in sorted(per_kind.items(), key=str):
        table.add_row(f"{source} / {modality}", str(count))
    labelled = sum(s["has_label"] for s in manifest["samples"])
    table.add_row("with labels", str(labelled))
    table.add_section()
    table.add_row("quarantined", str(manifest.get("quarantined", 0)))
    table.add_row("shards", str(len(manifest["shards"])))
    megabytes = sum(shard["bytes"] for shard in manifest["shards"]) / 1e6
    table.add_row("total MB", f"{megabytes:.1f}")
    return table
