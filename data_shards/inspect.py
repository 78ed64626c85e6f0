"""Look inside a shard folder: counts, shape and spacing histograms, integrity, a contact sheet.

``cmrfm inspect SHARDS`` prints the summary with rich and writes ``summary.json`` and
``contact_sheet.png`` (one random clip per row, its frames across, label contours overlaid; drawn
by :mod:`data_shards.contact_sheet`).
Blank frames are flagged: those the conversion listed in meta (``preprocess.blank_frames``) and
any stored frame within one grey level of constant (shards from before that check).
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from rich.console import Console
from rich.table import Table

from cmrfm_io.files import read_json
from data_shards.contact_sheet import contact_sheet
from data_shards.convert import QUARANTINE
from data_shards.privacy import default_salt, local_inputs
from data_shards.split import SPLITS
from data_shards.stream import decode
from data_shards.writer import read_manifest, verify_manifest

SUMMARY = "summary.json"
CONTACT_SHEET = "contact_sheet.png"
SHOWN_REASONS = 5  # quarantine reasons listed in the summary


def inspect_shards(
    shards: Path,
    out: Path | None = None,
    *,
    clips: int = 16,
    frames: int = 8,
    seed: int = 0,
    console: Console | None = None,
) -> dict[str, Any]:
    """Summarise, verify and draw a shard folder; write ``summary.json`` and the contact sheet.

    Args:
        shards: a folder holding ``manifest.json`` and its shards.
        out: where ``summary.json`` and ``contact_sheet.png`` go (default ``shards/inspect``).
        clips: rows of the contact sheet, each a clip of a random subject and slice.
        frames: columns of the contact sheet (frames per clip).
        seed: picks the subjects, slices and start frames shown.
        console: where the tables go (default: a new stdout console).

    Returns:
        The summary (see :func:`shard_summary`) plus ``problems``: integrity issues, empty if none.
    """
    shards = Path(shards)
    out = shards / "inspect" if out is None else Path(out)
    console = console or Console()
    manifest = read_manifest(shards)
    with console.status(f"verifying sha256 of {len(manifest['shards'])} shards"):
        problems = verify_manifest(shards)
    keys = _pick_keys(manifest, clips, seed)
    with console.status("reading sample metadata"):
        metas, subjects, read_problems, blank = scan_shards(shards, manifest, keys)
    quarantine = read_quarantine(shards)
    summary = shard_summary(manifest, metas, quarantine, blank)
    summary["problems"] = problems + read_problems
    out.mkdir(parents=True, exist_ok=True)
    if subjects:
        contact_sheet(subjects, out / CONTACT_SHEET, clips=clips, frames=frames, seed=seed)
        summary["contact_sheet"] = str(out / CONTACT_SHEET)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    print_summary(summary, console, title=str(shards))
    print_local_inputs(quarantine, manifest.get("root"), console)
    console.print(f"wrote {out / SUMMARY}" + (f" and {out / CONTACT_SHEET}" if subjects else ""))
    return summary


def read_quarantine(shards: Path) -> list[dict[str, str]] | None:
    """The folder's ``quarantine.json`` entries, or None when the folder has none."""
    path = Path(shards) / QUARANTINE
    return read_json(path) if path.is_file() else None


def _pick_keys(manifest: dict, clips: int, seed: int) -> set[str]:
    """Up to ``clips`` distinct random sample keys: only these get their images decoded."""
    keys = sorted(sample["key"] for sample in manifest["samples"])
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(keys), size=min(clips, len(keys)), replace=False) if keys else []
    return {keys[i] for i in chosen}


