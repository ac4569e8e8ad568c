"""Speed of the degradation experiment's training loop (``train_classifier``) in fp32 and in bf16 autocast.

Why: the loop defaulted to bf16, which a CPU without AVX-512 BF16 or AMX emulates; ``Budget.bf16`` now
defaults to what the device runs natively. This script measures what that choice is worth on the machine at
hand: the same synthetic batches, the same net, the two precisions alternated round by round (medians).

    .venv/bin/python benchmarks/degradation_precision.py --model resnet20 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resnets.evaluate.robustness import Normalized
from resnets.explain.degradation import Budget, train_classifier
from resnets.factory import create_model
from resnets.precision import cpu_name, native_bf16


class _Batches(list):
    """The few members of a ``resnets.data`` loader that ``train_classifier`` uses."""

    def set_epoch(self, epoch: int) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=6, help="training steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch * args.batches, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (images.shape[0],), generator=g)
    batches = _Batches((images[i:i + args.batch], labels[i:i + args.batch])
                       for i in range(0, images.shape[0], args.batch))
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for name in rates:
            torch.manual_seed(0)
            model = Normalized(create_model(args.model, num_classes=10), (0.5,) * 3, (0.25,) * 3)
            start = time.perf_counter()
            train_classifier(model, batches, None, Budget(epochs=1, bf16=name == "bf16", log_points=1))
            rates[name].append(images.shape[0] / (time.perf_counter() - start))
    print(f"{cpu_name()}, native bf16: {native_bf16('cpu')}, {args.threads} threads, {args.model}, batch {args.batch}")
    for name, values in rates.items():
        print(f"{name}: {' / '.join(f'{v:.0f}' for v in values)} img/s, median {statistics.median(values):.0f}")
    print(f"fp32 / bf16: {statistics.median(rates['fp32']) / statistics.median(rates['bf16']):.1f}x")


if __name__ == "__main__":
    main()
