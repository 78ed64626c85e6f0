"""MAE + InfoNCE in one encoder pass per view: call counts, the loss against separately computed
parts under the same masks, visible-only features; and the objective registry's contract."""

from __future__ import annotations

import pytest
import torch

from foundation import create_backbone
from foundation.vit import patchify, unpatchify
from pretext import OBJECTIVES, MAEContrastive, create_objective
from pretext.contrastive import info_nce
from pretext.mae import MAE, masked_patch_loss

RATIOS = {"cine": 0.75, "lge": 0.5}
SMALL = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
HEAD = {"proj_hidden": 64, "proj_dim": 16, "temperature": 0.2}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def encoder():
    torch.manual_seed(0)
    return create_backbone("cmr_vit_test", patch_size=8, tubelet=2)


def make_combined(mask_type: str = "tube", w_mae: float = 0.7, w_con: float = 0.3):
    return MAEContrastive(encoder(), mask_ratio=RATIOS, **SMALL, mask_type=mask_type, **HEAD,
                          w_mae=w_mae, w_con=w_con).eval()  # fmt: skip


def two_views(batch: int = 4) -> dict:
    return {
        "clip": torch.rand(batch, 1, 4, 32, 32, generator=gen(1)),
        "clip2": torch.rand(batch, 1, 4, 32, 32, generator=gen(2)),
        "modality": ["cine"] * batch,
        "modality2": ["lge"] * batch,
    }


