"""foundation.device.to_device: the tensor's values on the device, whatever the way there."""

from __future__ import annotations

import pytest
import torch

from foundation.device import to_device


def test_to_device_keeps_values_and_dtype() -> None:
    t = torch.arange(6, dtype=torch.long)
    moved = to_device(t, "cpu")
    assert moved.dtype == torch.long and torch.equal(moved, t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_copies_to_a_gpu_without_blocking_the_stream() -> None:
    t = torch.randn(512, 64)
    moved = to_device(t, "cuda")
    assert moved.device.type == "cuda" and torch.equal(moved.cpu(), t)
