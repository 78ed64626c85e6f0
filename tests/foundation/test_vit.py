"""Backbone contract over every registered size, plus token dropping, positions, taps, registry,
modality/axis embeddings, old checkpoints, gradient checkpointing and torch.compile."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import foundation.vit as vit_module
from foundation import BACKBONES, CardiacViT, create_backbone, register_backbone
from foundation.vit import (
    AXES,
    MODALITIES,
    axis_index,
    modality_index,
    sincos_3d,
    tubelet_tokens,
)
from foundation.weights import load_backbone_weights

TINY_INPUT = (1, 1, 2, 32, 32)  # (B, C, T, H, W): a 1x2x2 token grid at tubelet 2, patch 16
NAMES = sorted(n for n in BACKBONES if n.startswith("cmr_vit"))  # the ViT contract
# The sizes the issue asks for: width, heads, depth.
SIZES = {
    "cmr_vit_tiny": (192, 3, 12),
    "cmr_vit_small": (384, 6, 12),
    "cmr_vit_base": (768, 12, 12),
    "cmr_vit_large": (1024, 16, 24),
}
HEAVY = 50e6  # parameters; above this the contract runs the full width with a single block


def meta_backbone(name: str, **kwargs) -> CardiacViT:
    """The registered model built without allocating memory (shapes and counts only)."""
    with torch.device("meta"):
        return create_backbone(name, **kwargs)


def n_params(model: CardiacViT) -> int:
    return sum(p.numel() for p in model.parameters())


# Base and large are ~86M and ~303M parameters: their forward/backward contract runs at full
# width and heads with depth=1 (a registry override); their full depth is checked on meta below.
REDUCED = {name: {"depth": 1} for name in NAMES if n_params(meta_backbone(name)) > HEAVY}


@pytest.fixture(scope="module")
def models() -> dict[str, CardiacViT]:
    torch.manual_seed(0)
    return {
        name: create_backbone(name, patch_size=16, tubelet=2, **REDUCED.get(name, {})).eval()
        for name in NAMES
    }


@pytest.fixture
def small() -> CardiacViT:
    torch.manual_seed(0)
    return create_backbone("cmr_vit_test", patch_size=8, tubelet=2).eval()


def manual_blocks(model: CardiacViT, tokens: torch.Tensor, upto: int) -> torch.Tensor:
    for block in model.blocks[: upto + 1]:
        tokens = block(tokens)
    return tokens


def trained_context(model: CardiacViT, seed: int = 0) -> None:
    """Give the (zero-initialised) modality and axis tables distinct rows, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for table in (model.modality_embed, model.axis_embed):
            table.copy_(torch.randn(table.shape, generator=g))


# --- contract over every registered backbone ---------------------------------------------------


