"""Throughput of data-parallel training: 1 process vs 2 processes (torchrun, gloo on CPU or NCCL on GPU).

Side by side in one run, on the same model (resnet20, CIFAR-sized 32x32 synthetic images):

- ``resnets``: the ``Trainer`` (``resnets train`` under torchrun: DDP, metric reduction, stop agreement);
- ``plain``: a bare PyTorch DDP loop (forward, backward, SGD step), the peer the Trainer should not trail.

Each is measured with 1 process at the global batch, 2 processes at half of it each (same global batch:
strong scaling) and 2 processes at the full batch each (twice the global batch: weak scaling).
Reported: median seconds per optimizer step after warm-up, and images/s = global batch / that median.
torchrun gives each process OMP_NUM_THREADS=1; the single process keeps torch's default threads, so both
use the same cores.

    flock /tmp/resnets-heavy.lock .venv/bin/python benchmarks/bench_ddp.py --steps 30 --batch 128
    python benchmarks/bench_ddp.py --device cuda --batch 256 --steps 50      # on a 2-GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _splits(count: int, size: int = 32, classes: int = 10):
    from resnets.data import DataSplits, TensorImageDataset

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    names = [f"c{i}" for i in range(classes)]
    dataset = TensorImageDataset(images, labels, names, name="bench")
    return DataSplits(dataset, None, names, (0.5,) * 3, (0.25,) * 3, size, True)


def _worker_resnets(args) -> list[float]:
    from resnets.train import resolve_config
    from resnets.train.distributed import distributed_session
    from resnets.train.trainer import Callback, Trainer

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, trainer, step, loss) -> None:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    with distributed_session(args.device) as process:
        config = resolve_config(None, {
            "model": "resnet20", "steps": args.warmup + args.steps, "batch_size": args.per_process_batch,
            "device": args.device, "precision": args.precision, "channels_last": args.channels_last,
            "augment": {"crop_padding": 4, "flip": True}, "progress": False, "tensorboard": False,
            "lr": 0.1, "lr_scaling": "none", "schedule": "constant", "log_every": 10_000})
        timer = StepTimer()
        start = time.perf_counter()
        Trainer(config, None, splits=_splits(args.samples), callbacks=[timer], process=process).fit()
        stamps = [start] + timer.times
        return [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:]


def _worker_plain(args) -> list[float]:
    """A bare DDP loop over the same model and batch shape: the floor the Trainer is compared to."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from resnets import create_model

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device(args.device)
    if distributed:
        local = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if distributed else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(args.per_process_batch, 3, 32, 32, device=device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.per_process_batch,), device=device)
    times = []
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=args.precision != "fp32"):
            loss = F.cross_entropy(forward(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if distributed:
        dist.destroy_process_group()
    return times[args.warmup:]


def worker(args) -> None:
    times = _worker_resnets(args) if args.loop == "resnets" else _worker_plain(args)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.result).write_text(json.dumps(times))


def measure(loop: str, nproc: int, per_process_batch: int, args, tmp: Path, threads: int | None = None) -> dict:
    """One configuration in fresh processes; ``threads`` pins OMP_NUM_THREADS of a single process
    (torchrun gives each of several processes 1)."""
    result = tmp / f"{loop}-{nproc}-{per_process_batch}-{threads}.json"
    common = [__file__, "--worker", "--loop", loop, "--per-process-batch", str(per_process_batch),
              "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
              "--precision", args.precision, "--samples", str(args.samples), "--result", str(result)]
    if args.channels_last:
        common.append("--channels-last")
    if nproc == 1:
        command = [sys.executable, *common]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "--monitor-interval=0.5", *common]
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(command, check=True, timeout=1800, env=env)
    times = json.loads(result.read_text())
    median = statistics.median(times)
    global_batch = per_process_batch * nproc
    return {"loop": loop, "processes": nproc, "threads_per_process": threads or (1 if nproc > 1 else torch.get_num_threads()),
            "batch_per_process": per_process_batch, "global_batch": global_batch,
            "median_step_s": median, "images_per_s": global_batch / median, "steps": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128, help="global batch of the 1-process run")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--samples", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--loops", default="resnets,plain")
    parser.add_argument("--json", help="also write the rows here")
    # worker side
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--per-process-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for loop in args.loops.split(","):
            for nproc, per_process, threads in ((1, args.batch, None), (1, args.batch, 1), (2, args.batch // 2, None),
                                                (2, args.batch, None)):
                row = measure(loop, nproc, per_process, args, Path(tmp), threads)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nresnet20, 32x32, {args.precision}{', channels_last' if args.channels_last else ''}, {args.device}, "
          f"torch {torch.__version__}, {args.steps} timed steps after {args.warmup}")
    print(f"{'loop':<8} {'procs':>5} {'threads':>7} {'batch/proc':>10} {'global':>6} {'median s/step':>13} "
          f"{'images/s':>9} {'vs 1 proc':>9}")
    for row in rows:
        single = next(r for r in rows if r["loop"] == row["loop"] and r["processes"] == 1)
        print(f"{row['loop']:<8} {row['processes']:>5} {row['threads_per_process']:>7} {row['batch_per_process']:>10} "
              f"{row['global_batch']:>6} "
              f"{row['median_step_s']:>13.3f} {row['images_per_s']:>9.0f} "
              f"{row['images_per_s'] / single['images_per_s']:>8.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
