"""pretext.local: the same region of two intensity views of an image is the positive, the image's
other regions the negatives; it trains the U-Net's decoder from the released encoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from data_shards.writer import write_manifest
from foundation.registry import create_backbone
from foundation.released import DEFAULT_RELEASE, resolve_pretrained
from foundation.unet import CardiacUNet
from foundation.weights import read_backbone_weights
from pretext import create_objective
from pretext.local import LocalContrastive, local_infonce
from pretext.system import PretrainSystem

SMALL = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1, "features": 4}
TINY = {"regions": 8, "regions_per_image": 16, "hidden": 8, "proj_dim": 8}  # 4-px regions at 32
OFF = {"spatial_prob": 0.0, "intensity_prob": 0.0, "noise_prob": 0.0}  # identical views


def objective(**kwargs) -> LocalContrastive:
    torch.manual_seed(0)
    return LocalContrastive(CardiacUNet(**SMALL), **{**TINY, **kwargs})


def clips(b: int = 2, t: int = 2, size: int = 32) -> dict[str, torch.Tensor]:
    return {"clip": torch.rand(b, 1, t, size, size, generator=torch.Generator().manual_seed(1))}


# --- the loss ----------------------------------------------------------------------------------


def test_each_region_matches_itself_and_shuffled_regions_score_worse() -> None:
    torch.manual_seed(0)
    z = F.normalize(torch.randn(3, 10, 16), dim=2)
    loss, accuracy = local_infonce(z, z, 0.1)
    assert accuracy == 1.0
    shuffled, shuffled_accuracy = local_infonce(z, z[:, torch.randperm(10)], 0.1)
    assert loss < shuffled and shuffled_accuracy < 0.5


def test_the_loss_is_infonce_both_ways_within_each_image() -> None:
    """Region k of view 1 against the K regions of the same image's view 2, and back."""
    torch.manual_seed(0)
    z1, z2 = (F.normalize(torch.randn(2, 5, 4), dim=2) for _ in range(2))
    terms = []
    for i in range(2):
        for k in range(5):
            terms.append(torch.logsumexp(z1[i, k] @ z2[i].T / 0.2, 0) - z1[i, k] @ z2[i, k] / 0.2)
            terms.append(torch.logsumexp(z2[i, k] @ z1[i].T / 0.2, 0) - z2[i, k] @ z1[i, k] / 0.2)
    torch.testing.assert_close(local_infonce(z1, z2, 0.2)[0], torch.stack(terms).mean())


def test_identical_views_of_a_textured_image_find_every_region() -> None:
    """Views without augmentation: every sampled region's nearest is itself (top-1 = 1)."""
    out = objective(augment=OFF)(clips())
    assert set(out) == {"loss", "local_acc"} and all(v.shape == () for v in out.values())
    assert out["local_acc"] == 1.0 and torch.isfinite(out["loss"])


def test_training_sharpens_the_match() -> None:
    model = objective()
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(clips())["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.9 * math.log(TINY["regions_per_image"]) and losses[-1] < 0.7 * losses[0]


# --- the views ---------------------------------------------------------------------------------


def test_the_two_views_stay_aligned() -> None:
    """One affine for both views, intensities their own: a bright square lands on the same
    pixels of both views, moved from where it was, at different brightness."""
    model = objective(augment={"spatial_prob": 1.0, "rotate": 30.0, "translate": 0.1,
                               "intensity_prob": 1.0, "gamma": (0.5, 2.0), "noise_prob": 0.0})  # fmt: skip
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, 8:16, 10:20] = 0.8
    placed, view1, view2 = model.views(images, torch.Generator().manual_seed(0))
    assert torch.equal(view1 > 0, placed > 0) and torch.equal(view2 > 0, placed > 0)
    assert not torch.equal(placed > 0, images > 0)  # the affine was applied
    for image in range(4):
        assert not torch.allclose(view1[image], view2[image])  # intensities drawn per view


def test_noise_is_drawn_per_view() -> None:
    model = objective(augment={**OFF, "noise_prob": 1.0, "noise_std": 0.05})
    images = torch.full((2, 1, 32, 32), 0.5)
    placed, view1, view2 = model.views(images, torch.Generator().manual_seed(0))
    assert torch.equal(placed, images) and not torch.allclose(view1, view2)


def test_regions_with_content_are_sampled_first() -> None:
    """Background regions (zeros in both views) carry nothing to match: taken only when an
    image has fewer content regions than it samples."""
    model = objective(regions=4, regions_per_image=4)
    images = torch.zeros(2, 1, 32, 32)
    images[0, :, :16, :16] = 0.5  # the top-left 2 x 2 regions: 0, 1, 4, 5
    images[1, :, :8, :8] = 0.5  # one region with content: 0
    chosen = model.sample_regions(images, torch.Generator().manual_seed(0))
    assert sorted(chosen[0].tolist()) == [0, 1, 4, 5]
    assert chosen[1, 0] == 0 and len(set(chosen[1].tolist())) == 4


# --- what trains -------------------------------------------------------------------------------


def step(model: LocalContrastive) -> dict[str, torch.Tensor]:
    """The backbone's tensors after one optimizer step on the objective's trainable parameters."""
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(clips())["loss"].backward()
    optimiser.step()
    return {n: p.detach().clone() for n, p in model.encoder.named_parameters()}


