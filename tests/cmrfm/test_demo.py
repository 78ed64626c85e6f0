"""cmrfm.demo: what `cmrfm demo` plans to run (the run itself: tests/cmrfm/test_chain.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrfm.demo import make_plan


def test_the_demo_plans_its_start() -> None:
    # The phantom pretrains its own backbone; an ACDC folder starts from the release unless told.
    assert make_plan(None, quick=True).pretrain_config is not None
    acdc = make_plan(Path("acdc"), quick=False)
    assert acdc.pretrain_config is None and acdc.pretrained == "cmr-unet-small-cine"
    assert make_plan(Path("acdc"), quick=False, pretrained="none").pretrained == "none"
    with pytest.raises(ValueError, match="--pretrained goes with --data"):
        make_plan(None, quick=False, pretrained="none")


def test_weights_refused_while_building_stop_the_demo_in_one_line(tmp_path, monkeypatch, capsys):
    import cmrfm.demo
    from cmrfm.cli import main
    from cmrfm.train import BuildError

    bad = tmp_path / "copied.ckpt"

    def refuse(*args, **kwargs):  # what run_training raises for weights it cannot read
        raise BuildError(f"{bad}: cannot read as a Lightning checkpoint (not a PyTorch checkpoint)")

    monkeypatch.setattr(cmrfm.demo, "run_demo", refuse)
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--data", str(tmp_path), "--pretrained", "none", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert (
        stop.value.code == 2
        and err
        == f"cmrfm demo: error: {bad}: cannot read as a "
        "Lightning checkpoint (not a PyTorch checkpoint)\n"
    )
