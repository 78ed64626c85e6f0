"""The results of `cmrfm bench pretrain`: one row per run, the ratios between runs against
the issue's goals, and the tables and lines that print them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from cmrfm.bench.pretrain_cases import SHORT, Case
from cmrfm.bench.results import machine_caption, ratio_cell

GOALS = {"loop": 0.95, "masking": 4.0, "mfu": 0.40}  # issue 4: Lightning/bare, 90%/0%, compiled


def pretrain_run_row(
    case: Case, total: dict[str, Any], batch: int, flops: float, peak: float | None
) -> dict[str, Any]:
    """One run's row: rates from its summed steps and seconds, FLOP/s and MFU."""
    row: dict[str, Any] = {
        "id": case.id,
        "loop": case.loop,
        "strategy": case.strategy,
        "compile": case.compile,
        "mask": case.mask,
        **total,
        "flops_per_step": flops,
        "clips": None,
        "clips_per_s": None,
        "ms_per_step": None,
        "clips_per_cpu_s": None,
        "tflops_per_s": None,
        "mfu": None,
    }
    if total["status"] != "ok":
        return row
    steps, seconds, cpu = total["steps"], total["seconds"], total["cpu_seconds"]
    row["clips"] = batch * steps
    row["clips_per_s"] = row["clips"] / seconds
    row["ms_per_step"] = 1e3 * seconds / steps
    row["clips_per_cpu_s"] = row["clips"] / cpu if cpu > 0 else None
    row["tflops_per_s"] = flops * steps / seconds / 1e12
    if peak:
        row["mfu"] = row["tflops_per_s"] / peak
    return row


def compare(
    runs: Sequence[dict[str, Any]], strategies: Sequence[str], compile: bool, mask: float
) -> list[dict[str, Any]]:
    """Ratios of clips/s: each strategy / bare, other strategies / the first, mask / no mask,
    compiled / eager; None (with the reason) when either run did not measure.

    Each entry also has the difference in ms per step (numerator - denominator): for Lightning
    against the bare loop, the system's own cost per step, which does not grow with the model.
    """
    by = {(r["loop"], r["strategy"], r["compile"], r["mask"]): r for r in runs}
    loops = [("bare", None), *(("lightning", s) for s in strategies)]
    label = {loop: Case(*loop, False, 0.0).label for loop in loops}
    out = []

    def add(kind: str, name: str, numerator: tuple, denominator: tuple, flag: bool | None) -> None:
        a, b = by[numerator], by[denominator]
        entry = {"kind": kind, "name": name, "compile": flag, "numerator": a["id"],
                 "denominator": b["id"], "ratio": None, "ratio_by_cpu": None,
                 "ms_per_step_difference": None, "goal": GOALS.get(kind),
                 "reason": None}  # fmt: skip
        missing = [r for r in (a, b) if r["status"] != "ok"]
        if missing:
            entry["reason"] = "; ".join(f"{r['id']}: {r['status']}" for r in missing)
        else:
            entry["ratio"] = a["clips_per_s"] / b["clips_per_s"]
            entry["ms_per_step_difference"] = a["ms_per_step"] - b["ms_per_step"]
            if a["clips_per_cpu_s"] and b["clips_per_cpu_s"]:
                entry["ratio_by_cpu"] = a["clips_per_cpu_s"] / b["clips_per_cpu_s"]
        out.append(entry)

    first = ("lightning", strategies[0])
    for c in [False, True] if compile else [False]:
        for loop in loops[1:]:
            add("loop", f"{label[loop]} / bare", (*loop, c, mask), ("bare", None, c, mask), c)
        for loop in loops[2:]:
            name = f"{SHORT[loop[1]]} / {SHORT[first[1]]}"
            add("strategy", name, (*loop, c, mask), (*first, c, mask), c)
        if mask != 0:
            for loop in loops:
                name = f"masking {mask:.0%} / 0%: {label[loop]}"
                add("masking", name, (*loop, c, mask), (*loop, c, 0.0), c)
    if compile:
        for loop in loops:
            name = f"compiled / eager: {label[loop]}"
            add("compile", name, (*loop, True, mask), (*loop, False, mask), None)
    return out


