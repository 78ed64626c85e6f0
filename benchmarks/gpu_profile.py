"""Where the GPU time of one MAE pretraining step goes (`cmrfm bench pretrain --preset h100`'s
bare loop, eager): torch.profiler over a few steps at 90 % and 0 % masking, the top kernels and
operators by device time, and the step's device-busy time against its wall time (a step whose
device idles is launch- or CPU-bound). Written for one call of a lent GPU host:

    PYTHONPATH=. python3 benchmarks/gpu_profile.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from cmrfm.bench.pretrain_cases import Setup
from cmrfm.bench.pretrain_options import PRESETS
from cmrfm.bench.pretrain_runs import Clock, bare_step, make_batch


def main(out: Path) -> None:
    options = PRESETS["h100"]
    setup = Setup(options.backbone, options.frames, options.size, options.patch, options.tubelet,
                  options.batch, 5, 10, options.precision, options.decoder_dim,
                  options.decoder_depth, options.decoder_heads)  # fmt: skip
    device = torch.device("cuda")
    batch = make_batch(setup, device)
    lines: list[str] = []
    for mask in (0.9, 0.0):
        lines += profile_mask(setup, batch, mask)
        torch.cuda.empty_cache()
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").write_text(text)
    print(text)


def profile_mask(setup: Setup, batch: dict, mask: float) -> list[str]:
    """Time ``setup.steps`` steps unprofiled, then profile as many; the tables as text."""
    step = bare_step(setup, mask, batch)

    for _ in range(setup.warmup):
        step()
    clock = Clock(batch["clip"].device)
    clock.start()
    for _ in range(setup.steps):
        step()
    wall = clock.stop()[0] / setup.steps
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(setup.steps):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    device_us = sum(e.self_device_time_total for e in kernels) / setup.steps  # as the table's total
    return [
        f"## mask {mask:g}: wall {wall * 1e3:.1f} ms/step (unprofiled), device busy "
        f"{device_us / 1e3:.1f} ms/step (sum of kernel time, profiled)",
        events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70),
        events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70),
    ]


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gpu_profile"))
