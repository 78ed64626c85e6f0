"""finetune.system: the frame loss counts labelled frames only; the fine-tuners record every
argument, their own and those they forward to the shared constructor, where checkpoints and
LightningCLI find them; head_first_steps trains the head alone first (LP-FT)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss

from cmrfm_io.constructor import constructor_arguments
from data_shards.record import IGNORE
from finetune.fewshot_config import FewShotConfig
from finetune.system import SegFinetuner, SubjectFinetuner, frame_loss
from foundation.checkpoint import read_checkpoint, restore
from foundation.optim import warmup_cosine_factor


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
          "backbone_lr_scale": 0.5, "weight_decay": 0.02, "warmup_steps": 3,
          "head_first_steps": 5}  # fmt: skip
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


# --- head_first_steps: the head alone first, then everything (LP-FT) ---------------------------

# Cheap segmenters, and the parameters protocol "linear" trains in each: the dense U-Net's top
# layer (it outputs the classes), the light decoder outside a ViT.
TINY = {
    "dense": {"backbone": "cmr_unet_small", "arch": "dense",
              "backbone_kwargs": {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}},
    "light": {"backbone": "cmr_vit_test", "patch_size": 8, "arch": "light", "feature_size": 8,
              "backbone_kwargs": {"depth": 2}},
}  # fmt: skip
HEAD = {
    "dense": lambda name: name.startswith("model.backbone.unet.model.2."),
    "light": lambda name: not name.startswith("model.backbone."),
}


def optimiser_of(system: SegFinetuner) -> tuple[torch.optim.Optimizer, object]:
    config = system.configure_optimizers()
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


@pytest.mark.parametrize("arch", ["dense", "light"])
def test_the_first_head_first_steps_train_the_head_alone_then_everything_trains(arch) -> None:
    torch.manual_seed(0)
    system = SegFinetuner(**TINY[arch], protocol="full", head_first_steps=2, warmup_steps=1)
    optimizer, schedule = optimiser_of(system)
    before = {n: p.detach().clone() for n, p in system.named_parameters()}
    head = {n for n in before if HEAD[arch](n)}
    assert head and head != set(before)
    size = 16 if arch == "dense" else 32
    clip, label = torch.rand(2, 1, 2, size, size), torch.randint(0, 4, (2, 2, size, size))
    system.train()

    def changed_after_a_step() -> set[str]:
        optimizer.zero_grad()
        frame_loss(system.loss_fn, system(clip), label).backward()
        optimizer.step()
        schedule.step()
        return {n for n, p in system.named_parameters() if not torch.equal(p, before[n])}

    assert changed_after_a_step() == head  # steps 0 and 1: the rest moves not at all, though
    assert changed_after_a_step() == head  # AdamW decays its weight matrices (weight_decay > 0)
    assert changed_after_a_step() == set(before)  # step 2 = head_first_steps: everything


def test_the_held_back_parameters_warm_up_from_head_first_steps_and_end_with_the_run() -> None:
    """The head keeps the run's schedule; the rest has lr 0, then a warm-up + cosine of its own
    from step head_first_steps to the run's end (1000 steps without a Trainer)."""
    system = SegFinetuner(**TINY["light"], lr=1e-3, head_first_steps=4, warmup_steps=2)
    optimizer, schedule = optimiser_of(system)
    lrs = []
    for _ in range(1000):
        lrs.append({g["head_first"]: g["lr"] / g["initial_lr"] for g in optimizer.param_groups})
        optimizer.step()  # no gradients: nothing moves, the schedule steps
        schedule.step()
    run, rest = warmup_cosine_factor(2, 1000), warmup_cosine_factor(2, 1000 - 4)
    assert [f[True] for f in lrs] == pytest.approx([run(t) for t in range(1000)])
    assert [f[False] for f in lrs[:4]] == [0.0] * 4
    assert [f[False] for f in lrs[4:]] == pytest.approx([rest(t) for t in range(996)])
    assert [f[False] for f in lrs[4:6]] == [0.5, 1.0]  # warm-up from step 4, peak at step 5
    assert lrs[-1][True] == pytest.approx(0.01, abs=1e-4) == lrs[-1][False]  # min_ratio at the end


@pytest.mark.parametrize("arch", ["dense", "light"])
def test_head_first_steps_0_keeps_the_groups_and_the_schedule(arch) -> None:
    def groups_and_lrs(**kwargs) -> tuple[list, list]:
        torch.manual_seed(0)
        system = SegFinetuner(**TINY[arch], warmup_steps=3, **kwargs)
        names = {id(p): n for n, p in system.named_parameters()}
        optimizer, schedule = optimiser_of(system)
        groups = [({k: v for k, v in g.items() if k != "params"}, [names[id(p)] for p in g["params"]])
                  for g in optimizer.param_groups]  # fmt: skip
        lrs = []
        for _ in range(30):
            lrs.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            schedule.step()
        return groups, lrs

    groups, lrs = groups_and_lrs(head_first_steps=0)
    assert (groups, lrs) == groups_and_lrs()
    assert not any("head_first" in g for g, _ in groups)
    factor = warmup_cosine_factor(3, 1000)
    assert lrs == [[g["initial_lr"] * factor(t) for g, _ in groups] for t in range(30)]


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"head_first_steps": -1}, "head_first_steps=-1 must be an int >= 0"),
        ({"head_first_steps": 2.5}, "head_first_steps=2.5 must be an int >= 0"),
        ({"head_first_steps": True}, "head_first_steps=True must be an int >= 0"),
        ({"head_first_steps": 3, "protocol": "linear"}, "head_first_steps=3 means nothing with "
         "protocol 'linear'"),
        ({"head_first_steps": 3, "freeze_backbone": True}, "head_first_steps=3 means nothing with "
         "protocol 'linear' (freeze_backbone=True"),
    ],
)  # fmt: skip
def test_bad_head_first_steps_are_refused_by_name(kwargs, problem) -> None:
    with pytest.raises(ValueError) as info:
        SegFinetuner(**TINY["light"], **kwargs)
    assert problem in str(info.value)
    if "freeze_backbone" not in kwargs:
        with pytest.raises(ValueError, match="head_first_steps"):
            SubjectFinetuner(backbone="cmr_vit_test", patch_size=8, **kwargs)


def test_fewshot_model_arguments_take_head_first_steps_and_unet_holds_nothing_back() -> None:
    """`cmrfm fewshot` passes model: to every method, the backbone-less "unet" too: there
    everything is head, so head_first_steps changes nothing."""
    for task in ("seg", "ef"):
        FewShotConfig(task=task, methods=["scratch"], model={"head_first_steps": 100},
                      method_args={"scratch": {"head_first_steps": 50}})  # fmt: skip
    optimizer, _ = optimiser_of(SegFinetuner(arch="unet", head_first_steps=100, warmup_steps=1))
    assert all(g["head_first"] and g["lr"] == g["initial_lr"] for g in optimizer.param_groups)
