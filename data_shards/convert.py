"""The ``cmrfm shard`` job: source -> preprocess -> split -> shards + manifest + quarantine.

A subject the source cannot read (a yielded ``SourceError``), that preprocessing rejects, or
whose image is blank (constant or near-constant throughout: ``preprocess.blank_frames``) is
recorded in ``quarantine.json`` with the reason and the conversion goes on. An unreadable input
is named there by a keyed id and its position in the source's order, never by its path (folder
names are often PatientIDs): the terminal shows the path, and ``cmrfm inspect`` finds it again; a study with only
some blank frames is kept, its blank frames listed in meta and left without ground truth. The
work lives in writer and split.

Resume: every shard, once closed, is appended to the journal ``progress.json`` (with the
quarantine so far and a fingerprint of source, root, source options, preprocessing and prefix).
A re-run with the same fingerprint keeps the journaled shards whose sha256 still verifies,
deletes the rest, skips the subjects those shards hold (without preprocessing them) and goes on
numbering shards after the last kept one. Quarantined subjects are retried on every re-run,
even of a finished conversion (the source is read again, only they are preprocessed): they are
in no shard, and a file fixed in between should be picked up; the quarantine is rebuilt. So a
re-run of a finished conversion is a no-op (the source is not even opened) only when its shards
all verify and its quarantine is empty. ``manifest.json`` is written once the source is done.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cmrfm_io.files import sha256_file, write_json_atomic
from cmrfm_io.progress_lines import logged
from data_shards.preprocess import PreprocessConfig, preprocess
from data_shards.privacy import default_salt, input_ref, scrub
from data_shards.record import IGNORE, Subject
from data_shards.sources import SourceError, get_source
from data_shards.split import SPLITS, subject_split
from data_shards.writer import MANIFEST, write_manifest, write_shards

QUARANTINE = "quarantine.json"
SECRET_OPTIONS = frozenset({"salt"})
PROGRESS = "progress.json"
JOURNAL_VERSION = 1


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
    resume: bool = True,
    prefix: str = "shard",
) -> dict:
    """Convert one source into webdataset shards under ``out_dir``, resuming an earlier run.

    Args:
        source: registered source name (see ``data_shards.sources``).
        root: the dataset folder as released, or None for sources that need none.
        out_dir: output folder; shards, ``manifest.json``, ``quarantine.json`` and the journal
            ``progress.json`` go here.
        preprocess_config: target grid and intensity window.
        source_options: keyword arguments for the source function.
        maxcount: most subjects per shard.
        console: where the progress bar and summary go (default: a new stdout console).
        overwrite: replace what ``out_dir`` holds when it comes from different settings.
        resume: with the same settings, keep the verified shards of an earlier run (a finished
            run is then a no-op); False starts over.
        prefix: shard file name prefix.

    Returns:
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        FileExistsError: ``out_dir`` holds shards of different settings and not ``overwrite``.
    """
    options = dict(source_options or {})
    recorded = redact(options)  # what manifest and journal may show of the options
    source_fn = get_source(source)  # fail on an unknown name before touching out_dir
    out_dir = Path(out_dir)
    console = console or Console()
    fingerprint = _fingerprint(source, root, recorded, preprocess_config, prefix)
    previous = _previous_run(out_dir, fingerprint, overwrite=overwrite, resume=resume)
    kept = _keep_verified(out_dir, previous, prefix, console)
    journal = {
        "version": JOURNAL_VERSION,
        "fingerprint": fingerprint,
        "shards": kept,
        "quarantine": [],
        "complete": False,
    }
    finished = previous and previous.get("complete") and not previous.get("quarantine")
    if finished and len(kept) == len(previous["shards"]):
        console.print(f"nothing to do: {out_dir} is complete and its {len(kept)} shards verify")
    else:
        items = source_fn(root, **options)
        namer = InputNamer(root, options.get("salt"), console)
        _run(items, journal, out_dir, source, preprocess_config, maxcount, namer)
    journal["complete"] = True
    write_json_atomic(out_dir / PROGRESS, journal, default=str)

    quarantine = journal["quarantine"]
    write_json_atomic(out_dir / QUARANTINE, quarantine, default=str)
    shards = journal["shards"]
    manifest = write_manifest(
        out_dir,
        [shard["name"] for shard in shards],
        [sample for shard in shards for sample in shard["samples"]],
        preprocess=preprocess_config.to_dict(),
        extra={
            "source": source,
            "root": None if root is None else str(root),
            "source_options": recorded,
            "quarantined": len(quarantine),
        },
        checksums={shard["name"]: (shard["sha256"], shard["bytes"]) for shard in shards},
    )
    console.print(summary_table(manifest, out_dir))
    return manifest


def _run(
    items: Iterator[Subject | SourceError],
    journal: dict,
    out_dir: Path,
    source: str,
    config: PreprocessConfig,
    maxcount: int,
    namer: InputNamer,
) -> None:
    """Preprocess and write every subject not in a kept shard; the journal follows each shard."""
    kept = [sample for shard in journal["shards"] for sample in shard["samples"]]
    done = {sample["subject"] for sample in kept}
    quarantine: list[dict[str, str]] = journal["quarantine"]
    prefix = journal["fingerprint"]["prefix"]
    # Written before the first shard, so a run killed before it resumes too.
    write_json_atomic(out_dir / PROGRESS, journal, default=str)

    def shard_closed(entry: dict) -> None:
        journal["shards"].append(entry)
        write_json_atomic(out_dir / PROGRESS, journal, default=str)

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=namer.console) as progress:
        task = progress.add_task(f"{source}: 0 written", total=None)

        def subjects() -> Iterator[Subject]:
            seen: set[str] = set()
            written = skipped = 0
            # A log (not a terminal) sees no spinner: a line every 30 s instead.
            inputs = (
                items
                if namer.console.is_terminal
                else logged(items, 0, f"{source}: input", "inputs", console=namer.console)
            )
            for position, item in enumerate(inputs, start=1):
                if isinstance(item, Subject) and item.subject in done and item.subject not in seen:
                    seen.add(item.subject)  # already in a kept shard: not even preprocessed
                    skipped += 1
                    continue
                subject = _prepare(item, position, source, config, seen, quarantine, namer)
                if subject is not None:
                    yield subject
                    written += 1
                status = f"{source}: {written} written, {skipped} kept"
                status += f", {len(quarantine)} quarantined" if quarantine else ""
                progress.update(task, description=status)

        numbers = [_shard_number(shard["name"], prefix) for shard in journal["shards"]]
        write_shards(
            subjects(),
            out_dir,
            prefix=prefix,
            maxcount=maxcount,
            start_shard=1 + max(numbers, default=-1),
            taken_keys=[sample["key"] for sample in kept],
            on_shard=shard_closed,
        )


class InputNamer:
    """Names a quarantined input in written files by keyed id and position, never by its path
    (folder and file names are often PatientIDs); only the operator's terminal shows the path."""

    def __init__(self, root: Path | None, salt: str | None, console: Console) -> None:
        self.root, self._salt, self.console = root, salt, console

    def entry(self, error: SourceError, position: int) -> dict[str, Any]:
        """``{input, position, reason}`` for quarantine.json; prints the local path."""
        self._salt = self._salt or default_salt()  # created only when an input is quarantined
        ref = input_ref(error.path, self.root, self._salt)
        self.console.print(f"quarantined {ref} (input {position}): {error.path}: {error.reason}")
        reason = scrub(str(error.reason), Path(error.path), self.root, ref)
        return {"input": ref, "position": position, "reason": reason}


