"""`cmrfm bench seg`: variant names, rows with ratios against the U-Net of the same run, the
alternating order, the JSON and the command line.

No timing thresholds: the numbers depend on the machine; these tests pin down what is compared.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from cmrfm.bench.seg import BASELINE, bench_seg, measure, variant_args
from cmrfm.cli import main

TINY: dict[str, Any] = {"backbone": "cmr_vit_test", "frames": 2, "size": 32, "batch": 2,
                        "steps": 1, "rounds": 2, "warmup": 1, "device": "cpu"}  # fmt: skip


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("unetr", {"arch": "unetr"}),
        ("light-fs8", {"arch": "light", "feature_size": 8}),
        ("light-last4", {"arch": "light", "protocol": "partial", "last_k": 4}),
        ("unetr-fs8-linear", {"arch": "unetr", "feature_size": 8, "protocol": "linear"}),
        ("none-last2", {"arch": "none", "protocol": "partial", "last_k": 2}),
        ("dense", {"arch": "dense", "backbone": "cmr_unet_small"}),
        ("dense-linear", {"arch": "dense", "backbone": "cmr_unet_small", "protocol": "linear"}),
    ],
)
def test_variant_names_map_onto_seg_finetuner_arguments(name: str, args: dict) -> None:
    assert variant_args(name) == args


@pytest.mark.parametrize(
    "name",
    ["unet", "light-last", "light-linear-fs8", "none-linear", "dense-fs8", "dense-last2", ""],
)
def test_bad_variant_names_are_refused_by_name(name: str) -> None:
    with pytest.raises(ValueError, match=f"variant {name!r}"):
        variant_args(name)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench") / "seg.json"
    variants = ["none", "unetr-fs8", "dense", "light-fs8", "light-fs8-last1"]
    result = bench_seg(**TINY, patches=[8, 16], variants=variants, out=out, console=_quiet())
    return result, out


@pytest.fixture(scope="module")
def result(run: tuple[dict[str, Any], Path]) -> dict[str, Any]:
    return run[0]


def test_rows_are_the_baseline_then_patch_by_variant(result: dict[str, Any]) -> None:
    rows = result["rows"]
    assert [(r["variant"], r["patch"]) for r in rows] == [
        (BASELINE, None),
        ("dense", None),  # the pretrainable U-Net has no patch size: one row
        *((v, p) for p in (8, 16) for v in ("none", "unetr-fs8", "light-fs8", "light-fs8-last1")),
    ]
    assert rows[0]["name"] == "unet" and rows[1]["name"] == "dense" and rows[2]["name"] == "none p8"


def test_the_dense_row_is_the_baseline_network(result: dict) -> None:
    base, dense = result["rows"][0], result["rows"][1]
    assert dense["params"] == dense["trainable"] == base["params"]


def test_ratios_divide_by_the_baseline_of_the_same_run(result: dict[str, Any]) -> None:
    base = result["rows"][0]
    assert base["ratio"] == base["ratio_cpu"] == 1.0 and base["meets_goal"] is None
    for row in result["rows"]:
        assert row["steps"] == TINY["rounds"] * TINY["steps"] == len(row["seconds"])
        assert row["s_per_step"] == pytest.approx(sum(row["seconds"]) / row["steps"])
        assert row["ratio"] == pytest.approx(row["s_per_step"] / base["s_per_step"])
        assert row["ratio_cpu"] == pytest.approx(row["cpu_s_per_step"] / base["cpu_s_per_step"])
        if row["variant"] not in (BASELINE, "none"):
            assert row["meets_goal"] == (row["ratio"] <= 2.0)


def test_frozen_blocks_and_the_protocol_show_in_the_trainable_count(result: dict) -> None:
    by_name = {r["name"]: r for r in result["rows"]}
    full, frozen = by_name["light-fs8 p8"], by_name["light-fs8-last1 p8"]
    assert full["params"] == frozen["params"] == full["trainable"] > frozen["trainable"]
    assert by_name["none p8"]["trainable"] < full["trainable"]  # the backbone alone


def test_config_records_threads_load_and_the_batch(result: dict[str, Any]) -> None:
    config = result["config"]
    assert config["threads"] == 1 and config["device"] == "cpu"
    assert len(config["load_average_before"]) == len(config["load_average_after"]) == 3
    assert config["clip_shape"] == [2, 1, 2, 32, 32]
    assert config["variants"] == ["none", "unetr-fs8", "dense", "light-fs8", "light-fs8-last1"]


def test_result_is_written_as_json(run: tuple[dict[str, Any], Path]) -> None:
    result, out = run
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))


def test_threads_are_restored() -> None:
    before = torch.get_num_threads()
    bench_seg(**TINY, patches=[8], variants=["none"], threads=2, console=_quiet())
    assert torch.get_num_threads() == before


class Recorder:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def run(self, clip: torch.Tensor, label: torch.Tensor, steps: int, timed: bool = True) -> None:
        self.log.extend([self.name + ("" if timed else " warm-up")] * steps)


def test_rounds_alternate_the_order_after_an_untimed_warm_up() -> None:
    log: list[str] = []
    contenders = [Recorder(n, log) for n in "abc"]
    measure(contenders, torch.zeros(1), torch.zeros(1), steps=1, rounds=3, warmup=1)  # type: ignore[arg-type]
    assert log == ["a warm-up", "b warm-up", "c warm-up", *"abc", *"cba", *"abc"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, "steps"),
        ({"patches": []}, "patches"),
        ({"variants": ["light-fs"]}, "light-fs"),
        ({"device": "mps"}, "device must be cpu or cuda"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bench_seg(**{**TINY, **kwargs}, console=_quiet())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'cuda': no CUDA device here"):
        bench_seg(**{**TINY, "device": "cuda"}, console=_quiet())


def test_command_line_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "seg.json"
    main(["bench", "seg", "--backbone", "cmr_vit_test", "--size", "32", "--batch", "1",
          "--patches", "16", "--variants", "light-fs8", "--steps", "1", "--rounds", "1",
          "--warmup", "0", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    assert [r["name"] for r in result["rows"]] == ["unet", "light-fs8 p16"]
    assert "segmenter training step vs U-Net" in capsys.readouterr().out


def test_command_line_names_a_bad_variant(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "seg", "--variants", "lite", "--out", str(tmp_path / "x.json")])
    assert info.value.code == 2  # a user's error: one line on stderr (cli.fail), no traceback
    assert "cmrfm bench seg: error: variant 'lite'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_command_line_names_bad_patch_sizes(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "seg", "--patches", "8,x"])
    assert "--patches: expected patch sizes like 8,16, got '8,x'" in capsys.readouterr().err
