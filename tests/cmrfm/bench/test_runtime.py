"""`cmrfm bench runtime`: one row per runtime, ratios against torch of the same package and run,
label agreement with torch, the given package left unwritten, the JSON and the command line.

No timing thresholds: the numbers depend on the machine; these tests pin down what is compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmrfm.bench.runtime import RUNTIMES, build_package
from cmrfm.cli import main


def test_rows_compare_each_runtime_with_torch_and_leave_the_package_alone(
    tmp_path: Path, package: Path
) -> None:
    before = sorted(p.name for p in package.iterdir())
    config_before = (package / "config.json").read_bytes()
    out = tmp_path / "runtime.json"
    main(["bench", "runtime", "--model", str(package), "--slices", "2", "--frames", "4",
          "--rounds", "2", "--batch", "3", "--out", str(out)])  # fmt: skip
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["runtime"] for r in rows] == list(RUNTIMES)
    torch_row, onnx_row, int8_row = rows
    assert torch_row["ratio"] == 1.0 and torch_row["agreement"] == 1.0
    for row in rows:
        assert len(row["seconds"]) == len(row["cpu_seconds"]) == 2  # one per round
        assert row["ratio"] == pytest.approx(row["s_per_study"] / torch_row["s_per_study"])
        assert row["clips"] == 2 * 2  # 2 slices x (4 frames in clips of 2)
    assert onnx_row["agreement"] >= 0.999  # fp32: the same labels but for near-ties
    assert 0.5 < int8_row["agreement"] <= 1.0
    assert int8_row["file_mb"] < onnx_row["file_mb"]
    assert result["config"]["study_st"] == [2, 4]
    # the benchmark exports into a copy: the given package gains no file and no record
    assert sorted(p.name for p in package.iterdir()) == before
    assert (package / "config.json").read_bytes() == config_before


def test_built_packages_and_bad_options(tmp_path: Path, capsys) -> None:
    folder = build_package("unet", tmp_path / "unet", seed=0)
    assert json.loads((folder / "config.json").read_text())["model"]["init_args"]["arch"] == "unet"
    with pytest.raises(ValueError, match="arch 'nope'"):
        build_package("nope", tmp_path / "nope", seed=0)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "runtime", "--rounds", "0", "--out", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2
    assert "rounds" in capsys.readouterr().err
