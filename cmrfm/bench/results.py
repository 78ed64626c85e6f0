"""What the benchmarks' results share: printing them and writing the JSON file, the ratio cells
of their tables, and the caption line of the machine's cores and load."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console, RenderableType

from cmrfm_io.files import write_json_atomic


def show_and_write(
    result: dict[str, Any], shown: Iterable[RenderableType], out: Path | None, console: Console
) -> None:
    """Print the tables and lines in ``shown``, then write ``result`` to ``out`` (not when None)
    and say so."""
    for item in shown:
        console.print(item)
    if out is not None:
        write_result(result, out)
        console.print(f"wrote {out}")


def write_result(result: dict[str, Any], path: Path) -> None:
    """The results as JSON (indent 1, a trailing newline), parent folders created; written
    whole or not at all."""
    write_json_atomic(path, result)


def ratio_cell(
    ratio: float | None, by_cpu: float | None = None, *, times: bool = False, cpu_label: str = ""
) -> str:
    """A ratio for a table cell: "1.23" ("1.23x" with ``times``), then the ratio by CPU time in
    brackets when there is one ("1.23 (1.10)", ``cpu_label`` inside the brackets after it);
    "–" for no ratio."""
    if ratio is None:
        return "–"
    text = f"{ratio:.2f}x" if times else f"{ratio:.2f}"
    if by_cpu is not None:
        text += f" ({by_cpu:.2f}{cpu_label})"
    return text


def machine_caption(config: dict[str, Any]) -> str:
    """ "N cores; 1-min load X before, Y after" from a result's config."""
    before, after = config["load_average_before"][0], config["load_average_after"][0]
    return f"{config['cpu_count']} cores; 1-min load {before:.2f} before, {after:.2f} after"
