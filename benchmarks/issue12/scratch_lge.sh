#!/usr/bin/env bash
# Issue 12: the LGE campaign from random init (pretrain_with_lge.yaml, 9,500 steps; its first run
# was lost with `runs/` at step 8,937), then its final weights fine-tuned on ACDC val as
# continue_lge.sh does and compared with the release paired by seed (the README's test runs,
# test_candidate.sh, when they beat it by 0.01 at N = 5 and 10), then steps 9,000 and 4,000 on val.
# Every phase resumes: run it again after a restart.
# `nohup nice -n 10 bash benchmarks/issue12/scratch_lge.sh > runs/issue12/scratch_lge.log 2>&1 &`
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=runs/pretrain_unet_cpu_lge

campaign "$OUT" configs/pretrain_unet_cpu.yaml benchmarks/issue12/pretrain_with_lge.yaml

val release models/cmr-unet-small-cine
val scratch_end "$OUT/last.ckpt"
# The rule set before the runs: test runs only for +0.01 over the release on val at N = 5 and 10.
if compare scratch_end --bar 0.01; then
  bash benchmarks/issue12/test_candidate.sh scratch_end "$OUT/last.ckpt" "$OUT/probe.csv"
fi
for step in 9000 4000; do
  val "scratch_$step" "$(ls "$OUT"/logs/version_*/checkpoints/*"step=$step.ckpt" | head -1)"
  compare "scratch_$step"
done
