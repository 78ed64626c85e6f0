"""Hub folders: save_pretrained -> from_pretrained round trip, strict safetensors loading, repo
ids through snapshot_download, config.json contents and the model card."""

from __future__ import annotations

import hashlib
import json

import huggingface_hub
import pytest
import torch
from helpers.hub_folder import DATA, PREPROCESS, trained_backbone
from huggingface_hub import ModelCard

from foundation import CardiacViT, create_backbone, from_pretrained, save_pretrained
from foundation.datasets import DATASETS, LICENCE_NAME, SYNTHETIC
from foundation.hub import CARD_NAME, CONFIG_NAME, HUB_FILES, WEIGHTS_NAME, check_hub_folder
from foundation.names import SHA256_KEY


def outputs(model: CardiacViT) -> torch.Tensor:
    x = torch.rand(2, 1, 4, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x, modality=torch.tensor([0, 1]), axis=torch.tensor([1, 0]))


# --- round trip --------------------------------------------------------------------------------


def test_round_trip_gives_identical_outputs(saved) -> None:
    model, folder = saved
    loaded = from_pretrained(folder)
    assert not loaded.training  # ready for inference, as from_pretrained conventionally returns
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(outputs(loaded), outputs(model), rtol=0, atol=0)


def test_folder_holds_the_hub_files_under_their_standard_names(saved) -> None:
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == sorted([*HUB_FILES, LICENCE_NAME])
    assert (WEIGHTS_NAME, CONFIG_NAME) == ("model.safetensors", "config.json")  # HF / timm names


def test_config_records_architecture_and_preprocessing(saved) -> None:
    model, folder = saved
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["architecture"] == "cmr_vit_test"
    assert config["model_args"] == model.model_args
    assert config["model_args"]["patch_size"] == 8 and config["model_args"]["tubelet"] == 2
    assert config["modalities"] == ["cine", "lge"] and config["axes"] == ["time", "depth"]
    pre = config["preprocess"]
    assert pre["spacing"] == 1.5 and pre["size"] == 32 and pre["frames"] == 4
    assert pre["percentiles"] == [0.5, 99.5]
    assert pre["modalities"] == ["cine", "lge"]
    assert pre["axes"] == ["time"] and pre["value_range"] == [0.0, 1.0]  # defaults said aloud
    assert config["cmrfm_version"]
    assert from_pretrained(folder).hub_config == config


def test_config_and_card_record_the_weights_sha256(saved) -> None:
    _, folder = saved
    digest = hashlib.sha256((folder / WEIGHTS_NAME).read_bytes()).hexdigest()
    assert json.loads((folder / CONFIG_NAME).read_text())[SHA256_KEY] == digest
    assert f"`{digest}`" in (folder / CARD_NAME).read_text()


