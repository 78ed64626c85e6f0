"""`cmrfm export` / `cmrfm publish`: Lightning and DeepSpeed ZeRO checkpoints -> hub folder with
identical outputs, backbone found by its own key names, weights-only reads, data named in the
card; publishing uploads only a checked folder's hub files (network calls faked)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar

import huggingface_hub
import lightning as L
import pytest
import torch
from huggingface_hub import ModelCard
from torch import nn
from torch.utils.data import DataLoader

from cmrfm.cli import main
from cmrfm.export import export, extract_backbone, publish
from cmrfm.strategies import DeepSpeed  # Lightning's, made to run on CPU too
from data_shards.writer import write_manifest
from foundation import CardiacViT, create_backbone, from_pretrained
from foundation.datasets import DATASETS, LICENCE_NAME
from foundation.hub import CARD_NAME, CONFIG_NAME, HUB_FILES, WEIGHTS_NAME, check_hub_folder
from foundation.training_checkpoint import TrainingCheckpoint
from foundation.vit import CONTEXT_EMBEDDINGS

BACKBONE_KWARGS = {"patch_size": 8, "tubelet": 2, "depth": 2}
FRAMES = 4


# --- a tiny pretraining run with the checkpoint layout of pretext.system.PretrainSystem ----------


class Reconstruct(nn.Module):
    """Stands in for an objective: kept as `objective`, with the backbone as `.encoder`."""

    def __init__(self, encoder: CardiacViT) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.embed_dim, encoder.tubelet * encoder.patch_size**2)

    def forward(self, batch: dict) -> torch.Tensor:
        clip, enc = batch["clip"], self.encoder
        tokens = enc(clip, modality=batch["modality"], axis=batch["axis"])  # (B, L, D)
        t, p = enc.tubelet, enc.patch_size
        b, _, f, h, w = clip.shape
        target = clip.reshape(b, f // t, t, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return (self.head(tokens) - target.reshape(b, tokens.shape[1], -1)).pow(2).mean()


class TinyPretrainer(L.LightningModule):
    def __init__(
        self,
        backbone: str = "cmr_vit_test",
        backbone_kwargs: dict | None = None,
        objective: str = "mae",
        lr: float = 0.05,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.objective = Reconstruct(create_backbone(backbone, **(backbone_kwargs or {})))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.objective(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class TinyData(L.LightningDataModule):
    def __init__(self, shards: dict[str, float], frames: int = FRAMES, batch_size: int = 2):
        super().__init__()
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        items = [
            {"clip": torch.rand(1, FRAMES, 16, 16, generator=g), "modality": i % 2, "axis": i // 2}
            for i in range(4)
        ]  # every modality and axis row is trained
        return DataLoader(items, batch_size=self.hparams.batch_size)


def fake_manifest(folder: Path, source: str, keys: list[str], modality: str) -> Path:
    """A shard folder's manifest.json written by the real writer (the shard itself is a stub)."""
    folder.mkdir(parents=True)
    (folder / "shard-000000.tar").write_bytes(b"stub")
    samples = [
        {"key": k, "subject": k, "split": "train", "source": source, "modality": modality,
         "shape": [1, FRAMES, 16, 16], "has_label": False, "shard": "shard-000000.tar"}
        for k in keys
    ]  # fmt: skip
    preprocess = {
        "spacing": 1.5,
        "size": 16,
        "percentiles": [0.5, 99.5],
        "orientation": "canonical",
    }
    extra = {"source": source, "root": f"/data/{source}", "source_options": {}}
    write_manifest(folder, ["shard-000000.tar"], samples, preprocess, extra)
    return folder / "manifest.json"


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    return {
        "acdc": fake_manifest(
            root / "acdc", "acdc", ["acdc-patient001", "acdc-patient002"], "cine"
        ),
        "emidec": fake_manifest(root / "emidec", "lge-slices", ["emidec-Case_N006"], "lge"),
    }