def _prepare(
    item: Subject | SourceError,
    position: int,
    source: str,
    config: PreprocessConfig,
    seen: set[str],
    quarantine: list[dict[str, Any]],
    namer: InputNamer,
) -> Subject | None:
    """The preprocessed subject with its split, or None after recording why it was skipped;
    ``position`` is the item's place (1-based) in the source's sorted order."""
    if isinstance(item, SourceError):
        quarantine.append(namer.entry(item, position))
        return None

    def skip(reason: str) -> None:
        quarantine.append({"subject": item.subject, "position": position, "reason": reason})

    if item.subject in seen:
        return skip("duplicate subject id in source")
    seen.add(item.subject)
    try:
        subject = preprocess(item, config)
    except Exception as exc:  # one bad study must not stop a cohort conversion
        return skip(f"{type(exc).__name__}: {exc}")
    if subject.meta.get("blank"):  # no image to learn from, whatever its label says
        return skip(f"blank: {subject.meta['blank']}")
    if subject.label is not None:  # a label on a blank frame is no ground truth of it
        for s, t in subject.meta.get("blank_frames", []):
            subject.label[s, t] = IGNORE
    subject.meta.setdefault("source", source)
    subject.meta["split"] = subject_split(subject.subject, subject.meta)
    return subject


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """Source options with secrets (the id salt) replaced, so no output ever holds them.

    A salt on disk beside hashed ids would let anyone recover short PatientIDs by trying them.
    """
    return {key: "<redacted>" if key in SECRET_OPTIONS else value for key, value in options.items()}


