"""foundation.hub_files: a hub folder's config.json and weights, checked before any weight loads."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers.backbones import edit_config, load, outputs

from foundation import from_pretrained
from foundation.hub import CONFIG_NAME, WEIGHTS_NAME
from foundation.names import SHA256_KEY


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


def test_weights_that_do_not_fit_the_config_raise(saved) -> None:
    _, folder = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["model_args"]["depth"] = 3  # one block fewer than the weights hold
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"model\.safetensors: .*depth 4, but config\.json says depth 3"
    ):
        from_pretrained(folder)


def test_missing_weights_raise(saved) -> None:
    _, folder = saved
    (folder / WEIGHTS_NAME).unlink()
    torch.save({}, folder / "pytorch_model.bin")  # a pickle is never a fallback
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        from_pretrained(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format": "something-else"}, "format"),
        ({"format_version": 99}, "newer"),
        ({"modalities": ["lge", "cine"]}, "embedding rows"),
        ({"architecture": "cmr_vit_gigantic"}, "not registered"),
    ],
)
def test_configs_this_version_cannot_honour_raise(saved, edit, message) -> None:
    _, folder = saved
    config = {**json.loads((folder / CONFIG_NAME).read_text()), **edit}
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        from_pretrained(folder)
