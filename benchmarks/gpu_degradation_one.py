"""Train one twin of the degradation experiment and write its history (used to run the four twins in
parallel on one GPU; merge with `--merge` into the usual degradation.json / degradation.png).

    python benchmarks/gpu_degradation_one.py plain56 --budget ... --out DIR --device cuda
    python benchmarks/gpu_degradation_one.py --merge DIR --budget ... --out docs/figures/degradation_gpu
"""

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from resnets import create_model
from resnets.evaluate.robustness import Normalized
from resnets.explain.degradation import Budget, DegradationResult, _write, load_pixel_splits, train_classifier

ap = argparse.ArgumentParser()
ap.add_argument("name", nargs="?")
ap.add_argument("--data", default="/work/shared/data/cifar10/train")
ap.add_argument("--budget", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--device", default="cuda")
ap.add_argument("--merge", default=None, help="folder of per-model JSON files to merge")
args = ap.parse_args()
budget = Budget.parse(args.budget)
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
if args.merge:
    parts = [json.loads(p.read_text()) for p in sorted(Path(args.merge).glob("*.json"))]
    result = DegradationResult(budget=asdict(budget), data=parts[0]["data"])
    for part in parts:
        result.runs[part["name"]] = part["history"]
        result.params[part["name"]] = part["params"]
    _write(result, out)
    print(json.dumps(result.to_dict()["final"], indent=1))
    sys.exit(0)
splits, train_loader, val_loader = load_pixel_splits(args.data, budget, device=args.device)
torch.manual_seed(budget.seed)
net = create_model(args.name, num_classes=len(splits.classes))
model = Normalized(net, splits.mean, splits.std).to(args.device)
history = train_classifier(model, train_loader, val_loader, budget, log=lambda r: print(args.name, r, flush=True))
data = {"source": str(args.data), "train": len(train_loader.dataset), "val": len(val_loader.dataset),
        "image_size": splits.image_size}
(out / f"{args.name}.json").write_text(json.dumps({"name": args.name, "data": data, "history": history,
                                                    "params": sum(p.numel() for p in net.parameters())}))
