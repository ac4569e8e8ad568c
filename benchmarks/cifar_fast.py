"""Time-to-accuracy of the ``cifar-fast`` recipe: validation accuracy (5,000 held-out images, with the
recipe's flip-and-translate TTA) and wall-clock minutes of training + final evaluation, per seed.

The data are decoded once (cached on disk by ``resnets.data``) and shared by every seed; the clock
covers what a user waits for after loading: the time-budget probe, training, and the final TTA
evaluation. One self-contained command, CPU or GPU:

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/cifar_fast.py \
        --data /work/shared/data/cifar10/train --seeds 0 1 2 --time-budget 7.5 --json docs/cifar_fast_cpu.json
    python benchmarks/cifar_fast.py --data /path/to/cifar10/train --device cuda --seeds 0 1 2 --json cifar_fast_h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/cifar10/train",
                        help="CIFAR-10 ImageFolder tree, extracted archive, or 'cifar10'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="minutes: fit the schedule to this wall clock (default: the recipe's epochs)")
    parser.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--recipe", default="cifar-fast")
    parser.add_argument("--out", default=None, help="keep each seed's run folder under this folder")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--jsonl", default=None, help="append the results as one line to this file (sweeps)")
    parser.add_argument("--label", default=None, help="a name for this run in the results")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: on the shared 2-core machine two threads collapse whenever other "
                             "jobs run, because torch's parallel regions wait for descheduled threads)")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)

    from resnets.data import load_data
    from resnets.evaluate import evaluate
    from resnets.precision import cpu_name
    from resnets.train import Trainer, parse_set, resolve_config

    base = resolve_config(args.recipe)
    start = time.perf_counter()
    splits = load_data(args.data, val_split=base.val_split, seed=0)  # the same 5,000 held out for every seed
    load_seconds = time.perf_counter() - start
    print(f"data: {len(splits.train)} train / {len(splits.val)} val images, loaded in {load_seconds:.1f} s",
          file=sys.stderr)

    runs = []
    for seed in args.seeds:
        overrides = {**parse_set(args.set), "seed": seed, "device": args.device, "data": str(args.data),
                     "progress": False, "tensorboard": False}
        if args.time_budget is not None:
            overrides["time_budget"] = args.time_budget
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        config = resolve_config(args.recipe, overrides)
        out = Path(args.out) / f"seed{seed}" if args.out else None
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer = Trainer(config, out, splits=splits)
        result = trainer.fit()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        minutes = (time.perf_counter() - start) / 60
        plain = evaluate(result.model, trainer.val_loader, trainer.num_classes, device=trainer.device,
                         precision=trainer.config.precision)  # outside the clock: the same weights without TTA
        run = {"seed": seed, "val_top1_tta": result.final.top1, "val_top1_no_tta": plain.top1,
               "minutes": minutes, "steps": result.steps, "epochs": result.steps / trainer.steps_per_epoch,
               "tta": config.tta, "budget_fit": trainer.budget_fit}
        runs.append(run)
        print(json.dumps(run), file=sys.stderr)

    accs = [r["val_top1_tta"] for r in runs]
    minutes = [r["minutes"] for r in runs]
    summary = {
        "label": args.label, "recipe": args.recipe, "data": str(args.data), "device": args.device,
        "epochs_override": args.epochs,
        "device_name": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "time_budget": args.time_budget,
        "overrides": args.set, "runs": runs,
        "mean_val_top1_tta": statistics.mean(accs), "min_val_top1_tta": min(accs),
        "mean_minutes": statistics.mean(minutes), "max_minutes": max(minutes), "data_load_seconds": load_seconds,
    }
    print(f"{args.recipe} on {args.device}: mean val top-1 {summary['mean_val_top1_tta'] * 100:.2f}% "
          f"(min {summary['min_val_top1_tta'] * 100:.2f}%) over seeds {args.seeds}, mean {summary['mean_minutes']:.2f} "
          f"min (max {summary['max_minutes']:.2f}) incl. TTA")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    if args.jsonl:
        Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
        with open(args.jsonl, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