def scan_shards(
    shards: Path, manifest: dict, keys: Iterable[str]
) -> tuple[dict[str, dict], list[dict[str, Any]], list[str], dict[str, dict]]:
    """One pass over the shards: every sample's meta and blank frames, and the decoded subjects
    named in ``keys``.

    A shard that cannot be read is reported and skipped, so one bad file does not hide the rest.

    Returns:
        ``(metas {key: meta}, subjects [decoded, sorted by key], problems [str], blank {key:
        {"frames": [[slice, frame], ...], "of": S * T}})``, blank holding only samples with a
        blank frame (see :func:`stored_blank_frames`).
    """
    wanted = set(keys)
    metas: dict[str, dict] = {}
    blank: dict[str, dict] = {}
    subjects: list[dict[str, Any]] = []
    problems: list[str] = []
    for shard in manifest["shards"]:
        path = Path(shards) / shard["name"]
        if not path.is_file():
            continue  # verify_manifest already names a missing shard
        # One shard per dataset so an unreadable one is named and the others still count.
        dataset = wds.WebDataset(
            [str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None
        )
        try:
            for sample in dataset:
                meta = metas[sample["__key__"]] = json.loads(sample["meta.json"])
                image = np.load(io.BytesIO(sample["image.npy"]), allow_pickle=False)
                found = stored_blank_frames(image, meta)
                if found:
                    blank[sample["__key__"]] = {
                        "frames": found,
                        "of": int(np.prod(image.shape[:2])),
                    }
                if sample["__key__"] in wanted:
                    subjects.append(decode(sample))
        except Exception as exc:  # a corrupt tar, member or meta: report, go on
            problems.append(f"{shard['name']}: unreadable ({type(exc).__name__}: {exc})")
    missing = sorted({s["key"] for s in manifest["samples"]} - set(metas))
    if missing and not problems:
        shown = ", ".join(missing[:SHOWN_REASONS])
        problems.append(f"{len(missing)} manifest samples not found in the shards: {shown}")
    return metas, sorted(subjects, key=lambda s: s["key"]), problems, blank


def stored_blank_frames(image: np.ndarray, meta: dict[str, Any]) -> list[list[int]]:
    """[slice, frame] of every blank frame of a stored sample, in order: those its meta lists,
    and every stored uint8 frame whose values span at most one grey level (which also finds
    blank frames in shards converted before the conversion looked for them)."""
    s, t = image.shape[:2]
    flat = image.reshape(s * t, -1)
    flat_spread = flat.max(axis=1).astype(np.int16) - flat.min(axis=1)  # (S*T,)
    found = {(int(i) // t, int(i) % t) for i in np.flatnonzero(flat_spread <= 1)}
    found |= {(int(a), int(b)) for a, b in meta.get("blank_frames") or []}
    return [list(pair) for pair in sorted(found)]


def shard_summary(
    manifest: dict,
    metas: dict[str, dict] | None = None,
    quarantine: list[dict[str, str]] | None = None,
    blank: dict[str, dict] | None = None,
) -> dict[str, Any]:
    """Counts and histograms of a shard folder as plain JSON-ready data.

    Args:
        manifest: the folder's manifest (``read_manifest``).
        metas: ``{key: meta}`` from the shards, for the original spacing and shape histograms
            (skipped when None: the manifest alone does not hold them).
        quarantine: the ``quarantine.json`` entries, or None when the folder has none.
        blank: ``{key: {"frames": [[slice, frame], ...], "of": S * T}}`` of the samples with
            blank frames (``scan_shards``).

    Returns:
        ``subjects``, ``shards``, ``bytes``, ``labelled``, ``splits`` {split: n}, ``counts``
        [{source, modality, <split>..., total, labelled}], ``quarantined`` {count, reasons},
        ``blank`` {subjects, frames, listed: the first few as text} and ``histograms`` {name:
        [{value, count}]}: stored S, T, H, W and, with metas, the original shape and spacing
        (``unknown`` where null).
    """
    samples = manifest["samples"]
    splits = [*SPLITS, *sorted(set(manifest["splits"]) - set(SPLITS))]
    counts: dict[tuple[str, str], Counter] = {}
    for sample in samples:
        row = counts.setdefault((str(sample["source"]), str(sample["modality"])), Counter())
        row[sample["split"]] += 1
        row["total"] += 1
        row["labelled"] += bool(sample["has_label"])
    shapes = np.array([sample["shape"] for sample in samples]).reshape(-1, 4)
    histograms = {name: histogram(shapes[:, i].tolist()) for i, name in enumerate("STHW")}
    if metas is not None:
        known = [metas[s["key"]] for s in samples if s["key"] in metas]
        for i, name in enumerate("STHW"):
            values = [_item(meta.get("original_shape"), i) for meta in known]
            histograms[f"original {name}"] = histogram(values)
        for i, name in enumerate(("dz", "dy", "dx")):
            values = [_item(meta.get("original_spacing"), i) for meta in known]
            histograms[f"original {name} (mm)"] = histogram(values)
    quarantine = quarantine or []
    return {
        "subjects": len(samples),
        "shards": len(manifest["shards"]),
        "bytes": sum(shard["bytes"] for shard in manifest["shards"]),
        "labelled": sum(bool(sample["has_label"]) for sample in samples),
        "splits": {split: len(manifest["splits"].get(split, [])) for split in splits},
        "counts": [
            {"source": source, "modality": modality}
            | {key: row[key] for key in [*splits, "total", "labelled"]}
            for (source, modality), row in sorted(counts.items())
        ],
        "quarantined": {
            "count": len(quarantine),
            "reasons": [_reason(entry) for entry in quarantine[:SHOWN_REASONS]],
        },
        "blank": _blank_summary(blank or {}),
        "histograms": histograms,
    }


def _blank_summary(blank: dict[str, dict]) -> dict[str, Any]:
    """Counts of blank frames and the first few samples holding them, as text."""
    listed = []
    for key in sorted(blank)[:SHOWN_REASONS]:
        frames, total = blank[key]["frames"], blank[key]["of"]
        if len(frames) == total:
            listed.append(
                f"{key}: all {total} frames blank (no image: a conversion quarantines such a study)"
            )
            continue
        where = ", ".join(f"slice {s} frame {t}" for s, t in frames[:3])
        more = f", ... ({len(frames)} in all)" if len(frames) > 3 else ""
        listed.append(f"{key}: {len(frames)} of {total} frames blank ({where}{more})")
    return {
        "subjects": len(blank),
        "frames": sum(len(entry["frames"]) for entry in blank.values()),
        "listed": listed,
    }


def _item(values: Sequence[Any] | None, index: int) -> Any:
    return values[index] if values is not None and len(values) > index else None


def _reason(entry: dict[str, Any]) -> str:
    where = entry.get("subject") or entry.get("input") or entry.get("path", "?")
    where += f" (input {entry['position']})" if "position" in entry else ""
    return f"{where}: {entry.get('reason', '?')}"


def print_local_inputs(quarantine: list[dict] | None, root: str | None, console: Console) -> None:
    """The local path of each quarantined input, found by hashing the files under the manifest's
    root with this machine's salt: for the operator's terminal, never for a written file."""
    refs = {entry["input"] for entry in quarantine or [] if "input" in entry}
    if not refs or not root or not Path(root).is_dir():
        return
    with console.status(f"finding the {len(refs)} quarantined inputs under {root}"):
        found = local_inputs(root, refs, default_salt())
    for ref, path in sorted(found.items()):
        console.print(f"  {ref} is {path}", markup=False)


def histogram(values: Sequence[float | None], bins: int = 8) -> list[dict[str, Any]]:
    """Counts per value (few distinct values) or per equal-width bin; None counts as unknown.

    Integers (shapes) get integer bins labelled ``"lo-hi"`` (inclusive), other values
    ``"[lo, hi)"`` (the last bin closed).

    Returns:
        ``[{"value": str, "count": int}, ...]`` in increasing order, ``unknown`` last.
    """
    known = np.array([v for v in values if v is not None], dtype=float)
    unknown = len(values) - len(known)
    rows: list[dict[str, Any]] = []
    distinct = np.unique(known)
    if len(distinct) <= bins:
        for value in distinct:
            rows.append({"value": _fmt(value), "count": int(np.sum(known == value))})
    elif np.all(known == np.round(known)):
        low, high = int(distinct[0]), int(distinct[-1])
        width = math.ceil((high - low + 1) / bins)
        counts = np.bincount(((known - low) // width).astype(int))
        for i, count in enumerate(counts):
            first, last = low + i * width, min(low + (i + 1) * width - 1, high)
            label = str(first) if first == last else f"{first}-{last}"
            rows.append({"value": label, "count": int(count)})
    else:
        counts, edges = np.histogram(known, bins=bins)
        for i, count in enumerate(counts):
            close = "]" if i == len(counts) - 1 else ")"
            rows.append(
                {"value": f"[{_fmt(edges[i])}, {_fmt(edges[i + 1])}{close}", "count": int(count)}
            )
    if unknown:
        rows.append({"value": "unknown", "count": unknown})
    return rows


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def print_summary(summary: dict[str, Any], console: Console, title: str = "") -> None:
    """The counts, quarantine, histograms and problems as rich tables."""
    console.print(counts_table(summary, title))
    quarantined = summary["quarantined"]
    console.print(f"quarantined: {quarantined['count']}")
    for reason in quarantined["reasons"]:
        console.print(f"  {reason}", markup=False)
    blank = summary.get("blank") or {}
    if blank.get("subjects"):
        console.print(
            f"[yellow]blank frames (constant or near-constant): {blank['frames']} in "
            f"{blank['subjects']} subjects[/]"
        )
        for line in blank["listed"]:
            console.print(f"  {line}", markup=False, style="yellow")
    console.print(histogram_table(summary["histograms"]))
    if summary.get("problems"):
        console.print(f"[bold red]{len(summary['problems'])} problem(s):[/]")
        for problem in summary["problems"]:
            console.print(f"  {problem}", markup=False, style="red")
    else:
        console.print("[green]manifest verified: every shard's size and sha256 match[/]")


def counts_table(summary: dict[str, Any], title: str = "") -> Table:
    """Rows source / modality, columns the splits, total and labelled."""
    splits = list(summary["splits"])
    table = Table(title=f"subjects in {title}" if title else "subjects")
    table.add_column("source / modality")
    for column in [*splits, "total", "labelled"]:
        table.add_column(column, justify="right")
    for row in summary["counts"]:
        cells = [str(row[c]) for c in [*splits, "total", "labelled"]]
        table.add_row(f"{row['source']} / {row['modality']}", *cells)
    table.add_section()
    totals = [str(summary["splits"][s]) for s in splits]
    table.add_row("all", *totals, str(summary["subjects"]), str(summary["labelled"]))
    megabytes = summary["bytes"] / 1e6
    table.caption = f"{summary['shards']} shards, {megabytes:.1f} MB"
    return table


def histogram_table(histograms: dict[str, list[dict[str, Any]]], width: int = 30) -> Table:
    """Each histogram as value, count and a text bar, one section per quantity."""
    table = Table(title="shapes (stored and original) and original spacing")
    for column, justify in (
        ("quantity", "left"),
        ("value", "right"),
        ("count", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify)
    for name, rows in histograms.items():
        top = max((row["count"] for row in rows), default=1) or 1
        for i, row in enumerate(rows):
            bar = "█" * max(1, round(width * row["count"] / top)) if row["count"] else ""
            table.add_row(name if i == 0 else "", row["value"], str(row["count"]), bar)
        table.add_section()
    return table