def test_registry_has_the_issue_sizes() -> None:
    assert set(SIZES) <= set(BACKBONES)
    assert "cmr_vit_test" in BACKBONES
    for name, (width, heads, depth) in SIZES.items():
        model = meta_backbone(name)
        assert (model.embed_dim, model.num_heads, model.depth) == (width, heads, depth), name
        assert len(model.blocks) == depth
        assert model.blocks[0].attn.num_heads == heads
    assert {"cmr_vit_base", "cmr_vit_large"} <= set(REDUCED)  # so the contract below is cheap


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("patch", "tubelet"), [(16, 2), (8, 1)])
def test_parameter_count_matches_the_architecture(name, patch, tubelet) -> None:
    model = meta_backbone(name, patch_size=patch, tubelet=tubelet)
    d, c = model.embed_dim, model.in_chans
    hidden = int(d * model.model_args["mlp_ratio"])
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * d
    expected = (
        d * c * tubelet * patch * patch
        + d  # tubelet embedding
        + (len(MODALITIES) + len(AXES)) * d  # modality and axis tables
        + model.depth * per_block
        + 2 * d  # final norm
    )
    assert n_params(model) == expected


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
    # One clip per modality and axis, so every row of both tables is used.
    out = model(
        torch.rand(2, *TINY_INPUT[1:]), modality=torch.tensor([0, 1]), axis=torch.tensor([1, 0])
    )
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    for table in (model.modality_embed, model.axis_embed):
        assert (table.grad.abs().sum(dim=1) > 0).all()  # each row learns from its own clips
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
    indices = [0, -1] if model.depth < 3 else [2, 0, -1]
    with torch.no_grad():
        got = model.forward_intermediates(x, indices)
        tokens = model.embed(x)
        for got_i, i in zip(got, indices):
            torch.testing.assert_close(got_i, manual_blocks(model, tokens, i % model.depth))
        last_normed = model.forward_intermediates(x, [model.depth - 1], norm=True)[0]
        torch.testing.assert_close(last_normed, model.forward_features(x))
    assert len(got) == len(indices)
    assert all(g.shape == (1, 4, model.embed_dim) for g in got)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_see_modality_and_axis(models, name) -> None:
    model = models[name]
    x, modality, axis = torch.rand(2, *TINY_INPUT[1:]), torch.tensor([1, 0]), torch.tensor([1, 1])
    with torch.no_grad():
        last = model.forward_intermediates(x, [-1], norm=True, modality=modality, axis=axis)[0]
        torch.testing.assert_close(last, model.forward_features(x, modality=modality, axis=axis))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("shape", "grid"),
    [
        ((1, 1, 6, 48, 80), (3, 3, 5)),
        ((1, 1, 10, 80, 112), (5, 5, 7)),  # odd number of tubelets, 5 x 7 patches
        ((1, 1, 2, 16, 16), (1, 1, 1)),  # a single token
    ],
)
def test_odd_grid(models, name, shape, grid) -> None:
    model = models[name]
    x = torch.rand(shape)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_intermediates(x, [0])
    t, h, w = grid
    assert model.grid(shape) == grid
    assert out.shape == (1, t * h * w, model.embed_dim)
    assert feats[0].shape == out.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("shape", "named"),
    [
        ((1, 1, 3, 32, 32), "T=3"),  # 3 frames at tubelet 2
        ((1, 1, 2, 40, 32), "H=40"),
        ((1, 1, 2, 32, 24), "W=24"),
    ],
)
def test_indivisible_input_raises(models, name, shape, named) -> None:
    with pytest.raises(ValueError, match=r"tubelet.*patch_size|patch_size.*tubelet") as info:
        models[name](torch.rand(shape))
    assert named in str(info.value)


def test_indivisible_input_error_suggests_valid_sizes(small) -> None:
    with pytest.raises(ValueError) as info:
        small(torch.rand(1, 1, 3, 20, 4))  # tubelet 2, patch 8
    message = str(info.value)
    assert "T=2 or 4" in message and "H=16 or 24" in message and "W=8" in message
    with pytest.raises(ValueError, match=r"T=4, H=16 or 24, W=16\b"):
        small(torch.rand(1, 1, 4, 20, 16))  # valid sizes are kept as they are
    small(torch.rand(1, 1, 2, 16, 8))  # the first suggestion really is valid


def test_wrong_channel_count_raises(small) -> None:
    with pytest.raises(ValueError, match="channel"):
        small(torch.rand(1, 3, 2, 16, 16))


# --- modality and axis embeddings --------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_modality_and_axis_change_the_output(models, name) -> None:
    model = models[name]
    saved = [model.modality_embed.detach().clone(), model.axis_embed.detach().clone()]
    x = torch.rand(1, *TINY_INPUT[1:]).expand(2, -1, -1, -1, -1)  # the same clip twice
    try:
        trained_context(model)
        with torch.no_grad():
            by_modality = model(x, modality=torch.tensor([0, 1]))
            by_axis = model(x, axis=torch.tensor([0, 1]))
            default = model(x[:1])
            named = model(x, modality=["cine", "lge"], axis=["depth", "time"])
            indexed = model(x, modality=torch.tensor([0, 1]), axis=torch.tensor([1, 0]))
        assert (by_modality[0] - by_modality[1]).abs().max() > 1e-3
        assert (by_axis[0] - by_axis[1]).abs().max() > 1e-3
        torch.testing.assert_close(default[0], by_modality[0])  # None = cine, time
        torch.testing.assert_close(default[0], by_axis[0])
        torch.testing.assert_close(named, indexed)
    finally:
        with torch.no_grad():
            model.modality_embed.copy_(saved[0])
            model.axis_embed.copy_(saved[1])


def test_context_embeddings_start_at_zero_so_a_new_model_ignores_them(small) -> None:
    assert not small.modality_embed.any() and not small.axis_embed.any()
    assert small.modality_embed.shape == (len(MODALITIES), small.embed_dim)
    assert small.axis_embed.shape == (len(AXES), small.embed_dim)
    x = torch.rand(2, 1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            small(x, modality=["lge", "lge"], axis=["depth", "time"]), small(x)
        )


