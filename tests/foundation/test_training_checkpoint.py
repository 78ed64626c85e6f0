"""foundation.training_checkpoint: a Lightning or DeepSpeed ZeRO checkpoint read as one state."""

from __future__ import annotations

import pytest

from cmrfm.export import export


def test_folder_that_is_no_deepspeed_checkpoint_raises(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a DeepSpeed checkpoint"):
        export(tmp_path / "empty", tmp_path / "hub")
