"""The few-shot benchmark: every method gets the same draws, evaluation is disjoint, results
resume and rescore; its EF and diagnosis tasks (finetune/fewshot_subject.py) end to end here too
(its config: tests/finetune/test_fewshot_config.py; summaries: tests/finetune/test_report.py)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from finetune.fewshot import FewShotBenchmark, Run
from finetune.fewshot_config import FewShotConfig
from finetune.results import read_jsonl
from foundation.hub import save_pretrained
from foundation.registry import create_backbone

TEST_MODEL = {"backbone": "cmr_vit_test", "patch_size": 8, "tubelet": 2, "warmup_steps": 2}


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def shards(make_phantom_shards) -> Path:
    return make_phantom_shards(n=16, slices=2)


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    backbone = create_backbone("cmr_vit_test", patch_size=8, tubelet=2)
    folder = tmp_path_factory.mktemp("hub")
    preprocess = {"spacing": 3.0, "size": 48, "frames": 2, "percentiles": [0.5, 99.5]}
    return save_pretrained(backbone, folder, preprocess=preprocess | {"modalities": ["cine"]})


def _config(shards: Path, out: Path, **kw) -> FewShotConfig:
    base = {
        "task": "seg",
        "shards": str(shards),
        "out": str(out),
        "labels": ["1", "2"],
        "seeds": 2,
        "budget_s": 0.5,
        "eval_split": "test",
        "model": TEST_MODEL | {"num_classes": 4, "feature_size": 8},
        "method_args": {"unet": {"lr": 1e-3}},
    }
    return FewShotConfig(**(base | kw))


def test_weights_that_do_not_fit_are_refused_before_any_run(shards: Path, hub: Path, tmp_path):
    # hub holds patch-8 weights; the benchmark's network is patch 16: refused at the start,
    # naming the folder, not when the pretrained method's first run comes up
    cfg = _config(shards, tmp_path / "out", methods=["unet", "pretrained"], pretrained=str(hub))
    cfg.model = cfg.model | {"patch_size": 16}
    bench = FewShotBenchmark(cfg)
    with pytest.raises(ValueError, match=str(hub.name)):
        bench.run()
    assert not (tmp_path / "out" / "results.jsonl").exists()  # not even the unet runs


def test_a_checkpoint_that_cannot_be_read_stops_the_command_in_one_line(shards, tmp_path, capsys):
    from cmrfm.cli import main

    bad = tmp_path / "copied.ckpt"
    bad.write_bytes(b"PK\x03\x04 half of a zip archive")  # a copy cut short
    with pytest.raises(SystemExit) as stop:
        main(["fewshot", "--shards", str(shards), "--methods", "pretrained", "--pretrained",
              str(bad), "--labels", "1", "--seeds", "1", "--steps", "1", "--eval-split", "test",
              "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert f"{bad}: cannot read as a Lightning checkpoint (not a PyTorch checkpoint" in err
    assert not (tmp_path / "out").exists()


def test_evaluation_split_is_disjoint_from_every_draw(shards: Path, tmp_path: Path):
    bench = FewShotBenchmark(_config(shards, tmp_path, methods=["unet"]))
    eval_keys = {s["key"] for s in bench.eval}
    for run in bench.runs():
        assert not eval_keys & {s["key"] for s in bench.draw(run)}


def test_the_header_states_the_budget_each_run_gets(shards: Path, tmp_path: Path):
    assert FewShotBenchmark(_config(shards, tmp_path, methods=["unet"]))._budget_words() == "0.5 s"
    stepped = FewShotBenchmark(_config(shards, tmp_path / "b", methods=["unet"], steps=25))
    assert stepped._budget_words() == "25 steps"


def test_segmentation_benchmark_end_to_end_and_resume(
    shards: Path, hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    cfg = _config(shards, tmp_path, methods=["pretrained", "unet"], pretrained=str(hub))
    bench = FewShotBenchmark(cfg)
    summary = bench.run()
    results = read_jsonl(tmp_path / "results.jsonl")
    assert len(results) == 2 * 2 * 2  # methods x labels x seeds
    said = capsys.readouterr().out  # a line per finished run, for a log under nohup
    for i, r in enumerate(results, 1):
        assert f"{r['run']}: dice_mean {r['dice_mean']:.3f}, {r['steps']} steps in " in said
        assert f"({i}/8)" in said
    # the same labelled subjects for every method at each (N, seed)
    by_cell: dict = {}
    for r in results:
        by_cell.setdefault((r["n"], r["seed"]), set()).add(tuple(r["train_subjects"]))
        assert 0.0 <= r["dice_mean"] <= 1.0 and r["planned_steps"] >= 10
        assert 1 <= r["steps"] <= r["planned_steps"]  # a 0.5 s budget may cut the plan short
    assert all(len(draws) == 1 for draws in by_cell.values())
    assert by_cell[(1, 0)] != by_cell[(1, 1)] or len(bench.labelled) == 1  # seeds differ
    draws = json.loads((tmp_path / "draws.json").read_text())
    assert draws["n2_s0"][:1] == draws["n1_s0"]  # larger draws extend smaller ones
    assert {r["metric"] for r in summary} >= {"dice_mean", "hd95_mean", "lv_ef_mae"}
    assert (tmp_path / "summary.md").read_text().count("| 2 |") >= 1
    assert (tmp_path / "dice_mean_vs_n.png").stat().st_size > 0
    assert len(list((tmp_path / "predictions").glob("*.npz"))) == 8
    # seed 0 at the largest N is kept as a package whose card reports the scores it was given
    # and only the arguments its network reads (a U-Net has no patches; the ViT has)
    cards = {r["method"]: (r, (tmp_path / "models" / r["run"] / "README.md").read_text())
             for r in results if r["n"] == 2 and r["seed"] == 0}  # fmt: skip
    for row, card in cards.values():
        assert (
            f"| lv | {row['dice_lv_ed']:.3f} | {row['dice_lv_es']:.3f} | {row['dice_lv']:.3f} |"
            in card
        )
        assert f"| dice_mean | {row['dice_mean']:.3f} |" in card
        assert f"{len(bench.eval)} test subjects of {shards}" in card
    assert "| patch_size |" not in cards["unet"][1] and "Not shown: " in cards["unet"][1]
    assert "| patch_size | 8 |" in cards["pretrained"][1]

    # a re-run trains nothing; a run whose result line was lost is redone alone
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    trained = []
    original = FewShotBenchmark.run_one
    FewShotBenchmark.run_one = lambda self, run: trained.append(run.name) or original(self, run)
    try:
        FewShotBenchmark(cfg).run()
    finally:
        FewShotBenchmark.run_one = original
    assert trained == [json.loads(lines[-1])["run"]]
    n_subjects = len(read_jsonl(tmp_path / "subjects.jsonl"))
    assert n_subjects == len(results) * len(bench.eval)  # the redone run's rows are not doubled

    # rescoring reads the saved label maps: scores come back, training figures stay, nothing trains
    before = {r["run"]: r for r in read_jsonl(tmp_path / "results.jsonl")}
    stale = [{k: v for k, v in r.items() if not k.startswith("dice")} for r in before.values()]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    FewShotBenchmark.run_one = lambda self, run: trained.append(run.name)
    try:
        FewShotBenchmark(cfg).rescore()
    finally:
        FewShotBenchmark.run_one = original
    after = {r["run"]: r for r in read_jsonl(tmp_path / "results.jsonl")}
    assert len(trained) == 1 and after.keys() == before.keys()
    for run, r in after.items():
        assert r["dice_mean"] == pytest.approx(before[run]["dice_mean"])
        assert (
            r["steps"] == before[run]["steps"]
            and r["train_subjects"] == before[run]["train_subjects"]
        )
    assert len(read_jsonl(tmp_path / "subjects.jsonl")) == n_subjects
    # a later invocation with fewer methods reports every method the folder holds
    FewShotBenchmark(_config(shards, tmp_path, methods=["unet"])).report()
    assert "| N | pretrained | unet |" in (tmp_path / "summary.md").read_text()


def test_a_folder_of_another_benchmark_is_refused(shards: Path, tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"task": "seg", "budget_s": 99.0}))
    with pytest.raises(FileExistsError, match="budget_s"):
        FewShotBenchmark(_config(shards, tmp_path, methods=["unet"])).run()


def test_a_folder_of_another_method_recipe_is_refused(shards: Path, tmp_path: Path):
    """A method's own arguments are part of its runs: other ones would silently reuse results."""
    config = _config(shards, tmp_path, methods=["unet"])
    saved = json.loads(json.dumps(asdict(config)))
    (tmp_path / "config.json").write_text(json.dumps(saved | {"method_args": {"unet": {"lr": 1}}}))
    with pytest.raises(FileExistsError, match="method_args"):
        FewShotBenchmark(config).run()


