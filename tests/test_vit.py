"""Backbone contract over every registered size, plus token dropping, positions, taps, registry."""

from __future__ import annotations

import pytest
import torch

import foundation.vit as vit_module
from foundation import BACKBONES, CardiacViT, create_backbone, register_backbone
from foundation.vit import sincos_3d

TINY_INPUT = (1, 1, 2, 32, 32)  # (B, C, T, H, W): a 1x2x2 token grid at tubelet 2, patch 16
NAMES = sorted(BACKBONES)


@pytest.fixture(scope="module")
def models() -> dict[str, CardiacViT]:
    torch.manual_seed(0)
    return {name: create_backbone(name, patch_size=16, tubelet=2).eval() for name in NAMES}


@pytest.fixture
def small() -> CardiacViT:
    torch.manual_seed(0)
    return create_backbone("cmr_vit_test", patch_size=8, tubelet=2).eval()


def manual_blocks(model: CardiacViT, tokens: torch.Tensor, upto: int) -> torch.Tensor:
    for block in model.blocks[: upto + 1]:
        tokens = block(tokens)
    return tokens


# --- contract over every registered backbone ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(models, name) -> None:
    model = models[name]
    x = torch.rand(2, *TINY_INPUT[1:])
    out = model(x)
    assert out.shape == (2, 1 * 2 * 2, model.embed_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(models, name) -> None:
    model = models[name]
    model.zero_grad(set_to_none=True)
    out = model(torch.rand(TINY_INPUT))
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", NAMES)
def test_samples_in_a_batch_are_independent(models, name) -> None:
    model = models[name]
    x = torch.rand(2, *TINY_INPUT[1:])
    with torch.no_grad():
        both = model(x)
        x2 = x.clone()
        x2[1] = torch.rand_like(x2[1])
        changed = model(x2)
    torch.testing.assert_close(changed[0], both[0])
    assert not torch.allclose(changed[1], both[1])


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_returns_requested_blocks(models, name) -> None:
    model = models[name]
    x = torch.rand(TINY_INPUT)
    indices = [2, 0, -1]
    with torch.no_grad():
        got = model.forward_intermediates(x, indices)
        tokens = model.embed(x)
        for got_i, i in zip(got, indices):
            torch.testing.assert_close(got_i, manual_blocks(model, tokens, i % model.depth))
        last_normed = model.forward_intermediates(x, [model.depth - 1], norm=True)[0]
        torch.testing.assert_close(last_normed, model.forward_features(x))
    assert len(got) == len(indices)


@pytest.mark.parametrize("name", NAMES)
def test_odd_grid(models, name) -> None:
    model = models[name]
    with torch.no_grad():
        out = model(torch.rand(1, 1, 6, 48, 80))
        feats = model.forward_intermediates(torch.rand(1, 1, 6, 48, 80), [0])
    assert out.shape == (1, 3 * 3 * 5, model.embed_dim)
    assert feats[0].shape == out.shape
    assert model.grid((1, 1, 6, 48, 80)) == (3, 3, 5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1, 1, 3, 32, 32), (1, 1, 2, 40, 32), (1, 1, 2, 32, 24)])
def test_indivisible_input_raises(models, name, shape) -> None:
    with pytest.raises(ValueError, match=r"tubelet.*patch_size|patch_size.*tubelet"):
        models[name](torch.rand(shape))


def test_wrong_channel_count_raises(small) -> None:
    with pytest.raises(ValueError, match="channel"):
        small(torch.rand(1, 3, 2, 16, 16))


# --- token dropping (the MAE encoder path) -----------------------------------------------------


def test_keep_runs_blocks_on_the_token_subset_only(small) -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 1, 4, 32, 32)  # grid (2, 4, 4), L = 32
    keep = torch.stack([torch.randperm(32)[:9].sort().values for _ in range(2)])  # (B, 9)
    with torch.no_grad():
        subset = small.forward_features(x, keep=keep)
        full = small.forward_features(x)
        gathered = torch.gather(small.embed(x), 1, keep[..., None].expand(-1, -1, small.embed_dim))
        reference = small.norm(manual_blocks(small, gathered, small.depth - 1))
    assert subset.shape == (2, 9, small.embed_dim)
    torch.testing.assert_close(subset, reference)
    # Dropped tokens are not attended to, so the kept tokens' outputs differ from full attention.
    full_at_keep = torch.gather(full, 1, keep[..., None].expand(-1, -1, small.embed_dim))
    assert (subset - full_at_keep).abs().max() > 1e-3


def test_keep_in_forward_intermediates_matches_forward_features(small) -> None:
    x = torch.rand(1, 1, 4, 32, 32)
    keep = torch.tensor([[0, 3, 5, 17, 30]])
    with torch.no_grad():
        last = small.forward_intermediates(x, [-1], keep=keep, norm=True)[0]
        torch.testing.assert_close(last, small.forward_features(x, keep=keep))


