"""Paired comparison of two few-shot folders' ``pretrained`` runs (issue 12's checkpoint choice):
for each N, the mean Dice of each and the mean difference B - A over seeds run in both.

`python benchmarks/issue12/compare_val.py runs/issue12/val/release runs/issue12/val/end`
"""

from __future__ import annotations

import sys
from pathlib import Path
from statistics import mean

from finetune.results import read_jsonl

METRIC = "dice_mean"


def runs(folder: Path) -> dict[tuple[int, int], float]:
    """{(n, seed): dice_mean} of the folder's finished ``pretrained`` runs."""
    rows = read_jsonl(folder / "results.jsonl")
    return {(r["n"], r["seed"]): r[METRIC] for r in rows if r["method"] == "pretrained"}


def compare(a: Path, b: Path) -> str:
    """One line per N: A's and B's mean over paired seeds and their paired difference."""
    ra, rb = runs(a), runs(b)
    lines = [f"{METRIC}, pretrained runs paired by seed: A = {a}, B = {b}"]
    for n in sorted({n for n, _ in ra}):
        seeds = sorted(s for m, s in ra if m == n and (n, s) in rb)
        if not seeds:
            continue
        xa = [ra[n, s] for s in seeds]
        xb = [rb[n, s] for s in seeds]
        diff = [y - x for x, y in zip(xa, xb, strict=True)]
        per_seed = ", ".join(f"{d:+.3f}" for d in diff)
        lines.append(
            f"N = {n}: A {mean(xa):.3f}, B {mean(xb):.3f}, B - A {mean(diff):+.3f} "
            f"(seeds {seeds}: {per_seed})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(compare(Path(sys.argv[1]), Path(sys.argv[2])))
