"""Inference benchmark: latency p50/p90, images/s, achieved GFLOP/s and share of this machine's
measured matmul peak (int8 rows: of the faster float matmul, so above 100% means int8 beats it), for each
precision/layout of a model, beside torchvision's eager fp32 NCHW
model of the same architecture timed in the same process, as ratios.

Variants are timed round-robin (one timed call of each per round, after an untimed one of its own:
``time_round_robin``) so that load from other processes on a shared machine hits all of them alike;
medians are reported.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..precision import cpu_name, native_bf16, slow_bf16_reason
from ..profile import profile
from .export import default_input_size
from .fuse import make_inference_model, to_channels_last
from .timing import time_round_robin


@dataclass
class BenchRow:
    model: str
    variant: str
    batch: int
    p50_ms: float
    p90_ms: float
    images_per_s: float
    gflops: float
    peak_share: float
    """Achieved GFLOP/s over the matmul GFLOP/s of the matching dtype (int8 rows: the faster of fp32 and bf16),
    both medians of the same round-robin rounds."""
    speedup: float | None
    """torchvision eager fp32 NCHW p50 / this p50, same batch and image size, same run (a model with other than 3
    input channels: the twin runs on 3-channel images); None where torchvision has no such model."""
    params: int
    macs: int

    def as_dict(self) -> dict:
        return asdict(self)


PEAK_SIZE = 1024


def matmul_peak_gflops(dtype: torch.dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """GFLOP/s of a square matmul in ``dtype``: the machine's attainable peak, measured now."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    best = float("inf")
    while time.perf_counter() - start < seconds or runs < 3:
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
        runs += 1
    return 2 * size ** 3 / best / 1e9


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _torchvision_twin(name: str, num_classes: int | None = None) -> nn.Module | None:
    from torchvision.models import get_model

    from ..zoo import UnknownModelError, get_entry

    try:
        tv_name = get_entry(name).torchvision
    except UnknownModelError:
        tv_name = name
    if tv_name is None:
        return None
    try:
        kwargs = {"num_classes": num_classes} if num_classes else {}
        return get_model(tv_name, weights=None, **kwargs).eval()
    except ValueError:
        return None


def build_variants(model: nn.Module, precisions: Sequence[str], use_compile: bool, example: torch.Tensor,
                   calibration: Sequence[torch.Tensor] | None = None, onnxruntime: bool = False,
                   int8_flow: str = "fx", openvino: bool = False) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The runnable forms of ``model`` to time, by name."""
    model = model.eval()
    calib = None
    if "int8" in precisions:  # random images when none are given: speed only
        calib = list(calibration) if calibration is not None else [torch.randn_like(example) for _ in range(4)]
    variants: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"ours fp32 eager NCHW": model}
    for precision in precisions:
        if precision == "fp32":
            variants["ours fp32 NCHW+folded"] = make_inference_model(model, "fp32", False, True)
            variants["ours fp32 channels_last+folded"] = make_inference_model(model, "fp32", True, True)
            if use_compile:
                variants["ours fp32 channels_last+folded+compile"] = make_inference_model(model, "fp32", True, True,
                                                                                          compile=True)
        elif precision == "bf16":
            if reason := slow_bf16_reason("cpu"):
                warnings.warn(f"{reason}: expect the bf16 rows to run slower than the fp32 ones")
            variants["ours bf16 channels_last+folded"] = make_inference_model(model, "bf16", True, True)
            if use_compile:
                variants["ours bf16 channels_last+folded+compile"] = make_inference_model(model, "bf16", True, True,
                                                                                          compile=True)
        elif precision == "int8":
            from .quantize import quantize_int8

            quantized = quantize_int8(model, calib, flow="fx")
            variants["ours int8 fx eager"] = _channels_last_input(quantized)
            if use_compile or int8_flow == "pt2e":
                pt2e = quantize_int8(model, calib, flow="pt2e")
                variants["ours int8 pt2e+compile"] = torch.compile(pt2e.net)
        else:
            raise ValueError(f"precision {precision!r} is unknown; choose from fp32, bf16, int8")
    if onnxruntime:
        from .export import onnxruntime_session

        session, input_name = onnxruntime_session(model, example)
        variants["onnxruntime fp32"] = lambda x: session.run(None, {input_name: x.numpy()})[0]
    if openvino:
        from .openvino import compile_openvino, openvino_bf16_supported

        size, batch = tuple(example.shape[1:]), example.shape[0]
        for precision in ("fp32", "bf16", "int8"):
            if precision in precisions and (precision != "bf16" or openvino_bf16_supported()):
                variants[f"openvino {precision}"] = compile_openvino(model, precision, input_size=size, batch=batch,
                                                                     calibration_data=calib)
    return variants


def _rgb_like(example: torch.Tensor) -> torch.Tensor:
    """3-channel images of ``example``'s batch and size, for torchvision's twin of a model that takes another
    channel count (a grey checkpoint): the twins are built with torchvision's 3-channel stem."""
    return torch.randn(example.shape[0], 3, *example.shape[2:], generator=torch.Generator().manual_seed(1))


