"""create_backbone(name, pretrained=...): the one way weights get into a backbone.

A hub folder and a Lightning checkpoint both give back identical outputs; the architecture a
registered name implies is checked against the weights; a released model loads by its name. The
ways a source can be wrong are tests/foundation/test_hub_files.py's (a hub folder's files) and
test_weights.py's (another architecture, an extra or a missing key)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from helpers.backbones import ARGS, PREPROCESS, load, outputs, prefixed, save_checkpoint, trained

from foundation import create_backbone, from_pretrained, save_pretrained
from foundation.checkpoint import find_backbone_prefix

# --- round trips -------------------------------------------------------------------------------


def test_hub_folder_round_trip_gives_identical_outputs(source, folder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder cmrfm writes now loads without a warning
        loaded = load(folder)
    assert loaded.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)
    torch.testing.assert_close(outputs(from_pretrained(folder)), outputs(source), rtol=0, atol=0)


@pytest.mark.parametrize(
    "prefix",
    [
        "objective.encoder.",  # PretrainSystem
        "model.backbone.",  # a fine-tuning checkpoint
        "_forward_module.objective.encoder.",  # DeepSpeed ZeRO shards rebuilt to fp32
    ],
)
def test_lightning_checkpoint_gives_identical_outputs(source, tmp_path, prefix) -> None:
    state = {**prefixed(source, prefix), "objective.decoder_pred.weight": torch.ones(3)}
    path = save_checkpoint(tmp_path / "pretrain.ckpt", state)
    loaded = load(path)
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)
    loaded = load(str(path))  # paths as YAML gives them
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)


def test_the_known_prefix_wins_over_a_second_complete_backbone(source) -> None:
    state = {**prefixed(trained(), "objective.teacher."), **prefixed(source, "objective.encoder.")}
    assert find_backbone_prefix(state, Path("x.ckpt")) == "objective.encoder."
    odd = {**prefixed(source, "teacher.trunk."), **prefixed(source, "student.trunk.")}
    with pytest.raises(ValueError, match=r"x\.ckpt: several backbones fit.*student\.trunk\."):
        find_backbone_prefix(odd, Path("x.ckpt"))


# --- the weights and the architecture asked for must agree -------------------------------------


def test_another_registered_size_is_refused_naming_its_widths(folder) -> None:
    with pytest.raises(
        ValueError, match=r"embed_dim 32, .*cmr_vit_tiny is asked for with embed_dim 192"
    ):
        create_backbone("cmr_vit_tiny", pretrained=folder, **ARGS)


def test_num_heads_a_checkpoint_implies_by_its_backbone_name_is_checked(source, tmp_path) -> None:
    # num_heads leaves no trace in the shapes: only the registry's defaults for the recorded
    # name tell that these weights were trained with 2 heads.
    path = save_checkpoint(tmp_path / "run.ckpt", prefixed(source, "objective.encoder."))
    with pytest.raises(ValueError, match=r"run\.ckpt: .*num_heads 2, .*num_heads 4"):
        load(path, num_heads=4)


def test_hyper_parameters_that_contradict_the_weights_are_named(source, tmp_path) -> None:
    hparams = {"backbone": "cmr_vit_test", "patch_size": 16}  # a fine-tuning system's flat layout
    path = save_checkpoint(tmp_path / "run.ckpt", prefixed(source, "model.backbone."), hparams)
    with pytest.raises(
        ValueError, match=r"run\.ckpt: the weights under 'model\.backbone\.' have patch_size 8, "
        r"the checkpoint's hyper_parameters say patch_size 16"
    ):  # fmt: skip
        load(path)


# --- other sources -----------------------------------------------------------------------------


def test_no_pretrained_is_a_fresh_backbone() -> None:
    torch.manual_seed(3)
    a = create_backbone("cmr_vit_test", pretrained=None, **ARGS)
    torch.manual_seed(3)
    b = create_backbone("cmr_vit_test", **ARGS)
    torch.testing.assert_close(outputs(a), outputs(b), rtol=0, atol=0)


def test_a_released_model_loads_by_name_and_none_means_random(tmp_path, monkeypatch) -> None:
    # As timm's pretrained tags: a bare name is a released hub folder (models/NAME); "none" and
    # None start from random weights; a name no release has is named with the ones there are.
    from cmrfm_io import shipped

    model = trained()
    monkeypatch.setattr(shipped, "MODELS", tmp_path / "models")
    save_pretrained(model, tmp_path / "models" / "cmr-test-cine", preprocess=PREPROCESS)
    named = create_backbone("cmr_vit_test", pretrained="cmr-test-cine", **ARGS)
    assert torch.equal(outputs(named), outputs(model))
    torch.manual_seed(0)
    random = create_backbone("cmr_vit_test", pretrained="none", **ARGS)
    torch.manual_seed(0)
    assert torch.equal(outputs(random), outputs(create_backbone("cmr_vit_test", **ARGS)))
    with pytest.raises(FileNotFoundError, match=r"'cmr-other'.*released: cmr-test-cine"):
        create_backbone("cmr_vit_test", pretrained="cmr-other", **ARGS)