def test_modality_and_axis_names() -> None:
    assert MODALITIES[:2] == ("cine", "lge") and AXES == ("time", "depth")
    assert modality_index(["cine", "lge", "LGE"]).tolist() == [0, 1, 1]
    assert modality_index(["lge"]).dtype == torch.long
    assert axis_index(["time", "depth"]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="'t1map'") as info:
        modality_index(["cine", "t1map"])
    assert "cine" in str(info.value) and "lge" in str(info.value)
    with pytest.raises(ValueError, match="'slice'"):
        axis_index(["slice"])
    with pytest.raises(TypeError, match="single string"):
        modality_index("cine")


@pytest.mark.parametrize(
    "bad", [torch.tensor([0]), torch.tensor([0.0, 1.0]), torch.zeros(2, 1, dtype=torch.long)]
)
def test_modality_of_the_wrong_shape_or_type_raises(small, bad) -> None:
    with pytest.raises(ValueError, match=r"modality must be a LongTensor of shape \(2,\)"):
        small(torch.rand(2, 1, 2, 16, 16), modality=bad)


def test_modality_and_axis_survive_token_dropping(small) -> None:
    trained_context(small)
    x, keep = torch.rand(1, 1, 2, 32, 32), torch.tensor([[0, 5, 9]])
    with torch.no_grad():
        subset = small.forward_features(x, keep=keep, modality=torch.tensor([1]))
        tokens = small.embed(x, modality=torch.tensor([1]))[:, keep[0]]
        torch.testing.assert_close(
            subset, small.norm(manual_blocks(small, tokens, small.depth - 1))
        )


# --- checkpoints from before the modality/axis embeddings --------------------------------------


def old_state(model: CardiacViT) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k not in vit_module.CONTEXT_EMBEDDINGS}


def test_state_dict_without_context_embeddings_loads_as_zeros() -> None:
    torch.manual_seed(0)
    before = create_backbone("cmr_vit_test", patch_size=8).eval()  # zero tables: the old model
    state = old_state(before)
    after = create_backbone("cmr_vit_test", patch_size=8).eval()
    trained_context(after)
    with pytest.warns(UserWarning, match="modality_embed"):
        after.load_state_dict(state, strict=True)
    assert not after.modality_embed.any() and not after.axis_embed.any()
    x = torch.rand(2, 1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(after(x), before(x))
    assert set(state) == set(old_state(after))  # the caller's dict was not filled in


def test_old_lightning_checkpoint_loads_through_load_backbone_weights(tmp_path) -> None:
    torch.manual_seed(0)
    source = create_backbone("cmr_vit_test", patch_size=8).eval()
    path = tmp_path / "old.ckpt"
    state = {f"objective.encoder.{k}": v for k, v in old_state(source).items()}  # once migrated
    torch.save({"state_dict": {**state, "objective.mask_token": torch.zeros(1, 1, 8)}}, path)
    target = create_backbone("cmr_vit_test", patch_size=8).eval()
    with pytest.warns(UserWarning, match="axis_embed"):
        load_backbone_weights(target, path)
    x = torch.rand(1, 1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


def test_other_missing_keys_still_fail_strictly(tmp_path) -> None:
    source = create_backbone("cmr_vit_test", patch_size=8)
    state = {k: v for k, v in source.state_dict().items() if k != "norm.weight"}
    with pytest.raises(RuntimeError, match=r"norm\.weight"):
        create_backbone("cmr_vit_test", patch_size=8).load_state_dict(state, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a current checkpoint loads without the old-format warning
        create_backbone("cmr_vit_test", patch_size=8).load_state_dict(source.state_dict())


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


# --- torch.compile -----------------------------------------------------------------------------


def counting_backend(calls: list[int]):
    """A torch.compile backend that runs the captured graph eagerly and counts its calls."""

    def backend(graph_module, example_inputs):
        def run(*args):
            calls.append(1)
            return graph_module.forward(*args)

        return run

    return backend


def test_compile_blocks_routes_every_block_through_compiled_code(small) -> None:
    x, w = torch.rand(2, 1, 2, 16, 24), torch.randn(2, 6, small.embed_dim)
    eager_out = small(x)
    (eager_out * w).sum().backward()
    eager_grads = {n: p.grad.clone() for n, p in small.named_parameters()}
    small.zero_grad(set_to_none=True)
    keys = list(small.state_dict())

    calls: list[int] = []
    torch._dynamo.reset()
    assert small.compile_blocks(backend=counting_backend(calls)) is small
    out = small(x)
    (out * w).sum().backward()
    assert len(calls) == small.depth  # one compiled graph call per block, nothing left eager
    torch.testing.assert_close(out, eager_out)
    for name, p in small.named_parameters():
        torch.testing.assert_close(p.grad, eager_grads[name], msg=name)
    assert list(small.state_dict()) == keys  # checkpoints of compiled models load anywhere


def test_compile_flag_compiles_at_construction(monkeypatch) -> None:
    compiled: list[dict] = []
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, **kw: compiled.append(kw), raising=True
    )
    model = create_backbone("cmr_vit_test", compile=True)
    assert len(compiled) == model.depth
    assert "compile" not in model.model_args  # a runtime switch, not part of the architecture
    create_backbone("cmr_vit_test")
    assert len(compiled) == model.depth  # off by default


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")),
    reason="torch.compile's default (inductor) backend needs a C++ compiler on CPU",
)
def test_inductor_compiled_blocks_match_eager() -> None:
    # ~30 s on 2 CPU cores when the inductor cache is cold, hence slow.
    torch.manual_seed(0)
    model = create_backbone("cmr_vit_test", depth=2, patch_size=8).eval()
    trained_context(model)
    x, modality = torch.rand(2, 1, 2, 16, 24), torch.tensor([0, 1])
    with torch.no_grad():
        eager = model(x, modality=modality)
        torch._dynamo.reset()
        compiled = model.compile_blocks()(x, modality=modality)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)


