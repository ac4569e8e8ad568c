"""The paper's CIFAR-10 run (He et al. 2015, section 4.2) with the ``he2015-cifar`` recipe, and its final
validation error next to the paper's test error.

64k iterations of batch 128 (182 epochs of the 45k split), lr 0.1 / 10 at 32k and 48k, weight decay
1e-4, momentum 0.9, pad-4 crop + flip; validation on the 5,000 held-out training images (the paper
reports the official test set, which is not on this machine; the shared copy is also JPEG).
Resumable: rerun the same command after an interruption and it continues from ``OUT/last.pt``.

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/he2015.py --model resnet20 --precision bf16 \
        --data /work/shared/data/cifar10/train --out runs/he2015-resnet20      # CPU, bf16
    python benchmarks/he2015.py --model resnet20 --device cuda --data /path/to/cifar10/train \
        --out runs/he2015-resnet20-gpu --compile reduce-overhead               # GPU, fp32 as the paper
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PAPER_TEST_ERROR = {"resnet20": 8.75, "resnet32": 7.51, "resnet44": 7.17, "resnet56": 6.97, "resnet110": 6.43,
                    "resnet1202": 7.93}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(PAPER_TEST_ERROR))
    parser.add_argument("--data", default="/work/shared/data/cifar10/train")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"),
                        help="default: the recipe's fp32 (bf16 is about 2x faster on AVX-512 CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        help="torch.compile the training step (MODE reduce-overhead: CUDA graphs, the fast choice "
                             "on a GPU, where ResNet-20's step is bound by kernel launches)")
    parser.add_argument("--steps", type=int, default=None, help="shorten the run (schedule milestones scale along)")
    parser.add_argument("--out", default=None, help="run folder (default runs/he2015-MODEL)")
    parser.add_argument("--json", default=None, help="result JSON (default OUT/he2015_result.json)")
    args = parser.parse_args(argv)

    from resnets.train import Trainer, resolve_config, resume

    out = Path(args.out or f"runs/he2015-{args.model}")
    start = time.perf_counter()
    if (out / "last.pt").exists():
        print(f"resuming {out}", file=sys.stderr)
        result = resume(out)
    else:
        overrides = {"model": args.model, "data": args.data, "device": args.device, "seed": args.seed,
                     "channels_last": args.precision == "bf16"}
        if args.precision:
            overrides["precision"] = args.precision
        if args.compile:
            overrides.update(compile=True, compile_mode=args.compile)
        if args.steps:
            base = resolve_config("he2015-cifar")
            scale = args.steps / base.steps
            overrides.update(steps=args.steps, milestones=[max(1, round(m * scale)) for m in base.milestones])
        result = Trainer(resolve_config("he2015-cifar", overrides), out).fit()
    minutes = (time.perf_counter() - start) / 60
    error = 100 * (1 - result.final.top1)
    paper = PAPER_TEST_ERROR[args.model]
    summary = {"model": args.model, "device": args.device, "precision": result.config.precision,
               "steps": result.steps, "final_val_error": error, "best_val_error": 100 * (1 - result.best_val_top1),
               "paper_test_error": paper, "difference_points": error - paper, "wall_minutes_this_invocation": minutes,
               "train_minutes_total": result.train_seconds / 60, "run_dir": str(out),
               "compile": result.config.compile_mode if result.config.compile else None,
               # the training pace after the first epoch (compilation, cuDNN autotuning), evaluations excluded
               "median_images_per_s": (statistics.median(r["images_per_s"] for r in result.history[1:])
                                       if len(result.history) > 1 else None)}
    print(f"{args.model}: final validation error {error:.2f}% (best {summary['best_val_error']:.2f}%) after "
          f"{result.steps} iterations; paper test error {paper:.2f}% ({error - paper:+.2f} points)")
    Path(args.json or out / "he2015_result.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
