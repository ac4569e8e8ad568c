"""Evaluation speed of a checkpoint in NCHW against channels-last (what `resnets eval` now uses for 2-D nets):
the same batches, alternating layouts, top-1 printed to show the results agree.

    .venv/bin/python benchmarks/eval_channels_last.py --checkpoint runs/demo/best.safetensors \
        --data /work/shared/data/cifar10/train --batches 20 --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from resnets.evaluate.loading import load_for_inference
    from resnets.data import load_eval, make_loader
    from resnets.evaluate import evaluate
    from resnets.precision import cpu_name

    model, classes, mean, std, size, crop_fraction, _ = load_for_inference(args.checkpoint)
    dataset = load_eval(args.data, classes=classes, image_size=size, normalization=(mean, std))
    print(f"{args.checkpoint}: {args.batches} batches of {args.batch_size}, fp32, {args.threads} threads, {cpu_name()}")
    for _ in range(args.rounds):
        for channels_last in (False, True):
            model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            loader = make_loader(dataset, batch_size=args.batch_size, train=False, mean=mean, std=std,
                                 crop_fraction=crop_fraction, channels_last=channels_last)
            batches = list(itertools.islice(iter(loader), args.batches))  # decoding is not timed
            start = time.perf_counter()
            result = evaluate(model, batches, len(classes), classes)
            seconds = time.perf_counter() - start
            images = sum(len(labels) for _, labels in batches)
            print(f"{'channels-last' if channels_last else 'NCHW':14s} {seconds:6.2f} s  "
                  f"{images / seconds:7.0f} img/s  top-1 {result.top1:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
