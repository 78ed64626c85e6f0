"""Contrastive: InfoNCE against a direct reference, the projection head, the objective, and the
loss and gradients across 2 gloo processes equal to one process on the whole batch."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from foundation import create_backbone
from pretext.contrastive import Contrastive, ProjectionHead, gather_with_grad, info_nce


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_contrastive() -> Contrastive:
    torch.manual_seed(0)
    encoder = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    return Contrastive(encoder, proj_hidden=64, proj_dim=16, temperature=0.2)


def clips(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 1, 4, 16, 16, generator=gen(seed))


def reference_info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Explicit loops over the cosine similarity matrix s[i][j] = cos(z1_i, z2_j) / temperature."""
    n = z1.shape[0]
    a, b = z1.double().tolist(), z2.double().tolist()

    def cos(u: list[float], v: list[float]) -> float:
        dot = sum(x * y for x, y in zip(u, v))
        return dot / math.sqrt(sum(x * x for x in u)) / math.sqrt(sum(y * y for y in v))

    s = [[cos(a[i], b[j]) / temperature for j in range(n)] for i in range(n)]
    rows = [-s[i][i] + math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)]
    cols = [-s[i][i] + math.log(sum(math.exp(s[j][i]) for j in range(n))) for i in range(n)]
    return (sum(rows) / n + sum(cols) / n) / 2


# --- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_info_nce_matches_reference(temperature) -> None:
    z1 = torch.randn(6, 5, generator=gen(0)) * 3  # not unit length: the loss normalises
    z2 = z1 + torch.randn(6, 5, generator=gen(1))
    loss = info_nce(z1, z2, temperature)
    assert loss.shape == ()
    assert float(loss) == pytest.approx(reference_info_nce(z1, z2, temperature), rel=1e-5)


def test_info_nce_is_symmetric_in_the_views() -> None:
    z1, z2 = torch.randn(5, 4, generator=gen(0)), torch.randn(5, 4, generator=gen(1))
    torch.testing.assert_close(info_nce(z1, z2), info_nce(z2, z1))
    # One direction alone is not symmetric: the loss averages both.
    logits = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / 0.1
    one_way = F.cross_entropy(logits, torch.arange(5))
    assert not torch.allclose(one_way, info_nce(z1, z2))


def test_info_nce_rejects_mismatched_views() -> None:
    with pytest.raises(ValueError, match="must both be"):
        info_nce(torch.randn(4, 3), torch.randn(5, 3))


def test_gather_with_grad_is_identity_in_one_process() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


def test_projection_head_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(8, 32, 4).train()
    x = torch.randn(5, 8, generator=gen(0))
    out = head(x)
    assert out.shape == (5, 4)
    torch.testing.assert_close(head(x[2:3]), out[2:3])  # a batch of one, in training mode


# --- the objective -----------------------------------------------------------------------------


def test_contrastive_forward_matches_pooled_features_reference(monkeypatch) -> None:
    model = make_contrastive()
    x1, x2 = clips(4, 0), clips(4, 1)
    out = model({"clip": x1, "clip2": x2, "modality": ["cine", "lge", "cine", "lge"]})
    assert set(out) == {"loss", "contrastive"}
    torch.testing.assert_close(out["loss"], out["contrastive"])

    def embed(x: torch.Tensor, modality: list[int]) -> torch.Tensor:
        tokens = model.encoder.forward_features(x, modality=torch.tensor(modality))  # (B, L, D)
        return model.head(tokens.mean(dim=1))

    z1, z2 = embed(x1, [0, 1, 0, 1]), embed(x2, [0, 1, 0, 1])  # view 2 takes view 1's modality
    expected = reference_info_nce(z1.detach(), z2.detach(), 0.2)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)

    out["loss"].backward()
    assert model.encoder.patch_embed.weight.grad.abs().sum() > 0
    assert model.head.net[0].weight.grad.abs().sum() > 0