def data_module(shard_sets: dict[str, Path]) -> TinyData:
    return TinyData({str(shard_sets["acdc"].parent): 0.8, str(shard_sets["emidec"].parent): 0.2})


def train(
    shard_sets: dict[str, Path], out: Path, stage: int | None = None
) -> tuple[Path, CardiacViT, dict[str, torch.Tensor]]:
    """2 steps of TinyPretrainer; returns (checkpoint, trained backbone copy, initial weights).

    stage None: a plain Lightning .ckpt; 2 or 3: a DeepSpeed ZeRO checkpoint folder.
    """
    torch.manual_seed(0)
    module = TinyPretrainer(backbone_kwargs=BACKBONE_KWARGS)
    initial = {k: v.clone() for k, v in module.objective.encoder.state_dict().items()}
    # DeepSpeed keeps its process groups for the life of the process, as the other DeepSpeed
    # tests do: a second run reuses the gloo group of the first.
    strategy = "auto" if stage is None else DeepSpeed(stage=stage, process_group_backend="gloo")
    trainer = L.Trainer(
        accelerator="cpu", devices=1, strategy=strategy, max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=out,
    )  # fmt: skip
    trainer.fit(module, datamodule=data_module(shard_sets))
    path = out / ("last.ckpt" if stage is None else f"zero{stage}.ckpt")
    trainer.save_checkpoint(path)
    encoder = module.objective.encoder
    if stage == 3:  # ZeRO-3 keeps each parameter partitioned outside this context
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(encoder.parameters())):
            trained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    else:
        trained = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    reference = create_backbone("cmr_vit_test", **BACKBONE_KWARGS)
    reference.load_state_dict(trained)
    return path, reference.eval(), initial


@pytest.fixture(scope="module")
def lightning_run(shard_sets, tmp_path_factory):
    return train(shard_sets, tmp_path_factory.mktemp("lightning"))


@pytest.fixture(scope="module")
def zero2_run(shard_sets, tmp_path_factory):
    return train(shard_sets, tmp_path_factory.mktemp("zero2"), stage=2)


def outputs(model: CardiacViT) -> torch.Tensor:
    x = torch.rand(2, 1, FRAMES, 16, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x, modality=torch.tensor([0, 1]), axis=torch.tensor([1, 0]))


def assert_exported(run, out: Path, shard_sets) -> None:
    """The folder reloads into the trained backbone exactly, and its card names the data."""
    _, reference, initial = run
    loaded = from_pretrained(out)
    assert any(not torch.equal(initial[k], v) for k, v in reference.state_dict().items())
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.testing.assert_close(outputs(loaded), outputs(reference), rtol=0, atol=0)
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["architecture"] == "cmr_vit_test"
    assert {k: config["model_args"][k] for k in BACKBONE_KWARGS} == BACKBONE_KWARGS
    pre = config["preprocess"]
    assert (pre["spacing"], pre["size"], pre["frames"]) == (1.5, 16, FRAMES)
    assert pre["percentiles"] == [0.5, 99.5] and pre["modalities"] == ["cine", "lge"]
    card = (out / CARD_NAME).read_text()
    for manifest in shard_sets.values():
        assert hashlib.sha256(manifest.read_bytes()).hexdigest() in card
    assert DATASETS["ACDC"].citation in card and DATASETS["EMIDEC"].citation in card
    assert "| steps | 2 |" in card and "| objective | mae |" in card
    assert (out / LICENCE_NAME).is_file()


# --- Lightning checkpoints ---------------------------------------------------------------------


def test_lightning_checkpoint_exports_the_trained_backbone(lightning_run, shard_sets, tmp_path):
    summary = export(lightning_run[0], tmp_path / "hub")
    assert_exported(lightning_run, tmp_path / "hub", shard_sets)
    assert summary["checkpoint"] == "Lightning checkpoint" and summary["steps"] == 2
    assert summary["datasets"] == ["ACDC", "EMIDEC"]


