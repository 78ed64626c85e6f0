"""Fine-tuning: UNETR shapes and frame alignment, the frame loss, few-shot draws and clips, metrics,
whole-study prediction, and safe backbone loading from checkpoints."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss
from torch import nn

from data_shards.record import IGNORE
from finetune.data import LabelledClips, clip_windows, draw_labelled, take_window
from finetune.evaluate import predict_study, score_subject
from finetune.metrics import dice_per_class, lv_ef
from finetune.system import frame_loss
from finetune.unetr import UNETRSegmenter
from foundation import create_backbone
from foundation.checkpoint import load_backbone_weights, read_checkpoint


def segmenter(patch: int, tubelet: int, seed: int = 0) -> UNETRSegmenter:
    torch.manual_seed(seed)
    backbone = create_backbone("cmr_vit_test", patch_size=patch, tubelet=tubelet)
    return UNETRSegmenter(backbone, num_classes=4, feature_size=8).eval()


# --- UNETR -------------------------------------------------------------------------------------


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


# --- frame loss --------------------------------------------------------------------------------


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


# --- few-shot draw -----------------------------------------------------------------------------


def make_subjects(
    groups=("DCM", "HCM", "NOR"), per_group: int = 4, unlabelled: int = 3
) -> list[dict]:
    label = np.zeros((1, 1, 2, 2), np.uint8)
    subjects = [
        {"key": f"{g.lower()}{i:02d}", "label": label, "meta": {"group": g}}
        for g in groups
        for i in range(per_group)
    ]
    subjects += [
        {"key": f"unl{i:02d}", "label": None, "meta": {"group": "DCM"}} for i in range(unlabelled)
    ]
    return subjects


def keys(drawn: list[dict]) -> list[str]:
    return [s["key"] for s in drawn]


def test_draw_is_deterministic_by_seed_and_ignores_input_order() -> None:
    subjects = make_subjects()
    shuffled = subjects[::-1]
    random.Random(0).shuffle(shuffled)
    assert keys(draw_labelled(subjects, 5, seed=3)) == keys(draw_labelled(shuffled, 5, seed=3))
    draws = {tuple(keys(draw_labelled(subjects, 5, seed))) for seed in range(5)}
    assert len(draws) > 1  # different seeds pick different studies


def test_draw_uses_labelled_subjects_only_and_never_repeats() -> None:
    subjects = make_subjects()
    drawn = keys(draw_labelled(subjects, 12, seed=0))
    assert sorted(drawn) == sorted(s["key"] for s in subjects if s["label"] is not None)


@pytest.mark.parametrize("n", [0, 13])
def test_draw_more_than_available_raises(n) -> None:
    with pytest.raises(ValueError, match="labelled"):
        draw_labelled(make_subjects(), n, seed=0)


@pytest.mark.parametrize("seed", range(6))
def test_draw_is_stratified_by_group(seed) -> None:
    subjects = make_subjects()
    groups = lambda drawn: sorted(s["meta"]["group"] for s in drawn)  # noqa: E731
    assert groups(draw_labelled(subjects, 3, seed)) == ["DCM", "HCM", "NOR"]
    assert groups(draw_labelled(subjects, 6, seed)) == ["DCM", "DCM", "HCM", "HCM", "NOR", "NOR"]


@pytest.mark.parametrize("seed", range(4))
def test_smaller_draws_are_prefixes_of_larger_ones(seed) -> None:
    # Uneven groups, so the round-robin runs out of one group before the others.
    subjects = make_subjects(per_group=2) + make_subjects(
        groups=("MINF",), per_group=5, unlabelled=0
    )
    largest = keys(draw_labelled(subjects, 11, seed))
    for n in range(1, 11):
        assert keys(draw_labelled(subjects, n, seed)) == largest[:n]


# --- windows and clips -------------------------------------------------------------------------


def test_clip_windows_wrap_and_skip_unlabelled_windows() -> None:
    label = np.full((2, 5, 3, 3), IGNORE, np.uint8)
    label[1, 0] = 1  # frame 0 labelled (on one slice: a frame counts for every slice)
    label[0, 2] = 0  # frame 2 labelled
    # 2-frame windows start at 0..4 and hold frames {s, s+1 mod 5}; only {3, 4} has no label.
    assert clip_windows(label, 2) == [(z, s) for z in range(2) for s in (0, 1, 2, 4)]
    assert clip_windows(label, 1) == [(z, s) for z in range(2) for s in (0, 2)]
    assert clip_windows(label, 7) == [(z, s) for z in range(2) for s in range(5)]
    assert clip_windows(np.full((1, 3, 2, 2), IGNORE, np.uint8), 2) == []


def test_take_window_wraps_around_the_cycle() -> None:
    array = np.arange(2 * 5)[..., None, None].reshape(2, 5, 1, 1) * np.ones((1, 1, 2, 3))
    window = take_window(array, 1, 4, 3)
    assert window.shape == (3, 2, 3)
    assert window[:, 0, 0].tolist() == [9, 5, 6]  # slice 1, frames 4, 0, 1
    assert take_window(array, 0, 3, 7)[:, 0, 0].tolist() == [3, 4, 0, 1, 2, 3, 4]


def labelled_subject() -> dict:
    rng = np.random.default_rng(0)
    s, t, h, w = 2, 4, 24, 24
    structures = np.zeros((s, h, w), np.uint8)
    structures[:, 4:12, 6:18] = 1
    structures[:, 12:16, 6:10] = 2
    structures[:, 16:20, 14:20] = 3
    label = np.full((s, t, h, w), IGNORE, np.uint8)
    label[:, 0], label[:, 2] = structures, structures  # ED and ES labelled, frames 1 and 3 not
    image = np.where(structures[:, None] > 0, 200, 20) + rng.integers(0, 30, (s, t, h, w))
    return {"image": image.astype(np.uint8), "label": label}


def test_labelled_clips_without_augmentation_are_the_stored_windows() -> None:
    subject = labelled_subject()
    ds = LabelledClips([subject], frames=2, augment=False)
    assert len(ds) == len(clip_windows(subject["label"], 2))
    for i in range(len(ds)):
        item = ds[i]
        _, z, start = ds.index[i]
        assert item["clip"].shape == (1, 2, 24, 24) and item["clip"].dtype == torch.float32
        assert item["label"].shape == (2, 24, 24)
        expected = take_window(subject["image"], z, start, 2).astype(np.float32) / 255
        np.testing.assert_array_equal(item["clip"][0].numpy(), expected)
        np.testing.assert_array_equal(
            item["label"].numpy(), take_window(subject["label"], z, start, 2)
        )


def test_augmented_clips_keep_label_values_and_unlabelled_frames() -> None:
    subject = labelled_subject()
    plain = LabelledClips([subject], frames=2, augment=False)
    ds = LabelledClips([subject], frames=2, augment=True)
    ds.transform.set_random_state(seed=0)
    changed = 0
    for i in range(len(ds)):
        item = ds[i]
        clip, label = item["clip"][0], item["label"]
        assert clip.shape == (2, 24, 24) and label.shape == (2, 24, 24)
        assert float(clip.min()) >= 0 and float(clip.max()) <= 1
        assert set(label.unique().tolist()) <= {0, 1, 2, 3, IGNORE}
        for f in range(2):
            was_unlabelled = bool((plain[i]["label"][f] == IGNORE).all())
            assert bool((label[f] == IGNORE).all()) == was_unlabelled
            if not was_unlabelled:
                assert not (label[f] == IGNORE).any()  # padding is background, never IGNORE
        # Image and label move together: the bright structures stay under their labels.
        known = label != IGNORE
        assert clip[known & (label > 0)].mean() > clip[known & (label == 0)].mean() + 0.3
        changed += not torch.equal(label, plain[i]["label"])
    assert changed > 0


# --- metrics -----------------------------------------------------------------------------------


def reference_dice(pred: np.ndarray, truth: np.ndarray, c: int) -> float:
    a, b = pred == c, truth == c
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_dice_per_class_matches_definition() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (3, 16, 16))
    truth = np.where(rng.random((3, 16, 16)) < 0.6, pred, rng.integers(0, 4, (3, 16, 16)))
    scores = dice_per_class(pred, truth, num_classes=4)
    assert list(scores) == ["lv", "myo", "rv"]
    for c, name in enumerate(["lv", "myo", "rv"], start=1):
        assert scores[name] == pytest.approx(reference_dice(pred, truth, c), rel=1e-6)
    perfect = dice_per_class(truth, truth, num_classes=4)
    assert all(v == pytest.approx(1.0) for v in perfect.values())


def test_dice_is_nan_for_a_class_absent_from_both() -> None:
    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, 2:5, 2:5] = 1
    scores = dice_per_class(truth, truth, num_classes=4)
    assert scores["lv"] == pytest.approx(1.0)
    assert np.isnan(scores["myo"]) and np.isnan(scores["rv"])


def test_dice_is_zero_for_a_class_only_in_the_prediction() -> None:
    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, 2:5, 2:5] = 1
    pred = truth.copy()
    pred[:, 6:8, 6:8] = 3  # a false-positive RV
    assert dice_per_class(pred, truth, num_classes=4)["rv"] == 0.0


def test_dice_leaves_out_pixels_whose_truth_is_unknown() -> None:
    # Contour-only labels (Sunnybrook ES): LV known, everything outside it IGNORE.
    truth = np.full((1, 8, 8), IGNORE, np.uint8)
    truth[0, 2:5, 2:5] = 1
    pred = np.zeros((1, 8, 8), np.uint8)
    pred[0, 2:5, 2:5] = 1
    pred[0, 6:8, 6:8] = 2  # lands on unknown truth: neither right nor wrong
    scores = dice_per_class(pred, truth, num_classes=4)
    assert scores["lv"] == pytest.approx(1.0)
    assert np.isnan(scores["myo"])
    pred[0, 2, 2] = 0  # a real miss inside the known LV still counts
    assert dice_per_class(pred, truth, num_classes=4)["lv"] == pytest.approx(16 / 17)


def test_lv_ef_against_hand_computed_volumes() -> None:
    label = np.zeros((2, 3, 10, 10), np.uint8)
    label[:, 0, 0:5, 0:8] = 1  # ED: 2 slices * 40 pixels
    label[:, 1, 0:3, 0:5] = 1  # ES: 2 slices * 15 pixels
    label[:, 2, 0:4, 0:4] = 1
    label[0, :, 9, 9] = 2  # other classes do not count
    spacing = (8.0, 1.25, 1.25)
    voxel_ml = 8.0 * 1.25 * 1.25 / 1000
    out = lv_ef(label, spacing, ed=0, es=1)
    assert out["edv"] == pytest.approx(80 * voxel_ml)
    assert out["esv"] == pytest.approx(30 * voxel_ml)
    assert out["ef"] == pytest.approx(100 * (80 - 30) / 80)
    assert np.isnan(lv_ef(np.zeros_like(label), spacing, ed=0, es=1)["ef"])


# --- whole-study prediction --------------------------------------------------------------------


class IntensityLabeller(nn.Module):
    """Stub segmenter: label = intensity // 64, returned as one-hot logits (B, 4, T, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # predict_study reads the device from it
        self.seen: list[torch.Tensor] = []  # every clip (1, frames, H, W) it was given

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.extend(x)
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        label = (x[:, 0] * 255).round().long() // 64  # (B, T, H, W)
        return nn.functional.one_hot(label, 4).permute(0, 4, 1, 2, 3).float() + self.anchor


