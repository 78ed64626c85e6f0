"""foundation.unet.CardiacUNet: the U-Net body as a backbone, frame by frame, with its bottleneck."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.backbones import SMALL

from finetune.unet import UNet2DSegmenter
from foundation.hub import from_pretrained, save_pretrained
from foundation.registry import create_backbone
from foundation.unet import CardiacUNet


def test_features_keep_the_clip_grid_and_the_bottleneck_is_the_deepest_map() -> None:
    net = CardiacUNet(**SMALL)
    x = torch.rand(2, 1, 3, 32, 24)
    features, deep = net.forward_features(x, bottleneck=True)
    assert features.shape == (2, 6, 3, 32, 24)
    assert deep.shape == (2, 3, 16, 8, 6)  # (B, T, C_last, H/4, W/4)
    assert torch.equal(net(x), features)


def test_frames_are_processed_independently() -> None:
    """Each frame's features depend on that frame only (a 2D network over time)."""
    net = CardiacUNet(**SMALL).eval()
    x = torch.rand(1, 1, 3, 16, 16)
    changed = x.clone()
    changed[:, :, 2] = torch.rand(16, 16)
    a, b = net(x), net(changed)
    torch.testing.assert_close(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


def test_the_body_is_the_baseline_unet_without_its_class_layer() -> None:
    """Every tensor of the baseline U-Net but the last layer's has its twin here, same shape:
    pretrained weights of this backbone are weights of the baseline's network."""
    ours = CardiacUNet(features=16).unet.state_dict()
    baseline = UNet2DSegmenter(num_classes=4).net.state_dict()
    same = [k for k in baseline if k in ours and ours[k].shape == baseline[k].shape]
    assert set(baseline) == set(ours)
    assert len(baseline) - len(same) <= 4  # the top layer's class convolutions differ


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [({"channels": (4, 8), "strides": (2, 2)}, "one more entry"), ({"features": 0}, "features")],
)
def test_bad_arguments_are_named(kwargs: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        CardiacUNet(**kwargs)


def test_a_size_the_strides_do_not_divide_is_refused() -> None:
    with pytest.raises(ValueError, match="does not divide by 4"):
        CardiacUNet(**SMALL)(torch.rand(1, 1, 1, 30, 32))


# --- weights in and out: the one loader (foundation.weights) -----------------------------------


def _trained(**kwargs) -> CardiacUNet:
    torch.manual_seed(1)
    net = create_backbone("cmr_unet_small", **{**SMALL, **kwargs})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # unlike any fresh initialisation
    return net.eval()


def _pretraining_checkpoint(path: Path, net: CardiacUNet, legacy_alias: bool = False) -> Path:
    """A checkpoint laid out as PretrainSystem saves one (backbone under objective.encoder.)."""
    state = {f"objective.encoder.{k}": v for k, v in net.state_dict().items()}
    state["objective.projector.0.weight"] = torch.zeros(3, 3)  # a sibling, not the backbone's
    if legacy_alias:  # as written before 2026-12-04: the bottom block twice
        bottom = "unet.model.1.submodule.1.submodule."
        state.update({f"objective.encoder._bottom.{k[len(bottom):]}": v
                      for k, v in net.state_dict().items() if k.startswith(bottom)})  # fmt: skip
    hparams = {"backbone": "cmr_unet_small", "backbone_kwargs": SMALL, "patch_size": 16}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, path)
    return path


@pytest.mark.parametrize("legacy_alias", [False, True])
def test_a_pretraining_checkpoint_loads_into_the_registered_unet(tmp_path, legacy_alias) -> None:
    net = _trained()
    ckpt = _pretraining_checkpoint(tmp_path / "p.ckpt", net, legacy_alias)
    loaded = create_backbone("cmr_unet_small", pretrained=ckpt, **SMALL).eval()
    x = torch.rand(1, 1, 2, 16, 16)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_weights_of_other_channels_are_refused_naming_both(tmp_path) -> None:
    ckpt = _pretraining_checkpoint(tmp_path / "p.ckpt", _trained())
    with pytest.raises(ValueError, match=r"p\.ckpt.*channels \[4, 8, 16\].*channels \[4, 8, 32\]"):
        create_backbone("cmr_unet_small", pretrained=ckpt, **{**SMALL, "channels": (4, 8, 32)})