def test_cli_export_with_card_metrics(lightning_run, tmp_path, capsys) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"summary": {"dice_mean": 0.777}, "subjects": [1, 2, 3]}))
    main(["export", str(lightning_run[0]), str(tmp_path / "hub"), "--card-metrics", str(report)])
    assert "cmr_vit_test" in capsys.readouterr().out
    card = (tmp_path / "hub" / CARD_NAME).read_text()
    assert "| dice_mean | 0.777 |" in card and "subjects" not in card.split("## Metrics")[1]
    main(
        ["export", str(lightning_run[0]), str(tmp_path / "hub2"), "--card-metrics", '{"auc": 0.9}']
    )
    assert "| auc | 0.900 |" in (tmp_path / "hub2" / CARD_NAME).read_text()


def test_export_refuses_a_non_empty_folder(lightning_run, tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export(lightning_run[0], tmp_path)
    export(lightning_run[0], tmp_path, overwrite=True)
    assert (tmp_path / WEIGHTS_NAME).is_file()


def test_missing_manifest_asks_for_it(lightning_run, shard_sets, tmp_path) -> None:
    ckpt = torch.load(lightning_run[0], weights_only=True)
    ckpt["datamodule_hyper_parameters"]["shards"] = "runs/elsewhere/shards"
    moved = tmp_path / "moved.ckpt"
    torch.save(ckpt, moved)
    with pytest.raises(FileNotFoundError, match=r"runs/elsewhere/shards.*--manifest"):
        export(moved, tmp_path / "hub")
    export(moved, tmp_path / "hub", manifests=[shard_sets["acdc"].parent], datasets=["Sunnybrook"])
    card = (tmp_path / "hub" / CARD_NAME).read_text()
    assert DATASETS["Sunnybrook"].citation in card and DATASETS["ACDC"].citation in card
    assert DATASETS["EMIDEC"].citation not in card


def test_cli_export_errors_are_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as info:
        main(["export", str(bad), str(tmp_path / "hub")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("cmrfm export: error: ") and "bad.ckpt" in err


# --- DeepSpeed ZeRO checkpoints ----------------------------------------------------------------


def test_zero2_folder_exports_the_trained_backbone(zero2_run, shard_sets, tmp_path, monkeypatch):
    folder = zero2_run[0]
    assert folder.is_dir() and any(folder.glob("*/zero_pp_rank_0_*_optim_states.pt"))
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        forced = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == "1"
        loads.append(kwargs.get("weights_only") is True or forced)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    summary = export(folder, tmp_path / "hub")
    assert summary["checkpoint"] == "DeepSpeed ZeRO-2 checkpoint" and summary["steps"] == 2
    assert len(loads) >= 3 and all(loads)  # client state, model states, optimizer shard
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored afterwards
    assert_exported(zero2_run, tmp_path / "hub", shard_sets)


def test_zero_tag_folder_works_too(zero2_run, tmp_path) -> None:
    export(zero2_run[0] / "checkpoint", tmp_path / "hub")  # the folder holding the shards
    torch.testing.assert_close(outputs(from_pretrained(tmp_path / "hub")), outputs(zero2_run[1]))


@pytest.mark.slow
def test_zero3_folder_exports_the_trained_backbone(shard_sets, tmp_path) -> None:
    run = train(shard_sets, tmp_path / "run", stage=3)
    export(run[0], tmp_path / "hub")
    assert_exported(run, tmp_path / "hub", shard_sets)


# --- finding the backbone by its key names ----------------------------------------------------


def checkpoint_with(state: dict, hparams: dict, path: Path) -> TrainingCheckpoint:
    return TrainingCheckpoint(path, "Lightning checkpoint", state, {"hyper_parameters": hparams})


@pytest.mark.parametrize(
    ("prefix", "hparams"),
    [
        ("objective.encoder.", {"backbone": "cmr_vit_test", "backbone_kwargs": BACKBONE_KWARGS}),
        ("model.backbone.", {"backbone": "cmr_vit_test", **BACKBONE_KWARGS}),  # fine-tuning
        ("_forward_module.objective.encoder.", {"backbone": "cmr_vit_test", **BACKBONE_KWARGS}),
        ("student.trunk.", {"backbone": "cmr_vit_test", "backbone_kwargs": BACKBONE_KWARGS}),
        ("", {"backbone": "cmr_vit_test", **BACKBONE_KWARGS}),
    ],
)
def test_backbone_is_found_under_any_prefix(prefix, hparams, tmp_path) -> None:
    torch.manual_seed(0)
    source = create_backbone("cmr_vit_test", **BACKBONE_KWARGS).eval()
    with torch.no_grad():
        source.modality_embed.normal_()
    state = {prefix + k: v for k, v in source.state_dict().items()}
    state.update({"head.weight": torch.zeros(3, 32), f"{prefix}decoder_pred.weight": torch.ones(2)})
    model = extract_backbone(checkpoint_with(state, hparams, tmp_path / "x.ckpt"))
    torch.testing.assert_close(outputs(model), outputs(source), rtol=0, atol=0)


def test_a_maepretrainer_checkpoint_is_refused_naming_the_migration(tmp_path) -> None:
    source = create_backbone("cmr_vit_test", **BACKBONE_KWARGS)
    state = {f"mae.encoder.{k}": v for k, v in source.state_dict().items()}
    hparams = {"backbone": "cmr_vit_test", **BACKBONE_KWARGS}  # MAEPretrainer's flat layout
    with pytest.raises(ValueError, match=r"old\.ckpt: the backbone is under 'mae\.encoder\.'.*"
                       r"python -m pretext\.migrate OLD\.ckpt NEW\.ckpt"):  # fmt: skip
        extract_backbone(checkpoint_with(state, hparams, tmp_path / "old.ckpt"))


def test_compile_in_backbone_kwargs_is_not_architecture(tmp_path, monkeypatch) -> None:
    source = create_backbone("cmr_vit_test", **BACKBONE_KWARGS)
    state = {f"objective.encoder.{k}": v for k, v in source.state_dict().items()}
    hparams = {"backbone": "cmr_vit_test", "backbone_kwargs": {**BACKBONE_KWARGS, "compile": True}}
    monkeypatch.setattr(torch.nn.Module, "compile", pytest.fail)  # exporting never compiles
    model = extract_backbone(checkpoint_with(state, hparams, tmp_path / "x.ckpt"))
    assert "compile" not in model.model_args


def test_old_checkpoint_without_modality_axis_rows_exports(tmp_path) -> None:
    source = create_backbone("cmr_vit_test", **BACKBONE_KWARGS).eval()
    state = {
        f"objective.encoder.{k}": v
        for k, v in source.state_dict().items()
        if k not in CONTEXT_EMBEDDINGS
    }  # a MAEPretrainer checkpoint from before the tables, migrated
    with pytest.warns(UserWarning, match="before modality/axis"):
        model = extract_backbone(
            checkpoint_with(state, {"backbone": "cmr_vit_test", **BACKBONE_KWARGS}, tmp_path)
        )
    torch.testing.assert_close(outputs(model), outputs(source))


def test_several_fitting_prefixes_prefer_the_known_ones(tmp_path) -> None:
    source = create_backbone("cmr_vit_test", **BACKBONE_KWARGS)
    state = {f"{p}{k}": v for p in ("teacher.encoder.", "objective.encoder.")
             for k, v in source.state_dict().items()}  # fmt: skip
    hparams = {"backbone": "cmr_vit_test", "backbone_kwargs": BACKBONE_KWARGS}
    model = extract_backbone(checkpoint_with(state, hparams, tmp_path / "x.ckpt"))
    torch.testing.assert_close(outputs(model), outputs(source.eval()), rtol=0, atol=0)
    odd = {k.replace("objective.encoder.", "student.trunk.").replace("teacher.encoder.",
           "teacher.trunk."): v for k, v in state.items()}  # fmt: skip
    with pytest.raises(ValueError, match=r"several backbones fit.*student\.trunk\..*--prefix"):
        extract_backbone(checkpoint_with(odd, hparams, tmp_path / "x.ckpt"))
    model = extract_backbone(
        checkpoint_with(odd, hparams, tmp_path / "x.ckpt"), prefix="teacher.trunk."
    )
    torch.testing.assert_close(outputs(model), outputs(source), rtol=0, atol=0)


def test_a_backbone_of_another_depth_is_named_in_the_error(tmp_path) -> None:
    source = create_backbone("cmr_vit_test", patch_size=8, depth=1)  # the weights hold 1 block
    state = {f"objective.encoder.{k}": v for k, v in source.state_dict().items()}
    hparams = {"backbone": "cmr_vit_test", "backbone_kwargs": {"patch_size": 8}}  # says 4
    with pytest.raises(
        ValueError, match=r"x\.ckpt: the pretrained weights have depth 1, .*depth 4.*--backbone"
    ):
        extract_backbone(checkpoint_with(state, hparams, tmp_path / "x.ckpt"))


def test_unknown_backbone_name_asks_for_one(tmp_path) -> None:
    with pytest.raises(ValueError, match="--backbone"):
        extract_backbone(checkpoint_with({}, {"backbone": "resnet50"}, tmp_path / "x.ckpt"))


def test_real_pretrain_system_checkpoint_layout(shard_sets, tmp_path) -> None:
    from pretext.system import PretrainSystem

    system = PretrainSystem(backbone="cmr_vit_test", backbone_kwargs=BACKBONE_KWARGS)
    ckpt = {
        "state_dict": system.state_dict(),
        "hyper_parameters": dict(system.hparams),
        "datamodule_hyper_parameters": dict(data_module(shard_sets).hparams),
        "global_step": 0,
        "epoch": 0,
    }
    torch.save(ckpt, tmp_path / "system.ckpt")
    export(tmp_path / "system.ckpt", tmp_path / "hub")
    torch.testing.assert_close(
        outputs(from_pretrained(tmp_path / "hub")), outputs(system.encoder.eval()), rtol=0, atol=0
    )


# --- publish -----------------------------------------------------------------------------------


class FakeApi:
    """Records what HfApi would have been asked; no network."""

    calls: ClassVar[list[tuple[str, tuple, dict]]] = []

    def __init__(self, *args, **kwargs) -> None:
        pass

    def create_repo(self, *args, **kwargs):
        FakeApi.calls.append(("create_repo", args, kwargs))
        return f"https://huggingface.co/{args[0]}"

    def upload_folder(self, *args, **kwargs):
        FakeApi.calls.append(("upload_folder", args, kwargs))
        return "https://huggingface.co/owner/name/commit/abc"


@pytest.fixture
def fake_hub(monkeypatch):
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return FakeApi.calls


@pytest.fixture
def hub_folder(lightning_run, tmp_path) -> Path:
    export(lightning_run[0], tmp_path / "hub")
    (tmp_path / "hub" / "last.ckpt").write_bytes(b"a stray training file")
    return tmp_path / "hub"


def test_publish_uploads_only_the_hub_files(hub_folder, fake_hub) -> None:
    url = publish(hub_folder, "owner/name", private=True)
    assert url.endswith("/commit/abc")
    (create, args, kwargs), (upload, _, up) = fake_hub
    assert create == "create_repo" and args == ("owner/name",)
    assert kwargs["private"] is True and kwargs["repo_type"] == "model" and kwargs["exist_ok"]
    assert upload == "upload_folder" and up["repo_id"] == "owner/name"
    assert Path(up["folder_path"]) == hub_folder
    assert sorted(up["allow_patterns"]) == sorted([*HUB_FILES, LICENCE_NAME])  # not last.ckpt


@pytest.mark.parametrize("remove", HUB_FILES)
def test_publish_refuses_an_incomplete_folder(hub_folder, fake_hub, remove) -> None:
    (hub_folder / remove).unlink()
    with pytest.raises(FileNotFoundError, match=remove.replace(".", r"\.")):
        publish(hub_folder, "owner/name")
    assert fake_hub == []  # refused before any call to the Hub


def test_publish_refuses_weights_that_do_not_load(hub_folder, fake_hub) -> None:
    config = json.loads((hub_folder / CONFIG_NAME).read_text())
    config["model_args"]["embed_dim"] = 64
    (hub_folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"embed_dim 32, but config\.json says embed_dim 64"):
        publish(hub_folder, "owner/name")
    assert fake_hub == []


def test_publish_refuses_a_card_without_licence(hub_folder, fake_hub) -> None:
    card = hub_folder / CARD_NAME
    card.write_text(card.read_text().split("\n---\n", 1)[1])  # body only
    with pytest.raises(ValueError, match="front matter"):
        publish(hub_folder, "owner/name")
    assert fake_hub == []


def test_cli_publish(hub_folder, fake_hub, capsys) -> None:
    main(["publish", str(hub_folder), "--repo-id", "owner/name"])
    assert "commit/abc" in capsys.readouterr().out
    assert fake_hub[0][2]["private"] is False


def test_publish_without_network_says_so_in_one_line(hub_folder, monkeypatch, capsys) -> None:
    class Offline(FakeApi):
        def create_repo(self, *args, **kwargs):
            raise ConnectionError("Failed to resolve 'huggingface.co'\nmore lines")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(SystemExit) as info:
        main(["publish", str(hub_folder), "--repo-id", "owner/name"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert "owner/name: uploading to the Hugging Face Hub failed (ConnectionError" in err
    assert "huggingface-cli login" in err


def _fewshot_summary(folder: Path) -> Path:
    """A few-shot summary.csv with the benchmark's config.json beside it (ACDC, test split)."""
    fewshot = folder / "summary.csv"
    fewshot.write_text(
        "metric,method,labels,n,mean,std,runs\n"
        "dice_mean,pretrained,1,1,0.5,0.1,3\ndice_mean,unet,1,1,0.4,0.2,3\n"
        "dice_mean,pretrained,all,80,0.87,,1\n"  # one run: no std
        "dice_mean,unet,all,80,0.88,0.0,1\ndice_lv,unet,1,1,0.9,0.0,3\n"  # as written before 12-05
    )
    (folder / "config.json").write_text('{"shards": "runs/real/acdc", "eval_split": "test"}')
    return fewshot


def test_the_card_shows_the_probe_curve_and_the_few_shot_table(lightning_run, tmp_path) -> None:
    probe = tmp_path / "probe" / "probe.csv"
    probe.parent.mkdir()
    probe.write_text("step,dice_mean,probe_s\n1000,0.373,8\n0,0.254,7\n")
    (tmp_path / "probe" / "probe.png").write_bytes(b"\x89PNG fake")
    fewshot = _fewshot_summary(tmp_path)
    out = tmp_path / "hub"
    export(lightning_run[0], out, probe=probe, fewshot=fewshot)
    card = (out / CARD_NAME).read_text()
    meta = ModelCard(card).data.to_dict()  # the Hub's model-index: this backbone's own results
    assert meta["library_name"] == "cmrfm"
    [entry] = meta["model-index"][0]["results"]
    assert entry["dataset"] == {"name": "acdc (test)", "type": "acdc", "split": "test"}
    assert entry["metrics"][0]["type"] == "dice" and entry["metrics"][0]["value"] == 0.5
    assert "N=1" in entry["metrics"][0]["name"]
    assert "| step | 0 | 1000 |" in card and "| probe Dice | 0.254 | 0.373 |" in card
    assert "dice_mean on acdc (test) (mean ± std over seeds)" in card
    assert "| method | N = 1 | N = all |" in card
    assert (
        "| pretrained | 0.500 ± 0.100 | 0.870 |" in card
        and "| unet | 0.400 ± 0.200 | 0.880 |" in card
    )
    assert (out / "probe.png").read_bytes() == b"\x89PNG fake"
    assert out / "probe.png" in check_hub_folder(out)  # published with the folder


def test_the_card_of_continued_pretraining_names_the_weights_it_started_from(
    lightning_run, tmp_path
):
    first = tmp_path / "first"
    export(lightning_run[0], first)
    assert "continuing from" not in (first / CARD_NAME).read_text()  # from random init
    ckpt = torch.load(lightning_run[0], map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["pretrained"] = str(first)  # PretrainSystem(pretrained=...)
    torch.save(ckpt, tmp_path / "continued.ckpt")
    export(tmp_path / "continued.ckpt", tmp_path / "hub")
    card = (tmp_path / "hub" / CARD_NAME).read_text()
    sha = json.loads((first / CONFIG_NAME).read_text())["weights_sha256"]
    origin = f"`{first}` (hub folder, cmr_vit_test, sha256 `{sha}`)"
    assert f"steps** on ACDC, EMIDEC, continuing from {origin}." in card
    assert f"| started_from | {origin} |" in card


def test_a_summary_that_names_its_data_needs_no_config_beside_it(lightning_run, tmp_path):
    fewshot = tmp_path / "fewshot_seg_acdc.csv"  # as committed under benchmarks/
    fewshot.write_text(
        "metric,method,labels,n,mean,std,runs,unit,implausible,dataset,split\n"
        "dice_mean,pretrained,1,1,0.5,0.1,3,,0,acdc,test\n"
    )
    export(lightning_run[0], tmp_path / "hub", fewshot=fewshot)
    card = (tmp_path / "hub" / CARD_NAME).read_text()
    [entry] = ModelCard(card).data.to_dict()["model-index"][0]["results"]
    assert entry["dataset"] == {"name": "acdc (test)", "type": "acdc", "split": "test"}


def test_a_released_folder_gains_its_few_shot_table_as_export_would_have_written_it(
    lightning_run, tmp_path, capsys
) -> None:
    fewshot = _fewshot_summary(tmp_path)
    export(lightning_run[0], tmp_path / "at_once", fewshot=fewshot)
    released = tmp_path / "released"
    export(lightning_run[0], released)
    weights = (released / WEIGHTS_NAME).read_bytes()
    main(["export", str(released), "--fewshot", str(fewshot)])
    assert "weights untouched" in capsys.readouterr().out
    assert (released / CARD_NAME).read_text() == (tmp_path / "at_once" / CARD_NAME).read_text()
    assert (released / WEIGHTS_NAME).read_bytes() == weights
    from_pretrained(released)  # config.json's sha256 still verifies

    card = (released / CARD_NAME).read_text()
    (released / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])  # a broken release
    with pytest.raises(SystemExit) as info:
        main(["export", str(released), "--fewshot", str(fewshot)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and WEIGHTS_NAME in err
    assert (released / CARD_NAME).read_text() == card  # no table over weights that do not load
    (released / CARD_NAME).unlink()
    with pytest.raises(SystemExit) as info:
        main(["export", str(released), "--fewshot", str(fewshot)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"{released}: missing README.md" in err


def test_a_file_that_is_no_fewshot_summary_is_named(lightning_run, tmp_path) -> None:
    bad = tmp_path / "summary.csv"
    bad.write_text("step,dice_mean\n0,0.2\n")
    with pytest.raises(ValueError, match=r"summary\.csv: not a few-shot summary\.csv"):
        export(lightning_run[0], tmp_path / "hub", fewshot=bad)


def test_a_file_that_is_no_probe_csv_is_named(lightning_run, tmp_path) -> None:
    bad = tmp_path / "probe.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"probe\.csv: not a probe\.csv"):
        export(lightning_run[0], tmp_path / "hub", probe=bad)
