"""Fine-tuning protocols: which parameters train under linear / partial / full / LoRA, layer-wise
LR decay, the U-Net baseline arch, and checkpoints that restore for evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from finetune.evaluate import load_finetune_checkpoint
from finetune.protocols import PROTOCOLS, apply_protocol, layer_decay_groups
from finetune.system import SegFinetuner
from foundation import create_backbone
from foundation.optim import decays

DEPTH = 4  # cmr_vit_test
SIZE = 32  # the U-Net baseline halves 4 times


def seg(protocol: str = "full", seed: int = 0, **kwargs) -> SegFinetuner:
    torch.manual_seed(seed)
    args = {"backbone": "cmr_vit_test", "patch_size": 8, "tubelet": 2, "feature_size": 8}
    return SegFinetuner(**{**args, "protocol": protocol, **kwargs})


def trainable(system: SegFinetuner) -> tuple[set[str], set[str]]:
    """Names of the trainable backbone and non-backbone parameters of a segmenter."""
    names = {n for n, p in system.model.named_parameters() if p.requires_grad}
    backbone = {n[len("backbone.") :] for n in names if n.startswith("backbone.")}
    return backbone, {n for n in names if not n.startswith("backbone.")}


def decoder_names(system: SegFinetuner) -> set[str]:
    return {n for n, _ in system.model.named_parameters() if not n.startswith("backbone.")}


def batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    clip = torch.rand(2, 1, 2, SIZE, SIZE, generator=g)
    return {"clip": clip, "label": torch.randint(0, 4, (2, 2, SIZE, SIZE), generator=g)}


# --- trainable parameters per protocol ---------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{"protocol": "linear"}, {"freeze_backbone": True}])
def test_linear_trains_the_decoder_only_and_keeps_the_backbone_in_eval_mode(kwargs) -> None:
    system = seg(**kwargs)
    backbone, decoder = trainable(system)
    assert backbone == set() and decoder == decoder_names(system)
    system.train()
    assert system.training and system.model.stem.training
    assert not any(m.training for m in system.model.backbone.modules())


def test_partial_trains_the_last_k_blocks_the_norm_and_the_decoder() -> None:
    system = seg("partial", last_k=2)
    backbone, decoder = trainable(system)
    expected = {
        n
        for n, _ in system.model.backbone.named_parameters()
        if re.match(rf"blocks\.({DEPTH - 2}|{DEPTH - 1})\.|norm\.", n)
    }
    assert backbone == expected and decoder == decoder_names(system)
    system.train()
    assert [b.training for b in system.model.backbone.blocks] == [False, False, True, True]


def test_full_trains_everything() -> None:
    system = seg("full")
    assert all(p.requires_grad for p in system.parameters())


def test_lora_trains_adapters_and_decoder_only() -> None:
    system = seg("lora", lora_rank=4)
    backbone, decoder = trainable(system)
    assert decoder == decoder_names(system)
    assert backbone and all(".lora_A." in n or ".lora_B." in n for n in backbone)
    adapted = {n.split(".lora_")[0] for n in backbone}
    assert adapted == {f"blocks.{i}.attn.{m}" for i in range(DEPTH) for m in ("qkv", "proj")}
    rank = system.model.backbone.blocks[0].attn.qkv.lora_A["default"].weight.shape[0]
    assert rank == 4


def test_lora_model_computes_the_base_model_at_init() -> None:
    torch.manual_seed(0)
    base = create_backbone("cmr_vit_test", patch_size=8, tubelet=2).eval()
    x = torch.rand(2, 1, 2, 16, 16)
    with torch.no_grad():
        before = base(x)
        adapted = apply_protocol(base, "lora", lora_rank=4, lora_mlp=True).eval()
        torch.testing.assert_close(adapted(x), before)
    assert hasattr(adapted.blocks[0].mlp.fc1, "lora_A")


def test_unknown_protocol_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"linear.*partial.*full.*lora"):
        seg("frozen")
    with pytest.raises(ValueError, match="last_k"):
        seg("partial", last_k=DEPTH + 1)


def test_freeze_backbone_with_another_protocol_is_an_error() -> None:
    with pytest.raises(ValueError, match="freeze_backbone"):
        seg("partial", freeze_backbone=True)


# --- layer-wise LR decay -----------------------------------------------------------------------


def expected_layer(name: str) -> int:
    if name.startswith(("patch_embed", "modality_embed", "axis_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    assert name.startswith("norm.")
    return DEPTH + 1


@pytest.mark.parametrize("protocol", ["full", "partial", "lora"])
def test_layer_decay_lrs_follow_depth(protocol) -> None:
    backbone = apply_protocol(create_backbone("cmr_vit_test", patch_size=8), protocol)
    groups = layer_decay_groups(backbone.named_parameters(), 1e-3, 0.5, 0.05)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = list(backbone.named_parameters())
    assert set(lr_of) == {id(p) for _, p in named if p.requires_grad}  # frozen ones left out
    for name, p in named:
        if p.requires_grad:
            assert lr_of[id(p)] == pytest.approx(1e-3 * 0.5 ** (DEPTH + 1 - expected_layer(name)))
            assert wd_of[id(p)] == (0.05 if decays(name, p) else 0.0), name


def test_system_optimiser_puts_the_decoder_at_lr_and_the_backbone_top_at_the_scale() -> None:
    system = seg("full", lr=1e-3, backbone_lr_scale=0.5, layer_decay=0.8)
    optimizer = system.configure_optimizers()["optimizer"]
    lr_of = {id(p): g["initial_lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr_of) == sum(1 for _ in system.parameters())  # every parameter, once
    for name, p in system.model.named_parameters():
        if name.startswith("backbone."):
            layer = expected_layer(name[len("backbone.") :])
            assert lr_of[id(p)] == pytest.approx(5e-4 * 0.8 ** (DEPTH + 1 - layer)), name
        else:
            assert lr_of[id(p)] == pytest.approx(1e-3), name


@pytest.mark.filterwarnings("ignore:You are trying to `self.log()`")
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_optimisation_changes_exactly_the_trainable_parameters(protocol) -> None:
    system = seg(protocol, lora_rank=4, warmup_steps=1)
    before = {n: p.detach().clone() for n, p in system.named_parameters()}
    optimizer = system.configure_optimizers()["optimizer"]
    system.train()
    for step in range(3):  # lora_B starts at 0, so lora_A only gets a gradient from step 2
        optimizer.zero_grad()
        system.training_step(batch(step), step).backward()
        optimizer.step()
    changed = {n for n, p in system.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n, p in system.named_parameters() if p.requires_grad}


# --- U-Net baseline and checkpoints ------------------------------------------------------------


def test_unet_arch_ignores_the_backbone_and_refuses_pretrained_weights(tmp_path) -> None:
    system = seg(arch="unet")
    assert not hasattr(system.model, "backbone")
    assert system(batch()["clip"]).shape == (2, 4, 2, SIZE, SIZE)
    with pytest.raises(ValueError, match="pretrained"):
        seg(arch="unet", pretrained=str(tmp_path / "mae.ckpt"))
    with pytest.raises(ValueError, match="protocol"):
        seg("lora", arch="unet")
    with pytest.raises(ValueError, match="arch"):
        seg(arch="unetr3d")


def fit_and_save(system: L.LightningModule, items: list[dict], path: Path, steps: int = 2) -> Path:
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=path.parent)  # fmt: skip
    trainer.fit(system, DataLoader(items, batch_size=2))
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize(
    "kwargs", [{"arch": "unet"}, {"protocol": "lora", "lora_rank": 4}, {"protocol": "partial"}]
)
def test_checkpoint_restores_for_evaluation(kwargs, tmp_path) -> None:
    system = seg(**kwargs, lr=1e-2, warmup_steps=1)
    start = {n: p.detach().clone() for n, p in system.named_parameters()}
    items = [{"clip": b["clip"][i], "label": b["label"][i]} for b in (batch(0),) for i in range(2)]
    path = fit_and_save(system, items, tmp_path / "seg.ckpt")
    model, frames, _ = load_finetune_checkpoint(path)
    assert frames == 2 and not model.training
    restored = dict(model.named_parameters())
    assert restored.keys() == start.keys()
    assert any(not torch.equal(restored[n], start[n]) for n in start)  # it did train
    x = batch(5)["clip"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), system.eval()(x))


@pytest.mark.parametrize("protocol", ["lora", "partial"])
def test_pretrained_weights_load_before_the_protocol_applies(protocol, tmp_path) -> None:
    torch.manual_seed(1)
    source = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    state = {f"objective.encoder.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "mae.ckpt")
    system = seg(protocol, seed=2, pretrained=str(tmp_path / "mae.ckpt"), lora_rank=4)
    qkv = system.model.backbone.blocks[0].attn.qkv
    weight = qkv.base_layer.weight if protocol == "lora" else qkv.weight
    assert torch.equal(weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(system.model.backbone.patch_embed.weight, source.patch_embed.weight)
