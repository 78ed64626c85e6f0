"""finetune.fewshot_merge: benchmark folders of one task and data give one report, pairing by
seed across folders; folders that do not belong together are refused with the reason."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cmrfm.cli import main
from finetune.fewshot_merge import merge_benchmarks
from finetune.results import read_jsonl, write_jsonl

SETUP = {"task": "seg", "shards": "runs/real/acdc", "train_split": "train", "eval_split": "test"}


def _folder(root: Path, name: str, labels: list[str], steps: int, **setup) -> Path:
    """A finished benchmark folder: pretrained and unet at each N, 2 seeds, as fewshot writes."""
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SETUP | {"frames": 2, "steps": steps} | setup))
    results, subjects = [], []
    for spec in labels:
        n = 80 if spec == "all" else int(spec)
        for method, base in (("pretrained", 0.6), ("unet", 0.5)):
            for seed in range(2):
                run = f"{method}_n{spec}_s{seed}"
                dice = base + 0.001 * n + 0.01 * seed
                results.append(
                    {"run": run, "method": method, "n": n, "labels": spec, "seed": seed}
                    | {"dice_mean": dice, "steps": steps}
                )
                subjects += [{"run": run, "subject": f"s{i}", "dice_mean": dice} for i in range(3)]
    write_jsonl(folder / "results.jsonl", results)
    write_jsonl(folder / "subjects.jsonl", subjects)
    return folder


def test_folders_merge_into_one_table_paired_by_seed(tmp_path: Path) -> None:
    few = _folder(tmp_path, "few", ["1", "2"], steps=1000)
    many = _folder(tmp_path, "all", ["all"], steps=4000)
    out = tmp_path / "merged"
    rows = merge_benchmarks(out, [few, many])
    dice = {(r["method"], r["labels"]): r for r in rows if r["metric"] == "dice_mean"}
    assert set(dice) == {(m, s) for m in ("pretrained", "unet") for s in ("1", "2", "all")}
    assert dice[("unet", "all")]["mean"] == pytest.approx(0.5 + 0.08 + 0.005)
    with (out / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    text = (out / "summary.md").read_text()
    assert "pretrained − unet, dice_mean, paired by seed" in text
    assert "| 80 | +0.100 ± 0.000 (2) |" in text and "| 1 | +0.100 ± 0.000 (2) |" in text
    config = json.loads((out / "config.json").read_text())
    assert config["eval_split"] == "test" and config["shards"] == "runs/real/acdc"
    assert config["merged_from"][str(many)]["steps"] == 4000  # each folder's budget is kept
    assert len((out / "subjects.jsonl").read_text().splitlines()) == (8 + 4) * 3


def test_folders_that_do_not_belong_together_are_refused(tmp_path: Path) -> None:
    few = _folder(tmp_path, "few", ["1"], steps=1000)
    val = _folder(tmp_path, "val", ["all"], steps=4000, eval_split="val")
    with pytest.raises(ValueError, match=r"val: differs from .*few in eval_split"):
        merge_benchmarks(tmp_path / "m", [few, val])
    again = _folder(tmp_path, "again", ["1"], steps=2000)
    with pytest.raises(ValueError, match=r"run pretrained_n1_s0 is in both .*few and .*again"):
        merge_benchmarks(tmp_path / "m", [few, again])
    with pytest.raises(ValueError, match="one of the folders merged"):
        merge_benchmarks(few, [few, again])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(SETUP | {"frames": 2}))
    with pytest.raises(ValueError, match=r"empty: no finished runs"):
        merge_benchmarks(tmp_path / "m", [few, tmp_path / "empty"])


def test_the_command_line_merges_and_names_what_is_wrong(tmp_path: Path, capsys) -> None:
    few = _folder(tmp_path, "few", ["1"], steps=1000)
    many = _folder(tmp_path, "all", ["all"], steps=4000)
    main(["fewshot", "--merge", str(few), str(many), "--out", str(tmp_path / "m")])
    assert (tmp_path / "m" / "summary.md").is_file()
    with pytest.raises(SystemExit) as info:
        main(["fewshot", "--merge", str(few), str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "nowhere: not a few-shot" in err


def test_a_folder_can_give_only_some_methods(tmp_path: Path, capsys) -> None:
    """One method re-run with its own recipe replaces that method's rows of the first benchmark."""
    first = _folder(tmp_path, "first", ["1", "2"], steps=1000)
    rerun = _folder(tmp_path, "unet_lr", ["1", "2"], steps=1000, method_args={"unet": {"lr": 4}})
    out = tmp_path / "merged"
    rows = merge_benchmarks(out, [f"{first}:pretrained", f"{rerun}:unet"])
    assert {r["method"] for r in rows} == {"pretrained", "unet"}
    runs = read_jsonl(out / "results.jsonl")
    assert len(runs) == 8 and len({r["run"] for r in runs}) == 8
    assert len(read_jsonl(out / "subjects.jsonl")) == 8 * 3  # only the kept runs' subjects
    merged_from = json.loads((out / "config.json").read_text())["merged_from"]
    assert merged_from[str(rerun)]["methods_kept"] == ["unet"]
    assert merged_from[str(rerun)]["method_args"] == {"unet": {"lr": 4}}
    with pytest.raises(
        ValueError, match=r"first: no runs of scratch \(it holds pretrained, unet\)"
    ):
        merge_benchmarks(tmp_path / "m", [f"{first}:scratch", rerun])
    with pytest.raises(SystemExit) as info:
        main(["fewshot", "--merge", str(first), f"{rerun}:unet", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "run unet_n1_s0 is in both" in err
