"""finetune.system: the frame loss counts labelled frames only."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from data_shards.record import IGNORE
from finetune.system import frame_loss


@pytest.fixture
def loss_fn() -> DiceCELoss:
    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)


def frame_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 4, 8, 8, generator=g)  # (B, K, T, H, W)
    label = torch.randint(0, 4, (2, 4, 8, 8), generator=g)
    label[0, 1] = IGNORE
    label[1, 3] = IGNORE
    return logits, label


def test_frame_loss_ignores_unlabelled_frames(loss_fn) -> None:
    logits, label = frame_batch()
    loss = frame_loss(loss_fn, logits, label)
    changed = logits.clone()
    changed[0, :, 1] += torch.randn_like(changed[0, :, 1]) * 5
    changed[1, :, 3] = 0.0
    assert torch.equal(frame_loss(loss_fn, changed, label), loss)
    at_labelled = logits.clone()
    at_labelled[0, :, 0] += torch.randn_like(at_labelled[0, :, 0]) * 5
    assert frame_loss(loss_fn, at_labelled, label) != loss


def test_frame_loss_equals_the_loss_on_labelled_frames(loss_fn) -> None:
    logits, label = frame_batch()
    labelled = [(0, 0), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    per_frame = torch.stack([logits[b, :, t] for b, t in labelled])  # (N, K, H, W)
    target = torch.stack([label[b, t] for b, t in labelled])[:, None]  # (N, 1, H, W)
    torch.testing.assert_close(frame_loss(loss_fn, logits, label), loss_fn(per_frame, target))


def test_frame_loss_with_no_labelled_frame_is_zero_with_grad(loss_fn) -> None:
    logits = torch.randn(1, 4, 2, 8, 8, requires_grad=True)
    label = torch.full((1, 2, 8, 8), IGNORE)
    loss = frame_loss(loss_fn, logits, label)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()
