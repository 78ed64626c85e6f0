"""pretext.migrate: a checkpoint of the removed MAEPretrainer (flat hyper-parameters, ``mae.*``
keys), rewritten once, restores strictly into PretrainSystem and resumes; unmigrated, it is refused
with the way out.

The old checkpoints are made here from PretrainSystem ones, as MAEPretrainer wrote them: its
arguments in its signature's order between LightningCLI's entries, the objective under ``mae.``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from cmrfm import CONFIGS
from cmrfm.train import run_training
from foundation.checkpoint import read_checkpoint, restore
from foundation.weights import backbone_state_dict
from pretext.mae import MAE
from pretext.migrate import is_legacy, main, migrate, migrate_checkpoint
from pretext.system import PretrainSystem

CONFIG = CONFIGS / "pretrain_mae_phantom.yaml"
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
# MAEPretrainer.__init__'s arguments, in order; all of them were recorded, defaults included.
LEGACY_ARGS = (
    "backbone", "patch_size", "tubelet", "mask_ratio", "decoder_dim", "decoder_depth",
    "decoder_heads", "norm_pix_loss", "lr", "scale_lr", "weight_decay", "warmup_steps",
    "drop_path_rate", "mask_type", "max_nonfinite", "log_images_every_n_steps", "peak_tflops",
)  # fmt: skip
LEGACY_DEFAULTS = {"drop_path_rate": 0.0, "mask_type": "tube"}  # what it passed when not set


def as_legacy(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A PretrainSystem (objective "mae") checkpoint as MAEPretrainer would have written it."""
    h = checkpoint["hyper_parameters"]
    values = {**LEGACY_DEFAULTS, **h, **h["backbone_kwargs"], **h["objective_kwargs"]}
    hparams = {"_class_path": "pretext.system.MAEPretrainer"}
    hparams |= {k: values[k] for k in LEGACY_ARGS}
    hparams["_instantiator"] = h.get("_instantiator", INSTANTIATOR)
    state = {
        "mae." + k[len("objective.") :] if k.startswith("objective.") else k: v
        for k, v in checkpoint["state_dict"].items()
    }
    return {**checkpoint, "state_dict": state, "hyper_parameters": hparams}


def system() -> PretrainSystem:
    L.seed_everything(0)
    return PretrainSystem(
        "cmr_vit_test",
        {"patch_size": 8, "tubelet": 2},
        "mae",
        {"mask_ratio": 0.5, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2,
         "norm_pix_loss": False},
        lr=1e-3,
        warmup_steps=3,
    )  # fmt: skip


def saved(module: PretrainSystem) -> dict[str, Any]:
    """module's checkpoint as LightningCLI's run writes it (the parts that matter here)."""
    hparams = {"_class_path": "pretext.system.PretrainSystem", **module.hparams}
    return {
        "global_step": 7,
        "state_dict": module.state_dict(),
        "hparams_name": "kwargs",
        "hyper_parameters": hparams | {"_instantiator": INSTANTIATOR},
        "pretrain_state": {"micro_batches": 7, "base_seed": 3, "nonfinite": 0, "cpu_seconds": 1.5},
    }


def test_migrated_checkpoint_restores_strictly_into_pretrain_system(tmp_path: Path) -> None:
    module = system()
    new = saved(module)
    old = as_legacy(new)
    assert any(k.startswith("mae.encoder.") for k in old["state_dict"])
    assert (
        old["hyper_parameters"]["patch_size"] == 8
        and "backbone_kwargs" not in old["hyper_parameters"]
    )
    torch.save(old, tmp_path / "old.ckpt")

    path = migrate_checkpoint(tmp_path / "old.ckpt", tmp_path / "new.ckpt")
    restored, ckpt = restore(PretrainSystem, path)  # strict
    assert isinstance(restored.objective, MAE) and restored.objective.mask_ratio == 0.5
    torch.testing.assert_close(restored.state_dict(), module.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(
        backbone_state_dict(path), module.encoder.state_dict(), rtol=0, atol=0
    )
    assert list(ckpt["state_dict"]) == list(new["state_dict"])  # the same names in the same order
    # The hyper-parameters PretrainSystem records, with what MAEPretrainer passed at its defaults.
    expected = new["hyper_parameters"]
    expected["backbone_kwargs"] = {**expected["backbone_kwargs"], "drop_path_rate": 0.0}
    expected["objective_kwargs"] = {**expected["objective_kwargs"], "mask_type": "tube"}
    assert ckpt["hyper_parameters"] == expected and list(ckpt["hyper_parameters"]) == list(expected)
    assert ckpt["pretrain_state"] == new["pretrain_state"] and ckpt["global_step"] == 7
    assert not is_legacy(ckpt)


def test_unmigrated_checkpoints_are_refused_with_the_way_out(tmp_path: Path) -> None:
    module = system()
    old = as_legacy(saved(module))
    with pytest.raises(ValueError, match=r"MAEPretrainer checkpoint.*python -m pretext\.migrate"):
        module.on_load_checkpoint(old)  # what resuming one calls before loading weights
    new = migrate(old)
    module.on_load_checkpoint(new)
    assert module.micro_batches == 7 and module.base_seed == 3
    with pytest.raises(ValueError, match="nothing to migrate"):
        migrate(new)
    torch.save(new, tmp_path / "new.ckpt")
    with pytest.raises(ValueError, match=r"new\.ckpt: not a MAEPretrainer checkpoint"):
        migrate_checkpoint(tmp_path / "new.ckpt", tmp_path / "other.ckpt")
    with pytest.raises(FileExistsError, match=r"new\.ckpt exists"):
        migrate_checkpoint(tmp_path / "new.ckpt", tmp_path / "new.ckpt")
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(SystemExit, match="1"):  # the command line: one line, exit 1
        main([str(tmp_path / "old.ckpt"), str(tmp_path / "new.ckpt")])
    main([str(tmp_path / "old.ckpt"), str(tmp_path / "old.ckpt"), "--overwrite"])  # in place
    assert not is_legacy(read_checkpoint(tmp_path / "old.ckpt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.ckpt", "old.ckpt"]  # no temp files
    # Keys from before the objective registry with the new hyper-parameters, and the reverse.
    assert is_legacy({"state_dict": old["state_dict"], "hyper_parameters": new["hyper_parameters"]})
    assert is_legacy({"state_dict": new["state_dict"], "hyper_parameters": old["hyper_parameters"]})


def test_a_migrated_checkpoint_resumes_its_run(
    make_phantom_shards: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--config", str(CONFIG), "--shards", str(make_phantom_shards(4, 2)),
            "--model.init_args.backbone", "cmr_vit_test", "--trainer.logger", "false",
            "--data.init_args.batch_size", "2", "--data.init_args.epoch_length", "8"]  # fmt: skip
    first = run_training([*args, "--out", str(tmp_path / "a"), "--max-steps", "2"])
    torch.save(as_legacy(read_checkpoint(first)), tmp_path / "old.ckpt")
    main([str(tmp_path / "old.ckpt"), str(tmp_path / "new.ckpt")])
    assert "PretrainSystem" in capsys.readouterr().out
    resumed = run_training([*args, "--out", str(tmp_path / "b"), "--max-steps", "3",
                            "--resume", str(tmp_path / "new.ckpt")])  # fmt: skip
    state = read_checkpoint(resumed)
    assert state["global_step"] == 3  # 2 restored + 1 trained
    assert state["pretrain_state"]["micro_batches"] == 3