def _fingerprint(
    source: str, root: Path | None, options: dict, config: PreprocessConfig, prefix: str
) -> dict[str, Any]:
    """What decides the content of the shards; JSON-normalised so it compares equal after a load."""
    value = {
        "source": source,
        "root": None if root is None else str(Path(root).resolve()),
        "source_options": options,
        "preprocess": config.to_dict(),
        "prefix": prefix,
    }
    return json.loads(json.dumps(value, default=str))


def _previous_run(
    out_dir: Path, fingerprint: dict, *, overwrite: bool, resume: bool
) -> dict | None:
    """The journal to resume from, or None to start over; refuses to mix different settings."""
    journal_path, manifest_path = out_dir / PROGRESS, out_dir / MANIFEST
    if not journal_path.is_file() and not manifest_path.is_file():
        return None
    try:
        journal = json.loads(journal_path.read_text()) if journal_path.is_file() else None
    except json.JSONDecodeError:
        journal = None
    if not isinstance(journal, dict) or journal.get("version") != JOURNAL_VERSION:
        journal = None
    previous = None if journal is None else journal.get("fingerprint")
    if previous == fingerprint:
        return journal if resume else None
    if overwrite:
        return None
    if previous is None:
        what = f"shards without a readable {PROGRESS} (an interrupted or older conversion)"
    else:
        changed = _differences(previous, fingerprint)
        what = "shards converted with a different " + ", ".join(
            f"{key} ({old!r}, now {new!r})" for key, old, new in changed
        )
    raise FileExistsError(
        f"{out_dir} already holds {what}; converting here would mix them. Choose another "
        "out_dir, or pass overwrite=True (--overwrite) to replace them."
    )


def _differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two dicts."""
    found = []
    for key in sorted({*old, *new}):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append((f"{prefix}{key}", a, b))
    return found


def _keep_verified(
    out_dir: Path, journal: dict | None, prefix: str, console: Console
) -> list[dict]:
    """Journaled shards whose sha256 verifies; every other shard file of ours is deleted."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    for shard in [] if journal is None else journal.get("shards", []):
        path = out_dir / shard["name"]
        size_ok = path.is_file() and path.stat().st_size == shard["bytes"]
        if size_ok and sha256_file(path) == shard["sha256"]:
            kept.append(shard)
            continue
        console.print(f"{path}: missing or corrupt (sha256 differs); re-converting its subjects")
    names = {shard["name"] for shard in kept}
    # The manifest is rewritten at the end; until then it must not describe deleted shards.
    stale = [out_dir / MANIFEST, out_dir / QUARANTINE, *out_dir.glob(f"{prefix}-*.tar")]
    for path in stale:
        if path.name not in names:
            path.unlink(missing_ok=True)
    if kept:
        count = sum(shard["count"] for shard in kept)
        console.print(f"resuming {out_dir}: kept {len(kept)} verified shards, {count} subjects")
    return kept


def _shard_number(name: str, prefix: str) -> int:
    """3 for ``shard-000003.tar``."""
    return int(name.removeprefix(f"{prefix}-").removesuffix(".tar"))


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