def count_encoder_calls(model, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    original = model.encoder.forward_features

    def spy(x, **kwargs):
        calls.append((x.shape[0], kwargs["keep"].shape[1]))
        return original(x, **kwargs)

    monkeypatch.setattr(model.encoder, "forward_features", spy)
    return calls


def test_encoder_runs_once_per_view_on_visible_tokens(monkeypatch) -> None:
    model = make_combined()
    calls = count_encoder_calls(model, monkeypatch)
    out = model(two_views(), gen(0))
    assert set(out) == {"loss", "mae", "contrastive"}
    # grid (2, 4, 4): view 1 is cine (12 of 16 masked: 8 visible tokens), view 2 LGE (16 visible).
    assert calls == [(4, 8), (4, 16)]

    # A batch mixing ratios: one call per ratio group of each view.
    calls.clear()
    model({**two_views(), "modality": ["cine", "lge", "cine", "lge"]}, gen(0))
    assert calls == [(2, 8), (2, 16), (4, 16)]


@pytest.mark.parametrize("mask_type", ["tube", "random"])
def test_loss_is_weighted_sum_of_separately_computed_parts(mask_type) -> None:
    model = make_combined(mask_type)
    batch = two_views()
    with torch.no_grad():
        out = model(batch, gen(0))
        g = gen(0)  # the same masks: view 1's drawn first, then view 2's
        _, pred1, mask1 = model.loss(batch["clip"], batch["modality"], g)
        _, pred2, mask2 = model.loss(batch["clip2"], batch["modality2"], g)
        targets = torch.cat([patchify(batch["clip"], 2, 8), patchify(batch["clip2"], 2, 8)])
        mae = masked_patch_loss(torch.cat([pred1, pred2]), targets, torch.cat([mask1, mask2]))

        def pooled_visible(x: torch.Tensor, mask: torch.Tensor, modality: int) -> torch.Tensor:
            rows = []
            for b in range(x.shape[0]):  # one sample at a time, visible tokens only
                keep = (~mask[b]).nonzero().T  # (1, L_keep)
                tokens = model.encoder.forward_features(
                    x[b : b + 1], keep=keep, modality=torch.tensor([modality])
                )
                rows.append(tokens.mean(dim=1))
            return model.head(torch.cat(rows))

        z1 = pooled_visible(batch["clip"], mask1, 0)
        z2 = pooled_visible(batch["clip2"], mask2, 1)
        con = info_nce(z1, z2, 0.2)
    torch.testing.assert_close(out["mae"], mae)
    torch.testing.assert_close(out["contrastive"], con, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"], 0.7 * mae + 0.3 * con, rtol=1e-4, atol=1e-5)


def test_contrastive_part_sees_only_visible_pixels() -> None:
    model = make_combined()
    batch = two_views()
    with torch.no_grad():
        out = model(batch, gen(0))
        _, _, mask1 = model.loss(batch["clip"], batch["modality"], gen(0))
        noise = torch.randn(4, 32, 128, generator=gen(5)) * mask1[..., None]  # masked patches
        changed = unpatchify(patchify(batch["clip"], 2, 8) + noise, (2, 4, 4), 2, 8)
        again = model({**batch, "clip": changed}, gen(0))
    torch.testing.assert_close(again["contrastive"], out["contrastive"])
    assert not torch.allclose(again["mae"], out["mae"])  # the targets did change


def test_gradients_reach_encoder_decoder_and_head() -> None:
    model = make_combined().train()
    model(two_views(), gen(0))["loss"].backward()
    for part in (model.encoder.patch_embed, model.decoder_pred, model.head.net[0]):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0


def test_weights_must_be_non_negative_and_not_both_zero() -> None:
    with pytest.raises(ValueError, match="w_mae"):
        make_combined(w_mae=-1.0)
    with pytest.raises(ValueError, match="w_mae"):
        make_combined(w_mae=0.0, w_con=0.0)


def test_mae_weights_load_into_the_combined_objective() -> None:
    mae_state = MAE(encoder(), 0.75, **SMALL).state_dict()
    combined = make_combined()
    result = combined.load_state_dict(mae_state, strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.startswith("head.") for k in result.missing_keys)


def test_mae_arguments_reach_the_mae_part_and_a_wrong_one_is_refused() -> None:
    model = make_combined("random")
    assert (model.mask_ratio, model.mask_type, model.norm_pix_loss) == (RATIOS, "random", True)
    assert (model.decoder_dim, len(model.decoder_blocks)) == (32, 1)
    assert model.decoder_blocks[0].attn.num_heads == 2
    assert (model.temperature, model.head.net[-1].out_features) == (0.2, 16)
    with pytest.raises(TypeError, match="mask_rato"):
        MAEContrastive(encoder(), mask_rato=0.5)
    with pytest.raises(TypeError):  # MAE's arguments by name only: nothing binds by position
        MAEContrastive(encoder(), 0.5)  # type: ignore[misc]


# --- the registry ------------------------------------------------------------------------------

OPTIONS = {
    "mae": {"mask_ratio": RATIOS, **SMALL},
    "contrastive": HEAD,
    "mae_contrastive": {"mask_ratio": RATIOS, **SMALL, **HEAD},
}


def test_registry_names() -> None:
    # "positional" and "local" take a dense backbone: test_positional.py, test_local.py
    assert set(OBJECTIVES) == {"mae", "contrastive", "mae_contrastive", "positional", "local"}
    assert set(OPTIONS) == set(OBJECTIVES) - {"positional", "local"}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_objective_follows_the_batch_protocol(name) -> None:
    backbone = encoder()
    objective = create_objective(name, backbone, **OPTIONS[name])
    assert objective.encoder is backbone  # checkpoints keep the backbone under `encoder.`
    out = objective({**two_views(2), "key": ["a", "b"]})
    assert "loss" in out and out["loss"].shape == () and torch.isfinite(out["loss"])
    assert all(v.shape == () for v in out.values())  # scalars only: every entry can be logged
    assert set(out) - {"loss"}  # at least one named part
    out["loss"].backward()
    assert backbone.patch_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_objective_runs_under_bf16_autocast(name) -> None:
    objective = create_objective(name, encoder(), **OPTIONS[name])
    batch = {**two_views(2), "modality": ["cine", "lge"]}
    full = objective(batch, gen(0)) if name != "contrastive" else objective(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = objective(batch, gen(0)) if name != "contrastive" else objective(batch)
    for part, value in full.items():
        assert half[part].dtype == torch.float32  # losses reduce in float32
        assert half[part].item() == pytest.approx(value.item(), rel=0.05), part


def test_unknown_objective_lists_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="mae_contrastive"):
        create_objective("simclr", encoder())
