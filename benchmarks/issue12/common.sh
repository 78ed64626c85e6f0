# Sourced by issue 12's scripts (benchmarks/issue12/*.sh): this tree's code and venv, the thread
# count, the real shards (built once, under runs/real/), a resumable pretraining campaign, one val
# fine-tuning command and the paired comparison with the release.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH=$PWD  # this tree's code, also from a worktree (with .venv and runs linked)
export OMP_NUM_THREADS=${THREADS:-2}
CMRFM=(.venv/bin/python -m cmrfm)
DATA=../shared/data
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

campaign() {  # OUT CONFIG...: pretrain into OUT, resumed from its newest checkpoint if it has one
  local out=$1 resume=() configs=()
  [ -f "$out/last.ckpt" ] && return 0  # the campaign writes OUT/last.ckpt when it finishes
  if compgen -G "$out/logs/version_*/checkpoints/*.ckpt" > /dev/null; then resume=(--resume last); fi
  for config in "${@:2}"; do configs+=(--config "$config"); done
  "${CMRFM[@]}" pretrain "${configs[@]}" --out "$out" "${resume[@]}"
}

val() {  # NAME WEIGHTS: the release's fine-tuning recipe on ACDC val, N = 5 and 10, seeds 0-2
  "${CMRFM[@]}" fewshot --config configs/fewshot_seg_unet_acdc.yaml --labels 5,10 --seeds 3 \
    --methods pretrained --steps 1000 --eval-split val --pretrained "$2" \
    --out "$VAL/$1" --threads "$OMP_NUM_THREADS"
}

compare() {  # NAME [--bar B]: NAME's val runs against the release's, paired by seed (compare_val.py)
  .venv/bin/python benchmarks/issue12/compare_val.py "$VAL/release" "$VAL/$1" "${@:2}" | tee "$VAL/compare_$1.txt"
}