def test_unet_weights_are_refused_by_a_vit_and_back(tmp_path) -> None:
    ckpt = _pretraining_checkpoint(tmp_path / "p.ckpt", _trained())
    with pytest.raises(ValueError, match=r"a CardiacUNet's.*cmr_vit_test is a CardiacViT"):
        create_backbone("cmr_vit_test", pretrained=ckpt)
    vit = create_backbone("cmr_vit_test")
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in vit.state_dict().items()}},
               tmp_path / "v.ckpt")  # fmt: skip
    with pytest.raises(ValueError, match=r"a CardiacViT's.*is a CardiacUNet"):
        create_backbone("cmr_unet_small", pretrained=tmp_path / "v.ckpt", **SMALL)


def test_a_hub_folder_round_trips_with_a_unet_card(tmp_path) -> None:
    net = _trained()
    pre = {"spacing": 1.5, "size": 16, "frames": 2, "percentiles": [0.5, 99.5],
           "modalities": ["cine"]}  # fmt: skip
    folder = save_pretrained(net, tmp_path / "hub", preprocess=pre)
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "cmr_unet_small" and config["num_features"] == 6
    assert "modalities" not in config  # a U-Net has no embedding rows
    card = (folder / "README.md").read_text()
    assert "U-Net" in card and "vision-transformer" not in card and "tubelet" not in card
    loaded = from_pretrained(folder)
    x = torch.rand(1, 1, 2, 16, 16)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_a_state_with_the_legacy_bottom_alias_loads_strictly() -> None:
    """Resuming a pretraining run saved with the ``_bottom.`` alias keys must not fail."""
    net = _trained()
    state = dict(net.state_dict())
    bottom = "unet.model.1.submodule.1.submodule."
    state.update(
        {f"_bottom.{k[len(bottom) :]}": v for k, v in state.items() if k.startswith(bottom)}
    )
    fresh = CardiacUNet(**SMALL)
    fresh.load_state_dict(state, strict=True)
    assert "_bottom.conv.unit0.conv.weight" in state and not any(
        "_bottom" in k for k in fresh.state_dict()
    )


def test_the_input_tap_is_the_deepest_encoder_level() -> None:
    net = CardiacUNet(**SMALL)
    x = torch.rand(2, 1, 3, 32, 24)
    _, deep_in = net.forward_features(x, bottleneck=True, tap="input")
    assert deep_in.shape == (2, 3, 8, 8, 6)  # C_{-2} = 8 channels on the bottleneck's grid
    with pytest.raises(ValueError, match="tap='middle'"):
        net.forward_features(x, bottleneck=True, tap="middle")


@pytest.mark.parametrize("num_res_units", [0, 1])
def test_encoder_and_decoder_halves_split_every_parameter_once(num_res_units: int) -> None:
    """The encoder half is exactly what a loss on the deepest encoder level (tap "input", the
    positional objective's) reaches; the decoder half is the rest: the bottom block, the up
    path and the top layer."""
    net = CardiacUNet(**{**SMALL, "num_res_units": num_res_units})
    encoder = [id(p) for p in net.encoder_parameters()]
    decoder = [id(p) for p in net.decoder_parameters()]
    assert sorted(encoder + decoder) == sorted(id(p) for p in net.parameters())  # each once
    assert encoder and decoder
    assert {id(p) for p in net.top_layer().parameters()} <= set(decoder)
    assert len(net.encoder_modules()) == len(SMALL["strides"])  # one down block per level
    _, deep = net.forward_features(torch.rand(2, 1, 1, 16, 16), bottleneck=True, tap="input")
    deep.square().sum().backward()
    reached = {id(p) for p in net.parameters() if p.grad is not None}
    assert reached == set(encoder)
