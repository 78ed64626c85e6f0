#!/usr/bin/env bash
# Issue 12: the LGE campaign from random init (pretrain_with_lge.yaml, 9,500 steps; its first run
# was lost with `runs/` at step 8,937), then its final weights and steps 4,000 and 9,000 fine-tuned
# on ACDC val as continue_lge.sh does, each compared with the release paired by seed.
# Every phase resumes: run it again after a restart.
# `nohup nice -n 10 bash benchmarks/issue12/scratch_lge.sh > runs/issue12/scratch_lge.log 2>&1 &`
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD  # this tree's code, also from a worktree (with .venv and runs linked)
export OMP_NUM_THREADS=${THREADS:-2}
CMRFM=(.venv/bin/python -m cmrfm)
OUT=runs/pretrain_unet_cpu_lge
VAL=runs/issue12/val
mkdir -p "$VAL"

if [ ! -f "$OUT/last.ckpt" ]; then  # the campaign writes OUT/last.ckpt when it finishes
  resume=()
  if compgen -G "$OUT/logs/version_*/checkpoints/*.ckpt" > /dev/null; then resume=(--resume last); fi
  "${CMRFM[@]}" pretrain --config configs/pretrain_unet_cpu.yaml \
    --config benchmarks/issue12/pretrain_with_lge.yaml --out "$OUT" "${resume[@]}"
fi

val() {  # NAME WEIGHTS
  "${CMRFM[@]}" fewshot --config configs/fewshot_seg_unet_acdc.yaml --labels 5,10 --seeds 3 \
    --methods pretrained --steps 1000 --eval-split val --pretrained "$2" \
    --out "$VAL/$1" --threads "$OMP_NUM_THREADS"
}
val release models/cmr-unet-small-cine
val scratch_end "$OUT/last.ckpt"
for step in 9000 4000; do
  val "scratch_$step" "$(ls "$OUT"/logs/version_*/checkpoints/*"step=$step.ckpt" | head -1)"
done
for name in scratch_end scratch_9000 scratch_4000; do
  .venv/bin/python benchmarks/issue12/compare_val.py "$VAL/release" "$VAL/$name"
done | tee "$VAL/compare_scratch.txt"
