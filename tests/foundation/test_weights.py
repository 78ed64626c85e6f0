"""foundation.weights: one loader for backbone weights, from a checkpoint or a hub folder."""

from __future__ import annotations

import pytest
import torch
from helpers.backbones import (
    load,
    outputs,
    prefixed,
    rewrite_weights,
    save_checkpoint,
    save_pretraining_checkpoint,
)
from safetensors.torch import load_file

from foundation import create_backbone
from foundation.architecture import BackboneWeights
from foundation.hub import WEIGHTS_NAME
from foundation.weights import load_backbone_weights, read_backbone_weights


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


def test_weights_read_once_load_like_their_source(source, folder) -> None:
    weights = read_backbone_weights(folder)
    assert isinstance(weights, BackboneWeights) and weights.architecture == "cmr_vit_test"
    torch.testing.assert_close(outputs(load(weights)), outputs(source), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"patch_size": 16}, r"patch_size 8, but cmr_vit_test is asked for with patch_size 16"),
        ({"tubelet": 1}, r"tubelet 2, but cmr_vit_test is asked for with tubelet 1"),
        ({"depth": 2}, r"depth 4, but cmr_vit_test is asked for with depth 2"),
        ({"num_heads": 4}, r"num_heads 2, but cmr_vit_test is asked for with num_heads 4"),
    ],
)
@pytest.mark.parametrize("kind", ["hub folder", "checkpoint"])
def test_weights_for_another_architecture_are_refused_naming_both(
    source, folder, tmp_path, kind, asked, message
) -> None:
    if kind == "checkpoint":
        pretrained = save_checkpoint(tmp_path / "run.ckpt", prefixed(source, "objective.encoder."))
        name = r"run\.ckpt"
    else:
        pretrained, name = folder, r"hub/model\.safetensors"
    with pytest.raises(ValueError, match=rf"{name}: the pretrained weights have {message}"):
        load(pretrained, **asked)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("extra", r"unexpected keys blocks\.0\.attn\.extra"),
        ("missing", r"missing keys norm\.weight"),
    ],
)
def test_hub_weights_with_an_extra_or_a_missing_key_are_refused(folder, change, message) -> None:
    state = load_file(folder / WEIGHTS_NAME)
    if change == "extra":
        state["blocks.0.attn.extra"] = torch.zeros(2)
    else:
        del state["norm.weight"]
    rewrite_weights(folder, state)
    with pytest.raises(ValueError, match=r"hub/model\.safetensors: the weights do not fit "
                       r"cmr_vit_test.*: " + message):  # fmt: skip
        load(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("extra", r"unexpected keys blocks\.1\.mlp\.gate\.weight"),
        ("missing", r"missing keys blocks\.3\.attn\.proj\.bias"),
    ],
)
def test_checkpoint_with_an_extra_or_a_missing_key_is_refused(source, tmp_path, change, message):
    state = prefixed(source, "objective.encoder.")
    if change == "extra":
        state["objective.encoder.blocks.1.mlp.gate.weight"] = torch.zeros(2)
    else:
        del state["objective.encoder.blocks.3.attn.proj.bias"]
    path = save_checkpoint(tmp_path / "run.ckpt", state)
    with pytest.raises(ValueError, match=r"run\.ckpt: the weights under 'objective\.encoder\.' "
                       r"do not fit cmr_vit_test.*: " + message):  # fmt: skip
        load(path)


def test_only_the_legacy_context_tables_may_be_absent(source, tmp_path) -> None:
    state = prefixed(source, "objective.encoder.")  # an old checkpoint, migrated
    del state["objective.encoder.modality_embed"], state["objective.encoder.axis_embed"]
    with pytest.warns(UserWarning, match="before modality/axis"):
        loaded = load(save_checkpoint(tmp_path / "old.ckpt", state))
    assert not loaded.modality_embed.any() and not loaded.axis_embed.any()


def test_a_bare_safetensors_file_asks_for_its_folder(folder) -> None:
    with pytest.raises(ValueError, match=r"model\.safetensors: pass the hub folder"):
        load(folder / WEIGHTS_NAME)


def test_only_a_cardiac_vit_loads(folder) -> None:
    with pytest.raises(TypeError, match="CardiacViT"):
        load_backbone_weights(torch.nn.Linear(2, 2), folder)  # type: ignore[arg-type]
