"""Fine-tuned model folders: save/load gives the same model, config.json says how to prepare
inputs, the card carries the data's terms, bad folders are refused by name, and `cmrfm export`
turns a SegFinetuner Lightning checkpoint into such a folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from huggingface_hub import ModelCard

from cmrfm.cli import main
from finetune.data import FewShotSegData
from finetune.package import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT,
    WEIGHTS_NAME,
    load_finetuned,
    save_finetuned,
)
from finetune.system import SegFinetuner
from foundation.datasets import LICENCE_NAME

PREPROCESS = {"spacing": 1.5, "size": 32, "percentiles": [0.5, 99.5], "orientation": "canonical",
              "crop": "centre"}  # fmt: skip
TINY = {"backbone": "cmr_vit_test", "patch_size": 8, "tubelet": 2, "feature_size": 8}


def tiny_model(arch: str = "unetr") -> SegFinetuner:
    torch.manual_seed(0)
    if arch == "unet":
        return SegFinetuner(arch="unet").eval()
    return SegFinetuner(**TINY).eval()


@pytest.mark.parametrize("arch", ["unetr", "unet"])
def test_save_load_roundtrip_gives_identical_outputs(tmp_path: Path, arch: str) -> None:
    model = tiny_model(arch)
    save_finetuned(model, tmp_path / "pkg", preprocess=PREPROCESS, frames=2, datasets=["phantom"],
                   training={"labels": 4, "seed": 0}, metrics={"dice_mean": 0.5})  # fmt: skip
    loaded, config = load_finetuned(tmp_path / "pkg")
    assert not loaded.training
    clip = torch.rand(2, 1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(clip), model(clip))
    assert config["format"] == FORMAT and config["task"] == "seg"
    assert config["model"]["class_path"] == "finetune.system.SegFinetuner"
    assert config["model"]["init_args"]["arch"] == arch
    assert config["model"]["init_args"]["pretrained"] is None
    assert config["preprocess"] == PREPROCESS
    assert config["frames"] == 2
    assert config["classes"] == ["background", "lv", "myo", "rv"]


def test_pretrained_path_is_not_kept(tmp_path: Path) -> None:
    model = tiny_model()
    # A package must not point at the training machine's files: its own weights replace them.
    args = {**dict(model.hparams), "pretrained": "/somewhere/pretrain.ckpt"}
    save_finetuned(model, tmp_path, preprocess=PREPROCESS, frames=2, init_args=args)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["model"]["init_args"]["pretrained"] is None
    load_finetuned(tmp_path)  # builds without the pretraining file


def test_card_names_data_terms(tmp_path: Path) -> None:
    model = tiny_model()
    save_finetuned(model, tmp_path / "acdc", preprocess=PREPROCESS, frames=2, datasets=["acdc"])
    card = (tmp_path / "acdc" / CARD_NAME).read_text()
    front = card.split("\n---\n", 1)[0]
    assert "license: other" in front and "acdc" in front
    assert "Bernard" in card and "non-commercial" in card and "Not for clinical use" in card
    assert "non-commercial" in (tmp_path / "acdc" / LICENCE_NAME).read_text()

    save_finetuned(model, tmp_path / "ph", preprocess=PREPROCESS, frames=2, datasets=["phantom"])
    assert "license: apache-2.0" in (tmp_path / "ph" / CARD_NAME).read_text()
    assert not (tmp_path / "ph" / LICENCE_NAME).exists()


def test_bad_folders_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere: model folder not found"):
        load_finetuned(tmp_path / "nowhere")
    save_finetuned(tiny_model(), tmp_path / "pkg", preprocess=PREPROCESS, frames=2)
    config = json.loads((tmp_path / "pkg" / CONFIG_NAME).read_text())

    typo = json.loads(json.dumps(config))
    typo["model"]["init_args"]["feature_sise"] = 8  # named, not a TypeError of the constructor
    (tmp_path / "pkg" / CONFIG_NAME).write_text(json.dumps(typo))
    with pytest.raises(ValueError, match=r"SegFinetuner takes no argument\(s\) \['feature_sise'\]"):
        load_finetuned(tmp_path / "pkg")

    config["model"]["init_args"]["num_classes"] = 6  # weights of a 4-class head
    (tmp_path / "pkg" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{WEIGHTS_NAME}: weights do not fit"):
        load_finetuned(tmp_path / "pkg")

    (tmp_path / "pkg" / CONFIG_NAME).write_text(json.dumps({**config, "format": "cmrfm-backbone"}))
    with pytest.raises(ValueError, match="backbone folder"):
        load_finetuned(tmp_path / "pkg")

    (tmp_path / "pkg" / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=f"pkg: not a fine-tuned model folder, missing {WEIGHTS_NAME}"):  # fmt: skip
        load_finetuned(tmp_path / "pkg")


def test_bad_preprocess_is_refused_when_saving(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spacing"):
        save_finetuned(tiny_model(), tmp_path, preprocess={**PREPROCESS, "spacing": 0}, frames=2)


def test_export_turns_a_finetuning_checkpoint_into_a_package(tmp_path, make_phantom_shards, capsys):
    shards = make_phantom_shards(3, 2)
    torch.manual_seed(0)
    module = SegFinetuner(**TINY, warmup_steps=1)
    data = FewShotSegData(str(shards), labels=2, frames=2, batch_size=2, epoch_length=4)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(module, datamodule=data)
    ckpt = tmp_path / "seg.ckpt"
    trainer.save_checkpoint(ckpt)

    main(["export", str(ckpt), str(tmp_path / "pkg")])
    assert "SegFinetuner" in capsys.readouterr().out
    model, config = load_finetuned(tmp_path / "pkg")
    manifest = json.loads((shards / "manifest.json").read_text())
    assert config["preprocess"] == {
        k: manifest["preprocess"][k] for k in ("spacing", "size", "percentiles", "orientation", "crop")
    }  # fmt: skip
    assert config["frames"] == 2
    clip = torch.rand(1, 1, 2, 48, 48)
    module.eval()
    with torch.no_grad():
        assert torch.equal(model(clip), module(clip))
    card = (tmp_path / "pkg" / CARD_NAME).read_text()
    assert "phantom" in card and "labelled_subjects" in card


def test_the_package_records_the_weights_it_started_from(tmp_path: Path) -> None:
    """Lineage: a hub folder by its recorded weights hash, a checkpoint file by its own hash,
    from scratch as None; the card says which."""
    from foundation.hub import save_pretrained
    from foundation.registry import create_backbone

    small = {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    pre = {"spacing": 1.5, "size": 32, "frames": 2, "percentiles": [0.5, 99.5],
           "modalities": ["cine"]}  # fmt: skip
    hub = save_pretrained(create_backbone("cmr_unet_small", **small), tmp_path / "hub",
                          preprocess=pre)  # fmt: skip
    model = SegFinetuner(backbone="cmr_unet_small", arch="dense", pretrained=str(hub),
                         backbone_kwargs=small)  # fmt: skip
    save_finetuned(model, tmp_path / "a", preprocess=PREPROCESS, frames=2)
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    recorded = json.loads((hub / CONFIG_NAME).read_text())["weights_sha256"]
    assert config["base_model"] == {"source": str(hub), "architecture": "cmr_unet_small",
                                    "sha256": recorded, "kind": "hub folder"}  # fmt: skip
    assert config["model"]["init_args"]["pretrained"] is None
    card = (tmp_path / "a" / "README.md").read_text()
    assert recorded in card
    meta = ModelCard(card).data.to_dict()  # the Hub's lineage field: the hub folder, by name
    assert meta["base_model"] == "hub" and meta["library_name"] == "cmrfm"

    ckpt = tmp_path / "pre.ckpt"
    ckpt.write_bytes(b"checkpoint bytes")
    args = {**dict(model.hparams), "pretrained": str(ckpt)}
    save_finetuned(model, tmp_path / "b", preprocess=PREPROCESS, frames=2, init_args=args)
    base = json.loads((tmp_path / "b" / CONFIG_NAME).read_text())["base_model"]
    assert base["sha256"] == hashlib.sha256(b"checkpoint bytes").hexdigest()
    assert "base_model" not in ModelCard((tmp_path / "b" / "README.md").read_text()).data.to_dict()

    save_finetuned(tiny_model("unet"), tmp_path / "c", preprocess=PREPROCESS, frames=2)
    assert json.loads((tmp_path / "c" / CONFIG_NAME).read_text())["base_model"] is None
    assert "from scratch" in (tmp_path / "c" / "README.md").read_text()
