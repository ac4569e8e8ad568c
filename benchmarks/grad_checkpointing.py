"""Memory and time of a training step with and without activation checkpointing
(``ResNet.set_grad_checkpointing``), beside timm's ``set_grad_checkpointing`` on the same architecture and
torchvision's model (which has none) in the same run.

Each variant runs in a fresh process, so its peak resident memory is its own: the figure is the peak RSS
growth during the training steps over the RSS once the model, optimizer and batch exist (so it holds the
gradients and momentum buffers too; fp32, SGD momentum 0.9, cross-entropy on random labels). "saved for backward" sums the distinct tensor storages
autograd keeps from the forward pass (``torch.autograd.graph.saved_tensors_hooks``): the activation
memory checkpointing is meant to cut, independent of the allocator. Steps are timed after one warm-up
step; the median is reported.

glibc's malloc keeps freed blocks below its (self-raising) mmap threshold for reuse, so with the default
allocator the peak RSS also holds memory that was freed and not reused. Each variant therefore runs a second
time with ``MALLOC_MMAP_THRESHOLD_=65536``, which gives every large tensor its own mapping that goes back to
the system when freed: that run's peak is the live memory (its steps are slower and are not reported).

    .venv/bin/python benchmarks/grad_checkpointing.py --case resnet152 --json docs/grad_checkpointing/resnet152_b16.json
    .venv/bin/python benchmarks/grad_checkpointing.py --case resnet1202
    .venv/bin/python benchmarks/grad_checkpointing.py --case resnet152 --alternate resnets+ckpt timm+ckpt

``--alternate`` times the named variants in one process, one step of each in turn, so that a slow spell of a
shared machine hits them alike (no memory figures); separate processes can differ by 20% on their own here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

CASES = {  # name -> (image size, default batch, peers by variant)
    "resnet152": (224, 16, ("resnets", "resnets+ckpt", "timm", "timm+ckpt", "torchvision")),
    "resnet50": (224, 32, ("resnets", "resnets+ckpt", "timm", "timm+ckpt", "torchvision")),
    "resnet1202": (32, 128, ("resnets", "resnets+ckpt")),  # the paper's deepest CIFAR net; no peer has it
    "resnet110": (32, 128, ("resnets", "resnets+ckpt")),
}


def build(case: str, variant: str) -> nn.Module:
    if variant.startswith("resnets"):
        import resnets

        model = resnets.create_model(case)
    elif variant.startswith("timm"):
        import timm

        model = timm.create_model(case)
    else:
        import torchvision

        model = getattr(torchvision.models, case)()
    if variant.endswith("+ckpt"):
        model.set_grad_checkpointing(True)
    return model.train()


def saved_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of distinct storages autograd saves for backward in one forward pass."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images).sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def measure(case: str, variant: str, batch: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = CASES[case][0]
    model = build(case, variant)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 1000 if size > 32 else 10, (batch,))
    if size == 32:
        model.fc = nn.Linear(model.fc.in_features, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rss_before = _rss_mb()  # model, batch and optimizer exist; no step yet (the allocator keeps what it frees)
    times = []
    for _ in range(steps + 1):  # the first is a warm-up: optimizer state and oneDNN primitives
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times = times[1:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    saved = saved_bytes(model, images)  # after the peak is read: this pass must not set it
    return {"case": case, "variant": variant, "batch": batch, "image_size": size,
            "saved_for_backward_mb": saved / 2**20, "rss_before_mb": rss_before, "peak_rss_mb": peak,
            "step_seconds_median": statistics.median(times), "step_seconds": times}


def alternate(case: str, variants: list[str], batch: int, rounds: int, threads: int) -> int:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = CASES[case][0]
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    models = {variant: build(case, variant) for variant in variants}

    def step(model: nn.Module) -> float:
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), labels)
        model.zero_grad(set_to_none=True)
        loss.backward()
        return time.perf_counter() - start

    for model in models.values():
        step(model)  # warm-up
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant, model in models.items():
            times[variant].append(step(model))
    first = statistics.median(times[variants[0]])
    print(f"{case}, batch {batch}, {size} px, fp32, {threads} threads, {rounds} alternating rounds")
    for variant, seconds in times.items():
        print(f"{variant:14s} median {statistics.median(seconds):6.2f} s  ({statistics.median(seconds) / first:.2f}x)"
              f"  steps: {', '.join(f'{t:.2f}' for t in seconds)}")
    return 0


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="resnet152")
    parser.add_argument("--batch", type=int, help="default: the case's (resnet152 16, resnet50 32, CIFAR nets 128)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--alternate", nargs="+", metavar="VARIANT", help="time these variants in one process, "
                        "a step of each in turn (--steps rounds)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant in this process
    args = parser.parse_args(argv)
    batch = args.batch or CASES[args.case][1]
    if args.alternate:
        return alternate(args.case, args.alternate, batch, args.steps, args.threads)
    if args.one:
        print(json.dumps(measure(args.case, args.one, batch, args.steps, args.threads)))
        return 0
    from resnets.precision import cpu_name

    results = []
    for variant in CASES[args.case][2]:
        runs = {}
        for allocator, env, steps in (("default", {}, args.steps), ("live", {"MALLOC_MMAP_THRESHOLD_": "65536"}, 1)):
            command = [sys.executable, __file__, "--case", args.case, "--batch", str(batch), "--steps", str(steps),
                       "--threads", str(args.threads), "--one", variant]
            done = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **env})
            if done.returncode != 0:
                print(f"{variant} ({allocator} allocator): failed\n{done.stderr[-2000:]}", file=sys.stderr)
                break
            runs[allocator] = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            live = runs["live"]
            results.append({**runs["default"], "live_peak_rss_mb": live["peak_rss_mb"],
                            "live_rss_before_mb": live["rss_before_mb"]})
    base = next(r for r in results if r["variant"] == "resnets")
    print(f"{args.case}, batch {batch}, {CASES[args.case][0]} px, fp32, {args.threads} threads, {cpu_name()}")
    print(f"{'':14s} {'saved for':>9s} {'peak RSS growth, MB':>22s}")
    print(f"{'variant':14s} {'bwd, MB':>9s} {'glibc':>10s} {'live':>11s} {'step s':>7s} {'time vs resnets':>16s}")
    for r in results:
        growth, live = r["peak_rss_mb"] - r["rss_before_mb"], r["live_peak_rss_mb"] - r["live_rss_before_mb"]
        print(f"{r['variant']:14s} {r['saved_for_backward_mb']:9.0f} {growth:10.0f} {live:11.0f} "
              f"{r['step_seconds_median']:7.2f} {r['step_seconds_median'] / base['step_seconds_median']:15.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"case": args.case, "batch": batch, "threads": args.threads, "cpu": cpu_name(),
                       "torch": torch.__version__, "results": results}, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
