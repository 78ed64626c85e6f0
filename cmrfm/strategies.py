"""DeepSpeed strategy that also runs on CPU (tests, smoke runs); on CUDA it is Lightning's own.

Lightning's DeepSpeedStrategy refuses any accelerator but CUDA, although DeepSpeed itself has a
CPU accelerator (gloo, torch optimizers). Configs name this class with ``stage: 2`` or ``3``.
"""

from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class DeepSpeed(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy (same arguments: stage, offload_optimizer, ...); on a CPU
    accelerator it skips the CUDA-only checks and gives DeepSpeed the device index it needs."""

    def _on_cuda(self) -> bool:
        return isinstance(self.accelerator, CUDAAccelerator)

    def setup_environment(self) -> None:
        if self._on_cuda():
            super().setup_environment()
        else:
            DDPStrategy.setup_environment(self)  # what the parent does after its CUDA check

    def setup_distributed(self) -> None:
        if self._on_cuda():
            super().setup_distributed()
            return
        # The parent's device-index check compares CUDA indices; CPU devices have none.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        device = super().root_device
        if device.type == "cpu":
            return torch.device("cpu", self.local_rank)  # DeepSpeed's engine reads the index
        return device
