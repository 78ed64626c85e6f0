"""finetune.data: few-shot draws (seeded, stratified, nested), clip windows, and labelled clips."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from data_shards.record import IGNORE
from finetune.data import (
    FewShotSegData,
    FewShotSubjectData,
    LabelledClips,
    clip_windows,
    draw_labelled,
    sampled_loader,
    take_window,
)

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


# --- datamodules -------------------------------------------------------------------------------

BASE_ARGS = {"shards": "s", "labels": 3, "seed": 5, "frames": 4, "batch_size": 2,
             "epoch_length": 7, "augment": False, "num_workers": 1}  # fmt: skip


@pytest.mark.parametrize(("cls", "own"), [(FewShotSegData, {}),
                                          (FewShotSubjectData, {"max_slices": 9})])  # fmt: skip
def test_datamodules_keep_every_argument_in_hparams_and_attributes(cls: type, own: dict) -> None:
    """Checkpoints store hparams and evaluation reads frames and max_slices from them, so the
    arguments a subclass forwards to the shared constructor must all be recorded."""
    args = {**BASE_ARGS, **own}
    data = cls(**args)
    assert dict(data.hparams) == args
    assert {name: getattr(data, name) for name in args} == args


def test_subject_data_defaults_differ_from_segmentation_where_declared() -> None:
    seg, subject = dict(FewShotSegData("s").hparams), dict(FewShotSubjectData("s").hparams)
    assert subject == {**seg, "batch_size": 4, "max_slices": 16}
    assert seg["batch_size"] == 8
    assert (FewShotSegData("s").batch_size, FewShotSubjectData("s").batch_size) == (8, 4)


@pytest.mark.parametrize("cls", [FewShotSegData, FewShotSubjectData])
def test_lightningcli_parser_offers_every_argument_with_its_default(cls: type) -> None:
    """jsonargparse follows FewShotSubjectData's **kwargs into the shared constructor."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, "data")
    defaults = parser.get_defaults().data.as_dict()
    assert defaults == {**dict(cls("s").hparams), "shards": None}  # shards is required


def _clips(ds: LabelledClips, n: int = 6) -> list[torch.Tensor]:
    return [ds[i % len(ds)]["clip"] for i in range(n)]


def test_a_seed_gives_the_same_augmentation_on_every_run() -> None:
    """MONAI's random transforms share one generator seeded at import unless told otherwise: a
    dataset's augmentation must come from its own seed, or a few-shot run is not repeatable."""
    subject = labelled_subject()
    first = _clips(LabelledClips([subject], frames=2, augment=True, seed=3))
    again = _clips(LabelledClips([subject], frames=2, augment=True, seed=3))
    other = _clips(LabelledClips([subject], frames=2, augment=True, seed=4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_loader_workers_augment_alike_on_every_run() -> None:
    """Each worker re-seeds the transforms from a seed the loader's own generator gives."""
    subject = labelled_subject()

    def batches() -> list[torch.Tensor]:
        ds = LabelledClips([subject], frames=2, augment=True, seed=0)
        loader = sampled_loader(ds, seed=1, epoch_length=8, batch_size=2, num_workers=2)
        return [batch["clip"] for batch in loader]

    torch.manual_seed(0)
    first = batches()
    torch.manual_seed(1)  # the global generator must not matter
    again = batches()
    assert len(first) == 4 and all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