@pytest.mark.parametrize("train_encoder", [False, True])
def test_the_encoder_stays_frozen_unless_asked(train_encoder: bool) -> None:
    model = objective(train_encoder=train_encoder)
    backbone = model.encoder
    names = {id(p): n for n, p in backbone.named_parameters()}
    encoder = [names[id(p)] for p in backbone.encoder_parameters()]
    decoder = [names[id(p)] for p in backbone.decoder_parameters() if p.ndim > 1]  # weights
    assert "unet.model.0.conv.unit0.conv.weight" in encoder  # the input convolution
    assert "unet.model.1.submodule.1.submodule.conv.unit0.conv.weight" in decoder  # the bottom
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    after = step(model)
    assert all(not torch.equal(after[n], before[n]) for n in decoder)
    if train_encoder:  # weights: a bias before instance norm gets no gradient
        assert all(not torch.equal(after[n], before[n]) for n in encoder if after[n].ndim > 1)
    else:
        assert all(torch.equal(after[n], before[n]) for n in encoder)
    model.train()
    assert all(b.training == train_encoder for b in backbone.encoder_modules())
    assert backbone.top_layer().training and model.head.training


# --- arguments and the registry ----------------------------------------------------------------


def test_mask_ratio_hides_whole_cells_drawn_per_view() -> None:
    """With mask_ratio, about that share of each view's grid cells is zero, the rest untouched,
    and the two views hide different cells."""
    model = objective(augment=OFF, mask_ratio=0.5)
    images = torch.full((8, 1, 32, 32), 0.5)
    _, view1, view2 = model.views(images, torch.Generator().manual_seed(0))
    for view in (view1, view2):
        cells = F.avg_pool2d(view, 4)  # (8, 1, 8, 8): one value per 4-px grid cell
        assert torch.equal((cells == 0) | (cells == 0.5), torch.ones_like(cells, dtype=torch.bool))
        assert 0.4 < (cells == 0).float().mean() < 0.6
    assert not torch.equal(view1 == 0, view2 == 0)
    assert torch.equal(objective(augment=OFF).views(images, torch.Generator())[1], images)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"regions": 0}, "regions=0"),
        ({"regions_per_image": 1}, "regions_per_image"),
        ({"regions": 4, "regions_per_image": 17}, "regions_per_image"),
        ({"proj_dim": 0}, "proj_dim"),
        ({"augment": {"rotat": 10}}, "rotat"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        objective(**kwargs)


def test_a_grid_that_does_not_divide_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="regions=8 does not divide the image size 36 x 36"):
        objective()(clips(size=36))


def test_a_vit_is_refused() -> None:
    with pytest.raises(ValueError, match="dense backbone"):
        LocalContrastive(create_backbone("cmr_vit_test", patch_size=8, depth=1))


def test_the_registry_builds_it_from_yaml_style_kwargs() -> None:
    backbone = create_backbone("cmr_unet_small", **SMALL)
    model = create_objective("local", backbone, temperature=0.2, augment={"rotate": 5.0}, **TINY)
    assert isinstance(model, LocalContrastive) and model.encoder is backbone
    assert (model.temperature, model.regions, model.regions_per_image) == (0.2, 8, 16)
    assert model.spatial.config.rotate == 5.0 and model.spatial.config.intensity_prob == 0.0
    assert model.intensity.config.spatial_prob == 0.0
    assert torch.isfinite(model(clips())["loss"])


# --- the starting weights and the export -------------------------------------------------------


def test_the_system_starts_from_the_released_hub_folder() -> None:
    system = PretrainSystem("cmr_unet_small", objective="local", pretrained=DEFAULT_RELEASE)
    hub = read_backbone_weights(resolve_pretrained(DEFAULT_RELEASE)).state
    ours = system.encoder.state_dict()
    assert set(ours) == set(hub)
    assert all(torch.equal(ours[k], hub[k]) for k in hub)
    assert system.hparams["pretrained"] == DEFAULT_RELEASE  # `cmrfm pretrain --pretrained ...`


def test_export_holds_the_whole_unet_and_fine_tuning_loads_all_but_the_top(tmp_path) -> None:
    """The exported backbone is the encoder and the trained decoder, not the projection head; a
    dense segmenter (other output features: classes) loads every tensor but the top layer's."""
    from cmrfm.export import export
    from finetune.system import dense_backbone
    from foundation.hub import from_pretrained
    from foundation.weights import UNET_TOP

    torch.manual_seed(0)
    system = PretrainSystem("cmr_unet_small", SMALL, "local", TINY)
    step(system.objective)
    torch.save(
        {"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
         "global_step": 1, "epoch": 0},
        tmp_path / "local.ckpt",
    )  # fmt: skip
    samples = [{"key": "s", "subject": "s", "split": "train", "source": "acdc", "modality": "cine",
                "shape": [1, 1, 32, 32], "has_label": False, "shard": "shard-000000.tar"}]  # fmt: skip
    preprocess = {
        "spacing": 1.5,
        "size": 32,
        "percentiles": [0.5, 99.5],
        "orientation": "canonical",
    }
    extra = {"source": "acdc", "root": "/data/acdc", "source_options": {}}
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "shard-000000.tar").write_bytes(b"stub")
    write_manifest(tmp_path / "shards", ["shard-000000.tar"], samples, preprocess, extra)
    export(
        tmp_path / "local.ckpt",
        tmp_path / "hub",
        manifests=[tmp_path / "shards"],
        preprocess={"frames": 1},
    )  # a data module would record frames
    trained = system.encoder.state_dict()
    exported = from_pretrained(tmp_path / "hub").state_dict()
    assert set(exported) == set(trained)  # no head.* keys
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    segmenter = dense_backbone("cmr_unet_small", str(tmp_path / "hub"), "full", 3, SMALL)
    loaded = segmenter.state_dict()
    kept = [k for k in trained if not k.startswith(UNET_TOP)]
    assert "unet.model.1.submodule.2.0.conv.weight" in kept  # a decoder layer
    assert all(torch.equal(loaded[k], trained[k]) for k in kept)
