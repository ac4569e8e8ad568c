"""The issue's reference, airbench94, run on this machine on the split ``benchmarks/cifar_fast.py`` uses.

Issue 3 sets the goal against airbench94 (Jordan 2024: a small non-residual net, 94% on the official
CIFAR-10 test set in 9.9 epochs): "90.5% of held-out images in 8.6 minutes" on a 2-core CPU with native
bf16. This session's CPU is a different one, so the fair comparison is the reference and our recipe on the
same machine, the same data and the same clock. This script runs the published ``airbench`` package from
PyPI (``pip install -e ".[bench]"``: airbench 0.1.8, its code unchanged) on the CPU: the package is written for
CUDA in fp16, so for the duration of the run ``.cuda()`` is the identity, ``.half()`` keeps fp32 (bf16
autocast with ``--precision bf16``), CUDA events read the wall clock and the loader's device is the CPU.

The data are the 45,000 / 5,000 split that ``load_data(..., val_split=0.1, seed=0)`` gives (what
``cifar_fast.py`` trains and scores on); airbench's loader reads them from ``train.pt`` / ``test.pt`` files
written to a temporary folder. The clock covers what ``cifar_fast.py``'s does: building the net and its
whitening layer, training, and the final flip-and-translate TTA pass (airbench's ``tta_level=2``).

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/airbench_peer.py \\
        --data /work/shared/data/cifar10/train --seeds 0 1 2 --threads 2 --jsonl OUT.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn


class WallClockEvent:
    """Stands in for ``torch.cuda.Event(enable_timing=True)``: ``elapsed_time`` in milliseconds."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.stamp = 0.0

    def record(self) -> None:
        self.stamp = time.perf_counter()

    def elapsed_time(self, end: "WallClockEvent") -> float:
        return (end.stamp - self.stamp) * 1e3


@contextlib.contextmanager
def airbench_on_cpu(workdir: Path) -> Iterator[object]:
    """Import ``airbench`` with its CUDA and fp16 calls pointed at the CPU in fp32; undone on exit."""
    try:
        import airbench
        import airbench.utils as airbench_utils
    except ImportError as error:
        raise SystemExit(f"airbench is not installed ({error}); install it with "
                         "`.venv/bin/pip install -e '.[bench]'` (airbench 0.1.8)") from None

    class CpuCifarLoader(airbench_utils.CifarLoader):
        def __init__(self, path, *args, gpu="cpu", **kwargs):
            super().__init__(path, *args, gpu=gpu, **kwargs)

    saved = {
        (nn.Module, "cuda"): nn.Module.cuda, (nn.Module, "half"): nn.Module.half,
        (torch.Tensor, "half"): torch.Tensor.half, (torch.cuda, "Event"): torch.cuda.Event,
        (torch.cuda, "synchronize"): torch.cuda.synchronize, (airbench_utils, "CifarLoader"): airbench_utils.CifarLoader,
        (airbench, "CifarLoader"): airbench.CifarLoader,
    }
    cwd = os.getcwd()
    try:
        nn.Module.cuda = lambda self, device=None: self
        nn.Module.half = lambda self: self.float()
        torch.Tensor.half = lambda self, memory_format=torch.preserve_format: self.float()
        torch.cuda.Event = WallClockEvent
        torch.cuda.synchronize = lambda device=None: None
        airbench_utils.CifarLoader = airbench.CifarLoader = CpuCifarLoader
        os.chdir(workdir)  # airbench's train() builds its test loader from the relative path "cifar10"
        yield airbench
    finally:
        os.chdir(cwd)
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def write_airbench_data(splits, folder: Path) -> None:
    """Our train / held-out split as airbench's ``train.pt`` / ``test.pt`` (N x 32 x 32 x 3 uint8, labels, classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, dataset in (("train.pt", splits.train), ("test.pt", splits.val)):
        torch.save({"images": dataset.images.permute(0, 2, 3, 1).contiguous(), "labels": dataset.labels,
                    "classes": list(splits.classes)}, folder / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="/work/shared/data/cifar10/train",
                        help="CIFAR-10 ImageFolder tree or extracted archive (split as cifar_fast.py splits it)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=None, help="override airbench94's 9.9 epochs")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: autocast around training and evaluation (native only on CPUs with AVX-512 bf16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--jsonl", default=None, help="append each seed's result as one line to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from resnets.data import load_data
    from resnets.precision import cpu_name

    splits = load_data(args.data, val_split=0.1, seed=0)
    if not splits.in_memory or splits.image_size != 32 or len(splits.classes) != 10:
        raise SystemExit(f"{args.data}: airbench94 needs 32 px CIFAR-10 (10 classes) in memory; got {splits.describe()}")
    print(f"data: {len(splits.train)} train / {len(splits.val)} val images", file=sys.stderr)

    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        write_airbench_data(splits, Path(workdir) / "cifar10")
        with airbench_on_cpu(Path(workdir)) as airbench:
            hyp = airbench.lib_airbench94.hyp
            epochs = args.epochs if args.epochs is not None else hyp["opt"]["train_epochs"]
            autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16"
                        else contextlib.nullcontext())
            for seed in args.seeds:
                torch.manual_seed(seed)
                train_loader = airbench.CifarLoader("cifar10", train=True, batch_size=hyp["opt"]["batch_size"],
                                                    aug=hyp["aug"], altflip=True)
                test_loader = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
                start = time.perf_counter()
                with autocast:
                    model = airbench.train94(train_loader, epochs=epochs, verbose=False)
                    tta = airbench.evaluate(model, test_loader, tta_level=hyp["net"]["tta_level"])
                minutes = (time.perf_counter() - start) / 60
                with autocast:
                    plain = airbench.evaluate(model, test_loader, tta_level=0)  # outside the clock
                steps = math.ceil(len(train_loader) * epochs)  # as airbench's train() counts them
                run = {"seed": seed, "val_top1_tta": 100 * tta, "val_top1_no_tta": 100 * plain, "minutes": minutes,
                       "epochs": epochs, "steps": steps}
                runs.append(run)
                print(json.dumps(run), flush=True)

    summary = {
        "peer": "airbench94 (pip airbench==0.1.8, unchanged; on the CPU in fp32 unless --precision bf16)",
        "precision": args.precision, "threads": args.threads, "cpu": cpu_name(), "torch": torch.__version__,
        "data": str(args.data), "train_images": len(splits.train), "val_images": len(splits.val), "runs": runs,
        "mean_val_top1_tta": statistics.mean(r["val_top1_tta"] for r in runs),
        "mean_minutes": statistics.mean(r["minutes"] for r in runs),
        "command": " ".join(sys.argv),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if args.jsonl:
        with open(args.jsonl, "a") as handle:
            handle.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
