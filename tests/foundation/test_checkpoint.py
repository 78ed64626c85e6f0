"""foundation.checkpoint, through the one loader (foundation.weights): backbone weights load from
Lightning checkpoints strictly and safely, and errors name the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foundation import create_backbone
from foundation.checkpoint import read_checkpoint
from foundation.weights import load_backbone_weights
from pretext.migrate import migrate_checkpoint

UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("ran")
    return "payload"


class Payload:
    """Unpickling this would call _record_unpickling: a stand-in for arbitrary code."""

    def __reduce__(self):
        return (_record_unpickling, ())


def save_pretraining_checkpoint(
    path: Path, patch: int = 8, seed: int = 1, system: str = "objective.", **extra
) -> dict:
    """A pretraining checkpoint with its MAE under system (``mae.``: the removed MAEPretrainer's)."""
    torch.manual_seed(seed)
    backbone = create_backbone("cmr_vit_test", patch_size=patch, tubelet=2)
    state = {f"{system}encoder.{k}": v for k, v in backbone.state_dict().items()}
    state[f"{system}decoder_embed.weight"] = torch.zeros(4, 4)  # the rest of the MAE: no backbone
    torch.save(
        {"state_dict": state, "hyper_parameters": {"backbone": "cmr_vit_test"}, **extra}, path
    )
    return backbone.state_dict()


def test_load_backbone_weights_restores_every_tensor(tmp_path) -> None:
    path = tmp_path / "pretrain.ckpt"
    saved = save_pretraining_checkpoint(path)
    torch.manual_seed(2)
    backbone = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    assert not torch.equal(backbone.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    load_backbone_weights(backbone, path)
    loaded = backbone.state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_a_maepretrainer_checkpoint_is_refused_naming_the_migration(tmp_path) -> None:
    path = tmp_path / "old.ckpt"
    save_pretraining_checkpoint(path, system="mae.")
    with pytest.raises(
        ValueError, match=r"old\.ckpt: the backbone is under 'mae\.encoder\.', a checkpoint of "
        r"the removed MAEPretrainer; rewrite it once with `python -m pretext\.migrate OLD\.ckpt "
        r"NEW\.ckpt`$"
    ):  # fmt: skip
        load_backbone_weights(create_backbone("cmr_vit_test", patch_size=8, tubelet=2), path)


def test_a_maepretrainer_checkpoint_loads_once_migrated(tmp_path) -> None:
    saved = save_pretraining_checkpoint(tmp_path / "old.ckpt", system="mae.")
    migrate_checkpoint(tmp_path / "old.ckpt", tmp_path / "new.ckpt")
    backbone = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    load_backbone_weights(backbone, tmp_path / "new.ckpt")
    loaded = backbone.state_dict()
    assert loaded.keys() == saved.keys()
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name


def test_load_backbone_weights_from_a_finetuning_checkpoint(tmp_path) -> None:
    torch.manual_seed(1)
    source = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    state = {f"model.backbone.{k}": v for k, v in source.state_dict().items()}
    state["model.head.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "seg.ckpt")
    backbone = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    load_backbone_weights(backbone, tmp_path / "seg.ckpt")
    assert torch.equal(backbone.patch_embed.weight, source.patch_embed.weight)


def test_checkpoint_for_another_patch_size_names_the_file(tmp_path) -> None:
    path = tmp_path / "patch16.ckpt"
    save_pretraining_checkpoint(path, patch=16)
    with pytest.raises(ValueError, match=r"patch16\.ckpt") as info:
        load_backbone_weights(create_backbone("cmr_vit_test", patch_size=8, tubelet=2), path)
    assert "patch_size" in str(info.value)


def test_checkpoint_missing_a_backbone_tensor_is_an_error(tmp_path) -> None:
    torch.manual_seed(1)
    state = {
        f"objective.encoder.{k}": v
        for k, v in create_backbone("cmr_vit_test", patch_size=8).state_dict().items()
    }
    del state["objective.encoder.norm.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match=r"(?s)partial\.ckpt.*norm\.weight"):
        load_backbone_weights(
            create_backbone("cmr_vit_test", patch_size=8), tmp_path / "partial.ckpt"
        )


def test_checkpoint_without_backbone_keys_names_the_file(tmp_path) -> None:
    torch.save({"state_dict": {"classifier.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt.*no backbone"):
        load_backbone_weights(
            create_backbone("cmr_vit_test", patch_size=8), tmp_path / "other.ckpt"
        )


def test_non_checkpoint_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.ckpt"):
        load_backbone_weights(create_backbone("cmr_vit_test", patch_size=8), path)


def test_missing_checkpoint_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.ckpt"):
        load_backbone_weights(
            create_backbone("cmr_vit_test", patch_size=8), tmp_path / "absent.ckpt"
        )


def test_checkpoint_with_arbitrary_pickled_objects_is_refused_unopened(tmp_path) -> None:
    path = tmp_path / "unsafe.ckpt"
    save_pretraining_checkpoint(path, payload=Payload())
    UNPICKLED.clear()
    with pytest.raises(ValueError, match=r"unsafe\.ckpt"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match=r"unsafe\.ckpt"):
        load_backbone_weights(create_backbone("cmr_vit_test", patch_size=8), path)
    assert UNPICKLED == []  # the object's code never ran