def _channels_last_input(net: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        return net(to_channels_last(x))

    return run


def benchmark(model: nn.Module, name: str, batches: Sequence[int], precisions: Sequence[str] = ("fp32", "bf16"),
              use_compile: bool = False, onnxruntime: bool = False, openvino: bool = False, rounds: int = 10,
              min_seconds: float = 0.0,
              input_size: Sequence[int] | None = None, calibration: Sequence[torch.Tensor] | None = None,
              baseline: bool = True, log: Callable[[str], None] | None = None) -> tuple[list[BenchRow], dict]:
    """Time every variant of ``model`` at each batch size beside torchvision's eager fp32 twin."""
    spec = getattr(model, "spec", None)
    if input_size is None:
        input_size = default_input_size(model)
    prof = profile(model, input_size)
    # the bf16 peak only where a bf16 row needs it or the CPU runs bf16 natively: emulated, the 1024^3 matmul
    # takes seconds a round (2 s on a 2-core CPU without AVX-512) and would be no peak of anything
    peak_keys = {"fp32": torch.float32}
    if "bf16" in precisions or native_bf16():
        peak_keys["bf16"] = torch.bfloat16
    matmuls = {key: (torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype), torch.randn(PEAK_SIZE, PEAK_SIZE).to(dtype))
               for key, dtype in peak_keys.items()}
    peak_samples: dict[str, list[float]] = {key: [] for key in peak_keys}
    twin = _torchvision_twin(name, spec.num_classes if spec is not None else None) if baseline else None
    rows: list[BenchRow] = []
    for batch in batches:
        example = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(batch))
        variants = build_variants(model, precisions, use_compile, example, calibration, onnxruntime,
                                  openvino=openvino)
        timed: dict[str, Callable[[], object]] = {}
        if twin is not None:
            twin_input = example if example.shape[1] == 3 else _rgb_like(example)
            timed["torchvision fp32 eager NCHW"] = lambda tw=twin, x=twin_input: tw(x)
        for vname, fn in variants.items():
            timed[vname] = lambda f=fn, x=example: f(x)
        # The peak is timed in the same rounds, so it sees the same load as the models.
        for key in peak_keys:
            timed[f"matmul {key}"] = lambda ab=matmuls[key]: ab[0] @ ab[1]
        if log:
            log(f"batch {batch}: timing {len(timed)} variants, {rounds} rounds")
        times = time_round_robin(timed, rounds, min_seconds=min_seconds)
        base = statistics.median(times["torchvision fp32 eager NCHW"]) if twin is not None else None
        for key in peak_keys:
            peak_samples[key] += times.pop(f"matmul {key}")
        peaks = {key: 2 * PEAK_SIZE ** 3 / statistics.median(v) / 1e9 for key, v in peak_samples.items()}
        peaks["int8"] = max(peaks.values())  # int8 rows: share of the faster float matmul (bf16 where native)
        for vname, samples in times.items():
            p50 = statistics.median(samples)
            dtype = next((key for key in ("bf16", "int8") if key in vname), "fp32")
            gflops = 2 * prof.macs * batch / p50 / 1e9
            rows.append(BenchRow(model=name, variant=vname, batch=batch, p50_ms=p50 * 1000,
                                 p90_ms=_percentile(samples, 0.9) * 1000, images_per_s=batch / p50,
                                 gflops=gflops, peak_share=gflops / peaks[dtype],
                                 speedup=(base / p50) if base else None, params=prof.params, macs=prof.macs))
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
           "native_bf16": native_bf16(),
           "peak_fp32_gflops": peaks["fp32"], "peak_bf16_gflops": peaks.get("bf16")}
    return rows, env