def _with_groups(bench: FewShotBenchmark) -> FewShotBenchmark:
    """Phantoms have no diagnosis: give them ACDC groups in turn so classification has targets."""
    groups = ["DCM", "HCM", "MINF", "NOR", "RV"]
    for i, s in enumerate(bench.train + bench.eval):
        s["meta"]["group"] = groups[i % len(groups)]
    return bench


def test_a_gap_in_seg_from_needs_the_weights_its_segmenter_starts_from(shards: Path, tmp_path):
    seg_from = tmp_path / "seg"
    (seg_from / "predictions").mkdir(parents=True)
    cfg = _config(shards, tmp_path / "ef", task="ef", methods=["scratch", "from_seg"],
                  labels=["1"], seeds=1, seg_from=str(seg_from), pretrained="none")  # fmt: skip
    with pytest.raises(ValueError, match=r"no label maps for pretrained_n1_s0; training them"):
        FewShotBenchmark(cfg).check_weights()  # refused before any run, not at from_seg's turn
    np.savez(seg_from / "predictions" / "pretrained_n1_s0.npz", x=np.zeros(1))
    FewShotBenchmark(cfg).check_weights()  # every label map there: no weights needed


def test_the_subject_models_method_args_do_not_reach_the_segmenter_from_seg_trains(
    shards: Path, hub: Path, tmp_path: Path
):
    # "pretrained" names both the ef method (a subject model with a `hidden` width) and the
    # segmenter from_seg trains here; the ef benchmark's method_args are its subject model's
    cfg = _config(shards, tmp_path, task="ef", methods=["pretrained", "from_seg"], labels=["1"],
                  seeds=1, pretrained=str(hub), model=TEST_MODEL,
                  method_args={"pretrained": {"hidden": 16}})  # fmt: skip
    bench = FewShotBenchmark(cfg)
    bench.check_weights()  # builds both; the segmenter would refuse `hidden`
    segmenter = bench._system_args(Run("pretrained", "1", 1, 0), "seg")  # what from_seg trains
    assert "hidden" not in segmenter and segmenter["pretrained"] == str(hub)
    assert bench._system_args(Run("pretrained", "1", 1, 0))["hidden"] == 16


