"""finetune.fewshot_config: the few-shot benchmark's settings, checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrfm import CONFIGS
from finetune.fewshot_config import FewShotConfig, load_config


def test_config_rejects_what_cannot_run(tmp_path: Path):
    with pytest.raises(ValueError, match="task"):
        FewShotConfig(task="survival")
    with pytest.raises(ValueError, match="'0'"):
        FewShotConfig(labels=["0"], methods=["unet"])
    with pytest.raises(ValueError, match="unknown seg method"):
        FewShotConfig(methods=["unet", "radiomics"])
    with pytest.raises(ValueError, match="--pretrained none gives none"):
        FewShotConfig(methods=["pretrained", "unet"], pretrained="none")
    with pytest.raises(ValueError, match="no such checkpoint or hub folder"):  # before any run
        FewShotConfig(methods=["pretrained"], pretrained=str(tmp_path / "gone.ckpt"))
    with pytest.raises(ValueError, match="seg_method 'pretrain' is not a seg method"):
        FewShotConfig(task="cls", methods=["radiomics"], seg_method="pretrain")


def test_radiomics_and_from_seg_train_their_segmenter_from_the_weights_it_is_named_for():
    # without seg_from, the seg_method's segmenter is trained here: from the release, as its
    # name says, and not from random weights
    for task, method in (("cls", "radiomics"), ("ef", "from_seg")):
        cfg = FewShotConfig(task=task, methods=[method])
        assert cfg.weighted() == [("seg", "pretrained")]
        assert cfg.pretrained == "cmr-unet-small-cine"
    # label maps read from seg_from need no weights (a gap in them: FewShotBenchmark.check_weights)
    read = FewShotConfig(task="ef", methods=["scratch", "from_seg"], seg_from="runs/seg",
                         pretrained="none")  # fmt: skip
    assert read.weighted() == []
    unet_masks = FewShotConfig(task="cls", methods=["radiomics"], seg_method="unet")
    assert unet_masks.weighted() == [] and unet_masks.pretrained is None


def test_weights_default_to_the_release_and_say_so_when_it_is_absent(tmp_path: Path, monkeypatch):
    from cmrfm_io import shipped

    monkeypatch.setattr(shipped, "MODELS", tmp_path / "models")
    with pytest.raises(ValueError, match=r"no released model 'cmr-unet-small-cine'.*--pretrained"):
        FewShotConfig(methods=["pretrained", "unet"])  # nothing named, nothing released
    (tmp_path / "models" / "cmr-unet-small-cine").mkdir(parents=True)
    (tmp_path / "models" / "cmr-unet-small-cine" / "config.json").write_text("{}")
    assert FewShotConfig(methods=["pretrained", "unet"]).pretrained == "cmr-unet-small-cine"
    assert FewShotConfig(methods=["scratch", "unet"]).pretrained is None  # none needed


def test_yaml_keys_map_onto_the_config_and_flags_win(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("task: seg\nlabels: [1, all]\nmethods: [unet]\nbudget_s: 5\n")
    cfg = load_config(path, {"budget_s": 2.0, "seeds": None})
    assert cfg.labels == ["1", "all"] and cfg.budget_s == 2.0 and cfg.seeds == 3
    path.write_text("task: seg\nmethods: [unet]\nsedes: 3\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown key 'sedes'; did you mean 'seeds'"):
        load_config(path, {})


def test_yaml_values_are_checked_against_the_field_types(tmp_path: Path):
    # jsonargparse reads the file as LightningCLI reads the training configs.
    path = tmp_path / "c.yaml"
    for text, key in [("seeds: three", "seeds"), ("labels: [1, al]", "labels"),
                      ("task: sag", "task"), ("steps: 1.5", "steps")]:  # fmt: skip
        path.write_text(f"methods: [unet]\n{text}\n")
        with pytest.raises(ValueError, match=rf'c.yaml: .*"{key}"') as error:
            load_config(path, {})
        assert "\n" not in str(error.value)  # one line for the terminal
    path.write_text("methods: [unet]\nseeds: 0\n")  # the right type, a value that cannot run
    with pytest.raises(ValueError, match=r"c.yaml: seeds must be >= 1"):
        load_config(path, {})


def test_every_shipped_config_loads(tmp_path: Path):
    configs = sorted(CONFIGS.glob("fewshot_*.yaml"))
    assert {p.stem for p in configs} >= {"fewshot_seg_acdc", "fewshot_ef_acdc", "fewshot_cls_acdc"}
    for path in configs:
        cfg = load_config(path, {"pretrained": str(tmp_path)})  # weights must exist
        assert cfg.task in path.stem


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"model": {"warmup_step": 5}}, "model.warmup_step is not a fine-tuning argument; did you "
         "mean 'warmup_steps'?"),
        ({"method_args": {"scratch": {"layer_decy": 1.0}}}, "method_args.scratch.layer_decy is "
         "not a fine-tuning argument; did you mean 'layer_decay'?"),
        ({"method_args": {"scrach": {}}}, "unknown methods ['scrach']"),
    ],
)  # fmt: skip
def test_a_typo_in_the_model_arguments_is_named_with_the_nearest(changes, named) -> None:
    with pytest.raises(ValueError) as info:
        FewShotConfig(task="seg", methods=["unet", "scratch"], **changes)
    assert named in str(info.value)


@pytest.mark.parametrize("task", ["seg", "ef"])
def test_model_arguments_the_finetuners_forward_to_their_base_are_accepted(task: str) -> None:
    """backbone, lr, ... reach the shared fine-tuning constructor by **kwargs."""
    model = {"backbone": "cmr_vit_test", "patch_size": 8, "lr": 1e-3, "layer_decay": 0.9}
    method_args = {"scratch": {"backbone_lr_scale": 0.5, "warmup_steps": 5}}
    methods = ["scratch"]
    FewShotConfig(task=task, methods=methods, model=model, method_args=method_args)
    with pytest.raises(ValueError) as info:
        FewShotConfig(task=task, methods=methods, model={"patch_sise": 8})
    named = "model.patch_sise is not a fine-tuning argument; did you mean 'patch_size'"
    assert named in str(info.value)
