#!/usr/bin/env bash
# cifar-fast on a borrowed GPU, in one device call (the current recipe; benchmarks/gpu_run.sh holds the
# earlier recipe's run). torch comes from the machine's image, resnets from this checkout via PYTHONPATH.
# It needs the shared CIFAR-10 tree packed as .device/cifar10.tar.gz (tar czf of shared/data/cifar10) and
# writes a JSON per job, machine.txt and one run.log under $OUT (the device tool returns only a few files),
# most important job first, each with its own time limit:
#
#   1. recipe:      the cifar-fast recipe as shipped (resnet_airbench_narrow, 10 epochs), seeds 0 1 2;
#   2. wide:        the same with airbench's widths (resnet_airbench), seeds 0 1 2: on a GPU width is cheap;
#   3. wide_e20/40: resnet_airbench for 20 and 40 epochs, seeds 0 1 2: what more GPU time buys;
#   4. compiled:    the recipe with compile=true (compilation counts in the clock), seeds 0 1 2, in
#                   whatever time is left (on 2 CPU cores compilation alone outlasts the smoke test).
#
# On the device tool: `LIMIT=560 bash benchmarks/gpu_cifar_fast.sh`, carrying .device (about 5 minutes of an H200).
# Smoke test on the CPU (small epochs, same code paths):
#   DEVICE=cpu EXTRA="--epochs 0.05 --threads 2" OUT=/tmp/gpu_smoke bash benchmarks/gpu_cifar_fast.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
LIMIT=${LIMIT:-450}
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
DATA_ROOT=${DATA_ROOT:-/tmp/resnets-gpu-data}
PY=${PY:-python3}
start=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - start) )); }
mkdir -p "$OUT" "$DATA_ROOT"
[ -d "$DATA_ROOT/cifar10/train" ] || tar xzf .device/cifar10.tar.gz -C "$DATA_ROOT"
DATA=$DATA_ROOT/cifar10/train
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 RESNETS_CACHE=${RESNETS_CACHE:-/tmp/resnets-gpu-cache}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
echo "[$(left)s left] decoding the data once"
LOG=$OUT/run.log
$PY -m resnets data --data "$DATA" --val-split 5000 >> "$LOG" 2>&1 || { echo "data load failed"; tail "$LOG"; }

# job NAME SECONDS ARGS...: one cifar_fast.py run, skipped when less than SECONDS are left.
job() {
    local name=$1 need=$2; shift 2
    if [ "$need" -lt 30 ] || [ "$(left)" -lt "$need" ]; then echo "[$(left)s left] skip $name (needs $need s)"; return; fi
    echo "[$(left)s left] $name"
    # shellcheck disable=SC2086
    timeout "$need" $PY benchmarks/cifar_fast.py --data "$DATA" --device "$DEVICE" --json "$OUT/$name.json" \
        "$@" $EXTRA > "$OUT/$name.log.tmp" 2>&1
    local rc=$?
    { echo "== $name rc=$rc"; cat "$OUT/$name.log.tmp"; } >> "$LOG"; echo "$name rc=$rc"; tail -1 "$OUT/$name.log.tmp"
    rm -f "$OUT/$name.log.tmp"
}
job recipe 150 --seeds 0 1 2
job wide 150 --seeds 0 1 2 --set model=resnet_airbench
job wide_e20 100 --seeds 0 1 2 --epochs 20 --set model=resnet_airbench
job wide_e40 150 --seeds 0 1 2 --epochs 40 --set model=resnet_airbench
job compiled $(( $(left) - 10 )) --seeds 0 1 2 --set compile=true
echo "[$(left)s left] done"
rm -rf "$RESNETS_CACHE"
