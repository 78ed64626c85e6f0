"""finetune.unetr: UNETR output shapes, argument checks, and frame alignment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetune.unetr import UNETRSegmenter
from foundation import create_backbone


def segmenter(patch: int, tubelet: int, seed: int = 0) -> UNETRSegmenter:
    torch.manual_seed(seed)
    backbone = create_backbone("cmr_vit_test", patch_size=patch, tubelet=tubelet)
    return UNETRSegmenter(backbone, num_classes=4, feature_size=8).eval()


@pytest.mark.parametrize("patch", [8, 16])
@pytest.mark.parametrize("frames", [2, 4])
def test_unetr_output_shape(patch, frames) -> None:
    model = segmenter(patch, tubelet=2)
    with torch.no_grad():
        logits = model(torch.rand(2, 1, frames, 32, 48))
    assert logits.shape == (2, 4, frames, 32, 48)
    assert torch.isfinite(logits).all()


def test_unetr_rejects_a_single_class() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        UNETRSegmenter(create_backbone("cmr_vit_test", patch_size=8), num_classes=1)


def test_unetr_rejects_a_patch_that_is_not_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="patch_size"):
        UNETRSegmenter(create_backbone("cmr_vit_test", patch_size=12))


def frame_sensitivity(model: nn.Module, x: torch.Tensor, frame: int) -> torch.Tensor:
    """Mean |change| of the logits at each output frame when one input frame is replaced -> (T,)."""
    changed = x.clone()
    changed[:, :, frame] = torch.rand(x.shape[-2:], generator=torch.Generator().manual_seed(frame))
    with torch.no_grad():
        return (model(changed) - model(x)).abs().mean(dim=(0, 1, 3, 4))


@pytest.mark.parametrize("patch", [8, 16])
def test_unetr_output_frames_align_with_input_frames(patch) -> None:
    # Attention mixes time, but the full-resolution skip sees each frame directly: a change in
    # input frame f must show most at output frame f.
    model = segmenter(patch, tubelet=1)
    x = torch.rand(1, 1, 4, 32, 32)
    for f in range(4):
        diff = frame_sensitivity(model, x, f)
        others = torch.cat([diff[:f], diff[f + 1 :]])
        assert diff[f] > 5 * others.max(), (f, diff)


def test_unetr_output_tubelets_align_with_input_tubelets() -> None:
    model = segmenter(8, tubelet=2)
    x = torch.rand(1, 1, 6, 32, 32)
    for f in range(6):
        diff = frame_sensitivity(model, x, f)
        same = [2 * (f // 2), 2 * (f // 2) + 1]
        other = [g for g in range(6) if g not in same]
        assert diff[same].min() > 5 * diff[other].max(), (f, diff)