def overhead_lines(comparisons: Sequence[dict[str, Any]]) -> list[str]:
    """Per compile mode: what each Lightning run adds per step to the bare loop, in ms."""
    lines = []
    for flag in (False, True):
        parts = [
            f"{c['name'].removeprefix('lightning ').removesuffix(' / bare')}"
            f" {c['ms_per_step_difference']:+.2f} ms"
            for c in comparisons
            if c["kind"] == "loop" and c["compile"] is flag and c["ratio"] is not None
        ]
        if parts:
            mode = "compiled" if flag else "eager"
            lines.append(f"Lightning - bare per step, {mode}: " + ", ".join(parts))
    return lines


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def runs_table(result: dict[str, Any]) -> Table:
    """One row per run: clips/s, ms/step, FLOPs/step, FLOP/s, MFU, or why it did not run;
    a heading row per compile mode and mask ratio."""
    config = result["config"]
    shape = f"{config['frames']}x{config['size']}x{config['size']}"
    title = (
        f"pretrain step: {config['backbone']} MAE, clips {shape}, patch {config['patch']},"
        f" tubelet {config['tubelet']}, batch {config['batch']}, {config['precision']},"
        f" {config['device']}"
    )
    table = Table(title=title)
    for column in ("run", "clips/s", "ms/step", "FLOP/step", "FLOP/s", "MFU", "note"):
        table.add_column(column, justify="left" if column in ("run", "note") else "right")
    heading = None
    for row in result["runs"]:
        if (row["compile"], row["mask"]) != heading:
            if heading is not None:
                table.add_section()
            heading = row["compile"], row["mask"]
            mode = "compiled" if row["compile"] else "eager"
            table.add_row(f"[bold]{mode}, mask {row['mask']:.0%}[/bold]")
        ok = row["status"] == "ok"
        memory = row.get("max_memory_gb")
        note = f"{memory:.1f} GiB peak" if ok and memory else ""
        if not ok:
            note = f"{row['status']}: {row['reason']}"
        table.add_row(
            "  " + Case(row["loop"], row["strategy"], row["compile"], row["mask"]).label,
            f"{row['clips_per_s']:.1f}" if ok else "–",
            f"{row['ms_per_step']:.2f}" if ok else "–",
            _si(row["flops_per_step"]),
            _si(row["tflops_per_s"] * 1e12) if ok else "–",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "–",
            note,
        )
    table.caption = (
        f"{config['steps']} timed steps after {config['warmup']} warm-up, x {config['rounds']}"
        f" rounds; {config['threads']} torch threads, {machine_caption(config)}"
    )
    return table


def comparisons_table(result: dict[str, Any]) -> Table:
    """The ratios of clips/s (eager and compiled side by side), MFU, and the issue's goals."""
    config = result["config"]
    cpu = config["device"] == "cpu"
    modes = ["eager", "compiled"] if config["compile"] else ["eager"]
    table = Table(title="ratios of clips/s")
    for column in ("comparison", *modes, "goal"):
        table.add_column(column, justify="left" if column in ("comparison", "goal") else "right")
    cells: dict[str, dict[str, str]] = {}
    for c in result["comparisons"]:
        mode = "eager" if c["compile"] is False else "compiled"
        times = c["kind"] in ("masking", "compile")
        cell = ratio_cell(c["ratio"], c["ratio_by_cpu"] if cpu else None, times=times)
        cells.setdefault(c["name"], {"kind": c["kind"]})[mode] = cell
    goals = {"loop": f"≥ {GOALS['loop']:.2f}", "masking": f"≥ {GOALS['masking']:g}x"}
    for name, row in cells.items():
        table.add_row(name, *(row.get(m, "") for m in modes), goals.get(row["kind"], ""))
    if config["peak_tflops"]:  # MFU of the bare loop and the first strategy at the mask ratio
        table.add_section()
        for strategy in (None, config["strategies"][0]):
            runs = [r for r in result["runs"]
                    if r["strategy"] == strategy and r["mask"] == config["mask"]]  # fmt: skip
            mfu = {("compiled" if r["compile"] else "eager"): r["mfu"] for r in runs}
            label = Case(runs[0]["loop"], strategy, False, config["mask"]).label
            table.add_row(
                f"MFU: {label}, mask {config['mask']:.0%}",
                *(f"{mfu[m]:.1%}" if mfu.get(m) is not None else "–" for m in modes),
                f"≥ {GOALS['mfu']:.0%} compiled",
            )
    table.caption = "ratio (ratio of clips per CPU-second)" if cpu else None
    return table
