"""foundation.checkpoint, through the one loader (foundation.weights): backbone weights load from
Lightning checkpoints strictly and safely, and errors name the file."""

from __future__ import annotations

import pytest
import torch
from helpers.backbones import save_pretraining_checkpoint

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


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"this is not a checkpoint\n", "not a PyTorch checkpoint"),
        (None, "not a PyTorch checkpoint"),  # a real checkpoint cut in half
        (Payload, "objects other than tensors and plain values, which cmrfm does not unpickle"),
    ],
)
def test_an_unreadable_checkpoint_is_described_without_advice_to_load_it_unsafely(
    tmp_path, content, said
) -> None:
    path = tmp_path / "model.ckpt"
    if content is Payload:
        save_pretraining_checkpoint(path, payload=Payload())
    else:
        torch.save({"state_dict": {"w": torch.zeros(64)}}, path)
        whole = path.read_bytes()
        path.write_bytes(content if content is not None else whole[: len(whole) // 2])
    with pytest.raises(ValueError) as error:
        read_checkpoint(path)
    assert str(error.value).startswith(f"{path}: cannot read as a Lightning checkpoint")
    assert said in str(error.value) and "weights_only" not in str(error.value)


def test_a_checkpoint_that_cannot_be_opened_is_not_called_damaged(tmp_path, monkeypatch) -> None:
    path = tmp_path / "labmate.ckpt"
    torch.save({"state_dict": {}}, path)

    def refuse(*args, **kwargs):  # a lab-mate's 0600 file (as root, no permission test can fail)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ValueError, match=r"labmate\.ckpt: cannot read .* \(Permission denied\)$"):
        read_checkpoint(path)


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
