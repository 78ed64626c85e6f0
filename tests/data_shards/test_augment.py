"""Pretraining augmentation: off is exact, one geometry and curve per clip, seeded, in range;
the batched (device-side) version draws the same distributions and applies the same transforms."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_shards.augment import AugmentConfig, BatchClipAugment, RandClipAffine, clip_augment
from data_shards.record import Subject
from data_shards.stream import pretrain_dataset
from data_shards.writer import write_manifest, write_shards

OFF = {"spatial_prob": 0.0, "intensity_prob": 0.0, "noise_prob": 0.0}


def augment(seed: int = 0, **options) -> object:
    transform = clip_augment(AugmentConfig(**options))
    transform.set_random_state(seed)
    return transform


def random_clip(shape=(4, 24, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def blob(height: int, width: int, y: int, x: int, frames: int = 3) -> np.ndarray:
    """(frames, H, W) uint8: black with a bright 5 x 5 square centred at (y, x)."""
    clip = np.zeros((frames, height, width), dtype=np.uint8)
    clip[:, y - 2 : y + 3, x - 2 : x + 3] = 255
    return clip


def centroid(frame: torch.Tensor) -> np.ndarray:
    """(y, x) of the intensity mass, relative to the image centre, in pixels."""
    height, width = frame.shape
    ys, xs = np.mgrid[:height, :width]
    weights = frame.numpy() / frame.sum().item()
    return np.array(
        [(ys * weights).sum() - (height - 1) / 2, (xs * weights).sum() - (width - 1) / 2]
    )


def test_off_is_the_plain_conversion() -> None:
    clip = random_clip()
    out = augment(**OFF)(clip)
    assert out.dtype == torch.float32 and out.shape == clip.shape
    assert torch.equal(out, torch.from_numpy(clip.astype(np.float32) / np.float32(255)))


def test_output_in_range_and_shape_kept() -> None:
    transform = augment(spatial_prob=1, intensity_prob=1, noise_prob=1, noise_std=0.2)
    for seed in range(5):
        out = transform(random_clip(seed=seed))
        assert out.shape == (4, 24, 32) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1


def test_uint8_table_and_float_input_agree() -> None:
    clip = random_clip()
    options = {"spatial_prob": 1, "intensity_prob": 1, "noise_prob": 0}
    from_uint8 = augment(seed=4, **options)(clip)
    from_float = augment(seed=4, **options)(torch.from_numpy(clip).float() / 255)
    torch.testing.assert_close(from_uint8, from_float, atol=1e-5, rtol=0)


def test_seeded() -> None:
    clip = random_clip()
    options = {"spatial_prob": 1, "intensity_prob": 1, "noise_prob": 1}
    first = [augment(seed=1, **options)(clip) for _ in range(2)]
    transform = augment(seed=1, **options)
    again = [transform(clip), transform(clip)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[0])
    assert not torch.equal(again[0], again[1])  # each call draws anew
    assert not torch.equal(augment(seed=2, **options)(clip), again[0])


def test_every_frame_gets_the_same_geometry_and_curve() -> None:
    frame = random_clip((1, 24, 32))
    clip = np.repeat(frame, 5, axis=0)
    transform = augment(spatial_prob=1, intensity_prob=1, noise_prob=0)
    for _ in range(3):
        out = transform(clip)
        assert not torch.equal(out[0], torch.from_numpy(frame[0]).float() / 255)
        assert all(torch.equal(out[f], out[0]) for f in range(1, 5))


@pytest.mark.parametrize("shape", [(48, 48), (40, 64)])  # non-square: rotation in pixel units
@pytest.mark.parametrize("offset", [(0, -12), (-12, 0)])  # left of / above the centre
def test_rotation_and_zoom_about_the_centre(
    shape: tuple[int, int], offset: tuple[int, int]
) -> None:
    rotate, scale = 10.0, 0.1
    height, width = shape
    clip = blob(height, width, height // 2 + offset[0], width // 2 + offset[1])
    before = centroid(torch.from_numpy(clip[0]).float())
    transform = augment(spatial_prob=1, rotate=rotate, scale=scale, translate=0,
                        intensity_prob=0, noise_prob=0)  # fmt: skip
    angles = []
    for _ in range(20):
        after = centroid(transform(clip)[0])
        ratio = np.linalg.norm(after) / np.linalg.norm(before)
        assert 1 - scale - 0.03 <= ratio <= 1 + scale + 0.03
        angle = math.degrees(math.atan2(after[0], after[1]) - math.atan2(before[0], before[1]))
        angles.append((angle + 180) % 360 - 180)
    assert max(abs(a) for a in angles) <= rotate + 1.5
    assert min(angles) < -rotate / 2 and max(angles) > rotate / 2  # both directions drawn


def test_translation_bounded_and_no_flips_unless_asked() -> None:
    clip = blob(48, 48, 24, 12)  # left of the centre
    no_intensity = {"intensity_prob": 0.0, "noise_prob": 0.0}
    shifted = augment(spatial_prob=1, rotate=0, scale=0, translate=0.1, **no_intensity)
    start = centroid(torch.from_numpy(clip[0]).float())
    moves = np.array([centroid(shifted(clip)[0]) - start for _ in range(20)])
    assert np.abs(moves).max() <= 0.1 * 48 + 0.5
    assert (moves < -1).any() and (moves > 1).any()
    unflipped = augment(spatial_prob=1, **no_intensity)
    assert all(centroid(unflipped(clip)[0])[1] < 0 for _ in range(20))  # stays on the left
    flipped = augment(spatial_prob=1, flip=True, **no_intensity)
    sides = {bool(centroid(flipped(clip)[0])[1] < 0) for _ in range(20)}
    assert sides == {True, False}


def test_intensity_curve_is_monotone_within_its_range() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (2, 4, 1))  # (2, 4, 256): every value
    gamma, factor = (0.7, 1.4), 0.1
    transform = augment(spatial_prob=0, intensity_prob=1, noise_prob=0, gamma=gamma,
                        intensity_scale=factor)  # fmt: skip
    x = torch.arange(256) / 255
    lowest = x ** gamma[1] * (1 - factor)
    highest = (x ** gamma[0] * (1 + factor)).clamp(max=1)
    for _ in range(10):
        curve = transform(ramp)[0, 0]
        assert curve[0] == 0 and (curve.diff() >= 0).all()
        assert (curve >= lowest - 1e-6).all() and (curve <= highest + 1e-6).all()


def test_noise_has_the_configured_std_and_differs_per_frame() -> None:
    std = 0.05
    clip = np.full((16, 64, 64), 128, dtype=np.uint8)
    transform = augment(spatial_prob=0, intensity_prob=0, noise_prob=1, noise_std=std)
    clean = torch.full(clip.shape, 128 / 255)
    first, second = (transform(clip) - clean for _ in range(2))
    n = first.numel()
    # Sample std of n normals has standard error std / sqrt(2n); allow 6 of them.
    assert abs(first.std().item() - std) < 6 * std / math.sqrt(2 * n)
    assert abs(first.mean().item()) < 6 * std / math.sqrt(n)
    assert not torch.equal(first[0], first[1]) and not torch.equal(first, second)


def test_config_checks_and_yaml_forms() -> None:
    assert AugmentConfig.from_dict({"gamma": [0.8, 1.2]}).gamma == (0.8, 1.2)
    with pytest.raises(ValueError, match="rotat"):
        AugmentConfig.from_dict({"rotation": 5})
    for bad in ({"spatial_prob": 1.5}, {"gamma": (1.2, 0.8)}, {"mode": "cubic"}, {"scale": 1.0}):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_stream_augmentation_is_seeded_per_worker_and_epoch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # One frame per slice: clips are the same every epoch unless the augmentation changes them.
    subjects = [
        Subject(f"s{i}", rng.integers(0, 256, (2, 1, 16, 16), dtype=np.uint8), None,
                (8.0, 1.5, 1.5), {"modality": "lge", "split": "train"})
        for i in range(4)
    ]  # fmt: skip
    samples = write_shards(subjects, tmp_path, maxcount=2)
    write_manifest(tmp_path, sorted({s["shard"] for s in samples}), samples, {}, {})

    def run(seed: int, workers: int) -> list:
        dataset = pretrain_dataset(tmp_path, frames=3, shuffle=4, seed=seed,
                                   augment=clip_augment(AugmentConfig(spatial_prob=1)))  # fmt: skip
        loader = DataLoader(dataset, batch_size=1, num_workers=workers)
        return [(b["key"][0], b["slice"].item(), b["clip"].sum().item()) for b in loader]

    first = run(0, workers=2)
    assert first == run(0, workers=2)  # every worker seeds its augmentation from the stream seed
    assert first != run(1, workers=2)
    assert len(first) == len({x[:2] for x in first}) == 8  # one pass: every clip once

    def epoch(dataset) -> dict:
        return {(s["key"], s["slice"]): s["clip"] for s in dataset}

    plain = pretrain_dataset(tmp_path, frames=3, shuffle=0)
    one, two = epoch(plain), epoch(plain)
    assert all(torch.equal(one[k], two[k]) for k in one)
    augmented = pretrain_dataset(tmp_path, frames=3, shuffle=0, augment=clip_augment())
    one, two = epoch(augmented), epoch(augmented)
    assert one.keys() == two.keys()
    assert sum(not torch.equal(one[k], two[k]) for k in one) >= len(one) // 2


def batch_clips(shape=(6, 1, 4, 24, 32), seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(random_clip(shape, seed))


def only(params, *kept: str):
    """The params with every transform but ``kept`` switched off for all samples."""
    off = torch.zeros_like(params.spatial)
    return dataclasses.replace(
        params, **{k: off for k in ("spatial", "intensity", "noise") if k not in kept}
    )


def test_batch_off_is_the_plain_conversion() -> None:
    clips = batch_clips()
    out = BatchClipAugment(OFF, seed=0)(clips)
    assert out.dtype == torch.float32 and out.shape == clips.shape
    assert torch.equal(out, torch.from_numpy(clips.numpy().astype(np.float32) / np.float32(255)))
    floats = clips.float() / 255
    again = BatchClipAugment(OFF, seed=0)(floats)
    assert torch.equal(again, out) and again.data_ptr() != floats.data_ptr()  # a copy


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_batch_affine_is_the_per_clip_affine_with_the_same_parameters(mode: str) -> None:
    clips = batch_clips((12, 1, 3, 40, 64))  # non-square: rotation in pixel units
    augment = BatchClipAugment({"spatial_prob": 0.7, "rotate": 30, "translate": 0.1,
                                "flip": True, "mode": mode}, seed=3)  # fmt: skip
    params = only(augment.sample(12), "spatial")
    assert 0 < params.spatial.sum() < 12  # some samples warped, some not
    out = augment(clips, params=params)
    per_clip = RandClipAffine(1.0, 0, 0, 0, False, mode)
    for i, clip in enumerate(clips[:, 0].float() / 255):
        if not params.spatial[i]:
            assert torch.equal(out[i, 0], clip)  # untouched: bit-exact x / 255
            continue
        per_clip.set_params(params.angle[i].item(), params.zoom[i].item(),
                            params.shift[i].numpy(), params.flips[i].numpy())  # fmt: skip
        torch.testing.assert_close(out[i, 0], per_clip(clip, randomize=False), atol=1e-5, rtol=0)


def test_batch_rotation_by_a_quarter_turn_turns_the_pixels() -> None:
    """A known angle, checked without the per-clip code: 90 degrees on a square is rot90."""
    clips = batch_clips((2, 1, 2, 16, 16))
    augment = BatchClipAugment({"spatial_prob": 1, "rotate": 90}, seed=0)
    params = dataclasses.replace(
        only(augment.sample(2), "spatial"),
        angle=torch.tensor([90.0, -90.0], dtype=torch.float64),
        zoom=torch.ones(2, dtype=torch.float64),
        shift=torch.zeros(2, 2, dtype=torch.float64),
    )
    out = augment(clips, params=params)
    unit = clips.float() / 255
    torch.testing.assert_close(out[0], torch.rot90(unit[0], 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], torch.rot90(unit[1], -1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_batch_intensity_curve_per_sample() -> None:
    ramp = torch.arange(256, dtype=torch.uint8).repeat(8, 1, 2, 4, 1)  # (8, 1, 2, 4, 256)
    augment = BatchClipAugment({"intensity_prob": 0.6}, seed=1)
    params = only(augment.sample(8), "intensity")
    assert 0 < params.intensity.sum() < 8
    out = augment(ramp, params=params)
    x = np.arange(256) / 255
    for i in range(8):
        curve = out[i, 0, 0, 0].numpy()
        if params.intensity[i]:
            expected = np.minimum(x ** params.gamma[i].item() * params.factor[i].item(), 1)
            np.testing.assert_allclose(curve, expected, atol=1e-5, rtol=0)
        else:
            assert np.array_equal(curve, np.arange(256, dtype=np.float32) / np.float32(255))
        assert (out[i] == out[i, 0, 0, 0]).all()  # every frame and row: the same curve


def test_batch_parameters_follow_the_config() -> None:
    config = AugmentConfig(spatial_prob=0.8, rotate=10, scale=0.1, translate=0.05,
                           intensity_prob=0.3, gamma=(0.7, 1.4), intensity_scale=0.2,
                           noise_prob=0.5)  # fmt: skip
    n = 4000
    params = BatchClipAugment(config, seed=0).sample(n)
    for name, prob in (("spatial", 0.8), ("intensity", 0.3), ("noise", 0.5)):
        rate = getattr(params, name).double().mean().item()
        assert abs(rate - prob) < 5 * math.sqrt(prob * (1 - prob) / n), name  # binomial s.e.
    for name, low, high in (("angle", -10, 10), ("zoom", 0.9, 1.1), ("shift", -0.05, 0.05),
                            ("gamma", 0.7, 1.4), ("factor", 0.8, 1.2)):  # fmt: skip
        values = getattr(params, name)
        width = high - low
        assert values.min() >= low and values.max() <= high, name
        assert values.min() < low + 0.01 * width and values.max() > high - 0.01 * width, name
        # Uniform: mean at the centre within 5 standard errors (width / sqrt(12 n)).
        assert abs(values.mean().item() - (low + high) / 2) < 5 * width / math.sqrt(12 * n), name
    assert (params.flips == 1).all()  # flip off by default
    flips = BatchClipAugment({"flip": True}, seed=0).sample(n).flips
    assert set(flips.unique().tolist()) == {-1.0, 1.0}
    assert abs((flips == -1).double().mean().item() - 0.5) < 5 * math.sqrt(0.25 / (2 * n))


def test_batch_samples_differ_but_frames_share_a_transform() -> None:
    frame = batch_clips((1, 1, 1, 24, 32))
    clips = frame.repeat(6, 1, 5, 1, 1)  # six copies of one clip of five equal frames
    augment = BatchClipAugment({"spatial_prob": 1, "intensity_prob": 1, "noise_prob": 0}, seed=0)
    out = augment(clips)
    assert all(not torch.equal(out[i], out[j]) for i in range(6) for j in range(i))
    assert all(torch.equal(out[i, 0, f], out[i, 0, 0]) for i in range(6) for f in range(5))
    assert out.min() >= 0 and out.max() <= 1


def test_batch_seeded() -> None:
    clips = batch_clips()
    options = {"spatial_prob": 1, "intensity_prob": 1, "noise_prob": 1}
    augment = BatchClipAugment(options, seed=1)
    first, second = augment(clips), augment(clips)
    assert not torch.equal(first, second)  # each call draws anew
    assert torch.equal(BatchClipAugment(options, seed=1)(clips), first)
    assert torch.equal(augment.set_random_state(1)(clips), first)
    assert not torch.equal(BatchClipAugment(options, seed=2)(clips), first)
    own = BatchClipAugment(options, seed=9)
    outs = [own(clips, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])  # a passed generator decides, not the module's own


def test_batch_noise_has_the_configured_std_per_voxel() -> None:
    std = 0.05
    clips = torch.full((4, 1, 8, 32, 32), 128, dtype=torch.uint8)
    augment = BatchClipAugment({"spatial_prob": 0, "intensity_prob": 0, "noise_prob": 1,
                                "noise_std": std}, seed=0)  # fmt: skip
    noise = augment(clips) - 128 / 255
    n = noise.numel()
    assert abs(noise.std().item() - std) < 6 * std / math.sqrt(2 * n)
    assert abs(noise.mean().item()) < 6 * std / math.sqrt(n)
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[0, 0, 0], noise[0, 0, 1])


def test_batch_rejects_wrong_inputs() -> None:
    augment = BatchClipAugment(seed=0)
    with pytest.raises(ValueError, match="uint8 or float"):
        augment(torch.zeros(2, 1, 2, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="params are for 3"):
        augment(batch_clips(), params=augment.sample(3))


def test_uint8_stream_yields_the_raw_clips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    subjects = [
        Subject(f"s{i}", rng.integers(0, 256, (2, 5, 8, 8), dtype=np.uint8), None,
                (8.0, 1.5, 1.5), {"modality": "cine", "split": "train"})
        for i in range(2)
    ]  # fmt: skip
    samples = write_shards(subjects, tmp_path, maxcount=1)
    write_manifest(tmp_path, sorted({s["shard"] for s in samples}), samples, {}, {})
    floats = list(pretrain_dataset(tmp_path, frames=3, shuffle=2, seed=4))
    uint8 = list(pretrain_dataset(tmp_path, frames=3, shuffle=2, seed=4, output="uint8"))
    assert [(s["key"], s["slice"]) for s in uint8] == [(s["key"], s["slice"]) for s in floats]
    for a, b in zip(floats, uint8, strict=True):
        assert b["clip"].dtype == torch.uint8 and b["clip"].shape == (1, 3, 8, 8)
        assert torch.equal(b["clip"].float() / 255, a["clip"])
    with pytest.raises(ValueError, match="augment=None"):
        pretrain_dataset(tmp_path, frames=3, output="uint8", augment=clip_augment())
    with pytest.raises(ValueError, match="output"):
        pretrain_dataset(tmp_path, frames=3, output="float16")
