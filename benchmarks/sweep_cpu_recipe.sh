#!/usr/bin/env bash
# The short sweep that chose configs/pretrain_cine_cpu.yaml (benchmarks/RESULTS.md, "CPU
# pretraining recipe"): each arm pretrains for the same wall time on one thread, two arms at a
# time on the 2 cores, and the online probe scores the backbone at step 0 and at the end.
# Usage: bash benchmarks/sweep_cpu_recipe.sh ARM [ARM]   (arms: base, pix, mask75, contrastive)
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-10}
arm() {
  local name=$1; shift
  local out=runs/sweep/$name
  OMP_NUM_THREADS=1 .venv/bin/cmrfm pretrain --config configs/pretrain_cine_cpu.yaml \
    --out "$out" --trainer.logger.init_args.save_dir "$out" \
    --trainer.max_time "00:00:${MINUTES}:00" --trainer.enable_progress_bar false "$@" \
    > "$out.log" 2>&1
}
run() {
  case $1 in
    base) arm base ;;
    pix) arm pix --model.init_args.objective_kwargs \
      '{mask_ratio: {cine: 0.9, lge: 0.75}, decoder_dim: 128, decoder_depth: 2, decoder_heads: 4, norm_pix_loss: false}' ;;
    mask75) arm mask75 --model.init_args.objective_kwargs \
      '{mask_ratio: {cine: 0.75, lge: 0.75}, decoder_dim: 128, decoder_depth: 2, decoder_heads: 4, norm_pix_loss: false}' ;;
    contrastive) arm contrastive --model.init_args.objective mae_contrastive \
      --model.init_args.objective_kwargs \
      '{mask_ratio: {cine: 0.9, lge: 0.75}, decoder_dim: 128, decoder_depth: 2, decoder_heads: 4, norm_pix_loss: false, proj_hidden: 512, proj_dim: 128, temperature: 0.1, w_mae: 1.0, w_con: 0.5}' \
      --data.init_args.views 2 ;;
    *) echo "unknown arm $1" >&2; exit 2 ;;
  esac
}
mkdir -p runs/sweep
for a in "$@"; do run "$a" & done
wait
