#!/usr/bin/env bash
# Issue 12: the release pretrained further with LGE (continue_with_lge.yaml), then the release and
# the new weights fine-tuned on ACDC val (N = 5 and 10, seeds 0-2, 1,000 steps, the release's
# recipe) and compared paired by seed. Every phase resumes: run it again after a restart.
# `nohup nice -n 10 bash benchmarks/issue12/continue_lge.sh > runs/issue12/continue_lge.log 2>&1 &`
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD  # this tree's code, also from a worktree (with .venv and runs linked)
export OMP_NUM_THREADS=${THREADS:-2}
CMRFM=(.venv/bin/python -m cmrfm)
DATA=../shared/data
OUT=runs/pretrain_unet_cpu_lge_cont
VAL=runs/issue12/val
mkdir -p runs/issue12 "$VAL"

shard() {  # SOURCE ROOT NAME: shard once
  [ -f "runs/real/$3/manifest.json" ] || "${CMRFM[@]}" shard --source "$1" --root "$DATA/$2" --out "runs/real/$3"
}
shard acdc acdc/training acdc
shard acdc-cine acdc_cine acdc_cine
shard dicom sunnybrook sunnybrook
shard nifti mnms2 mnms2
shard lge-slices emidec emidec

if [ ! -f "$OUT/last.ckpt" ]; then  # the campaign writes OUT/last.ckpt when it finishes
  resume=()
  if compgen -G "$OUT/logs/version_*/checkpoints/*.ckpt" > /dev/null; then resume=(--resume last); fi
  "${CMRFM[@]}" pretrain --config configs/pretrain_unet_cpu.yaml \
    --config benchmarks/issue12/pretrain_with_lge.yaml \
    --config benchmarks/issue12/continue_with_lge.yaml --out "$OUT" "${resume[@]}"
fi

val() {  # NAME WEIGHTS
  "${CMRFM[@]}" fewshot --config configs/fewshot_seg_unet_acdc.yaml --labels 5,10 --seeds 3 \
    --methods pretrained --steps 1000 --eval-split val --pretrained "$2" \
    --out "$VAL/$1" --threads "$OMP_NUM_THREADS"
}
val release models/cmr-unet-small-cine
val end "$OUT/last.ckpt"
.venv/bin/python benchmarks/issue12/compare_val.py "$VAL/release" "$VAL/end" --bar 0.01 | tee "$VAL/compare.txt"
