"""finetune.system: the frame loss counts labelled frames only; the fine-tuners record every
argument, their own and those they forward to the shared constructor, where checkpoints and
LightningCLI find them."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from cmrfm_io.constructor import constructor_arguments
from data_shards.record import IGNORE
from finetune.system import SegFinetuner, SubjectFinetuner, frame_loss
from foundation.checkpoint import read_checkpoint, restore


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


# --- the systems' arguments --------------------------------------------------------------------

# Every argument of the shared constructor away from its default.
SHARED = {"backbone": "cmr_vit_test", "patch_size": 8, "tubelet": 1, "pretrained": None,
          "protocol": "partial", "last_k": 1, "layer_decay": 0.5, "lora_rank": 4, "lr": 2e-3,
          "backbone_lr_scale": 0.5, "weight_decay": 0.02, "warmup_steps": 3}  # fmt: skip
OWN = {
    SegFinetuner: {"num_classes": 3, "feature_size": 8, "freeze_backbone": False,
                   "arch": "light", "backbone_kwargs": {"depth": 2}},
    SubjectFinetuner: {"task": "cls", "num_classes": 3, "hidden": 16, "dropout": 0.2,
                       "label_smoothing": 0.1},
}  # fmt: skip


@pytest.mark.parametrize("cls", [SegFinetuner, SubjectFinetuner])
def test_finetuners_record_every_argument_in_hparams_and_checkpoints(cls: type, tmp_path) -> None:
    """A checkpoint rebuilds its system from hparams alone (evaluate, export, resume), so the
    arguments a fine-tuner forwards to the shared constructor must be recorded with its own."""
    import lightning as L

    args = {**SHARED, **OWN[cls]}
    assert set(args) == set(constructor_arguments(cls))
    system = cls(**args)
    assert dict(system.hparams) == args
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.strategy.connect(system)
    trainer.save_checkpoint(tmp_path / "system.ckpt")
    assert read_checkpoint(tmp_path / "system.ckpt")["hyper_parameters"] == args
    rebuilt, _ = restore(cls, tmp_path / "system.ckpt")  # strict: the same network
    assert dict(rebuilt.hparams) == args


@pytest.mark.parametrize("cls", [SegFinetuner, SubjectFinetuner])
def test_lightningcli_parser_offers_every_argument_with_its_default(cls: type) -> None:
    """jsonargparse follows the fine-tuners' **kwargs into the shared constructor, with its
    defaults and help."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, "model")
    assert parser.get_defaults().model.as_dict() == dict(cls().hparams)
    help_text = " ".join(parser.format_help().split())
    assert "times the lr of the layer above it" in help_text  # layer_decay's, from the base's


def test_a_protocol_is_checked_before_anything_is_built() -> None:
    for cls in (SegFinetuner, SubjectFinetuner):
        with pytest.raises(ValueError, match="unknown protocol 'ful'"):
            cls(protocol="ful")
