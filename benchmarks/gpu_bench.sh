#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md, in one call of a lent GPU host (an H100 or H200):
#   1. `cmrfm bench pretrain --preset h100`, eager: bare loop vs Lightning DDP and DeepSpeed ZeRO-2
#   2. `cmrfm bench loader` with the host's cores, the augmentation batched on the GPU
#   3. `cmrfm bench seg` on the GPU: the ViT segmenters' step against MONAI's U-Net
#   4. `cmrfm bench pretrain --preset h100 --compile` (DDP): the compiled MFU, in the time left
#   5. `cmrfm bench loader --augment-on loader`: 16 workers augmenting, if time is left
# It runs under the host's own python3 (its torch, Lightning, timm); what that image lacks comes
# as wheels in .whl (ignored), made on a machine with an index, for the host's Python (3.12 here):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl monai webdataset braceexpand nibabel pydicom pydantic pydantic-core annotated-types \
#     typing-inspection hjson && pip wheel --no-deps deepspeed -w .whl
# Each step has a time limit and writes its JSON as soon as it ends; the whole script ends
# by DEADLINE seconds. Results and the log go to $OUT (default runs/gpu_bench).
#
#   bash benchmarks/gpu_bench.sh [DEADLINE]       # default 500 s
#   TINY=1 bash benchmarks/gpu_bench.sh           # a quick rehearsal on a CPU: tiny sizes
set -u
OUT=${OUT:-runs/gpu_bench}
DEADLINE=${1:-500}
mkdir -p "$OUT"
LOG=$OUT/log.txt
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }

if [[ -d .whl && -z ${TINY:-} ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 COLUMNS=160

# step NAME LIMIT COMMAND...: run it under min(LIMIT, time left), its output into the log.
step() {
    local name=$1 limit=$2 left=$((DEADLINE - SECONDS))
    shift 2
    ((left < limit)) && limit=$left
    if ((limit < 30)); then
        say "=== $name: skipped, $left s left of $DEADLINE"
        return
    fi
    say "=== $name (at $SECONDS s, limit $limit s): $*"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    say "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}



say "=== host: $(date -u +%FT%TZ), $(getconf _NPROCESSORS_ONLN) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 || echo "no nvidia-smi"; } | tee -a "$LOG"
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import sys, importlib
print("python", sys.version.split()[0])
for name in ("torch", "lightning", "timm", "monai", "webdataset", "deepspeed", "numpy", "triton"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as error:  # a missing one is reported, and its step fails by name
        print(name, "MISSING:", type(error).__name__, error)
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

if [[ -n ${TINY:-} ]]; then
    step pretrain_eager 300 python3 -m cmrfm bench pretrain --no-compile --steps 2 --warmup 1 --rounds 1 \
        --strategies ddp,deepspeed_stage_2 --out "$OUT/pretrain_eager.json"
    step loader 300 python3 -m cmrfm bench loader --workers 0,2 --frames 4 --size 32 --seconds 1 \
        --rounds 1 --cache "$OUT/cache" --out "$OUT/loader.json"
    step seg 300 python3 -m cmrfm bench seg --backbone cmr_vit_test --size 32 --patches 16 \
        --variants light,dense --steps 1 --rounds 1 --warmup 1 --out "$OUT/seg.json"
    step pretrain_compiled 300 python3 -m cmrfm bench pretrain --compile --steps 2 --warmup 1 --rounds 1 \
        --strategies ddp --out "$OUT/pretrain_compiled.json"
    exit 0
fi
step pretrain_eager 200 python3 -m cmrfm bench pretrain --preset h100 --no-compile \
    --strategies ddp,deepspeed_stage_2 --out "$OUT/pretrain_eager.json"
step loader 110 python3 -m cmrfm bench loader --workers 0,8,16 --seconds 6 --rounds 2 \
    --cache /tmp/bench_shards --out "$OUT/loader.json"
step seg 80 python3 -m cmrfm bench seg --steps 5 --rounds 3 --warmup 3 --out "$OUT/seg.json"
step pretrain_compiled 300 python3 -m cmrfm bench pretrain --preset h100 --compile --strategies ddp \
    --out "$OUT/pretrain_compiled.json"
step loader_in_workers 60 python3 -m cmrfm bench loader --workers 16 --seconds 6 --rounds 2 \
    --augment-on loader --cache /tmp/bench_shards --out "$OUT/loader_in_workers.json"
say "=== done at $SECONDS s"