def test_model_built_without_the_registry_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    model = CardiacViT(embed_dim=24, depth=2, num_heads=3, patch_size=4, tubelet=1).eval()
    save_pretrained(model, tmp_path, preprocess=PREPROCESS)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["architecture"] is None
    loaded = from_pretrained(tmp_path)
    x = torch.rand(1, 1, 3, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_overrides_reach_the_constructor(saved) -> None:
    _, folder = saved
    loaded = from_pretrained(folder, drop_path_rate=0.2)
    assert loaded.model_args["drop_path_rate"] == 0.2
    assert loaded.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


# --- loading is strict and never unpickles -----------------------------------------------------


def test_loading_never_calls_torch_load(saved, monkeypatch) -> None:
    model, folder = saved

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    torch.testing.assert_close(outputs(from_pretrained(folder)), outputs(model))


@pytest.mark.parametrize(
    ("preprocess", "message"),
    [
        ({k: v for k, v in PREPROCESS.items() if k != "frames"}, "frames"),
        ({**PREPROCESS, "modalities": ["cine", "t2"]}, "t2"),
        ({**PREPROCESS, "percentiles": [1.0]}, "percentiles"),
    ],
)
def test_incomplete_preprocessing_is_refused(tmp_path, preprocess, message) -> None:
    with pytest.raises(ValueError, match=message):
        save_pretrained(trained_backbone(), tmp_path, preprocess=preprocess)
    assert not (tmp_path / WEIGHTS_NAME).exists()  # nothing half-written


# --- repo ids ----------------------------------------------------------------------------------


def test_repo_id_is_fetched_with_snapshot_download(saved, monkeypatch) -> None:
    model, folder = saved
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = from_pretrained("someone/cmr-vit-test", revision="v1", local_files_only=True)
    torch.testing.assert_close(outputs(loaded), outputs(model))
    assert len(calls) == 1
    assert calls[0]["repo_id"] == "someone/cmr-vit-test"
    assert calls[0]["revision"] == "v1" and calls[0]["local_files_only"] is True
    assert set(HUB_FILES) <= set(calls[0]["allow_patterns"])
    assert not any(p.endswith((".bin", ".pt", ".ckpt")) for p in calls[0]["allow_patterns"])


def test_unreachable_repo_raises_naming_it(monkeypatch) -> None:
    def offline(**kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match=r"someone/missing.*ConnectionError"):
        from_pretrained("someone/missing")


@pytest.mark.parametrize("name", ["./not/here", "/abs/not/here", "a/b/c"])
def test_missing_local_folder_is_not_sent_to_the_hub(name, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub, "snapshot_download", pytest.fail)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        from_pretrained(name)


# --- model card --------------------------------------------------------------------------------


def test_card_front_matter_parses_with_the_hub_library(saved) -> None:
    _, folder = saved
    card = ModelCard((folder / CARD_NAME).read_text())
    meta = card.data.to_dict()
    assert meta["license"] == "other"
    assert meta["license_link"] == LICENCE_NAME and "non-commercial" in meta["license_name"]
    assert meta["datasets"] == ["acdc", "emidec"]
    assert {"cardiac-mri", "masked-autoencoder", "contrastive-learning"} <= set(meta["tags"])
    assert meta["library_name"] == "cmrfm"
    assert "model-index" not in meta  # no few-shot results were given


def test_card_names_its_data_training_metrics_licences_and_use(saved) -> None:
    _, folder = saved
    text = (folder / CARD_NAME).read_text()
    for manifest in DATA["manifests"]:
        assert manifest["sha256"] in text
    assert "mae_contrastive" in text and "1234" in text and "0.81" in text
    for name in DATA["datasets"]:
        assert DATASETS[name].citation in text
    assert DATASETS["Sunnybrook"].citation not in text  # only the data it saw
    assert "Not for clinical use" in text
    assert "## Limitations" in text and '"embed_dim": 32' not in text  # a table, not a dump
    assert "| embed_dim | 32 |" in text
    licence = (folder / LICENCE_NAME).read_text()
    assert "non-commercial research" in licence and DATASETS["ACDC"].citation in licence


def test_card_says_what_is_missing(tmp_path) -> None:
    save_pretrained(trained_backbone(), tmp_path, preprocess={**PREPROCESS, "modalities": ["cine"]})
    text = (tmp_path / CARD_NAME).read_text()
    assert "No data manifest was recorded" in text and "None reported" in text
    assert "Unidentified data" in text and "unrecorded objective" in text
    assert "Never saw lge" in text  # its modality row is untrained


def test_synthetic_only_weights_keep_the_project_licence(tmp_path) -> None:
    save_pretrained(trained_backbone(), tmp_path, preprocess=PREPROCESS, data=DATA)
    assert (tmp_path / LICENCE_NAME).exists()
    save_pretrained(
        trained_backbone(), tmp_path, preprocess=PREPROCESS, data={"datasets": [SYNTHETIC]}
    )
    meta = ModelCard((tmp_path / CARD_NAME).read_text()).data.to_dict()
    assert meta["license"] == "apache-2.0" and "license_link" not in meta
    assert not (tmp_path / LICENCE_NAME).exists()  # the earlier save's licence note is gone


def test_check_hub_folder_lists_only_hub_files(saved) -> None:
    _, folder = saved
    (folder / "last.ckpt").write_bytes(b"not for upload")
    assert sorted(p.name for p in check_hub_folder(folder)) == sorted([*HUB_FILES, LICENCE_NAME])


def test_a_hub_folder_is_a_starting_point_for_fine_tuning(saved) -> None:
    model, folder = saved
    # what `cmrfm finetune --pretrained FOLDER` calls (finetune.system.build_backbone)
    fresh = create_backbone("cmr_vit_test", pretrained=folder, patch_size=8, tubelet=2)
    torch.testing.assert_close(outputs(fresh.eval()), outputs(model), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        create_backbone("cmr_vit_test", pretrained=folder.parent, patch_size=8, tubelet=2)