@pytest.mark.parametrize(("t", "frames"), [(4, 2), (5, 2), (5, 3), (2, 4), (6, 1)])
@pytest.mark.parametrize("batch", [1, 16])
def test_predict_study_reproduces_the_stub_labels(t, frames, batch) -> None:
    image = np.random.default_rng(t).integers(0, 256, (3, t, 8, 8), dtype=np.uint8)
    model = IntensityLabeller()
    pred = predict_study(model, image, frames, batch=batch)
    assert pred.shape == image.shape and pred.dtype == np.uint8
    np.testing.assert_array_equal(pred, image // 64)
    # Each slice is cut into consecutive windows, the last one wrapping to the start of the cycle.
    expected = [
        image[z, [(start + i) % t for i in range(frames)]]
        for z in range(3)
        for start in range(0, t, frames)
    ]
    seen = [(clip[0] * 255).round().numpy().astype(np.uint8) for clip in model.seen]
    assert sorted(c.tobytes() for c in seen) == sorted(c.tobytes() for c in expected)


def test_score_subject_of_a_perfect_prediction() -> None:
    structures = np.zeros((2, 3, 8, 8), np.uint8)
    structures[:, :, 1:6, 1:6] = 2
    structures[:, 0, 2:5, 2:5] = 1
    structures[:, 2, 3:5, 3:5] = 1
    structures[:, :, 6:8, 0:3] = 3
    label = structures.copy()
    label[:, 1] = IGNORE  # not an annotated phase
    subject = {"key": "s0", "label": label, "meta": {"spacing": [8.0, 1.5, 1.5], "ed": 0, "es": 2}}
    row = score_subject(structures, subject, num_classes=4)
    for name in ("lv", "myo", "rv"):
        assert row[f"dice_{name}_ed"] == pytest.approx(1.0)
        assert row[f"dice_{name}_es"] == pytest.approx(1.0)
    assert row["lv_ef_error"] == pytest.approx(0.0)
    assert row["lv_ef_true"] == pytest.approx(100 * (9 - 4) / 9)


# --- backbone checkpoints ----------------------------------------------------------------------

UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("ran")
    return "payload"


class Payload:
    """Unpickling this would call _record_unpickling: a stand-in for arbitrary code."""

    def __reduce__(self):
        return (_record_unpickling, ())


def save_pretraining_checkpoint(path: Path, patch: int = 8, seed: int = 1, **extra) -> dict:
    torch.manual_seed(seed)
    backbone = create_backbone("cmr_vit_test", patch_size=patch, tubelet=2)
    state = {f"mae.encoder.{k}": v for k, v in backbone.state_dict().items()}
    state["mae.decoder_embed.weight"] = torch.zeros(4, 4)  # the rest of the MAE is not backbone
    torch.save(
        {"state_dict": state, "hyper_parameters": {"backbone": "cmr_vit_test"}, **extra}, path
    )
    return backbone.state_dict()


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


def test_load_backbone_weights_from_a_finetuning_checkpoint(tmp_path) -> None:
    torch.manual_seed(1)
    source = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    state = {f"model.backbone.{k}": v for k, v in source.state_dict().items()}
    state["model.head.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "seg.ckpt")
    backbone = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    load_backbone_weights(backbone, tmp_path / "seg.ckpt")
    assert torch.equal(backbone.patch_embed.weight, source.patch_embed.weight)


def test_checkpoint_for_another_patch_size_names_the_file(tmp_path) -> None:
    path = tmp_path / "patch16.ckpt"
    save_pretraining_checkpoint(path, patch=16)
    with pytest.raises(ValueError, match=r"patch16\.ckpt") as info:
        load_backbone_weights(create_backbone("cmr_vit_test", patch_size=8, tubelet=2), path)
    assert "patch_size" in str(info.value)


def test_checkpoint_missing_a_backbone_tensor_is_an_error(tmp_path) -> None:
    torch.manual_seed(1)
    state = {
        f"mae.encoder.{k}": v
        for k, v in create_backbone("cmr_vit_test", patch_size=8).state_dict().items()
    }
    del state["mae.encoder.norm.weight"]
    torch.save({"state_dict": state}, tmp_path / "partial.ckpt")
    with pytest.raises(ValueError, match=r"(?s)partial\.ckpt.*norm\.weight"):
        load_backbone_weights(
            create_backbone("cmr_vit_test", patch_size=8), tmp_path / "partial.ckpt"
        )


def test_checkpoint_without_backbone_keys_names_the_file(tmp_path) -> None:
    torch.save({"state_dict": {"classifier.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt.*no backbone"):
        load_backbone_weights(
            create_backbone("cmr_vit_test", patch_size=8), tmp_path / "other.ckpt"
        )


def test_non_checkpoint_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "notes.ckpt"
    path.write_text("this is not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.ckpt"):
        load_backbone_weights(create_backbone("cmr_vit_test", patch_size=8), path)


def test_missing_checkpoint_raises_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.ckpt"):
        load_backbone_weights(
            create_backbone("cmr_vit_test", patch_size=8), tmp_path / "absent.ckpt"
        )


def test_checkpoint_with_arbitrary_pickled_objects_is_refused_unopened(tmp_path) -> None:
    path = tmp_path / "unsafe.ckpt"
    save_pretraining_checkpoint(path, payload=Payload())
    UNPICKLED.clear()
    with pytest.raises(ValueError, match=r"unsafe\.ckpt"):
        read_checkpoint(path)
    with pytest.raises(ValueError, match=r"unsafe\.ckpt"):
        load_backbone_weights(create_backbone("cmr_vit_test", patch_size=8), path)
    assert UNPICKLED == []  # the object's code never ran
