#!/usr/bin/env bash
# Issue 12: the release pretrained further with LGE (continue_with_lge.yaml), then the release and
# the new weights fine-tuned on ACDC val (N = 5 and 10, seeds 0-2, 1,000 steps, the release's
# recipe) and compared paired by seed. Every phase resumes: run it again after a restart.
# `nohup nice -n 10 bash benchmarks/issue12/continue_lge.sh > runs/issue12/continue_lge.log 2>&1 &`
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=runs/pretrain_unet_cpu_lge_cont

campaign "$OUT" configs/pretrain_unet_cpu.yaml benchmarks/issue12/pretrain_with_lge.yaml \
  benchmarks/issue12/continue_with_lge.yaml

val release models/cmr-unet-small-cine
val end "$OUT/last.ckpt"
compare end --bar 0.01
