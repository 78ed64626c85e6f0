"""The whole chain at tiny size: phantom -> shards -> MAE -> few-shot fine-tuning -> report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import DATA

from cmrfm.demo import run_demo
from data_shards.writer import read_manifest, verify_manifest
from foundation.checkpoint import read_checkpoint
from foundation.released import model_path
from foundation.weights import backbone_state_dict

SHARED_ACDC = DATA / "acdc" / "training"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quick=True, labels=2, seed=0)


def test_chain_writes_verified_shards_and_a_report(demo: tuple[Path, dict]) -> None:
    out, report = demo
    assert verify_manifest(out / "shards") == []
    manifest = read_manifest(out / "shards")
    test_keys = set(manifest["splits"]["test"])
    assert {r["subject"] for r in report["subjects"]} == test_keys
    summary = report["summary"]
    for key in ("dice_lv", "dice_myo", "dice_rv", "dice_mean"):
        assert 0.0 <= summary[key] <= 1.0
    assert math.isfinite(summary["lv_ef_mae"])
    text = (out / "report.md").read_text()
    assert f"{summary['dice_mean']:.3f}" in text and "LV ejection fraction" in text
    for picture in ("mae.png", "segmentation.png"):
        assert (out / picture).stat().st_size > 1000
    saved = json.loads((out / "report.json").read_text())["summary"]
    # compared as JSON text: correlations of a few subjects can be NaN, and NaN != NaN
    assert json.dumps(saved, sort_keys=True) == json.dumps(summary, sort_keys=True)


def test_finetuning_starts_from_the_pretrained_backbone_and_changes_it(
    demo: tuple[Path, dict],
) -> None:
    out, _ = demo
    pretrained = backbone_state_dict(out / "pretrain" / "last.ckpt")
    finetuned = backbone_state_dict(out / "finetune" / "last.ckpt")
    assert pretrained.keys() == finetuned.keys()
    assert any(not torch.equal(pretrained[k], finetuned[k]) for k in pretrained)
    hparams = read_checkpoint(out / "finetune" / "last.ckpt")["hyper_parameters"]
    assert hparams["pretrained"] == str(out / "pretrain" / "last.ckpt")


def test_finetuning_draw_is_disjoint_from_the_evaluated_subjects(demo: tuple[Path, dict]) -> None:
    out, report = demo
    manifest = read_manifest(out / "shards")
    ckpt = read_checkpoint(out / "finetune" / "last.ckpt")
    assert ckpt["datamodule_hyper_parameters"]["labels"] == 2
    evaluated = {r["subject"] for r in report["subjects"]}
    assert evaluated.isdisjoint(manifest["splits"]["train"])


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not SHARED_ACDC.is_dir(), reason=f"ACDC not found at {SHARED_ACDC}")
def test_chain_on_real_acdc_fine_tunes_the_release(tmp_path: Path) -> None:
    """`demo --data`: no pretraining stage; fine-tuning starts from the released backbone, and
    the saved package records it as its base model."""
    from finetune.package import load_finetuned
    from foundation.released import DEFAULT_RELEASE

    report = run_demo(tmp_path, data=SHARED_ACDC, quick=True, labels=2)
    assert report["summary"]["n_subjects"] >= 1
    assert 0.0 <= report["summary"]["dice_mean"] <= 1.0
    assert not (tmp_path / "pretrain").exists() and not (tmp_path / "mae.png").exists()
    _, config = load_finetuned(tmp_path / "model")
    release = json.loads((model_path(DEFAULT_RELEASE) / "config.json").read_text())
    assert config["base_model"]["source"] == DEFAULT_RELEASE
    assert config["base_model"]["sha256"] == release["weights_sha256"]
    assert f"starting from `{DEFAULT_RELEASE}`" in (tmp_path / "report.md").read_text()


def test_the_demo_saves_a_package_that_predict_segments_a_study_with(
    demo: tuple[Path, dict], tmp_path: Path
) -> None:
    """The fine-tuned model as a folder: the same weights as the fine-tuning checkpoint, its
    lineage the demo's pretraining, and `cmrfm predict` takes it."""
    import nibabel as nib
    import numpy as np

    from cmrfm.predict import predict
    from finetune.package import load_finetuned

    out, _ = demo
    model, config = load_finetuned(out / "model")
    finetuned = read_checkpoint(out / "finetune" / "last.ckpt")["state_dict"]
    assert all(torch.equal(v, finetuned[k]) for k, v in model.state_dict().items())
    assert config["base_model"]["source"] == str(out / "pretrain" / "last.ckpt")
    assert "cmrfm predict" in (out / "report.md").read_text()
    study = tmp_path / "phantom.nii.gz"
    image = np.random.default_rng(0).random((48, 48, 3, 8)).astype(np.float32)  # (X, Y, Z, T)
    nib.save(nib.Nifti1Image(image * 400, np.diag([3.0, 3.0, 8.0, 1.0])), study)
    volumes = predict(study, out / "model", tmp_path / "pred")
    assert (
        volumes["shape_stwh"] == [3, 8, 48, 48] and (tmp_path / "pred" / "volumes.json").is_file()
    )
