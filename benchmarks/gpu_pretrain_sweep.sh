#!/usr/bin/env bash
# Issue 12 on a lent GPU: three variants of configs/pretrain_unet_cpu.yaml (the release's recipe:
# MONAI's U-Net, positional contrast) pretrained side by side on one GPU, each with the online
# probe, then exported as hub folders to fine-tune on val on the CPU (`cmrfm fewshot
# --pretrained FOLDER --eval-split val`). Arms (benchmarks/gpu_sweep/*.yaml, after the recipe):
#   b48            the recipe as it is, longer (the control)
#   b256           batch 256
#   b256_instance  batch 256 plus the instance term (pretext.positional instance_weight)
#   b256_instance4 the same at instance_weight 4 (not in the default ARMS; ARMS="..." chooses)
# Data: `python benchmarks/gpu_carry_shards.py` first (.gpu_data/shards.tar.xz, ignored; the
# ACDC cine thinned to every 2nd frame to fit the call's 64 MiB); wheels for what the host lacks
# in .gpu_data/whl (monai, webdataset, braceexpand, nibabel, pydicom (export reads the sources) and jsonargparse with its
# "signatures" extra: docstring_parser, typeshed_client, importlib_resources; made as in
# benchmarks/gpu_bench.sh). Carry .gpu_data. Results to $OUT: one tar per arm (two hub folders,
# probe.csv, metrics.csv, log), and log.txt.
#
#   bash benchmarks/gpu_pretrain_sweep.sh [DEADLINE]   # default 480 s
#   TINY=1 bash benchmarks/gpu_pretrain_sweep.sh 300    # rehearsal on a CPU: a few small steps
set -u
OUT=${OUT:-runs/gpu_sweep${TINY:+_tiny}/out}
DEADLINE=${1:-480}
WORK=${WORK:-runs/gpu_sweep${TINY:+_tiny}}  # a rehearsal never writes into a real sweep
mkdir -p "$OUT" "$WORK"
LOG=$OUT/log.txt
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }

WHEELS=.gpu_data/whl  # only what this needs: the call's 64 MiB holds the shards too
[[ -d $WHEELS ]] || WHEELS=.whl
if [[ -d $WHEELS && -z ${TINY:-} ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 COLUMNS=160 WANDB_MODE=offline
say "=== host: $(date -u +%FT%TZ), $(getconf _NPROCESSORS_ONLN) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>&1 || echo "no nvidia-smi"; } | tee -a "$LOG"

if [[ ! -f runs/real/acdc/manifest.json ]]; then
    python3 -c "import tarfile; tarfile.open('.gpu_data/shards.tar.xz').extractall('runs/real', filter='data')" \
        || { say "no shards: run benchmarks/gpu_carry_shards.py and carry .gpu_data"; exit 1; }
    say "=== shards unpacked at $SECONDS s: $(du -sh runs/real | cut -f1)"
fi

read -r -a ARMS <<<"${ARMS:-b48 b256 b256_instance}"  # ARMS="b48 b256_instance4" to choose
EXTRA=()
if [[ -n ${TINY:-} ]]; then  # small and quick, same code path
    cat >"$WORK/tiny.yaml" <<'YAML'
trainer:
  max_steps: 6
  callbacks:
    - {class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {every_n_train_steps: 3, save_top_k: -1}}
    - {class_path: finetune.probe.SegProbe, init_args: {shards: runs/real/acdc, labels: 1, every_n_steps: 3}}
data:
  init_args: {batch_size: 8, num_workers: 0, epoch_length: 48}
YAML
    EXTRA=(--config "$WORK/tiny.yaml")
fi
train_s=$((DEADLINE - SECONDS - 150))  # the exports (about 20 s each) and the packing after it
say "=== ${ARMS[*]} side by side, each for at most $train_s s of training"
max_time=$(printf '00:00:%02d:%02d' $((train_s / 60)) $((train_s % 60)))
pids=()
for arm in "${ARMS[@]}"; do
    python3 -m cmrfm pretrain --config configs/pretrain_unet_cpu.yaml \
        --config "benchmarks/gpu_sweep/$arm.yaml" --out "$WORK/$arm" \
        --trainer.max_time "$max_time" "${EXTRA[@]}" >"$WORK/$arm.log" 2>&1 &
    pids+=($!)
done
(sleep $((train_s / 2)) && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv 2>&1 | tee -a "$LOG") &
wait "${pids[@]}"
for arm in "${ARMS[@]}"; do
    say "=== $arm: $(grep -c . "$WORK/$arm.log") log lines; last: $(tail -n 2 "$WORK/$arm.log" | tr '\n' ' ' | cut -c1-300)"
done

# step=N of a checkpoint path
step_of() { sed -E 's/.*step=([0-9]+).*/\1/' <<<"$1"; }
for arm in "${ARMS[@]}"; do
    mapfile -t ckpts < <(find "$WORK/$arm" -name '*step=*.ckpt' | awk -F'step=' '{print $2"\t"$0}' | sort -n | cut -f2)
    ((${#ckpts[@]})) || { say "=== $arm: no checkpoint"; continue; }
    last=${ckpts[-1]}
    mid=${ckpts[$(((${#ckpts[@]} - 1) / 2))]}
    [[ $arm == b48 ]] && for c in "${ckpts[@]}"; do [[ $(step_of "$c") == 9000 ]] && mid=$c; done  # the release's step
    for c in $(printf '%s\n' "$mid" "$last" | sort -u); do
        dest=$WORK/export/$arm-step$(step_of "$c")
        python3 -m cmrfm export "$c" "$dest" --overwrite >>"$WORK/$arm.log" 2>&1 \
            && say "=== exported $dest" || say "=== export of $c failed (see $arm.log)"
    done
    probe=$(find "$WORK/$arm" -name probe.csv | head -1)
    metrics=$(find "$WORK/$arm" -name metrics.csv | head -1)
    [[ -n $probe ]] && say "=== $arm probe: $(tr '\n' ' ' <"$probe")"
    files=("$WORK/$arm.log")
    [[ -n $probe ]] && files+=("$probe")
    [[ -n $metrics ]] && files+=("$metrics")
    tar cf "$OUT/$arm.tar" "${files[@]}" $(ls -d "$WORK/export/$arm-step"* 2>/dev/null)
done
ls -la "$OUT" | tee -a "$LOG"
say "=== done at $SECONDS s"
