"""pretext.positional: slices from the same part of the stack, in any subject, are positives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foundation.unet import CardiacUNet
from pretext.positional import PositionalContrastive, stack_part, supervised_contrastive

SMALL = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1, "features": 4}


def test_stack_part_splits_a_stack_into_equal_parts_base_to_apex() -> None:
    parts = stack_part(torch.arange(10), torch.full((10,), 10), parts=4)
    assert parts.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert stack_part(torch.tensor([0, 2]), torch.tensor([3, 3]), 4).tolist() == [0, 2]
    with pytest.raises(ValueError, match="slice index"):
        stack_part(torch.tensor([3]), torch.tensor([3]), 4)


def reference_supcon(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Khosla et al.'s L_out written as loops, over anchors that have a positive."""
    losses = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        denominator = torch.logsumexp(torch.stack([z[i] @ z[j] / tau for j in others]), 0)
        losses.append(-torch.stack([z[i] @ z[p] / tau - denominator for p in positives]).mean())
    return torch.stack(losses).mean()


def test_supcon_equals_the_loop_reference() -> None:
    torch.manual_seed(0)
    z = F.normalize(torch.randn(9, 5), dim=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3, 1, 2])  # label 3 has no positive
    loss, positives = supervised_contrastive(z, labels, 0.2)
    torch.testing.assert_close(loss, reference_supcon(z, labels, 0.2))
    assert positives == pytest.approx((2 * 3 + 2 * 3 + 2 * 1 + 0) / 9)


def test_embeddings_grouped_by_part_score_lower_than_mixed_ones() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    grouped = F.one_hot(labels, 3).float()
    mixed = F.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    assert (
        supervised_contrastive(grouped, labels, 0.1)[0]
        < supervised_contrastive(mixed, labels, 0.1)[0]
    )


def parted_batch(b: int = 8, t: int = 2, slices: int = 4) -> dict[str, torch.Tensor]:
    """Clips whose content tells their part: a bright band whose height follows the slice."""
    torch.manual_seed(1)
    index = torch.arange(b) % slices
    clips = 0.1 * torch.rand(b, 1, t, 32, 32)
    for i, k in enumerate(index.tolist()):
        clips[i, :, :, 8 * k : 8 * k + 8] += 0.8
    return {"clip": clips, "slice": index, "slices": torch.full((b,), slices)}


def test_training_on_it_pulls_same_part_views_together() -> None:
    torch.manual_seed(0)
    objective = PositionalContrastive(CardiacUNet(**SMALL), parts=4, hidden=32, proj_dim=16)
    optimiser = torch.optim.Adam(objective.parameters(), lr=3e-3)
    batch = parted_batch()
    losses = []
    for _ in range(25):
        out = objective(batch)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(float(out["loss"].detach()))
    assert out["positives"] == pytest.approx(2 * 8 * 2 / 4 - 1)  # 32 images, 8 per part
    # The floor: every part a point, far from the others, leaves log(7 positives) per anchor.
    floor = math.log(7)
    assert losses[0] > floor + 0.3 and losses[-1] < floor + 0.05


def test_the_loss_trains_the_encoder_half_and_leaves_the_decoder() -> None:
    objective = PositionalContrastive(CardiacUNet(**SMALL), hidden=16, proj_dim=8)
    objective(parted_batch())["loss"].backward()
    grads = {n: p.grad for n, p in objective.encoder.unet.named_parameters()}
    first = grads["model.0.conv.unit0.conv.weight"]  # the input convolution
    assert first is not None and torch.isfinite(first).all() and first.abs().sum() > 0
    assert grads["model.2.0.conv.weight"] is None  # the top decoder layer: not on the path


def test_it_follows_the_objective_protocol_from_the_registry() -> None:
    """Built by name around a registered dense backbone; scalars out, the backbone kept as
    ``encoder`` (checkpoint keys ``objective.encoder.*``)."""
    from foundation.registry import create_backbone
    from pretext import create_objective

    backbone = create_backbone("cmr_unet_small", **SMALL)
    objective = create_objective("positional", backbone, hidden=16, proj_dim=8)
    assert objective.encoder is backbone and backbone.architecture == "cmr_unet_small"
    out = objective(parted_batch())
    assert set(out) == {"loss", "positives"} and all(v.shape == () for v in out.values())
    assert torch.isfinite(out["loss"])


def test_the_input_tap_trains_the_encoder_and_leaves_the_bottom_block_alone() -> None:
    """tap="input" contrasts the deepest encoder level: the down path gets gradients, the bottom
    block none (it keeps its initialisation); tap="output" reaches the bottom block too."""
    from foundation.registry import create_backbone
    from pretext import create_objective

    for tap, bottom_learns in (("input", False), ("output", True)):
        backbone = create_backbone("cmr_unet_small", **SMALL)
        objective = create_objective("positional", backbone, hidden=16, proj_dim=8, tap=tap)
        objective(parted_batch())["loss"].backward()
        bottom = [n for n, p in backbone.named_parameters()
                  if p.shape[0] == SMALL["channels"][-1] and "conv" in n and "model.2" not in n]  # fmt: skip
        first = backbone.unet.model[0].conv.unit0.conv.weight
        assert first.grad is not None and first.grad.abs().sum() > 0
        grads = [backbone.get_parameter(n).grad for n in bottom]
        assert bottom and all(
            (g is not None and g.abs().sum() > 0) == bottom_learns for g in grads
        ), tap


def test_the_instance_term_pairs_each_image_with_its_own_other_view() -> None:
    """instance_weight w adds w x NT-Xent over the same embeddings, whose one positive per
    anchor is the other view of the same frame (view i with view i + B*T)."""
    objective = PositionalContrastive(CardiacUNet(**SMALL), hidden=16, proj_dim=8)
    objective.instance_weight = 0.5
    batch = parted_batch(b=4, t=2)
    torch.manual_seed(3)
    with torch.no_grad():
        out = objective(batch)
        torch.manual_seed(3)
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        views = torch.cat([objective.augment(batch["clip"], generator) for _ in range(2)])
        z = objective.embed(views)  # (2 * 4 * 2, 8)
    image = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7] * 2)
    torch.testing.assert_close(out["instance_loss"], reference_supcon(z, image, 0.1))
    torch.testing.assert_close(out["loss"], out["part_loss"] + 0.5 * out["instance_loss"])
    assert "instance_loss" not in PositionalContrastive(CardiacUNet(**SMALL))(batch)
    with pytest.raises(ValueError, match="instance_weight"):
        PositionalContrastive(CardiacUNet(**SMALL), instance_weight=-1.0)
