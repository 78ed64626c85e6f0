"""The `cmrfm` command line: subcommands, LightningCLI shortcuts, and a shard run end to end."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

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


def test_pretrained_none_is_null_whatever_the_config_names() -> None:
    # `--pretrained none` trains from scratch; any other value is passed on as given.
    assert expand_aliases(["--pretrained", "none"], ALIASES) == [
        "--model.init_args.pretrained",
        "null",
    ]
    assert expand_aliases(["--pretrained=cmr-unet-small-cine"], ALIASES) == [
        "--model.init_args.pretrained", "cmr-unet-small-cine"]  # fmt: skip


def test_shortcut_without_value_is_an_error() -> None:
    from cmrfm.train import ShortcutError

    with pytest.raises(ShortcutError, match="--labels needs a value"):
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


def test_evaluate_names_a_checkpoint_it_cannot_read_in_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--checkpoint", str(bad), "--shards", str(tmp_path)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"cmrfm evaluate: error: {bad}: cannot read as a Lightning checkpoint")


def test_evaluate_keeps_the_traceback_of_an_error_our_code_did_not_raise(tmp_path, monkeypatch):
    import finetune.evaluate

    def crash(*args, **kwargs):
        return int("not a number")  # a bug, not a refusal: its traceback is what helps

    monkeypatch.setattr(finetune.evaluate, "evaluate_checkpoint", crash)
    with pytest.raises(ValueError, match="invalid literal for int"):
        main(["evaluate", "--checkpoint", str(tmp_path / "a.ckpt"), "--shards", str(tmp_path)])


def test_cmrfm_debug_raises_a_one_line_error_with_its_traceback(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CMRFM_DEBUG", "1")
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ValueError, match="cannot read as a Lightning checkpoint"):
        main(["evaluate", "--checkpoint", str(bad), "--shards", str(tmp_path)])


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


BAD_SHARD_ARGUMENTS = {
    "source": (["--source", "no-such-source"], "--source"),
    "size-zero": (["--size", "0"], "--size"),
    "size-text": (["--size", "big"], "--size"),
    "spacing-zero": (["--spacing", "0"], "--spacing"),
    "spacing-nan": (["--spacing", "nan"], "--spacing"),
    "percentiles-order": (["--percentiles", "60", "40"], "--percentiles"),
    "percentiles-range": (["--percentiles", "1", "101"], "--percentiles"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARD_ARGUMENTS))
def test_bad_shard_arguments_are_a_usage_error_naming_the_option(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    flags, option = BAD_SHARD_ARGUMENTS[case]
    argv = ["shard", "--source", "phantom", "--n", "1", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"cmrfm shard: error: argument {option}")
    assert not (tmp_path / "o").exists()


def _shard_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["shard", "--source", "phantom", "--n", "1", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cmrfm shard: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    return err


def test_a_wrong_source_lists_the_registered_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from data_shards.sources import SOURCES

    with pytest.raises(SystemExit) as exit_info:
        main(["shard", "--source", "acdcx", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(repr(name) in err for name in SOURCES)


def test_a_size_beyond_memory_is_refused_with_an_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = _shard_error(["--size", "100000", "--out", str(tmp_path / "o")], capsys)
    assert "--size 100000" in err and "GiB" in err and "available" in err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_the_memory_estimate_follows_the_study_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    from cmrfm.cli import UsageError, data

    phantom = data._shard_memory_bytes("phantom", {"slices": 2, "frames": 4}, 64)
    assert phantom == 2 * 4 * 64 * 64 * data.BYTES_PER_VOXEL
    slices, frames = data.LARGE_STUDY
    assert data._shard_memory_bytes("acdc", {}, 64) == slices * frames * 64 * 64 * 6
    available = type("Memory", (), {"available": phantom})
    monkeypatch.setattr(psutil, "virtual_memory", lambda: available)
    data._check_memory("phantom", {"slices": 2, "frames": 4}, 64)  # fits exactly
    with pytest.raises(UsageError, match="GiB"):
        data._check_memory("phantom", {"slices": 2, "frames": 4}, 65)


def test_an_out_under_a_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "shards"
    assert str(out) in _shard_error(["--out", str(out)], capsys)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anyway")
def test_a_read_only_out_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert str(out) in _shard_error(["--out", str(out)], capsys)
    finally:
        out.chmod(0o755)


def test_bad_options_json_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "--options" in _shard_error(["--options", "{x", "--out", str(tmp_path / "o")], capsys)


def test_an_unwritable_out_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """As the read-only case above, where root would write anyway: the test write is refused."""
    from cmrfm.cli import data

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data.tempfile, "TemporaryFile", refuse)
    out = tmp_path / "o"
    err = _shard_error(["--out", str(out)], capsys)
    assert str(out) in err and "Permission denied" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "no_such.ckpt", "--shards", "x", "--out", "o"],
        ["bench", "seg", "--variants", "nonsense"],
        ["publish", "no_such_folder", "--repo-id", "owner/name"],
        ["export", "no_such.ckpt", "out"],
        ["pretrain", "--shards"],  # a shortcut without its value
        ["finetune", "--max-steps", "3", "--out"],
    ],
)
def test_user_errors_exit_2_with_one_line(argv: list[str], capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cmrfm {argv[0]}") and err.count("\n") == 1 and "Traceback" not in err


def test_version_is_the_package_version(capsys) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"cmrfm {importlib.metadata.version('cmrfm')}"


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    import cmrfm

    root = str(Path(cmrfm.__file__).parent.parent)  # a checkout on PYTHONPATH, no install needed
    env = {**os.environ, "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-m", "cmrfm", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"cmrfm {cmrfm.__version__}"


def test_training_help_starts_with_every_shortcut_the_command_accepts() -> None:
    from cmrfm.cli import training_shortcuts

    finetune = training_shortcuts("finetune")
    for flag in [*ALIASES, "--resume", "--extend-to", "--config"]:
        assert f"  {flag} " in finetune, flag
    pretrain = training_shortcuts("pretrain")
    assert "--labels" not in pretrain and "--pretrained" not in pretrain  # fine-tuning's only
    assert pretrain.index("--shards") < pretrain.index("LightningCLI's full list follows")


@pytest.mark.parametrize("name", ["loader", "seg", "runtime", "start", "pretrain"])
def test_bench_flags_come_from_the_benchmarks_signature(name: str) -> None:
    """Each default is written once, in the function: parsing no flags gives the signature's
    defaults (pretrain's model options: None, the preset's), results go to runs/bench/NAME.json."""
    import inspect

    from cmrfm.bench.pretrain_options import PretrainBenchOptions
    from cmrfm.cli.bench import BENCHES

    if name == "pretrain":
        from cmrfm.bench.pretrain import bench_pretrain as function
    else:
        function = BENCHES[name].load()
    args = vars(build_parser().parse_args(["bench", name]))
    options = inspect.signature(PretrainBenchOptions).parameters if name == "pretrain" else {}
    for param in inspect.signature(function).parameters.values():
        if param.name == "console" or (name == "pretrain" and param.name == "device"):
            assert param.name not in args  # seg has --device; pretrain runs where CUDA is
        elif param.name == "out":
            assert args["out"] == Path(f"runs/bench/{name}.json")
        else:
            assert args[param.name] == (None if param.name in options else param.default)


@pytest.mark.parametrize(
    ("hint", "text", "value"),
    [(int, "3", 3), (Path | None, "a/b", Path("a/b")), (Sequence[int], "8, 16", [8, 16]),
     (Sequence[str] | str, "ddp,auto", ["ddp", "auto"]), (Sequence[Path] | None, "p", [Path("p")])],
)  # fmt: skip
def test_a_flag_parses_what_its_type_hint_says(hint: object, text: str, value: object) -> None:
    import argparse

    from cmrfm.cli.signature import add_signature_flags

    def function(x: object = None) -> None: ...

    function.__annotations__["x"] = hint
    parser = argparse.ArgumentParser()
    add_signature_flags(parser, function)
    assert parser.parse_args(["--x", text]).x == value


def test_a_literal_gives_choices_and_a_bool_a_no_flag() -> None:
    import argparse

    from cmrfm.cli.signature import add_signature_flags

    def function(
        place: Literal["a", "b"] = "a", augment: bool = True, n_items: int = 2
    ) -> None: ...

    parser = argparse.ArgumentParser()
    add_signature_flags(parser, function, {"n_items": {"flag": "--items", "help": "how many"}})
    assert vars(parser.parse_args(["--place", "b", "--no-augment", "--items", "5"])) == {
        "place": "b", "augment": False, "n_items": 5}  # fmt: skip
    assert "[--items ITEMS]" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--place", "c"])


def test_the_command_line_parser_does_not_import_torch() -> None:
    """`cmrfm --help` answers before torch loads: the benchmarks' flags are made on first use."""
    import subprocess
    import sys

    code = ("import sys; from cmrfm.cli import build_parser; build_parser().format_help(); "
            "assert 'torch' not in sys.modules, 'torch imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_bench_error_names_the_subcommand(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["bench", "runtime", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cmrfm bench runtime: error: ") and err.count("\n") == 1
