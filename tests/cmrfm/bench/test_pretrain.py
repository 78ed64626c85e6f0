"""`cmrfm bench pretrain`: Lightning and the bare loop measured on the same model and batch, the
ratios, FLOPs per step and MFU, masked against unmasked, and rows that say why they did not run.

No timing thresholds: the numbers depend on the machine; these tests pin down what is compared.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cmrfm.bench import pretrain as bp
from cmrfm.bench import pretrain_runs
from cmrfm.bench.pretrain_cases import PRECISIONS
from cmrfm.cli import build_parser, main

TINY = {"backbone": "cmr_vit_test", "frames": 4, "size": 16, "patch": 8, "tubelet": 2, "batch": 2,
        "steps": 2, "warmup": 1, "mask": 0.9, "decoder_dim": 16, "decoder_depth": 1,
        "decoder_heads": 2}  # fmt: skip
ROUNDS = 2
PEAK = 1e-3  # TFLOP/s: any peak gives an MFU to check the formula against
NO_COMPILER = "no C++ compiler (test)"


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def _row(result: dict[str, Any], run: str, compile: bool, mask: float) -> dict[str, Any]:
    """The row of run "bare" or of a Lightning strategy ("ddp", ...)."""
    key = ("bare", None) if run == "bare" else ("lightning", run)
    (row,) = [r for r in result["runs"]
              if (r["loop"], r["strategy"]) == key and (r["compile"], r["mask"]) == (compile, mask)]  # fmt: skip
    return row


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """A tiny run on the CPU: compile unavailable, and DeepSpeed failing at start-up."""

    def failing(name: str) -> Any:
        if name.startswith("deepspeed"):
            raise RuntimeError("simulated: the engine cannot start here\nsecond line")
        return original(name)

    original = pretrain_runs.make_strategy
    out = tmp_path_factory.mktemp("bench") / "pretrain.json"
    console = _quiet()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bp, "compile_unavailable", lambda device: NO_COMPILER)
        patch.setattr(pretrain_runs, "make_strategy", failing)  # where the runs look it up
        result = bp.bench_pretrain(**TINY, compile=True, strategies="ddp,deepspeed_stage_2",
                                   peak_tflops=PEAK, rounds=ROUNDS, device="cpu", out=out,
                                   console=console)  # fmt: skip
    return result, out, console.file.getvalue()


def test_both_loops_measure_the_same_steps_and_the_ratio_is_lightning_over_bare(bench) -> None:
    result, _, _ = bench
    for mask in (0.9, 0.0):
        bare, lightning = _row(result, "bare", False, mask), _row(result, "ddp", False, mask)
        for row in (bare, lightning):
            assert row["status"] == "ok" and row["reason"] is None
            # Every round timed exactly `steps` steps after the warm-up, in both loops.
            assert row["steps"] == TINY["steps"] * ROUNDS
            assert len(row["rounds_clips_per_s"]) == ROUNDS
            assert row["clips"] == TINY["batch"] * row["steps"]
            assert row["clips_per_s"] == row["clips"] / row["seconds"]
            assert row["ms_per_step"] == pytest.approx(1e3 * row["seconds"] / row["steps"])
            assert row["max_memory_gb"] is None  # measured on a GPU only
    (loop,) = [c for c in result["comparisons"]
               if c["kind"] == "loop" and c["compile"] is False and c["name"] == "lightning ddp / bare"]  # fmt: skip
    bare, lightning = _row(result, "bare", False, 0.9), _row(result, "ddp", False, 0.9)
    assert loop["ratio"] == lightning["clips_per_s"] / bare["clips_per_s"]
    assert loop["ratio_by_cpu"] == lightning["clips_per_cpu_s"] / bare["clips_per_cpu_s"]
    assert loop["ms_per_step_difference"] == lightning["ms_per_step"] - bare["ms_per_step"]
    assert loop["goal"] == 0.95
    (masking,) = [c for c in result["comparisons"]
                  if c["kind"] == "masking" and c["compile"] is False and c["name"].endswith(": bare")]  # fmt: skip
    assert masking["ratio"] == bare["clips_per_s"] / _row(result, "bare", False, 0.0)["clips_per_s"]


def test_flops_per_step_are_the_configs_and_the_systems_own_count_agrees(bench) -> None:
    result, _, _ = bench
    flops = {}
    for mask in (0.9, 0.0):
        bare, lightning = _row(result, "bare", False, mask), _row(result, "ddp", False, mask)
        assert bare["flops_per_step"] > 0
        assert bare["flops_per_step"] == lightning["flops_per_step"]
        # PretrainSystem counts its first step itself (FlopCounterMode around the optimizer
        # closure): the same forward + backward the benchmark counted on its own model.
        assert lightning["system_flops_per_step"] == lightning["flops_per_step"]
        flops[mask] = bare["flops_per_step"]
        for row in (bare, lightning):
            achieved = row["flops_per_step"] * row["steps"] / row["seconds"] / 1e12
            assert row["tflops_per_s"] == pytest.approx(achieved)
            assert row["mfu"] == pytest.approx(achieved / PEAK)
    # The encoder sees every token without masking: more work than with 90% of them masked.
    assert flops[0.0] > flops[0.9]


def test_runs_that_cannot_run_say_why_and_their_comparisons_are_empty(bench) -> None:
    result, _, printed = bench
    for row in result["runs"]:
        if row["compile"]:
            assert (row["status"], row["reason"]) == ("skipped", NO_COMPILER)
        elif row["strategy"] == "deepspeed_stage_2":
            assert row["status"] == "failed"
            assert row["reason"] == "RuntimeError: simulated: the engine cannot start here"
        if row["status"] != "ok":
            assert row["clips_per_s"] is None and row["mfu"] is None and row["steps"] == 0
    for comparison in result["comparisons"]:
        involved = [comparison["numerator"], comparison["denominator"]]
        broken = [r for r in result["runs"] if r["id"] in involved and r["status"] != "ok"]
        assert (comparison["ratio"] is None) == bool(broken)
        if broken:
            assert all(r["id"] in comparison["reason"] for r in broken)
    assert f"torch.compile skipped: {NO_COMPILER}" in result["notes"]
    assert f"skipped: {NO_COMPILER}" in printed
    assert "failed: RuntimeError: simulated" in printed


def test_the_json_holds_what_was_returned_and_printed(bench) -> None:
    result, out, printed = bench
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    config = result["config"]
    assert {k: config[k] for k in TINY} == TINY
    assert config["strategies"] == ["ddp", "deepspeed_stage_2"]
    assert config["threads"] == 1 and config["device"] == "cpu"
    assert "lightning ddp / bare" in printed and "≥ 0.95" in printed


def test_peak_is_omitted_on_a_cpu_unless_given() -> None:
    assert bp.resolve_peak(None, bp.torch.device("cpu"))[0] is None
    assert bp.resolve_peak(312.0, bp.torch.device("cpu"))[0] == 312.0


def test_h100_preset_is_vit_b_on_16x128x128_and_explicit_options_win() -> None:
    options = bp.resolve_options("h100", batch=16, steps=None)
    vit_b = {"backbone": "cmr_vit_base", "frames": 16, "size": 128, "patch": 16, "tubelet": 2,
             "mask": 0.9, "precision": "bf16-mixed"}  # fmt: skip
    assert {k: options[k] for k in vit_b} == vit_b
    assert options["batch"] == 16  # given
    assert options["steps"] == bp.PRESETS["h100"].steps  # None: not given
    assert bp.resolve_options() == bp.DEFAULTS
    with pytest.raises(ValueError, match="unknown preset"):
        bp.resolve_options("tpu")


def test_cli_flags_are_the_option_fields_and_reach_the_benchmark() -> None:
    # The flags are built from PretrainBenchOptions' fields and types: none is copied by hand.
    parser = build_parser()
    for preset in bp.PRESETS:
        assert parser.parse_args(["bench", "pretrain", "--preset", preset]).preset == preset
    for precision in PRECISIONS:
        args = parser.parse_args(["bench", "pretrain", "--precision", precision, "--batch", "4"])
        assert (args.precision, args.batch, args.frames) == (precision, 4, None)
    args = parser.parse_args(["bench", "pretrain", "--decoder-dim", "48", "--mask", "0.75"])
    given = {name: getattr(args, name) for name in bp.DEFAULTS}
    assert bp.resolve_options("h100", **given) == {**asdict(bp.PRESETS["h100"]), "decoder_dim": 48,
                                                   "mask": 0.75}  # fmt: skip
    with pytest.raises(SystemExit):  # an int field refuses text: typed by the annotation
        parser.parse_args(["bench", "pretrain", "--frames", "four"])
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "pretrain", "--precision", "16-mixed"])


def test_cli_runs_the_benchmark_with_its_options(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    main(["bench", "pretrain", "--frames", "4", "--size", "16", "--batch", "2", "--steps", "1",
          "--warmup", "1", "--rounds", "1", "--mask", "0", "--decoder-dim", "16", "--no-compile",
          "--strategies", "auto", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    config = result["config"]
    assert (config["size"], config["mask"], config["strategies"]) == (16, 0.0, ["auto"])
    assert config["compile"] is False
    # Mask 0 is its own baseline: no second, unmasked run and no masking ratio.
    assert [r["id"] for r in result["runs"]] == [
        "bare, eager, mask 0",
        "lightning single, eager, mask 0",
    ]
    assert {r["status"] for r in result["runs"]} == {"ok"}
    assert [c["kind"] for c in result["comparisons"]] == ["loop"]
    assert "lightning single / bare" in capsys.readouterr().out


def test_cli_refuses_an_unknown_strategy_before_running(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "pretrain", "--strategies", "ddp,fsdp", "--out", str(tmp_path / "x.json")])
    assert info.value.code == 2
    assert "cmrfm bench pretrain: error: strategies must be names from" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_deepspeed_zero2_and_compiled_runs_measure_on_this_cpu(tmp_path: Path) -> None:
    """The real thing (torch.compile needs a C++ compiler here; ~1 min of compiling)."""
    if bp.compile_unavailable(bp.torch.device("cpu")):
        pytest.skip(bp.compile_unavailable(bp.torch.device("cpu")))
    result = bp.bench_pretrain(**TINY, compile=True, strategies="ddp,deepspeed_stage_2", rounds=1,
                               device="cpu", console=_quiet())  # fmt: skip
    assert {r["status"] for r in result["runs"]} == {"ok"}, [r["reason"] for r in result["runs"]]
    for mask in (0.9, 0.0):
        counts = {_row(result, loop, c, mask)["flops_per_step"]
                  for loop in ("bare", "ddp", "deepspeed_stage_2") for c in (False, True)}  # fmt: skip
        assert len(counts) == 1
    assert all(c["ratio"] is not None for c in result["comparisons"])
