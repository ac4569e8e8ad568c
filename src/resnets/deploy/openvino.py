"""OpenVINO: a CPU runtime that runs a ResNet faster than eager PyTorch at small batches (its CPU plugin fuses
each convolution with its bias, activation and residual add and picks oneDNN blockings per layer; bf16 on
CPUs with AVX-512 BF16 or AMX).

The network reaches OpenVINO through the same ONNX export ``resnets export --format onnx`` writes (one
conversion path, dynamic batch), so what runs here is what the ONNX file holds. ``export_openvino`` writes
OpenVINO's IR (an ``.xml`` graph + ``.bin`` weights: fp32 weights kept, or int8 ones from the int8 ONNX
export) and checks it like every export: reloaded, run, and compared with the eager model.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from ..jsonfile import to_json
from ..weights import atomic_write
from .export import (ExportError, ExportReport, _compare, _input_size, _inputs, _unwrap, export_onnx,
                     fp32_logit_tolerance, int8_check_images, int8_logit_tolerance, keeps_model_mode)

PRECISIONS = ("fp32", "bf16", "int8")
_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's inference precision per mode; int8 graphs run their quantized convolutions in int8 (VNNI) whatever
the hint, and the few unquantized operations stay fp32."""


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise ExportError("openvino is not installed: pip install openvino (or pip install 'resnets[deploy]')") from None
    return openvino


@functools.lru_cache(maxsize=None)
def _core():
    """One OpenVINO Core for the process, for every read and compile. Graphs read through short-lived Cores
    corrupted the heap later (the test suite segfaulted in a subprocess call after an OpenVINO compile); a
    graph evidently must not outlive the Core, and the frontend libraries it loaded, that made it."""
    return _import_openvino().Core()


def openvino_bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (it reports BF16 among its capabilities)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _read(model: nn.Module, input_size: Sequence[int] | None, calibration_data: Iterable[torch.Tensor] | None = None):
    """The OpenVINO graph of ``model`` (dynamic batch), read from its ONNX export: fp32, or int8 (onnxruntime's
    static QDQ quantization, the same file ``resnets export --format onnx --int8`` writes) when calibration
    images are given."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path, input_size=input_size, verify=False, int8=calibration_data is not None,
                    calibration_data=calibration_data)
        return _core().read_model(str(onnx_path))  # held in memory: the file may go


class OpenVINOModel:
    """A compiled OpenVINO network, called like the module it came from: an NCHW float tensor in, logits out."""

    def __init__(self, compiled, precision: str) -> None:
        self.compiled = compiled
        self.precision = precision
        self._request = compiled.create_infer_request()

    @property
    def description(self) -> str:
        return f"openvino {self.precision}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._request.infer({0: images.detach().cpu().float().contiguous().numpy()})
        return torch.from_numpy(self._request.get_output_tensor(0).data.copy())


@keeps_model_mode
def compile_openvino(model: nn.Module, precision: str = "fp32", *, input_size: Sequence[int] | None = None,
                     batch: int | None = None, threads: int | None = None,
                     calibration_data: Iterable[torch.Tensor] | None = None) -> OpenVINOModel:
    """``model`` compiled by OpenVINO for this CPU, tuned for latency.

    ``precision``: "fp32" keeps fp32 arithmetic (OpenVINO would otherwise lower it to bf16 on bf16-capable
    CPUs), "bf16", or "int8" (static quantization calibrated on ``calibration_data``, a few hundred training
    images). ``batch`` fixes the batch size (faster; None keeps it dynamic). ``threads`` defaults to torch's
    thread count, so both runtimes use the same cores.
    """
    from .quantize import CalibrationError

    if precision not in PRECISIONS:
        raise ExportError(f"OpenVINO precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and calibration_data is None:
        raise CalibrationError("OpenVINO int8 needs calibration images (a few hundred training images): pass "
                               "calibration_data")
    _import_openvino()  # a clear error before the export work
    if precision == "bf16" and not openvino_bf16_supported():
        raise ExportError("this CPU has no native bf16 (no AVX-512 BF16 or AMX), so OpenVINO would run fp32: "
                          "use precision='fp32'")
    model = _unwrap(model)
    size = _input_size(model, input_size)
    graph = _read(model, size, calibration_data if precision == "int8" else None)
    if batch is not None:
        graph.reshape([batch, *size])
    config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision], "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
    return OpenVINOModel(_core().compile_model(graph, "CPU", config), precision)


@keeps_model_mode
def export_openvino(model: nn.Module, path: str | os.PathLike, *, input_size: Sequence[int] | None = None,
                    verify: bool = True, tolerance: float = 1e-4, int8: bool = False,
                    calibration_data: Iterable[torch.Tensor] | None = None,
                    int8_tolerance: float | None = None, metadata: dict[str, Any] | None = None) -> ExportReport:
    """Write OpenVINO IR (``path`` ending in .xml, weights beside it in .bin) and check the reloaded pair.

    ``metadata`` (the checkpoint's preprocessing) is stored in the graph's runtime info, each value as JSON under
    ``["resnets", KEY]``: ``json.loads(model.get_rt_info(["resnets", "mean"]).astype(str))``.

    ``int8=True`` writes the graph of the int8 ONNX export (onnxruntime's static QDQ quantization calibrated on
    ``calibration_data``): weights stored as int8 and convolutions run in int8 by the CPU plugin. It is checked
    against the fp32 model like the int8 ONNX file (on calibration images, ``int8_tolerance``, default 25% of
    the largest logit), with its top-1 agreement reported. The pair is written to a temporary folder beside
    ``path``, checked there, and only then each file moved into place with ``atomic_write`` (.bin first, then
    .xml), so neither an interrupted export nor one that fails its check leaves a file under the final names.
    """
    from .quantize import CalibrationError

    ov = _import_openvino()
    path = Path(path)
    if path.suffix != ".xml":
        raise ExportError(f"{path}: OpenVINO IR is an .xml graph with a .bin of weights beside it; give a path "
                          "ending in .xml")
    if int8 and calibration_data is None:
        raise CalibrationError("OpenVINO int8 IR needs calibration images (a few hundred training images): pass "
                               "calibration_data, or --calib-data DIR on the command line")
    if int8:
        calibration_data = list(calibration_data)  # read twice: to calibrate and to verify on
    model = _unwrap(model)
    size = _input_size(model, input_size)
    graph = _read(model, size, calibration_data if int8 else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    check = int8_check_images(calibration_data) if int8 else _inputs(model, size, 3, seed=1)
    diff, agree, tol = float("nan"), float("nan"), tolerance
    staging = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        for key, value in (metadata or {}).items():
            graph.set_rt_info(to_json(value, indent=None), ["resnets", key])
        ov.save_model(graph, str(staging / path.name), compress_to_fp16=False)
        if verify:  # the staged pair, before it replaces anything under the final names
            compiled = _core().compile_model(_core().read_model(str(staging / path.name)), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
            got = OpenVINOModel(compiled, "int8" if int8 else "fp32")(check)
            del compiled
            with torch.no_grad():
                want = model(check)
            tol = int8_logit_tolerance(want, int8_tolerance) if int8 else fp32_logit_tolerance(want, tolerance)
            diff, agree = _compare(f"OpenVINO IR {path}", got, want, tol)
        for suffix in (".bin", ".xml"):
            staged = staging / path.with_suffix(suffix).name
            atomic_write(path.with_suffix(suffix), lambda tmp, src=staged: os.replace(src, tmp))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size_bytes = path.stat().st_size + path.with_suffix(".bin").stat().st_size
    return ExportReport(path, "openvino", int8, diff, tol, agree, check.shape[0], size_bytes)
