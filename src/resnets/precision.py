"""Arithmetic precision: autocast for a named precision, whether a device runs bf16 natively and whether that is
faster than fp32 here, and the CPU's name that benchmarks record beside their figures (bf16 speed differs
several-fold between CPUs).

``precision="auto"`` (training recipes) means bf16 where the device runs it faster than fp32, and fp32 elsewhere.
Native bf16 instructions are not enough: on a CPU without AVX-512 BF16 or AMX, oneDNN emulates bf16 (resnet20 and
resnet56 trained at 0.78x and 0.75x fp32's speed on an AVX-512 Xeon without BF16), and an Intel Xeon that has
AVX-512 BF16 but no AMX trained them at 0.71x and 0.69x (its bf16 dot products issue on one port, fp32 FMAs on
two), while an AMD EPYC with AVX-512 BF16 gains 2-3x (docs/benchmarks.md). So on a CPU ``auto`` takes bf16 where
AMX is present, keeps fp32 on Intel CPUs without AMX (known, not timed: a timing races on a busy machine, and two
processes of one run must decide alike), and elsewhere times a matmul in both precisions once per process
(``bf16_speedup``; an AMD EPYC's 2.2x is far from the threshold).
"""

from __future__ import annotations

import contextlib
import functools
import platform
import time
from pathlib import Path

import torch

__all__ = ["AUTO_PRECISION_HELP", "BF16_MIN_SPEEDUP", "PRECISIONS", "PRECISION_CHOICES", "autocast_context",
           "bf16_is_faster", "bf16_speedup", "cpu_name", "cpu_vendor", "native_bf16", "resolve_precision",
           "slow_bf16_reason"]

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may ask for; "auto" resolves to one of PRECISIONS
AUTO_PRECISION_HELP = "auto: bf16 where the device runs it faster than fp32 (native and timed), else fp32"
BF16_MIN_SPEEDUP = 1.25
"""How much faster than fp32 a CPU's bf16 matmul must run for ``auto`` to give up fp32's precision for it
(measured: 2.2x on an AMD EPYC with AVX-512 BF16, 0.54x on an Intel Xeon with AVX-512 BF16 but no AMX)."""


@functools.lru_cache(maxsize=None)
def _cpuinfo(field: str) -> str | None:
    """A field of /proc/cpuinfo's first processor (Linux); None where there is none. Read once per process:
    ``autocast_context`` may resolve ``auto`` (and so ask for the vendor) for every batch."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), recorded beside benchmark figures: CPUs of one
    architecture differ several-fold in bf16 speed."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """The CPU's vendor id (``GenuineIntel``, ``AuthenticAMD``; from /proc/cpuinfo on Linux), or "" unknown."""
    return _cpuinfo("vendor_id") or ""


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """True when ``device`` runs bf16 arithmetic natively: a CPU with AVX-512 BF16 or AMX, or a CUDA GPU
    with bf16 support. (oneDNN's own ``_is_mkldnn_bf16_supported`` also says True for plain AVX-512,
    where it emulates bf16 at a quarter of the fp32 speed.)"""
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        try:  # pre-Ampere GPUs emulate bf16, and by default torch counts that as support
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # an older torch without the argument
            return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [probe for probe in probes if probe is not None]
    if not probes:  # an older torch without the CPU feature probes
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return any(bool(probe()) for probe in probes)


@functools.lru_cache(maxsize=None)
def bf16_speedup(device: str = "cpu") -> float:
    """bf16 matmul throughput over fp32's on this CPU at the current thread count, timed once per process
    (about 30 ms on a 2-core CPU where bf16 is native; call it only there: emulated bf16 can take seconds). The best of
    several alternating timings of each, so a busy machine slows both alike."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"bf16_speedup times CPU matmuls; {device} is not a CPU")
    size, repeats = 512, 7
    generator = torch.Generator().manual_seed(0)
    fp32 = [torch.randn(size, size, generator=generator) for _ in range(2)]
    pairs = {"fp32": fp32, "bf16": [m.bfloat16() for m in fp32]}
    best = {name: float("inf") for name in pairs}
    for repeat in range(repeats + 2):
        for name, (a, b) in pairs.items():
            start = time.perf_counter()
            torch.mm(a, b)
            if repeat >= 2:  # two warm-up rounds: oneDNN builds its kernels on first use
                best[name] = min(best[name], time.perf_counter() - start)
    return best["fp32"] / best["bf16"]


def bf16_is_faster(device: torch.device | str = "cpu") -> bool:
    """True when bf16 is native on ``device`` and, on a CPU, its matmul runs at least ``BF16_MIN_SPEEDUP``
    times fp32's (``bf16_speedup``). Native is not enough: an Intel Xeon with AVX-512 BF16 but no AMX runs
    bf16 slower than fp32."""
    return slow_bf16_reason(device) is None


def slow_bf16_reason(device: torch.device | str = "cpu") -> str | None:
    """Why bf16 on ``device`` is likely slower than fp32, as a clause that a warning goes on from, or None where it
    is not: emulated (no native bf16), or native on a CPU whose bf16 matmul ran under ``BF16_MIN_SPEEDUP`` x fp32."""
    device = torch.device(device)
    if not native_bf16(device):
        where = "on a CPU: AVX-512 BF16 or AMX" if device.type == "cpu" else "a GPU before Ampere"
        return f"{device.type} has no native bf16 ({where}), so it is emulated and runs slower than fp32"
    if device.type != "cpu" or _cpu_probe("_is_amx_tile_supported"):
        return None  # a GPU with native bf16, or AMX tiles: bf16 runs several times fp32
    # Known without timing, so every process of a run (and every run) decides alike: a timing on a busy 2-core
    # machine ranged 0.37-1.31x here and once crossed BF16_MIN_SPEEDUP
    if cpu_vendor() == "GenuineIntel":
        return ("this Intel CPU has native bf16 (AVX-512 BF16) but no AMX, and there a bf16 matmul runs at about "
                "0.55-0.62x fp32's speed (resnet20's training at 0.71x)")
    if bf16_speedup("cpu") < BF16_MIN_SPEEDUP:
        return f"this CPU's bf16 is native, but a bf16 matmul ran at {bf16_speedup('cpu'):.2f}x fp32's speed here"
    return None


def _cpu_probe(name: str) -> bool:
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if probe is not None else False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` where ``device`` runs it faster than fp32 (``bf16_is_faster``), else ``"fp32"``;
    other names pass through."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_faster(device) else "fp32"


def autocast_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for ``precision`` on ``device``, or nothing for fp32 (``auto``: as resolved here)."""
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("fp16 autocast is for CUDA; use precision=bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)
