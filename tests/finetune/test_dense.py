"""finetune.dense and SegFinetuner(arch="dense"): a dense backbone (cmr_unet_small) with a 1x1
class layer, started from pretrained U-Net weights or from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune.fewshot import FewShotBenchmark
from finetune.fewshot_config import FewShotConfig
from finetune.results import read_jsonl
from finetune.system import SegFinetuner
from foundation.hub import save_pretrained
from foundation.registry import create_backbone

SMALL = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "features": 6}
PRE = {"spacing": 3.0, "size": 48, "frames": 2, "percentiles": [0.5, 99.5], "modalities": ["cine"]}


@pytest.fixture(scope="module")
def unet_hub(tmp_path_factory) -> Path:
    """A hub folder of a U-Net backbone whose weights no fresh initialisation has."""
    torch.manual_seed(3)
    backbone = create_backbone("cmr_unet_small", **SMALL)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return save_pretrained(backbone, tmp_path_factory.mktemp("unet_hub"), preprocess=PRE)


def _dense(unet_hub: Path, **kwargs) -> SegFinetuner:
    """A dense segmenter of the hub folder's size, started from its weights."""
    return SegFinetuner(
        backbone="cmr_unet_small", arch="dense", pretrained=str(unet_hub),
        backbone_kwargs=SMALL, **kwargs,
    )  # fmt: skip


def test_every_tensor_but_the_top_layer_comes_from_the_hub_folder(unet_hub):
    system = _dense(unet_hub)
    hub = create_backbone("cmr_unet_small", pretrained=unet_hub, **SMALL).state_dict()
    ours = system.model.backbone.state_dict()
    differ = {k for k in ours if ours[k].shape != hub[k].shape or not torch.equal(ours[k], hub[k])}
    assert differ and all(k.startswith("unet.model.2.") for k in differ)  # the top layer only
    assert system(torch.rand(2, 1, 3, 16, 16)).shape == (2, 4, 3, 16, 16)  # 4 classes


def test_from_scratch_it_is_the_baseline_unet_bit_for_bit():
    """Same seed, same tensors, same logits: "scratch" on cmr_unet_small is MONAI's U-Net."""
    torch.manual_seed(0)
    dense = SegFinetuner(backbone="cmr_unet_small", arch="dense").eval()
    torch.manual_seed(0)
    unet = SegFinetuner(arch="unet").eval()
    x = torch.rand(1, 1, 2, 32, 32)
    assert list(dense.model.backbone.unet.state_dict()) == list(unet.model.net.state_dict())
    torch.testing.assert_close(dense(x), unet(x), rtol=0, atol=0)


def test_the_backbone_learns_at_lr_times_backbone_lr_scale(unet_hub):
    system = _dense(unet_hub, lr=1e-3, backbone_lr_scale=0.5)
    groups = system.configure_optimizers()["optimizer"].param_groups
    assert {g["initial_lr"] for g in groups} == {5e-4}
    assert sum(len(g["params"]) for g in groups) == len(list(system.parameters()))


def test_linear_protocol_trains_the_top_layer_only(unet_hub):
    system = _dense(unet_hub, protocol="linear")
    before = {k: v.clone() for k, v in system.model.state_dict().items()}
    optimizer = system.configure_optimizers()["optimizer"]
    batch = {"clip": torch.rand(2, 1, 2, 16, 16), "label": torch.randint(0, 4, (2, 2, 16, 16))}
    system.training_step(batch, 0).backward()
    optimizer.step()
    changed = {k for k, v in system.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("backbone.unet.model.2.") for k in changed)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"backbone": "cmr_vit_test"}, "needs a dense backbone"),
        ({"protocol": "lora"}, "takes protocol 'full' or 'linear'"),
        ({"num_classes": 1}, "num_classes=1"),
    ],
)
def test_what_a_dense_segmenter_cannot_be_is_named(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        SegFinetuner(**{"backbone": "cmr_unet_small", "arch": "dense", **kwargs})


def test_few_shot_compares_pretrained_and_scratch_dense_on_the_same_draws(
    make_phantom_shards, unet_hub, tmp_path
):
    shards = make_phantom_shards(n=16, slices=2)
    cfg = FewShotConfig(
        task="seg", shards=str(shards), out=str(tmp_path), labels=["1"], seeds=2, budget_s=0.5,
        eval_split="test", methods=["pretrained", "scratch"], pretrained=str(unet_hub),
        model={"backbone": "cmr_unet_small", "arch": "dense", "backbone_kwargs": SMALL},
    )  # fmt: skip
    FewShotBenchmark(cfg).run()
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("pretrained", 0), ("pretrained", 1), ("scratch", 0), ("scratch", 1)
    ]  # fmt: skip
    for seed in (0, 1):
        draws = {tuple(r["train_subjects"]) for r in rows if r["seed"] == seed}
        assert len(draws) == 1
    assert all(0.0 <= r["dice_mean"] <= 1.0 and r["steps"] >= 1 for r in rows)