def test_radiomics_trains_its_pretrained_segmenter_from_the_release_by_default(shards, tmp_path):
    bench = FewShotBenchmark(_config(shards, tmp_path, task="cls", methods=["radiomics"]))
    segmenter = bench._system_args(Run("pretrained", "1", 1, 0), "seg")  # _train_segmenter's
    assert segmenter["pretrained"] == "cmr-unet-small-cine"  # not None: random weights


def test_ef_benchmark_regresses_and_reuses_segmentation(shards: Path, hub: Path, tmp_path: Path):
    seg = _config(shards, tmp_path / "seg", methods=["unet"], labels=["2"], seeds=1)
    FewShotBenchmark(seg).run()
    cfg = _config(
        shards,
        tmp_path / "ef",
        task="ef",
        methods=["pretrained", "from_seg"],
        labels=["2"],
        seeds=1,
        pretrained=str(hub),
        seg_from=str(tmp_path / "seg"),
        seg_method="unet",
        batch_size=2,
        max_slices=2,
        model=TEST_MODEL,
        method_args={"pretrained": {"protocol": "linear"}},
    )
    FewShotBenchmark(cfg).run()
    rows = {r["method"]: r for r in read_jsonl(tmp_path / "ef" / "results.jsonl")}
    assert set(rows) == {"pretrained", "from_seg"}
    assert all(r["lv_ef_n"] > 0 and np.isfinite(r["lv_ef_mae"]) for r in rows.values())
    subjects = read_jsonl(tmp_path / "ef" / "subjects.jsonl")
    true = [s["lv_ef_true"] for s in subjects if s["method"] == "from_seg"]
    # from_seg compares EF of the saved masks with EF of the ground truth of the same subjects
    other = [s["lv_ef_true"] for s in subjects if s["method"] == "pretrained"]
    assert true == pytest.approx(other, rel=1e-6)
    assert (tmp_path / "ef" / "bland_altman_lv_ef_from_seg.png").exists()


