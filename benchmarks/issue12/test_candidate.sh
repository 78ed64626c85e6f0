#!/usr/bin/env bash
# Issue 12: a pretraining checkpoint that beat the release on val gets the README's test runs.
# Exports it to a hub folder (with its probe curve), then runs the README's three commands with
# `--pretrained` that folder: pretrained and the MONAI U-Net, N = 1, 2, 5, 10 (seeds 0-2,
# 1,000 steps) and all (seed 0, 4,000 steps), one run at a time, then merges them.
# `nohup nice -n 10 bash benchmarks/issue12/test_candidate.sh NAME CKPT PROBE_CSV > runs/issue12/test_NAME.log 2>&1 &`
# e.g. NAME=scratch_end CKPT=runs/pretrain_unet_cpu_lge/last.ckpt PROBE_CSV=runs/pretrain_unet_cpu_lge/probe.csv
# Every phase resumes: run it again after a restart.
set -euo pipefail
source "$(dirname "$0")/common.sh"
NAME=$1 CKPT=$2 PROBE=$3
HUB=runs/issue12/export/$NAME
TEST=runs/issue12/test/$NAME

[ -f "$HUB/model.safetensors" ] || "${CMRFM[@]}" export "$CKPT" "$HUB" --probe "$PROBE"
"${CMRFM[@]}" fewshot --config configs/fewshot_seg_unet_acdc.yaml --labels 1,2,5,10 --seeds 3 \
  --methods pretrained,unet --steps 1000 --pretrained "$HUB" --out "${TEST}_seeded" \
  --threads "$OMP_NUM_THREADS"
"${CMRFM[@]}" fewshot --config configs/fewshot_seg_unet_acdc.yaml --labels all --seeds 1 \
  --methods pretrained,unet --steps 4000 --pretrained "$HUB" --out "${TEST}_all_seeded" \
  --threads "$OMP_NUM_THREADS"
"${CMRFM[@]}" fewshot --merge "${TEST}_seeded" "${TEST}_all_seeded" --out "${TEST}_merged"
cat "${TEST}_merged/summary.md"
