"""One tuple of modality names: the backbone's embedding rows and what sources accept."""

from __future__ import annotations

import pytest

from cmrfm_io.modalities import MODALITIES
from data_shards import phantom
from data_shards.sources import nifti
from foundation import names


def test_rows_are_append_only() -> None:
    assert MODALITIES[:2] == ("cine", "lge")  # checkpoints index modality_embed by position


@pytest.mark.parametrize("user", [names, phantom, nifti])
def test_every_layer_uses_the_one_tuple(user) -> None:
    assert user.MODALITIES is MODALITIES