# --- positions -------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 3, 4), (3, 3, 5), (8, 14, 14), (25, 2, 2)])
@pytest.mark.parametrize("dim", [32, 192])
def test_sincos_3d_distinct_positions(grid, dim) -> None:
    emb = sincos_3d(dim, grid)
    n = grid[0] * grid[1] * grid[2]
    assert emb.shape == (n, dim)
    assert torch.isfinite(emb).all()
    if n > 1:
        dist = torch.cdist(emb.double(), emb.double())
        dist.fill_diagonal_(float("inf"))
        assert dist.min() > 1e-3


def test_sincos_3d_is_factorised_over_time_height_width() -> None:
    dim, (t, h, w) = 32, (4, 5, 6)
    emb = sincos_3d(dim, (t, h, w)).view(t, h, w, dim)
    varies = torch.stack(
        [
            (emb - emb[:1]).abs().amax(dim=(0, 1, 2)) > 1e-6,  # along t
            (emb - emb[:, :1]).abs().amax(dim=(0, 1, 2)) > 1e-6,  # along h
            (emb - emb[:, :, :1]).abs().amax(dim=(0, 1, 2)) > 1e-6,  # along w
        ]
    )  # (3, dim)
    # Every channel encodes exactly one axis; a quarter of them encode time.
    assert (varies.sum(dim=0) == 1).all()
    assert varies[0].sum() == dim // 4
    time_channels = varies[0]
    # For a fixed t the time part is the same at every (h, w) ...
    time_part = emb[..., time_channels]
    torch.testing.assert_close(time_part, time_part[:, :1, :1].expand_as(time_part))
    # ... and a frame's time code does not depend on the spatial grid size.
    other = sincos_3d(dim, (t, 2, 3)).view(t, 2, 3, dim)[..., time_channels]
    torch.testing.assert_close(other[:, 0, 0], time_part[:, 0, 0])


def test_sincos_3d_too_small_dim_raises() -> None:
    with pytest.raises(ValueError, match="embed_dim"):
        sincos_3d(4, (1, 2, 2))


# --- decoder taps ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [4, 12])
def test_default_taps(depth) -> None:
    model = CardiacViT(embed_dim=32, depth=depth, num_heads=2)
    for n in range(1, depth + 1):
        taps = model.default_taps(n)
        assert len(taps) == n
        assert taps == sorted(set(taps)), taps  # strictly ascending
        assert taps[-1] == depth - 1
        assert taps[0] >= 0
        gaps = [b - a for a, b in zip([-1, *taps], taps)]
        assert max(gaps) - min(gaps) <= 1, taps  # evenly spread


@pytest.mark.parametrize("n", [0, -1, 5])
def test_default_taps_invalid_n_raises(small, n) -> None:
    with pytest.raises(ValueError, match="n="):
        small.default_taps(n)


# --- registry ----------------------------------------------------------------------------------


def test_unknown_backbone_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="cmr_vit_huge") as info:
        create_backbone("cmr_vit_huge")
    for name in BACKBONES:
        assert name in str(info.value)


def test_kwargs_override_registered_defaults() -> None:
    model = create_backbone("cmr_vit_test", patch_size=4, tubelet=1)
    assert (model.patch_size, model.tubelet) == (4, 1)
    assert model.patch_embed.kernel_size == (1, 4, 4)
    assert model.embed_dim == 32 and model.depth == 4  # the entry point's own defaults stay
    out = model(torch.rand(1, 1, 3, 8, 12))
    assert out.shape == (1, 3 * 2 * 3, 32)


def test_register_backbone_adds_an_entry_point() -> None:
    def cmr_vit_registry_probe(**kwargs) -> CardiacViT:
        return CardiacViT(**{"embed_dim": 16, "depth": 1, "num_heads": 2, **kwargs})

    register_backbone(cmr_vit_registry_probe)
    try:
        model = create_backbone("cmr_vit_registry_probe", patch_size=8)
        assert (model.embed_dim, model.depth, model.patch_size) == (16, 1, 8)
    finally:
        BACKBONES.pop("cmr_vit_registry_probe")


# --- gradient checkpointing --------------------------------------------------------------------


def test_grad_checkpointing_gives_identical_outputs_and_grads(small, monkeypatch) -> None:
    x = torch.rand(2, 1, 2, 16, 16)
    w = torch.randn(2, 4, small.embed_dim)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        small.zero_grad(set_to_none=True)
        out = small(x)
        (out * w).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in small.named_parameters()}

    plain_out, plain_grads = run()
    calls = []
    real_checkpoint = vit_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(vit_module, "checkpoint", counting_checkpoint)
    small.set_grad_checkpointing(True)
    ckpt_out, ckpt_grads = run()
    small.set_grad_checkpointing(False)

    assert len(calls) == small.depth  # the flag really routes every block through checkpoint
    torch.testing.assert_close(ckpt_out, plain_out)
    assert ckpt_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], msg=name)