def test_cls_benchmark_scores_every_method_on_the_same_subjects(
    shards: Path, hub: Path, tmp_path: Path
):
    cfg = _config(
        shards,
        tmp_path,
        task="cls",
        methods=["scratch", "radiomics"],
        labels=["5"],
        seeds=1,
        pretrained=str(hub),
        seg_method="unet",
        batch_size=2,
        max_slices=2,
        model=TEST_MODEL | {"num_classes": 5},
        method_args={"unet": {"lr": 1e-3, "num_classes": 4}},
    )
    bench = _with_groups(FewShotBenchmark(cfg))
    bench.run()
    rows = read_jsonl(tmp_path / "results.jsonl")
    assert {r["method"] for r in rows} == {"scratch", "radiomics"}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and sum(map(sum, r["confusion"])) == len(bench.eval)
    assert (tmp_path / "confusion_radiomics.png").exists()
    # radiomics had no segmentation benchmark to read: it trained the U-Net on the same draw
    assert (tmp_path / "predictions" / "unet_n5_s0.npz").exists()


def test_cls_leaves_subjects_of_unknown_group_out_of_training_and_scores(
    shards: Path, tmp_path: Path
):
    """A subject without a diagnosis (ACDC Info.cfg lacking Group: meta group None) still trains
    the segmenter radiomics uses, but is no class of the SVM and is not scored."""
    cfg = _config(
        shards,
        tmp_path,
        task="cls",
        methods=["radiomics"],
        labels=["5"],
        seeds=1,
        seg_method="unet",
        method_args={"unet": {"lr": 1e-3, "num_classes": 4}},
    )
    bench = _with_groups(FewShotBenchmark(cfg))
    (run,) = bench.runs()
    bench.draw(run)[0]["meta"]["group"] = None
    bench.eval[0]["meta"]["group"] = None
    bench.run()
    (row,) = read_jsonl(tmp_path / "results.jsonl")
    assert sum(map(sum, row["confusion"])) == len(bench.eval) - 1
    subjects = {s["subject"]: s for s in read_jsonl(tmp_path / "subjects.jsonl")}
    unknown = subjects[bench.eval[0]["key"]]
    assert unknown["group"] is None and unknown["predicted"] in ("DCM", "HCM", "MINF", "NOR", "RV")


def test_command_line_flags_reach_the_config(tmp_path: Path, monkeypatch) -> None:
    # `cmrfm fewshot` flags override the YAML; radiomics can read another method's masks.
    import finetune.fewshot
    from cmrfm.cli import main

    seen: list[FewShotConfig] = []

    class Capture:
        def __init__(self, cfg: FewShotConfig) -> None:
            seen.append(cfg)

        def check_weights(self) -> None:
            pass

        def run(self) -> None:
            pass

    monkeypatch.setattr(finetune.fewshot, "FewShotBenchmark", Capture)
    main(["fewshot", "--task", "cls", "--config", "fewshot_cls_acdc", "--methods", "radiomics",
          "--seg-from", str(tmp_path), "--seg-method", "unet", "--labels", "1,all", "--seeds", "2",
          "--out", str(tmp_path / "out")])  # fmt: skip
    (cfg,) = seen
    assert (cfg.methods, cfg.seg_method, cfg.seg_from) == (["radiomics"], "unet", str(tmp_path))
    assert (cfg.labels, cfg.seeds, cfg.out) == (["1", "all"], 2, str(tmp_path / "out"))
