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
