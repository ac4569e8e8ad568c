#!/usr/bin/env bash
# The GPU figures in docs/ came from this one script, run once on a borrowed NVIDIA H100 (torch from the
# machine's image, resnets from this checkout via PYTHONPATH). It needs the shared CIFAR-10 tree packed
# as .device/cifar10.tar.gz (tar czf of shared/data/cifar10) and writes everything under $OUT.
#
#   1. cifar-fast time-to-accuracy, 3 seeds, alone on the GPU (the timed figure);
#   2. then, side by side on the same GPU: the he2015-cifar ResNet-20 paper run (64k iterations),
#      the degradation experiment (plain/residual 20 and 56) at a real budget, and the robustness
#      models (standard and fast-FGSM ResNet-20) with their PGD/corruption/calibration evaluation.
# Every job has its own time limit so the whole script ends inside one device call.
set -u
OUT=${OUT:-/tmp/gpu_out}
LIMIT=${LIMIT:-560}
start=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - start) )); }
mkdir -p "$OUT" /work/shared/data
tar xzf .device/cifar10.tar.gz -C /work/shared/data
DATA=/work/shared/data/cifar10/train
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 RESNETS_CACHE=/tmp/resnets-cache
PY=python3
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"; nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
$PY -m resnets data --data "$DATA" --val-split 5000 > "$OUT/data.log" 2>&1 || { echo "data load failed"; tail "$OUT/data.log"; }

echo "[$(left)s left] cifar-fast"
timeout 150 $PY benchmarks/cifar_fast.py --data "$DATA" --device cuda --seeds 0 1 2 \
    --json "$OUT/cifar_fast_h100.json" > "$OUT/cifar_fast.log" 2>&1; echo "cifar_fast rc=$?"
tail -4 "$OUT/cifar_fast.log"

T=$(( $(left) - 15 ))
echo "[$(left)s left] parallel jobs, $T s each"
timeout "$T" $PY benchmarks/he2015.py --model resnet20 --device cuda --data "$DATA" \
    --out "$OUT/he2015-resnet20" > "$OUT/he2015.log" 2>&1 &
timeout "$T" $PY benchmarks/degradation.py --depths 20,56 --device cuda --data "$DATA" \
    --budget "epochs=20,train_subset=all,val_subset=all,batch_size=128,lr=0.1,log_points=40" \
    --out "$OUT/degradation" > "$OUT/degradation.log" 2>&1 &
( timeout "$T" bash -c "$PY benchmarks/robustness.py train --kind standard --device cuda --out $OUT/robustness \
      --budget epochs=15,train_subset=all,val_subset=1000,log_points=15 &&
  $PY benchmarks/robustness.py train --kind fgsm_rs --device cuda --out $OUT/robustness \
      --budget epochs=8,train_subset=all,val_subset=1000,log_points=8 &&
  $PY benchmarks/robustness.py evaluate --samples 1000 --device cuda --out $OUT/robustness &&
  $PY benchmarks/robustness.py plot --out $OUT/robustness" ) > "$OUT/robustness.log" 2>&1 &
wait
echo "[$(left)s left] done"
for f in he2015 degradation robustness; do echo "== $f"; tail -c 1500 "$OUT/$f.log"; done
rm -rf /tmp/resnets-cache
