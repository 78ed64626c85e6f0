"""Subject-level heads: attention pooling over slices, EF targets, slice stacks and their data,
and the EF / diagnosis system (losses, learning, checkpoints)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from data_shards.record import IGNORE
from finetune.data import (
    FewShotSegData,
    FewShotSubjectData,
    LabelledSubjects,
    stack_frames,
    subject_stack,
)
from finetune.subject import ACDC_GROUPS, SliceAttentionPool, SubjectModel, subject_targets
from finetune.system import SubjectFinetuner
from foundation import create_backbone
from foundation.checkpoint import restore

SIZE = 16

# --- pooling -----------------------------------------------------------------------------------


def pool_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    return x, mask


def test_pooling_ignores_padded_slices() -> None:
    torch.manual_seed(0)
    pool = SliceAttentionPool(8, 16)
    x, mask = pool_inputs()
    pooled, weights = pool(x, mask)
    assert pooled.shape == (3, 8) and weights.shape == (3, 5)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(pooled[2], x[2, 0])  # one real slice: its own feature
    changed = x.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 8) * 100
    changed[0, 3] = float("nan")
    again, again_weights = pool(changed, mask)
    torch.testing.assert_close(again, pooled)
    torch.testing.assert_close(again_weights, weights)


def test_pooling_is_invariant_to_slice_order() -> None:
    torch.manual_seed(0)
    pool = SliceAttentionPool(8, 16)
    x, mask = pool_inputs()
    pooled, weights = pool(x, mask)
    order = torch.tensor([4, 2, 0, 3, 1])
    shuffled, shuffled_weights = pool(x[:, order], mask[:, order])
    torch.testing.assert_close(shuffled, pooled)
    torch.testing.assert_close(shuffled_weights, weights[:, order])


def test_pooling_refuses_a_subject_without_slices() -> None:
    x, mask = pool_inputs()
    mask[1] = False
    with pytest.raises(ValueError, match="real slice"):
        SliceAttentionPool(8)(x, mask)


def test_subject_model_never_sees_padded_slices() -> None:
    torch.manual_seed(0)
    model = SubjectModel(create_backbone("cmr_vit_test", patch_size=8), "cls", 5).eval()
    stack = torch.rand(2, 4, 1, 2, SIZE, SIZE)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        out = model(stack, mask)
        stack[0, 2:] = torch.rand(2, 1, 2, SIZE, SIZE)
        assert out.shape == (2, 5)
        torch.testing.assert_close(model(stack, mask), out)
        stack[0, 1] = 0.0  # a real slice does count
        assert not torch.allclose(model(stack, mask)[0], out[0])


# --- targets -----------------------------------------------------------------------------------


def labelled(group: str | None = "DCM", rv: bool = True, ed: int = 0, es: int = 2) -> dict:
    """Two slices, three frames; LV 40 px per slice at ED, 10 at ES; RV 20 -> 15 (if rv)."""
    label = np.zeros((2, 3, 12, 12), np.uint8)
    label[:, ed, 0:4, 0:10] = 1
    label[:, es, 0:2, 0:5] = 1
    label[:, 1] = IGNORE  # an unannotated frame
    if rv:
        label[:, ed, 6:10, 0:5] = 3
        label[:, es, 6:9, 0:5] = 3
    image = np.random.default_rng(0).integers(0, 256, label.shape, dtype=np.uint8)
    meta = {"spacing": [8.0, 1.5, 1.5], "ed": ed, "es": es, "group": group}
    return {"key": f"s-{group}", "image": image, "label": label, "meta": meta}


def test_ef_targets_from_the_ground_truth_at_ed_and_es() -> None:
    targets = subject_targets(labelled())
    np.testing.assert_allclose(targets["ef"], [100 * (40 - 10) / 40, 100 * (20 - 15) / 20])
    assert targets["group"] == ACDC_GROUPS.index("DCM")
    swapped = subject_targets(labelled(ed=2, es=0))  # ED and ES frames read from meta
    np.testing.assert_allclose(swapped["ef"], targets["ef"])


def test_missing_targets_are_nan_and_minus_one() -> None:
    no_rv = subject_targets(labelled(group=None, rv=False))
    assert no_rv["ef"][0] == pytest.approx(75.0) and np.isnan(no_rv["ef"][1])
    assert no_rv["group"] == -1
    assert subject_targets(labelled(group="ARV"))["group"] == -1
    single_phase = labelled()
    single_phase["meta"]["es"] = 0  # LGE: one frame, no systole
    assert np.isnan(subject_targets(single_phase)["ef"]).all()
    unlabelled = {**labelled(), "label": None}
    assert np.isnan(subject_targets(unlabelled)["ef"]).all()


# --- stacks ------------------------------------------------------------------------------------


def test_stack_frames_run_from_ed_to_es() -> None:
    assert stack_frames(2, 2, ed=0, es=1) == [0, 1]  # ACDC: the clip is [ED, ES]
    assert stack_frames(30, 4, ed=0, es=10) == [0, 3, 7, 10]
    assert stack_frames(30, 3, ed=25, es=5) == [25, 0, 5]  # wraps past the last frame
    assert stack_frames(30, 1, ed=4, es=12) == [4]
    assert stack_frames(30, 3, ed=None, es=None) == [0, 10, 20]  # no phases: the whole cycle


def test_subject_stack_pads_and_subsamples_slices() -> None:
    subject = labelled()
    stack, mask = subject_stack(subject, frames=2, max_slices=4)
    assert stack.shape == (4, 1, 2, 12, 12) and stack.dtype == torch.float32
    assert mask.tolist() == [True, True, False, False]
    expected = subject["image"][:, [0, 2]].astype(np.float32) / 255  # ED, ES
    np.testing.assert_array_equal(stack[:2, 0].numpy(), expected)
    assert (stack[2:] == 0).all()
    slice_index = np.arange(9, dtype=np.uint8)[:, None, None, None]
    many = {**subject, "image": np.broadcast_to(slice_index, (9, 3, 2, 2))}  # value = slice index
    stack, mask = subject_stack(many, frames=2, max_slices=5)
    assert mask.all()
    assert (stack[:, 0, 0, 0, 0] * 255).round().tolist() == [0, 2, 4, 6, 8]  # base to apex


def test_labelled_subjects_items_and_augmentation() -> None:
    subject = labelled()
    plain = LabelledSubjects([subject], frames=2, max_slices=4)[0]
    stack, mask = subject_stack(subject, 2, 4)
    assert torch.equal(plain["stack"], stack) and torch.equal(plain["mask"], mask)
    np.testing.assert_allclose(plain["ef"].numpy(), subject_targets(subject)["ef"])
    assert plain["group"].item() == 0
    # Identical slices with a bright square: one transform for all slices keeps them identical.
    same = {**subject, "image": np.zeros((3, 3, 24, 24), np.uint8)}
    same["image"][:, :, 6:14, 8:18] = 220
    same["image"][:, :, 14:18, 8:12] = 30
    ds = LabelledSubjects([same], frames=2, max_slices=4, augment=True)
    ds.transform.set_random_state(seed=0)
    moved = 0
    for _ in range(6):
        item = ds[0]
        real = item["stack"][:3, 0]
        assert item["stack"].shape == (4, 1, 2, 24, 24) and (item["stack"][3] == 0).all()
        assert float(real.min()) >= 0 and float(real.max()) <= 1
        bright = real > 0.45
        assert (bright == bright[0]).float().mean() > 0.98
        moved += not torch.equal(bright[0, 0], torch.from_numpy(same["image"][0, 0] > 115))
    assert moved > 0


def test_labelled_subjects_warn_when_the_task_has_no_target() -> None:
    with pytest.warns(UserWarning, match="cls"):
        LabelledSubjects([labelled(group=None)], frames=2, task="cls")


def test_subject_data_draws_the_segmentation_subjects(
    make_phantom_shards: Callable[..., Path],
) -> None:
    shards = make_phantom_shards(6, 2)
    seg = FewShotSegData(str(shards), labels=3, seed=1)
    subj = FewShotSubjectData(
        str(shards), labels=3, seed=1, batch_size=2, epoch_length=4, max_slices=3
    )
    seg.setup()
    subj.setup()
    assert [s["key"] for s in subj.subjects] == [s["key"] for s in seg.subjects]
    loader = subj.train_dataloader()
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b["stack"].shape == (2, 3, 1, 2, 48, 48) and b["mask"].shape == (2, 3)
    assert b["mask"].sum(dim=1).tolist() == [2, 2]
    assert torch.isfinite(b["ef"][:, 0]).all()  # phantom LVs contract
    assert b["group"].tolist() == [-1, -1]  # phantoms have no diagnosis


# --- system ------------------------------------------------------------------------------------


def system(task: str, seed: int = 0, **kwargs) -> SubjectFinetuner:
    torch.manual_seed(seed)
    args = {"backbone": "cmr_vit_test", "patch_size": 8, "tubelet": 2, "task": task,
            "hidden": 32, "dropout": 0.0, "warmup_steps": 1, "lr": 3e-3}  # fmt: skip
    return SubjectFinetuner(**{**args, **kwargs})


def subject_batch(n: int = 5, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, 3, dtype=torch.bool)
    mask[0, 2] = mask[3, 1:] = False
    ef = torch.stack([torch.linspace(25, 70, n), torch.linspace(60, 35, n)], dim=1)
    ef[1, 1] = float("nan")  # an RV without a label
    return {"stack": torch.rand(n, 3, 1, 2, SIZE, SIZE, generator=g), "mask": mask, "ef": ef,
            "group": torch.arange(n) % len(ACDC_GROUPS)}  # fmt: skip


def test_forward_gives_ef_in_percent_and_class_logits() -> None:
    b = subject_batch()
    with torch.no_grad():
        ef = system("ef").eval()(b["stack"], b["mask"])
        logits = system("cls").eval()(b["stack"], b["mask"])
    assert ef.shape == (5, 2) and logits.shape == (5, 5)
    assert 30 < float(ef.mean()) < 80  # starts near a typical EF, in percent


def test_ef_loss_leaves_out_unknown_targets() -> None:
    model = system("ef")
    b = subject_batch()
    out = torch.full((5, 2), 50.0, requires_grad=True)
    loss = model.loss(out, b)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all() and out.grad[1, 1] == 0
    moved = out.detach().clone()
    moved[1, 1] = -300.0
    assert model.loss(moved, b) == loss
    none = {**b, "ef": torch.full((5, 2), float("nan"))}
    assert model.loss(out, none).item() == 0.0


def test_cls_loss_leaves_out_unknown_groups() -> None:
    model = system("cls", label_smoothing=0.1)
    b = {**subject_batch(), "group": torch.tensor([0, -1, 2, -1, 4])}
    out = torch.randn(5, 5)
    moved = out.clone()
    moved[[1, 3]] = torch.randn(2, 5) * 10
    assert model.loss(moved, b) == model.loss(out, b)
    assert model.loss(out, {**b, "group": torch.full((5,), -1)}).item() == 0.0


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
@pytest.mark.parametrize("task", ["ef", "cls"])
def test_loss_decreases_on_a_tiny_set(task) -> None:
    model = system(task)
    optimizer = model.configure_optimizers()["optimizer"]
    b = subject_batch()
    model.train()
    losses = []
    for step in range(25):
        optimizer.zero_grad()
        loss = model.training_step(b, step)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses


@pytest.mark.parametrize("protocol", ["lora", "linear"])
def test_subject_checkpoint_roundtrip(protocol, tmp_path) -> None:
    model = system("ef", protocol=protocol, lora_rank=4)
    with torch.no_grad():  # as if trained: adapters and head away from their init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "subject.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)}, path)
    restored, _ = restore(SubjectFinetuner, path, pretrained=None)
    b = subject_batch()
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(b["stack"], b["mask"]), model.eval()(b["stack"], b["mask"]))  # fmt: skip