def compare_source(name: str) -> str:
    """``"resnets"`` or ``"torchvision"``: where ``--compare``'s ``name`` comes from. An unknown name raises
    ``UnknownModelError`` with close matches among both, so a typo fails before anything is timed."""
    import difflib

    from torchvision.models import list_models

    from ..zoo import UnknownModelError, get_entry

    try:
        get_entry(name)
        return "resnets"
    except UnknownModelError as exc:
        import torchvision.models

        ours = str(exc)
        theirs = list_models(module=torchvision.models)  # classification models only
    if name in theirs:
        return "torchvision"
    close = difflib.get_close_matches(name, theirs, n=4, cutoff=0.6)
    raise UnknownModelError(f"{ours} It is not a torchvision classification model either"
                            + (f" (close: {', '.join(close)})." if close else "."))


def compare_architectures(names: Sequence[str], batch: int = 1, rounds: int = 10,
                          input_size: Sequence[int] = (3, 224, 224)) -> list[dict]:
    """Latency (fp32 eager and bf16 channels-last folded), params and MACs of ours and torchvision's backbones."""
    from torchvision.models import get_model

    from ..factory import create_model

    sources = [(name, compare_source(name)) for name in names]  # every name checked before any timing
    rows = []
    example = torch.randn(batch, *input_size)
    for name, source in sources:
        net = (create_model(name) if source == "resnets" else get_model(name, weights=None)).eval()
        prof = profile(net, input_size)
        fast = make_inference_model(net, "bf16", True, True)
        times = time_round_robin({"fp32": lambda: net(example), "bf16": lambda: fast(example)}, rounds)
        rows.append({"model": name, "source": source, "params_m": prof.params / 1e6, "gmacs": prof.macs / 1e9,
                     "fp32_eager_ms": statistics.median(times["fp32"]) * 1000,
                     "bf16_cl_ms": statistics.median(times["bf16"]) * 1000, "batch": batch})
    return rows


def _speedup(value: float | None) -> str:
    """``"1.23x"``, or ``"-"`` where there is no torchvision twin to compare with (CIFAR nets)."""
    return f"{value:.2f}x" if value is not None and value == value else "-"


def format_rows(rows: Sequence[BenchRow]) -> str:
    header = ("| model | variant | batch | p50 ms | p90 ms | images/s | GFLOP/s | % of peak | vs torchvision |\n"
              "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [header]
    for r in rows:
        lines.append(f"| {r.model} | {r.variant} | {r.batch} | {r.p50_ms:.1f} | {r.p90_ms:.1f} | {r.images_per_s:.1f} | "
                     f"{r.gflops:.1f} | {r.peak_share:.0%} | {_speedup(r.speedup)} |")
    return "\n".join(lines)


def format_compare(rows: Sequence[dict]) -> str:
    lines = ["| model | source | batch | params (M) | GMACs | fp32 eager ms | bf16 channels-last ms |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['source']} | {r['batch']} | {r['params_m']:.1f} | {r['gmacs']:.2f} | "
                     f"{r['fp32_eager_ms']:.1f} | {r['bf16_cl_ms']:.1f} |")
    return "\n".join(lines)
