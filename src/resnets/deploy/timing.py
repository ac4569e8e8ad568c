"""Timing that stays fair on a shared machine: every variant is called once per round, in turn."""

from __future__ import annotations

import time
from typing import Callable

import torch


def time_round_robin(variants: dict[str, Callable[[], object]], rounds: int, warmup: int = 2,
                     min_seconds: float = 0.0, settle_calls: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured one timed call each per round.

    Each timed call follows ``settle_calls`` untimed calls of the same variant, so it is measured in the
    steady state a deployment runs in: the previous variant's worker threads (PyTorch's OpenMP threads
    spin-wait after a parallel region, OpenVINO's TBB workers likewise) are not billed to it. Without
    them, OpenVINO fp32 at batch 1 timed right after PyTorch variants took 41.8-42.5 ms instead of 37.6 ms
    (ResNet-50, docs/benchmarks.md runs 5-7).
    """
    with torch.inference_mode():
        for fn in variants.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in variants}
        start = time.perf_counter()
        done = 0
        while done < rounds or time.perf_counter() - start < min_seconds:
            for name, fn in variants.items():
                for _ in range(settle_calls):
                    fn()
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
            done += 1
    return times
