"""FLOPs of a training step, counted by torch's FlopCounterMode, and model FLOPs utilisation.

Counted: matrix multiplies, convolutions and attention (forward and backward), which is where a
ViT spends its arithmetic; elementwise work (norms, activations, the optimizer) is left out, as
in the usual MFU definition.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment, most specific
# first: the vendors' data sheets.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


def _cpu_sdpa(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(q, k, v)


def _cpu_sdpa_backward(
    grad_out: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


# torch registers the CUDA attention kernels only; the CPU kernel would count as zero.
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU attention; use as a context manager."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION)


def peak_tflops(device: torch.device) -> float | None:
    """Dense bf16 peak of a known CUDA device (TFLOP/s); None for CPUs and unknown cards."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for fragment, peak in PEAK_TFLOPS if fragment in name), None)
