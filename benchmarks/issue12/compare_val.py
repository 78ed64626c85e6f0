"""Paired comparison of two few-shot folders' ``pretrained`` runs (issue 12's checkpoint choice):
for each N, the mean Dice of each and the mean difference B - A over seeds run in both.

`python benchmarks/issue12/compare_val.py runs/issue12/val/release runs/issue12/val/end [--bar 0.01]`
With ``--bar``, the exit status says whether B beat A by at least that at every N (0) or not (1).
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


def compare(a: Path, b: Path) -> tuple[str, dict[int, float]]:
    """One line per N (A's and B's mean over paired seeds and their paired difference), and
    {N: mean difference B - A}."""
    ra, rb = runs(a), runs(b)
    lines = [f"{METRIC}, pretrained runs paired by seed: A = {a}, B = {b}"]
    gains: dict[int, float] = {}
    for n in sorted({n for n, _ in ra}):
        seeds = sorted(s for m, s in ra if m == n and (n, s) in rb)
        if not seeds:
            continue
        xa = [ra[n, s] for s in seeds]
        xb = [rb[n, s] for s in seeds]
        diff = [y - x for x, y in zip(xa, xb, strict=True)]
        gains[n] = mean(diff)
        per_seed = ", ".join(f"{d:+.3f}" for d in diff)
        lines.append(
            f"N = {n}: A {mean(xa):.3f}, B {mean(xb):.3f}, B - A {gains[n]:+.3f} "
            f"(seeds {seeds}: {per_seed})"
        )
    return "\n".join(lines), gains


if __name__ == "__main__":
    args = sys.argv[1:]
    bar = None
    if "--bar" in args:
        at = args.index("--bar")
        bar = float(args[at + 1])
        del args[at : at + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    text, gains = compare(Path(args[0]), Path(args[1]))
    print(text)
    if bar is not None:
        passed = bool(gains) and all(g >= bar for g in gains.values())
        print(f"B - A >= {bar} at every N: {'yes' if passed else 'no'}")
        sys.exit(0 if passed else 1)