def test_contrastive_second_view_takes_modality2(monkeypatch) -> None:
    model = make_contrastive()
    seen: list[list[int] | None] = []
    original = model.encoder.forward_features

    def spy(x, **kwargs):
        modality = kwargs.get("modality")
        seen.append(None if modality is None else modality.tolist())
        return original(x, **kwargs)

    monkeypatch.setattr(model.encoder, "forward_features", spy)
    model({"clip": clips(2, 0), "clip2": clips(2, 1), "modality": ["cine"] * 2,
           "modality2": ["lge"] * 2})  # fmt: skip
    assert seen == [[0, 0], [1, 1]]
    seen.clear()
    model({"clip": clips(2, 0), "clip2": clips(2, 1)})
    assert seen == [None, None]  # no names: the encoder's default


def test_temperature_must_be_positive() -> None:
    with pytest.raises(ValueError, match="temperature"):
        Contrastive(create_backbone("cmr_vit_test", patch_size=8, tubelet=2), temperature=0.0)


# --- across ranks ------------------------------------------------------------------------------

WORLD, PER_RANK = 2, 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_batch() -> dict[str, torch.Tensor]:
    n = WORLD * PER_RANK
    z1 = torch.randn(n, 6, generator=gen(0))
    return {"z1": z1, "z2": z1 + 0.5 * torch.randn(n, 6, generator=gen(1)),
            "x1": clips(n, 2), "x2": clips(n, 3)}  # fmt: skip


def rank_worker(rank: int, port: int, out: str) -> None:
    """One of WORLD gloo processes: the loss and gradients from its own rows of full_batch()."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if dist.is_initialized():  # forked from a test process that trained with a process group
        dist.destroy_process_group()
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        data = full_batch()
        z1 = data["z1"][rows].clone().requires_grad_(True)
        z2 = data["z2"][rows].clone().requires_grad_(True)
        loss = info_nce(gather_with_grad(z1), gather_with_grad(z2), 0.1)
        loss.backward()
        model = make_contrastive()
        model_loss = model({"clip": data["x1"][rows], "clip2": data["x2"][rows]})["loss"]
        model_loss.backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        result = {"loss": loss.detach(), "z1": z1.grad, "z2": z2.grad,
                  "model_loss": model_loss.detach(), "grads": grads}  # fmt: skip
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_negatives_with_gradients(tmp_path) -> None:
    # fork, not spawn: a spawned child re-imports torch and timm (~5 s on a loaded 2-core box).
    # The parent runs single-threaded (conftest), so forking after OpenMP use is safe.
    args = (free_port(), str(tmp_path))
    mp.start_processes(rank_worker, args=args, nprocs=WORLD, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    data = full_batch()
    z1, z2 = data["z1"].clone().requires_grad_(True), data["z2"].clone().requires_grad_(True)
    loss = info_nce(z1, z2, 0.1)  # one process, the concatenated batch
    loss.backward()
    for rank, result in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.testing.assert_close(result["loss"], loss.detach())  # negatives from both ranks
        # Every rank's loss sends gradient to this rank's rows: WORLD x the global gradient
        # (a gather without backward would give 1x), which DDP's averaging cancels.
        torch.testing.assert_close(result["z1"], WORLD * z1.grad[rows])
        torch.testing.assert_close(result["z2"], WORLD * z2.grad[rows])

    # The objective: what DDP would apply (the mean of the ranks' gradients) is the gradient of
    # one process on the whole batch.
    model = make_contrastive()
    model_loss = model({"clip": data["x1"], "clip2": data["x2"]})["loss"]
    model_loss.backward()
    for result in ranks:
        torch.testing.assert_close(result["model_loss"], model_loss.detach())
    for name, p in model.named_parameters():
        mean = sum(result["grads"][name] for result in ranks) / WORLD
        torch.testing.assert_close(mean, p.grad, rtol=1e-4, atol=1e-6, msg=name)
