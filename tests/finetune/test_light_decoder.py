"""The light segmentation decoder: shapes for any power-of-two patch and frame count, argument
errors, gradients into the backbone, frame alignment, and its choice in SegFinetuner."""

from __future__ import annotations

import pytest
import torch

from finetune.light_decoder import LightSegmenter
from finetune.system import SegFinetuner, frame_loss
from foundation import create_backbone


def light(patch: int, tubelet: int = 2, feature_size: int = 8, seed: int = 0) -> LightSegmenter:
    torch.manual_seed(seed)
    backbone = create_backbone("cmr_vit_test", patch_size=patch, tubelet=tubelet)
    return LightSegmenter(backbone, num_classes=4, feature_size=feature_size)


@pytest.mark.parametrize("patch", [2, 4, 8, 16])
@pytest.mark.parametrize(("frames", "tubelet"), [(2, 2), (4, 2), (6, 2), (3, 1)])
def test_output_shape(patch: int, frames: int, tubelet: int) -> None:
    model = light(patch, tubelet).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, frames, 32, 48))
    assert logits.shape == (2, 4, frames, 32, 48)
    assert torch.isfinite(logits).all()


def test_trains_on_a_single_token_map() -> None:
    # 16 x 16 at patch 16 is one token per time slot: nothing may normalise a 1 x 1 map.
    model = light(16).train()
    logits = model(torch.rand(2, 1, 2, 16, 16))
    assert logits.shape == (2, 4, 2, 16, 16)


def test_taps_are_asked_of_the_backbone() -> None:
    model = light(8)
    assert model.taps == model.backbone.default_taps(4) == [0, 1, 2, 3]
    deep = LightSegmenter(create_backbone("cmr_vit_test", patch_size=8, depth=12))
    assert deep.taps == [2, 5, 8, 11]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 1}, "num_classes"), ({"feature_size": 0}, "feature_size")],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LightSegmenter(create_backbone("cmr_vit_test", patch_size=8), **kwargs)


@pytest.mark.parametrize("patch", [1, 12])
def test_rejects_a_patch_it_cannot_upsample(patch: int) -> None:
    with pytest.raises(ValueError, match="patch_size"):
        LightSegmenter(create_backbone("cmr_vit_test", patch_size=patch))


def test_gradient_reaches_every_backbone_layer() -> None:
    model = light(8).train()
    x = torch.rand(2, 1, 2, 32, 32)
    label = torch.randint(0, 4, (2, 2, 32, 32))
    loss = torch.nn.functional.cross_entropy(model(x), label)
    loss.backward()
    for name, p in model.backbone.named_parameters():
        if name in ("modality_embed", "axis_embed"):
            continue  # rows other than cine / time get no gradient from cine clips
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def frame_sensitivity(model: torch.nn.Module, x: torch.Tensor, frame: int) -> torch.Tensor:
    """Mean |change| of the logits at each output frame when one input frame is replaced -> (T,)."""
    changed = x.clone()
    changed[:, :, frame] = torch.rand(x.shape[-2:], generator=torch.Generator().manual_seed(frame))
    with torch.no_grad():
        return (model(changed) - model(x)).abs().mean(dim=(0, 1, 3, 4))


@pytest.mark.parametrize("patch", [8, 16])
def test_output_frames_align_with_input_frames(patch: int) -> None:
    # Attention mixes time, but the full-resolution skip sees each frame directly.
    model = light(patch, tubelet=1).eval()
    x = torch.rand(1, 1, 4, 32, 32)
    for f in range(4):
        diff = frame_sensitivity(model, x, f)
        others = torch.cat([diff[:f], diff[f + 1 :]])
        assert diff[f] > 5 * others.max(), (f, diff)


# --- the choice in SegFinetuner -----------------------------------------------------------------


def test_seg_finetuner_builds_the_light_decoder_and_trains() -> None:
    system = SegFinetuner(backbone="cmr_vit_test", patch_size=8, arch="light", feature_size=8)
    assert isinstance(system.model, LightSegmenter)
    assert system.hparams.arch == "light"
    optimizer = system.configure_optimizers()["optimizer"]
    before = system.model.backbone.blocks[0].attn.qkv.weight.detach().clone()
    clip, label = torch.rand(2, 1, 2, 32, 32), torch.randint(0, 4, (2, 2, 32, 32))
    frame_loss(system.loss_fn, system(clip), label).backward()
    optimizer.step()
    assert not torch.equal(system.model.backbone.blocks[0].attn.qkv.weight, before)


def test_seg_finetuner_default_is_still_unetr() -> None:
    from finetune.unetr import UNETRSegmenter

    assert isinstance(SegFinetuner(backbone="cmr_vit_test", patch_size=8).model, UNETRSegmenter)


def test_seg_finetuner_light_with_frozen_early_blocks() -> None:
    system = SegFinetuner(
        backbone="cmr_vit_test", patch_size=8, arch="light", protocol="partial", last_k=1
    )
    blocks = system.model.backbone.blocks
    assert not any(p.requires_grad for b in blocks[:-1] for p in b.parameters())
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert all(p.requires_grad for p in system.model.head.parameters())


def test_seg_finetuner_names_the_archs_on_a_bad_one() -> None:
    with pytest.raises(ValueError, match="'light'"):
        SegFinetuner(backbone="cmr_vit_test", patch_size=8, arch="lite")


def test_seg_finetuner_rebuilds_from_its_hyper_parameters() -> None:
    # Packages and exports rebuild the system from its hyper-parameters: arch must be among them.
    system = SegFinetuner(backbone="cmr_vit_test", patch_size=8, arch="light", feature_size=8)
    again = SegFinetuner(**dict(system.hparams))
    again.load_state_dict(system.state_dict(), strict=True)
    clip = torch.rand(1, 1, 2, 32, 32)
    torch.testing.assert_close(again.eval()(clip), system.eval()(clip))
