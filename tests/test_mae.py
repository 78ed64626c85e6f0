"""MAE: tube masking, patch layout, the masked loss against a reference, encoder isolation, fitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foundation import create_backbone
from pretext.mae import MAE, masked_patch_loss, patchify, tube_mask, unpatchify


def make_mae(norm_pix_loss: bool = True, mask_ratio: float = 0.75) -> MAE:
    torch.manual_seed(0)
    encoder = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    return MAE(
        encoder,
        mask_ratio,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
        norm_pix_loss=norm_pix_loss,
    )


def smooth_clip(batch: int, frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(B, 1, T, H, W) in [0, 1]: low-frequency random fields, so patches are predictable."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 1, frames, 4, 4, generator=g)
    return F.interpolate(coarse, size=(frames, size, size), mode="trilinear", align_corners=True)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- tube masking ------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(1, 4, 4), (3, 4, 5), (4, 2, 7)])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_tube_mask_counts_tubes_and_keep(grid, ratio) -> None:
    t, h, w = grid
    batch = 6
    mask, keep = tube_mask(batch, grid, ratio, gen(0))
    n_masked = round(ratio * h * w)
    assert mask.shape == (batch, t * h * w) and mask.dtype == torch.bool
    per_step = mask.view(batch, t, h * w)  # t-major token order
    assert (per_step.sum(dim=-1) == n_masked).all()
    assert (per_step == per_step[:, :1]).all()  # the same spatial mask at every time step
    assert keep.shape == (batch, t * (h * w - n_masked))
    for b in range(batch):
        assert keep[b].tolist() == (~mask[b]).nonzero().flatten().tolist()  # visible, ascending


def test_tube_mask_keeps_a_visible_patch_per_step_near_ratio_one() -> None:
    mask, keep = tube_mask(4, (2, 4, 5), 0.99, gen(0))
    assert (mask.view(4, 2, 20).sum(-1) == 19).all()
    assert keep.shape == (4, 2)


def test_tube_mask_rows_differ_and_positions_are_uniform() -> None:
    mask, _ = tube_mask(2000, (1, 4, 4), 0.5, gen(0))
    assert len({tuple(row.tolist()) for row in mask[:8]}) > 1
    frequency = mask.float().mean(dim=0)  # each position is masked about half the time
    assert (frequency - 0.5).abs().max() < 0.06


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_tube_mask_ratio_out_of_range_raises(ratio) -> None:
    with pytest.raises(ValueError, match="ratio"):
        tube_mask(2, (2, 4, 4), ratio)


def test_tube_mask_generator_makes_it_deterministic() -> None:
    first, keep1 = tube_mask(4, (2, 4, 4), 0.5, gen(7))
    again, keep2 = tube_mask(4, (2, 4, 4), 0.5, gen(7))
    other, _ = tube_mask(4, (2, 4, 4), 0.5, gen(8))
    assert torch.equal(first, again) and torch.equal(keep1, keep2)
    assert not torch.equal(first, other)


# --- patch layout ------------------------------------------------------------------------------


@pytest.mark.parametrize(("tubelet", "patch", "chans"), [(2, 4, 1), (1, 8, 1), (2, 4, 2)])
def test_patchify_unpatchify_round_trip(tubelet, patch, chans) -> None:
    x = torch.rand(2, chans, 4, 16, 24)
    tokens = patchify(x, tubelet, patch)
    grid = (4 // tubelet, 16 // patch, 24 // patch)
    assert tokens.shape == (2, grid[0] * grid[1] * grid[2], tubelet * patch * patch * chans)
    assert torch.equal(unpatchify(tokens, grid, tubelet, patch, chans), x)


def test_patchify_token_order_matches_backbone_embedding() -> None:
    # With a patch embedding whose output channel n copies element n of the patch vector, the
    # backbone's tokens are the patchified pixels; any token-order mismatch breaks equality.
    backbone = create_backbone("cmr_vit_test", patch_size=4, tubelet=2)  # 2*4*4 = 32 = embed_dim
    tub, p, dim = backbone.tubelet, backbone.patch_size, backbone.embed_dim
    picker = torch.eye(dim).view(dim, tub, p, p, 1).permute(0, 4, 1, 2, 3)  # (D, C, tub, p, p)
    with torch.no_grad():
        backbone.patch_embed.weight.copy_(picker)
        x = torch.rand(2, 1, 4, 8, 12)
        tokens = backbone.embed(x) - backbone.embed(torch.zeros_like(x))  # drop bias and positions
    torch.testing.assert_close(tokens, patchify(x, tub, p))


# --- masked loss -------------------------------------------------------------------------------


def reference_loss(pred, target, mask, norm_pix: bool) -> float:
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for i in range(pred.shape[1]):
            if not mask[b, i]:
                continue
            t = target[b, i].double()
            if norm_pix:
                mean = t.sum() / t.numel()
                var = ((t - mean) ** 2).sum() / (t.numel() - 1)  # unbiased, as in MAE
                t = (t - mean) / (var + 1e-6).sqrt()
            total += float(((pred[b, i].double() - t) ** 2).mean())
            count += 1
    return total / count


@pytest.fixture
def loss_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = gen(3)
    pred = torch.randn(2, 12, 16, generator=g)
    target = torch.rand(2, 12, 16, generator=g) * 3 + 1
    mask = torch.rand(2, 12, generator=g) < 0.6
    mask[0, 0], mask[1, 1] = True, False
    return pred, target, mask


@pytest.mark.parametrize("norm_pix", [True, False])
def test_masked_patch_loss_matches_reference(loss_inputs, norm_pix) -> None:
    pred, target, mask = loss_inputs
    loss = masked_patch_loss(pred, target, mask, norm_pix)
    assert loss.shape == ()
    assert float(loss) == pytest.approx(reference_loss(pred, target, mask, norm_pix), rel=1e-5)


def test_masked_patch_loss_without_norm_is_mse_on_masked_patches(loss_inputs) -> None:
    pred, target, mask = loss_inputs
    expected = F.mse_loss(pred[mask], target[mask])
    torch.testing.assert_close(masked_patch_loss(pred, target, mask, norm_pix=False), expected)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_masked_patch_loss_ignores_visible_patches(loss_inputs, norm_pix) -> None:
    pred, target, mask = loss_inputs
    loss = masked_patch_loss(pred, target, mask, norm_pix)
    at_visible = pred.clone()
    at_visible[~mask] += 5.0
    assert torch.equal(masked_patch_loss(at_visible, target, mask, norm_pix), loss)
    at_masked = pred.clone()
    at_masked[0, 0] += 5.0  # a masked patch
    assert masked_patch_loss(at_masked, target, mask, norm_pix) > loss


def test_masked_patch_loss_with_nothing_masked_is_zero(loss_inputs) -> None:
    pred, target, mask = loss_inputs
    loss = masked_patch_loss(pred, target, torch.zeros_like(mask))
    assert float(loss) == 0.0


# --- the MAE model -----------------------------------------------------------------------------


def test_forward_shapes() -> None:
    model = make_mae()
    x = smooth_clip(2)  # grid (2, 4, 4) at tubelet 2, patch 8
    loss, pred, mask = model(x, gen(0))
    assert loss.shape == () and torch.isfinite(loss)
    assert pred.shape == (2, 32, 2 * 8 * 8)
    assert mask.shape == (2, 32) and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == 2 * round(0.75 * 16)).all()
    torch.testing.assert_close(loss, model.forward_loss(x, pred, mask))


def test_encoder_sees_only_visible_pixels() -> None:
    model = make_mae().eval()
    x = smooth_clip(2)
    mask, keep = model.random_masking(x, gen(0))
    noise = torch.randn(2, 32, 128, generator=gen(1))
    with torch.no_grad():
        latent = model.forward_encoder(x, keep)
        grid = model.encoder.grid(x.shape)
        masked_changed = unpatchify(patchify(x, 2, 8) + noise * mask[..., None], grid, 2, 8)
        visible_changed = unpatchify(patchify(x, 2, 8) + noise * ~mask[..., None], grid, 2, 8)
        assert latent.shape == (2, int((~mask[0]).sum()), model.encoder.embed_dim)
        torch.testing.assert_close(model.forward_encoder(masked_changed, keep), latent)
        assert not torch.allclose(model.forward_encoder(visible_changed, keep), latent)

    # The same through gradients: the encoder's output has no gradient on masked pixels.
    x_grad = x.clone().requires_grad_(True)
    model.forward_encoder(x_grad, keep).square().sum().backward()
    pixel_grad = patchify(x_grad.grad, 2, 8).abs().sum(dim=-1)  # (B, L)
    assert (pixel_grad[mask] == 0).all()
    assert (pixel_grad[~mask] > 0).all()


def test_same_generator_same_forward() -> None:
    model = make_mae().eval()
    x = smooth_clip(2)
    with torch.no_grad():
        first, again, other = model(x, gen(5)), model(x, gen(5)), model(x, gen(6))
    assert torch.equal(first[2], again[2]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[2], other[2])


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruct_keeps_visible_and_maps_predictions_back(norm_pix) -> None:
    model = make_mae(norm_pix_loss=norm_pix)
    x = smooth_clip(2)
    with torch.no_grad():
        _, pred, mask = model(x, gen(0))
        rec = model.reconstruct(x, pred, mask)
    assert rec.shape == x.shape
    assert torch.equal(patchify(rec, 2, 8)[~mask], patchify(x, 2, 8)[~mask])
    assert not torch.allclose(patchify(rec, 2, 8)[mask], patchify(x, 2, 8)[mask])

    # A perfect prediction (in the loss's own units) reconstructs the whole clip.
    target = patchify(x, 2, 8)
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    assert float(model.forward_loss(x, target, mask)) == pytest.approx(0.0, abs=1e-10)
    torch.testing.assert_close(model.reconstruct(x, target, mask), x, atol=1e-5, rtol=1e-5)


def test_optimisation_reduces_loss_on_a_fixed_batch() -> None:
    model = make_mae().train()
    x = smooth_clip(2, seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _, _ = model(x, gen(1))  # the same mask every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    # Normalised targets have unit variance, so predicting zeros scores about 1: going well below
    # it means the model learned the clip's structure, not just the patch means.
    assert losses[-1] < 0.7 * losses[0], losses
    assert losses[-1] < 0.8, losses
