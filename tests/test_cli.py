"""The `cmrfm` command line: subcommands, LightningCLI shortcuts, and a shard run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmrfm.cli import build_parser, main
from cmrfm.train import ALIASES, expand_aliases


def test_parser_has_the_spine_subcommands() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"shard", "pretrain", "finetune", "evaluate", "demo"} <= set(sub.choices)


def test_shortcuts_expand_to_lightningcli_keys() -> None:
    argv = ["--config", "c.yaml", "--labels", "5", "--seed=3", "--trainer.max_steps", "7"]
    assert expand_aliases(argv, ALIASES) == [
        "--config", "c.yaml",
        "--data.init_args.labels", "5",
        "--data.init_args.seed", "3", "--seed_everything", "3",
        "--trainer.max_steps", "7",
    ]  # fmt: skip


def test_shortcut_without_value_is_an_error() -> None:
    with pytest.raises(SystemExit, match="--labels needs a value"):
        expand_aliases(["--labels"], ALIASES)


def test_shard_command_writes_manifest_and_empty_quarantine(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    main(["shard", "--source", "phantom", "--n", "3", "--size", "48", "--spacing", "3.0",
          "--options", '{"slices": 2, "frames": 4, "size": 48}', "--out", str(out)])  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s["count"] for s in manifest["shards"]) == 3
    assert manifest["preprocess"]["size"] == 48
    assert json.loads((out / "quarantine.json").read_text()) == []


def test_evaluate_names_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(
            ["evaluate", "--checkpoint", str(tmp_path / "missing.ckpt"), "--shards", str(tmp_path)]
        )
    assert "missing.ckpt" in capsys.readouterr().err


def test_shard_flags_reach_the_conversion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import data_shards.convert
    from data_shards.preprocess import CROPS, ORIENTATIONS, PreprocessConfig
    from data_shards.sources import SOURCES

    seen: dict = {}
    monkeypatch.setattr(data_shards.convert, "convert", lambda *a, **kw: seen.update(kw))
    main(["shard", "--source", "acdc", "--root", str(tmp_path), "--out", str(tmp_path / "o"),
          "--percentiles", "1", "99", "--orientation", "none", "--crop", "label",
          "--no-resume"])  # fmt: skip
    assert seen["preprocess_config"] == PreprocessConfig(
        percentiles=(1.0, 99.0), orientation="none", crop="label"
    )
    assert seen["resume"] is False and seen["overwrite"] is False
    shard = build_parser()._subparsers._group_actions[0].choices["shard"]
    options = {a.dest: a for a in shard._actions}
    assert options["orientation"].choices == ORIENTATIONS and options["crop"].choices == CROPS
    assert all(name in options["source"].help for name in SOURCES)


def test_a_missing_root_is_one_line_naming_it_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(SystemExit) as exit_info:
        main(["shard", "--source", "acdc", "--root", str(missing), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cmrfm shard: error: ") and str(missing) in err
    assert "Traceback" not in err
