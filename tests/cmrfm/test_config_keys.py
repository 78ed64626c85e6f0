"""cmrfm.config_keys: typos in a training config or its command line, named before LightningCLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrfm import CONFIGS
from cmrfm.cli import main


@pytest.mark.parametrize(
    ("config", "section", "typo", "nearest"),
    [("pretrain_mae_phantom.yaml", "model", "warmup_step", "warmup_steps"),
     ("pretrain_mae_phantom.yaml", "data", "batchsize", "batch_size"),
     ("pretrain_mae_phantom.yaml", "trainer", "max_step", "max_steps"),
     # arguments the few-shot datamodules and the fine-tuners forward by **kwargs to a shared
     # constructor are checked as the subclass's own
     ("finetune_ef_acdc.yaml", "data", "max_slice", "max_slices"),
     ("finetune_cls_acdc.yaml", "data", "epoch_lenght", "epoch_length"),
     ("finetune_cls_acdc.yaml", "model", "backbon", "backbone"),
     ("finetune_seg_phantom.yaml", "model", "warmup_step", "warmup_steps")],
)  # fmt: skip
def test_a_config_typo_is_named_with_the_nearest_argument(
    config: str, section: str, typo: str, nearest: str, tmp_path: Path, capsys
) -> None:
    import yaml

    values = yaml.safe_load((CONFIGS / config).read_text())
    target = values["trainer"] if section == "trainer" else values[section]["init_args"]
    target[typo] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(SystemExit) as exit_info:
        main([config.partition("_")[0], "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    where = "trainer" if section == "trainer" else f"{section}.init_args"
    assert f"{where}.{typo} is not an argument" in err and f"did you mean {nearest!r}" in err


def test_a_config_section_typo_is_named_with_the_nearest_section(tmp_path: Path, capsys) -> None:
    text = (CONFIGS / "finetune_seg_phantom.yaml").read_text()
    path = tmp_path / "typo.yaml"
    path.write_text(text.replace("\ntrainer:", "\ntrainr:"))
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    assert "trainr is not a top-level config key; did you mean 'trainer'?" in err


@pytest.mark.parametrize(
    ("flag", "nearest"),
    [("--model.init_args.lrr", "lr"), ("--model.lrr", "lr"), ("--trainr.max_steps", "trainer"),
     ("--trainer.max_step", "max_steps"), ("--data.init_args.batchsize=2", "batch_size")],
)  # fmt: skip
def test_a_command_line_typo_is_one_line_with_the_nearest_key(
    flag: str, nearest: str, capsys
) -> None:
    """Checked before LightningCLI, which would print 50 lines of usage; nothing is parsed."""
    argv = ["finetune", "--config", str(CONFIGS / "finetune_seg_phantom.yaml"), flag]
    with pytest.raises(SystemExit) as exit_info:
        main(argv if "=" in flag else [*argv, "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cmrfm finetune: error: --")
    typed = flag.partition("=")[0]
    assert typed.startswith(err.split()[3]) and f"did you mean {nearest!r}?" in err


def test_every_command_line_form_lightningcli_takes_passes_the_key_check() -> None:
    from cmrfm.config_keys import check_argv_keys

    argv = ["--model.init_args.lr", "1", "--model.lr=1", "--model.help", "SegFinetuner",
            "--trainer.logger.init_args.save_dir", "x", "--trainer.callbacks+=LearningRateMonitor",
            "--seed_everything", "1", "--print_config", "-c", "c.yaml", "--trainer.max_steps", "-1",
            "--data.init_args.labels", "2"]  # fmt: skip
    check_argv_keys(argv, [CONFIGS / "finetune_seg_phantom.yaml"])
    # a class named on the command line by a short name is LightningCLI's to resolve
    check_argv_keys(["--model", "SomeModule", "--model.init_args.anything", "1"])


def test_the_key_check_knows_lightningcli_top_level(capsys) -> None:
    import yaml

    from cmrfm.config_keys import SECTIONS

    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--print_config"])  # parses, prints, stops: nothing is built
    assert exit_info.value.code == 0
    assert tuple(yaml.safe_load(capsys.readouterr().out)) == SECTIONS


@pytest.mark.parametrize(
    "config", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("fewshot"))
)
def test_every_shipped_training_config_passes_the_key_check(config: str) -> None:
    from cmrfm.config_keys import check_config_keys

    check_config_keys(CONFIGS / config)
