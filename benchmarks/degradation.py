"""Degradation experiment on real CIFAR-10 (He et al. 2015, Fig. 6) at a short CPU budget.

Run under the shared lock, one depth per call (results merge in OUT/degradation.json):

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/degradation.py --depths 20
    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/degradation.py --depths 56

Same as `resnets experiment degradation`; this script only fixes the documented budget.
"""

import argparse
import sys

import torch

from resnets.explain.degradation import Budget, run_degradation

BUDGET = "epochs=1,train_subset=10000,val_subset=1000,batch_size=64,lr=0.05,log_points=10"

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/cifar10/train")
    ap.add_argument("--depths", default="20,56")
    ap.add_argument("--budget", default=BUDGET)
    ap.add_argument("--out", default="docs/figures/degradation")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's). On the shared 2-core machine, oversubscribed by other jobs, "
                         "1 thread measured 5x faster per step than 2 (resnet56, batch 64: 2.3 s vs 11.6 s)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    result = run_degradation(args.data, [int(d) for d in args.depths.split(",")], Budget.parse(args.budget), args.out,
                             device=args.device, log=lambda m: print(m, flush=True))
    for name, row in result.final().items():
        print(f"{name:>10}: train err {row['train_error'] * 100:.2f}%  val err {row['val_error'] * 100:.2f}%  "
              f"{row['seconds']:.0f}s", flush=True)
    sys.exit(0)
