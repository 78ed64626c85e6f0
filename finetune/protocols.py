"""Fine-tuning protocols on a backbone (linear probe, last-k blocks, full, LoRA) and layer-wise
learning-rate decay groups."""

from __future__ import annotations

from collections.abc import Iterable

from timm.models._manipulate import group_with_matcher
from torch import nn

from foundation.optim import decays
from foundation.vit import CardiacViT

PROTOCOLS = ("linear", "partial", "full", "lora")
LORA_ATTENTION = ("qkv", "proj")  # the attention Linear layers of timm's Block
LORA_MLP = ("fc1", "fc2")


def check_protocol(protocol: str) -> str:
    """The protocol name, or a ValueError listing the valid ones."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    return protocol


def apply_protocol(
    backbone: CardiacViT,
    protocol: str,
    last_k: int = 2,
    lora_rank: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_mlp: bool = False,
) -> nn.Module:
    """Set which backbone parameters train, in place; returns the backbone (LoRA: with adapters).

    linear: nothing trains; partial: the last `last_k` blocks and the final norm; full:
    everything; lora: only peft LoRA adapters on the attention qkv/proj Linear layers (and the MLP's
    fc1/fc2 with lora_mlp). Adapters start as the identity (lora_B = 0), so the model computes
    what the base model computes until it trains. Frozen modules should also run in eval mode
    (no dropout or drop-path noise): the systems call :func:`eval_frozen` in their `train()`.
    """
    check_protocol(protocol)
    if protocol == "lora":
        backbone = add_lora(backbone, lora_rank, lora_alpha, lora_dropout, lora_mlp)
        for name, p in backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        return backbone
    backbone.requires_grad_(protocol == "full")
    if protocol == "partial":
        if not 1 <= last_k <= len(backbone.blocks):
            raise ValueError(f"last_k={last_k} must be between 1 and depth={len(backbone.blocks)}")
        for block in backbone.blocks[-last_k:]:
            block.requires_grad_(True)
        backbone.norm.requires_grad_(True)
    return backbone


def add_lora(
    backbone: nn.Module, rank: int, alpha: int, dropout: float, mlp: bool = False
) -> nn.Module:
    """Inject peft LoRA adapters into the backbone's attention (and MLP) Linear layers, in place.

    peft is imported here, not at module level: its import pulls in transformers (~12 s).
    State dict keys change: `blocks.0.attn.qkv.weight` -> `blocks.0.attn.qkv.base_layer.weight`
    plus `...qkv.lora_A.default.weight` and `...lora_B.default.weight`.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"lora_rank={rank} must be >= 1")
    targets = list(LORA_ATTENTION + (LORA_MLP if mlp else ()))
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
    return inject_adapter_in_model(config, backbone)


def eval_frozen(module: nn.Module) -> None:
    """Put every submodule whose parameters are all frozen into eval mode (recursively).

    Call after `module.train()`: a frozen backbone (linear probe) or frozen blocks (partial)
    then run deterministically, while modules with anything trainable keep training mode.
    """
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        eval_frozen(child)


def layer_ids(names: Iterable[str], matcher: dict[str, str] | None = None) -> dict[str, int]:
    """Layer index of each backbone parameter name: stem 0, block i -> i + 1, the rest (final
    norm) -> depth + 1. Uses timm's group matching with CardiacViT's `group_matcher` patterns."""
    matcher = matcher or CardiacViT.group_matcher(None)  # type: ignore[arg-type]
    return group_with_matcher(((n, None) for n in names), matcher, reverse=True)


def layer_decay_groups(
    named: Iterable[tuple[str, nn.Parameter]],
    base_lr: float,
    layer_decay: float,
    weight_decay: float,
    matcher: dict[str, str] | None = None,
) -> list[dict]:
    """AdamW groups with layer-wise LR decay: lr = base_lr * layer_decay ** (top - layer).

    named: all of the backbone's named parameters, frozen ones included (they fix the layer
    numbering; they are left out of the groups). The final norm is the top layer (base_lr), the
    last block gets base_lr * decay, the embedding base_lr * decay ** (depth + 1). Weight decay
    follows :func:`foundation.optim.decays`. Each group carries its "layer" for inspection.
    """
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay={layer_decay} must be in (0, 1]")
    named = list(named)
    ids = layer_ids([n for n, _ in named], matcher)
    top = max(ids.values(), default=0)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        layer, decayed = ids[name], decays(name, p)
        group = groups.setdefault(
            (layer, decayed),
            {
                "params": [],
                "lr": base_lr * layer_decay ** (top - layer),
                "weight_decay": weight_decay if decayed else 0.0,
                "layer": layer,
            },
        )
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]