def test_tables_from_before_a_row_was_appended_get_zero_rows() -> None:
    # A checkpoint written when MODALITIES had only "cine" (rows are append-only).
    torch.manual_seed(0)
    source = create_backbone("cmr_vit_test", patch_size=8).eval()
    trained_context(source)
    state = source.state_dict()
    state["modality_embed"] = state["modality_embed"][:1].clone()
    target = create_backbone("cmr_vit_test", patch_size=8).eval()
    target.load_state_dict(state, strict=True)
    torch.testing.assert_close(target.modality_embed[0], source.modality_embed[0])
    assert not target.modality_embed[1:].any()
    x = torch.rand(1, 1, 2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(target(x, modality=["cine"]), source(x, modality=["cine"]))
    state["axis_embed"] = torch.zeros(2, 16)  # a different width is still an error
    with pytest.raises(RuntimeError, match="axis_embed"):
        target.load_state_dict(state, strict=True)


def test_position_tables_made_while_tracing_do_not_leak_into_later_calls() -> None:
    """torch.export runs the model on fake tensors; a table made then must not be the one a
    later, ordinary call gets (the cache holds NumPy, each call makes a new tensor)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        traced = sincos_3d(32, (2, 3, 3))
    real = sincos_3d(32, (2, 3, 3))
    assert type(traced) is not torch.Tensor and type(real) is torch.Tensor
    assert real.numpy().shape == (18, 32)  # a fake tensor would refuse .numpy()
    real.zero_()  # a caller's change never reaches the next caller
    assert sincos_3d(32, (2, 3, 3)).abs().sum() > 0


@pytest.mark.parametrize(
    ("channels", "tubelet", "patch", "shape"),
    [(1, 2, 16, (2, 4, 32, 48)), (1, 1, 8, (3, 2, 16, 16)), (2, 2, 4, (1, 6, 12, 8))],
)
def test_tubelet_tokens_are_the_strided_convolution(channels, tubelet, patch, shape) -> None:
    # The embedding is one matmul over unfolded tubelets: the same tokens, in the same t-major
    # order, and the same gradients as the Conv3d it replaces (same weights, same state dict).
    batch, t, h, w = shape
    torch.manual_seed(0)
    kernel = (tubelet, patch, patch)
    conv = torch.nn.Conv3d(channels, 24, kernel_size=kernel, stride=kernel).double()
    x = torch.randn(batch, channels, t, h, w, dtype=torch.float64, requires_grad=True)
    reference = conv(x).flatten(2).transpose(1, 2)
    tokens = tubelet_tokens(x, conv)
    assert tokens.shape == (batch, (t // tubelet) * (h // patch) * (w // patch), 24)
    torch.testing.assert_close(tokens, reference)
    grad = torch.randn_like(tokens)
    expected = torch.autograd.grad(reference, (x, conv.weight, conv.bias), grad)
    got = torch.autograd.grad(tubelet_tokens(x, conv), (x, conv.weight, conv.bias), grad)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
