"""foundation.unet.CardiacUNet: the U-Net body as a backbone, frame by frame, with its bottleneck."""

from __future__ import annotations

import pytest
import torch

from finetune.unet import UNet2DSegmenter
from foundation.unet import CardiacUNet

SMALL = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1, "features": 6}


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
