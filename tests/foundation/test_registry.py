"""create_backbone(name, pretrained=...): the one way weights get into a backbone.

A hub folder and a Lightning checkpoint both give back identical outputs; every way a source can
be wrong (weights or config.json missing, weights truncated or changed, config.json describing
other weights, weights for another architecture, an extra or a missing key) is refused with a
message that names the file and the problem."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from foundation import CardiacViT, create_backbone, from_pretrained, save_pretrained
from foundation.architecture import BackboneWeights
from foundation.checkpoint import find_backbone_prefix
from foundation.hub import CONFIG_NAME, WEIGHTS_NAME
from foundation.names import SHA256_KEY
from foundation.weights import load_backbone_weights, read_backbone_weights

ARGS = {"patch_size": 8, "tubelet": 2}  # what every source here was trained with
PREPROCESS = {"spacing": 1.5, "size": 32, "frames": 4, "percentiles": (0.5, 99.5),
              "modalities": ["cine"]}  # fmt: skip
HPARAMS = {"backbone": "cmr_vit_test", "backbone_kwargs": ARGS}  # PretrainSystem's layout


def trained() -> CardiacViT:
    """A cmr_vit_test whose every weight, modality and axis rows included, is non-trivial."""
    torch.manual_seed(0)
    model = create_backbone("cmr_vit_test", **ARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def outputs(model: CardiacViT) -> torch.Tensor:
    x = torch.rand(2, 1, 4, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x, modality=torch.tensor([0, 1]), axis=torch.tensor([1, 0]))


@pytest.fixture
def source() -> CardiacViT:
    return trained()


@pytest.fixture
def folder(tmp_path: Path, source: CardiacViT) -> Path:
    return save_pretrained(source, tmp_path / "hub", preprocess=PREPROCESS)


def save_checkpoint(path: Path, state: dict, hparams: dict | None = None) -> Path:
    torch.save({"state_dict": state, "hyper_parameters": hparams or HPARAMS}, path)
    return path


def prefixed(model: CardiacViT, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in model.state_dict().items()}


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / CONFIG_NAME).read_text())
    for key, value in changes.items():
        if key in config["model_args"]:
            config["model_args"][key] = value
        elif value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(config))


def rewrite_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """New weights with their sha256 recorded, so only what else is wrong with them shows."""
    save_file(state, str(folder / WEIGHTS_NAME))
    edit_config(
        folder, **{SHA256_KEY: hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()}
    )


def load(pretrained, **kwargs) -> CardiacViT:
    return create_backbone("cmr_vit_test", pretrained=pretrained, **{**ARGS, **kwargs})


# --- round trips -------------------------------------------------------------------------------


def test_hub_folder_round_trip_gives_identical_outputs(source, folder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a folder cmrfm writes now loads without a warning
        loaded = load(folder)
    assert loaded.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)
    torch.testing.assert_close(outputs(from_pretrained(folder)), outputs(source), rtol=0, atol=0)


@pytest.mark.parametrize(
    "prefix",
    [
        "objective.encoder.",  # PretrainSystem
        "model.backbone.",  # a fine-tuning checkpoint
        "_forward_module.objective.encoder.",  # DeepSpeed ZeRO shards rebuilt to fp32
    ],
)
def test_lightning_checkpoint_gives_identical_outputs(source, tmp_path, prefix) -> None:
    state = {**prefixed(source, prefix), "objective.decoder_pred.weight": torch.ones(3)}
    path = save_checkpoint(tmp_path / "pretrain.ckpt", state)
    loaded = load(path)
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)
    loaded = load(str(path))  # paths as YAML gives them
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)


def test_weights_read_once_load_like_their_source(source, folder) -> None:
    weights = read_backbone_weights(folder)
    assert isinstance(weights, BackboneWeights) and weights.architecture == "cmr_vit_test"
    torch.testing.assert_close(outputs(load(weights)), outputs(source), rtol=0, atol=0)


def test_the_known_prefix_wins_over_a_second_complete_backbone(source) -> None:
    state = {**prefixed(trained(), "objective.teacher."), **prefixed(source, "objective.encoder.")}
    assert find_backbone_prefix(state, Path("x.ckpt")) == "objective.encoder."
    odd = {**prefixed(source, "teacher.trunk."), **prefixed(source, "student.trunk.")}
    with pytest.raises(ValueError, match=r"x\.ckpt: several backbones fit.*student\.trunk\."):
        find_backbone_prefix(odd, Path("x.ckpt"))


# --- hub folders that are not whole ------------------------------------------------------------


def test_missing_weights_are_named(folder) -> None:
    (folder / WEIGHTS_NAME).unlink()
    torch.save({}, folder / "pytorch_model.bin")  # a pickle is never a fallback
    with pytest.raises(FileNotFoundError, match=r"hub/model\.safetensors: missing"):
        load(folder)


def test_missing_config_is_named(folder) -> None:
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"hub/config\.json: missing"):
        load(folder)


def test_a_folder_that_is_no_hub_folder_says_what_it_lacks(folder) -> None:
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors or config\.json in it"):
        load(folder.parent)


@pytest.mark.parametrize("keep", [5, 200, -16])  # inside the length, the header, the tensors
def test_truncated_weights_are_named(folder, keep) -> None:
    path = folder / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(ValueError, match=r"hub/model\.safetensors: truncated: \d+ bytes"):
        load(folder)
    with pytest.raises(ValueError, match="truncated"):
        from_pretrained(folder)


def test_changed_weights_fail_the_sha256_naming_both_hashes(folder) -> None:
    path = folder / WEIGHTS_NAME
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor: the file is still whole
    path.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ValueError, match=r"hub/model\.safetensors: sha256 mismatch") as info:
        load(folder)
    assert expected in str(info.value) and actual in str(info.value)
    assert "config.json" in str(info.value)


def test_a_wrong_recorded_sha256_is_refused(folder) -> None:
    edit_config(folder, **{SHA256_KEY: "0" * 64})
    with pytest.raises(ValueError, match=r"model\.safetensors: sha256 mismatch.*0{64}"):
        from_pretrained(folder)


def test_a_folder_from_before_the_sha256_loads_with_a_warning(source, folder) -> None:
    edit_config(folder, **{SHA256_KEY: None})
    with pytest.warns(UserWarning, match=r"config\.json: records no weights_sha256"):
        loaded = load(folder)
    torch.testing.assert_close(outputs(loaded), outputs(source), rtol=0, atol=0)


# --- config.json, the weights and the architecture asked for must agree ------------------------


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"patch_size": 4}, r"holds weights with patch_size 8, but config\.json says patch_size 4"),
        ({"embed_dim": 64}, r"holds weights with embed_dim 32, but config\.json says embed_dim 64"),
        ({"depth": 3}, r"holds weights with depth 4, but config\.json says depth 3"),
        ({"tubelet": 1}, r"holds weights with tubelet 2, but config\.json says tubelet 1"),
    ],
)
def test_config_that_does_not_describe_the_weights_is_refused(folder, edit, message) -> None:
    edit_config(folder, **edit)
    with pytest.raises(ValueError, match=r"hub/model\.safetensors: " + message):
        load(folder)  # the backbone asked for is the one the weights fit: config.json is wrong
    with pytest.raises(ValueError, match=message):
        from_pretrained(folder)


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        ({"patch_size": 16}, r"patch_size 8, but cmr_vit_test is asked for with patch_size 16"),
        ({"tubelet": 1}, r"tubelet 2, but cmr_vit_test is asked for with tubelet 1"),
        ({"depth": 2}, r"depth 4, but cmr_vit_test is asked for with depth 2"),
        ({"num_heads": 4}, r"num_heads 2, but cmr_vit_test is asked for with num_heads 4"),
    ],
)
@pytest.mark.parametrize("kind", ["hub folder", "checkpoint"])
def test_weights_for_another_architecture_are_refused_naming_both(
    source, folder, tmp_path, kind, asked, message
) -> None:
    if kind == "checkpoint":
        pretrained = save_checkpoint(tmp_path / "run.ckpt", prefixed(source, "objective.encoder."))
        name = r"run\.ckpt"
    else:
        pretrained, name = folder, r"hub/model\.safetensors"
    with pytest.raises(ValueError, match=rf"{name}: the pretrained weights have {message}"):
        load(pretrained, **asked)


def test_another_registered_size_is_refused_naming_its_widths(folder) -> None:
    with pytest.raises(
        ValueError, match=r"embed_dim 32, .*cmr_vit_tiny is asked for with embed_dim 192"
    ):
        create_backbone("cmr_vit_tiny", pretrained=folder, **ARGS)


def test_num_heads_a_checkpoint_implies_by_its_backbone_name_is_checked(source, tmp_path) -> None:
    # num_heads leaves no trace in the shapes: only the registry's defaults for the recorded
    # name tell that these weights were trained with 2 heads.
    path = save_checkpoint(tmp_path / "run.ckpt", prefixed(source, "objective.encoder."))
    with pytest.raises(ValueError, match=r"run\.ckpt: .*num_heads 2, .*num_heads 4"):
        load(path, num_heads=4)


def test_hyper_parameters_that_contradict_the_weights_are_named(source, tmp_path) -> None:
    hparams = {"backbone": "cmr_vit_test", "patch_size": 16}  # a fine-tuning system's flat layout
    path = save_checkpoint(tmp_path / "run.ckpt", prefixed(source, "model.backbone."), hparams)
    with pytest.raises(
        ValueError, match=r"run\.ckpt: the weights under 'model\.backbone\.' have patch_size 8, "
        r"the checkpoint's hyper_parameters say patch_size 16"
    ):  # fmt: skip
        load(path)


# --- strict keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("extra", r"unexpected keys blocks\.0\.attn\.extra"),
        ("missing", r"missing keys norm\.weight"),
    ],
)
def test_hub_weights_with_an_extra_or_a_missing_key_are_refused(folder, change, message) -> None:
    state = load_file(folder / WEIGHTS_NAME)
    if change == "extra":
        state["blocks.0.attn.extra"] = torch.zeros(2)
    else:
        del state["norm.weight"]
    rewrite_weights(folder, state)
    with pytest.raises(ValueError, match=r"hub/model\.safetensors: the weights do not fit "
                       r"cmr_vit_test.*: " + message):  # fmt: skip
        load(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("extra", r"unexpected keys blocks\.1\.mlp\.gate\.weight"),
        ("missing", r"missing keys blocks\.3\.attn\.proj\.bias"),
    ],
)
def test_checkpoint_with_an_extra_or_a_missing_key_is_refused(source, tmp_path, change, message):
    state = prefixed(source, "objective.encoder.")
    if change == "extra":
        state["objective.encoder.blocks.1.mlp.gate.weight"] = torch.zeros(2)
    else:
        del state["objective.encoder.blocks.3.attn.proj.bias"]
    path = save_checkpoint(tmp_path / "run.ckpt", state)
    with pytest.raises(ValueError, match=r"run\.ckpt: the weights under 'objective\.encoder\.' "
                       r"do not fit cmr_vit_test.*: " + message):  # fmt: skip
        load(path)


def test_only_the_legacy_context_tables_may_be_absent(source, tmp_path) -> None:
    state = prefixed(source, "objective.encoder.")  # an old checkpoint, migrated
    del state["objective.encoder.modality_embed"], state["objective.encoder.axis_embed"]
    with pytest.warns(UserWarning, match="before modality/axis"):
        loaded = load(save_checkpoint(tmp_path / "old.ckpt", state))
    assert not loaded.modality_embed.any() and not loaded.axis_embed.any()


# --- other sources -----------------------------------------------------------------------------


def test_a_bare_safetensors_file_asks_for_its_folder(folder) -> None:
    with pytest.raises(ValueError, match=r"model\.safetensors: pass the hub folder"):
        load(folder / WEIGHTS_NAME)


def test_only_a_cardiac_vit_loads(folder) -> None:
    with pytest.raises(TypeError, match="CardiacViT"):
        load_backbone_weights(torch.nn.Linear(2, 2), folder)  # type: ignore[arg-type]


def test_no_pretrained_is_a_fresh_backbone() -> None:
    torch.manual_seed(3)
    a = create_backbone("cmr_vit_test", pretrained=None, **ARGS)
    torch.manual_seed(3)
    b = create_backbone("cmr_vit_test", **ARGS)
    torch.testing.assert_close(outputs(a), outputs(b), rtol=0, atol=0)


def test_a_released_model_loads_by_name_and_none_means_random(tmp_path, monkeypatch) -> None:
    # As timm's pretrained tags: a bare name is a released hub folder (models/NAME); "none" and
    # None start from random weights; a name no release has is named with the ones there are.
    from cmrfm import shipped

    model = trained()
    monkeypatch.setattr(shipped, "MODELS", tmp_path / "models")
    save_pretrained(model, tmp_path / "models" / "cmr-test-cine", preprocess=PREPROCESS)
    named = create_backbone("cmr_vit_test", pretrained="cmr-test-cine", **ARGS)
    assert torch.equal(outputs(named), outputs(model))
    torch.manual_seed(0)
    random = create_backbone("cmr_vit_test", pretrained="none", **ARGS)
    torch.manual_seed(0)
    assert torch.equal(outputs(random), outputs(create_backbone("cmr_vit_test", **ARGS)))
    with pytest.raises(FileNotFoundError, match=r"'cmr-other'.*released: cmr-test-cine"):
        create_backbone("cmr_vit_test", pretrained="cmr-other", **ARGS)
