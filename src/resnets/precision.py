"""Arithmetic precision: autocast for a named precision, whether a device runs bf16 natively, and the CPU's
name that benchmarks record beside their figures (bf16 speed differs several-fold between CPUs).

``precision="auto"`` (training recipes) means bf16 where the hardware has it and fp32 elsewhere: on a CPU
without AVX-512 BF16 or AMX, oneDNN emulates bf16, and resnet20 and resnet56 then trained at 0.78x and 0.75x the
speed of fp32 on an AVX-512 Xeon without BF16 (docs/benchmarks.md), instead of the 2-3x it gains where bf16 is native.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "autocast_context", "cpu_name", "native_bf16", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may ask for; "auto" resolves to one of PRECISIONS


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), recorded beside benchmark figures: CPUs of one
    architecture differ several-fold in bf16 speed."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bf16"`` where ``device`` runs it natively, else ``"fp32"``; other names pass through."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


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
