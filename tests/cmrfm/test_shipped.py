"""Shipped configs and released models: found in a checkout, by name from anywhere, and an absent
model named in one line (the wheel itself: test_wheel.py). The folders: cmrfm_io.shipped."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest

import cmrfm_io.shipped as shipped
from cmrfm import CONFIGS
from cmrfm.cli import main
from cmrfm.shipped import config_args, config_path
from foundation.released import model_path

REPO = Path(__file__).resolve().parents[2]
PHANTOM = CONFIGS / "pretrain_mae_phantom.yaml"


def test_a_checkout_reads_the_top_level_configs_through_the_package() -> None:
    assert CONFIGS == REPO / "configs"  # the folder the README names, not a copy
    names = sorted(p.name for p in CONFIGS.iterdir())
    assert names and names == sorted(
        p.name for p in importlib.resources.files("cmrfm.configs").iterdir()
    )


@pytest.mark.parametrize(
    "name",
    ["pretrain_mae_phantom.yaml", "pretrain_mae_phantom", "configs/pretrain_mae_phantom.yaml"],
)
def test_a_shipped_config_is_found_by_name_from_any_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert config_path(name) == PHANTOM


def test_an_existing_file_wins_over_a_shipped_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("configs").mkdir()
    Path("configs/pretrain_mae_phantom.yaml").write_text("mine: 1\n")
    assert config_path("configs/pretrain_mae_phantom.yaml") == Path(
        "configs/pretrain_mae_phantom.yaml"
    )


def test_an_unknown_config_lists_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'nope\.yaml'.*pretrain_mae_phantom\.yaml"):
        config_path("nope.yaml")


def test_config_args_resolves_every_config_flag_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--config", "pretrain_mae_phantom", "--labels", "4",
            "-c=finetune_seg_phantom.yaml", "--config"]  # fmt: skip
    assert config_args(argv) == [
        "--config", str(PHANTOM), "--labels", "4",
        f"-c={CONFIGS / 'finetune_seg_phantom.yaml'}", "--config",
    ]  # fmt: skip


def test_the_commands_take_a_shipped_config_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cmrfm.train
    import finetune.fewshot

    monkeypatch.chdir(tmp_path)
    seen: list = []

    def fake_training(argv: list[str]) -> Path:
        seen.append(argv)
        return tmp_path / "last.ckpt"

    def fake_load_config(path: Path, overrides: dict) -> None:
        seen.append(path)
        raise ValueError("stop here")

    monkeypatch.setattr(cmrfm.train, "run_training", fake_training)
    monkeypatch.setattr(finetune.fewshot, "load_config", fake_load_config)
    main(["pretrain", "--config", "configs/pretrain_mae_phantom.yaml", "--max-steps", "1"])
    assert seen.pop() == ["--config", str(PHANTOM), "--max-steps", "1"]
    with pytest.raises(SystemExit) as stop:
        main(["fewshot", "--config", "fewshot_ef_acdc"])
    assert stop.value.code == 2 and seen.pop() == CONFIGS / "fewshot_ef_acdc.yaml"
    with pytest.raises(SystemExit) as stop:  # a typo: one line, exit 2, before any work
        main(["pretrain", "--config", "pretrain_mae_phantm.yaml"])
    assert stop.value.code == 2 and not seen
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cmrfm pretrain: error: config 'pretrain_mae_phantm.yaml'")


def test_an_absent_released_model_is_named_with_the_way_around_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"  # not there yet: as before the first release
    monkeypatch.setattr(shipped, "MODELS", models)
    with pytest.raises(FileNotFoundError, match=r"'cmr-unet-small-cine'.*released: none") as err:
        model_path("cmr-unet-small-cine")
    assert str(models) in str(err.value) and "--pretrained none" in str(err.value)
    (models / "cmr-unet-small-cine").mkdir(parents=True)
    (models / "cmr-unet-small-cine" / "config.json").write_text("{}")
    assert model_path("cmr-unet-small-cine") == models / "cmr-unet-small-cine"
    with pytest.raises(FileNotFoundError, match=r"released: cmr-unet-small-cine"):
        model_path("cmr-vit-tiny-cine")


def test_a_checkout_without_symlinks_falls_back_to_the_top_level_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cmrfm"
    package.mkdir()
    (tmp_path / "configs").mkdir()
    (package / "configs").write_text("../configs")  # what git writes without symlink support
    (tmp_path / "models").mkdir()
    (package / "models").symlink_to("../models")
    monkeypatch.setattr(shipped, "_PACKAGE", package)
    assert shipped.shipped_folder("configs") == tmp_path / "configs"
    assert shipped.shipped_folder("models") == (tmp_path / "models").resolve()  # the link, resolved
    (package / "wheel_copy").mkdir()
    assert shipped.shipped_folder("wheel_copy") == (package / "wheel_copy").resolve()
