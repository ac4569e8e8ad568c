"""Export to ONNX, ``torch.export`` programs (.pt2) and OpenVINO IR (``openvino.py``), each verified right after
writing it.

Verification reloads the written file (onnxruntime for ONNX, ``torch.export.load`` for .pt2), runs
it and the eager model on the same inputs, at a batch size different from the traced one so the
dynamic batch dimension is exercised too, and raises ``ExportVerificationError`` with the max
absolute difference when it exceeds the tolerance. The file is written and checked under a temporary name
beside the target and only then moved into place (``atomic_write``), so a file that fails its check neither
stays nor replaces an earlier export.

INT8: ONNX gets onnxruntime's static QDQ quantization of the fp32 graph (calibrated on the given
images); the exported program is the PT2E x86 int8 program (``quantize_int8(flow="pt2e")``); OpenVINO IR is
read from that int8 ONNX file (its weights stored as int8).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence, TypeVar

import torch
from torch import nn

from .fuse import eval_mode

FORMATS = ("onnx", "exported-program", "openvino")
ExportFormat = Literal["onnx", "exported-program", "openvino"]
DEFAULT_OPSET = 18
"""The newest opset the dynamo exporter targets natively in torch 2.x, and one onnxruntime >= 1.14 runs."""
PT2_INT8_IMPORT = "torch.ao.quantization.fx._decomposed"
"""The one module a process must import besides torch to load an int8 .pt2: the PT2E program calls
``torch.ops.quantized_decomposed`` ops, which this module registers (the smallest torch 2.14 import that does;
``import torchao`` does too). Plain ``torch.export.load`` fails on the file without it."""


def supported_opsets() -> range:
    """The ONNX opsets ``export_onnx`` can write: from the one torch's exporter implements its ops in (it
    converts to older ones only for some graphs, and otherwise silently writes its own) up to the newest
    the installed ``onnx`` package defines."""
    try:
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET as low
    except ImportError:  # a torch that moved it: the value of torch 2.5-2.9
        low = DEFAULT_OPSET
    try:
        import onnx

        high = onnx.defs.onnx_opset_version()
    except ImportError:
        high = low
    return range(low, max(low, high) + 1)


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter would not write (it would fall back to another one after a traceback)."""
    allowed = supported_opsets()
    if opset not in allowed:
        raise ExportError(f"ONNX opset {opset} is not supported by this torch {torch.__version__} / onnx exporter; "
                          f"choose one from {allowed[0]} to {allowed[-1]} (default {DEFAULT_OPSET})")


def onnx_file_opset(path: str | os.PathLike) -> int | None:
    """The default-domain opset a written ONNX file imports (None when it imports none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def _check_file_opset(path: str | os.PathLike, opset: int, shown: str | os.PathLike) -> None:
    written = onnx_file_opset(path)
    if written != opset:
        raise ExportError(f"the ONNX exporter wrote opset {written} for {shown}, not the {opset} asked for (it could "
                          f"not convert this graph); nothing was kept. Use --opset {written} or leave --opset out")


class ExportError(RuntimeError):
    """Export could not be done or checked (a missing runtime, bad inputs)."""


class ExportVerificationError(ExportError):
    """The exported file's outputs differ from the eager model's beyond the tolerance."""

    def __init__(self, what: str, max_abs_diff: float, tolerance: float) -> None:
        super().__init__(f"{what}: exported model disagrees with the eager model: max |diff| = {max_abs_diff:.3g} "
                         f"> tolerance {tolerance:.3g}; nothing was written (an earlier file there is kept).")
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


@dataclass
class ExportReport:
    path: Path
    format: str
    int8: bool
    max_abs_diff: float
    tolerance: float
    top1_agreement: float
    verified_batch: int
    bytes: int
    load_hint: str = ""
    """What a consumer must do beyond the format's usual loader (an int8 .pt2: one import), or empty."""

    def __str__(self) -> str:
        kind = "int8 " if self.int8 else ""
        return (f"wrote {kind}{self.format} {self.path} ({self.bytes / 1e6:.2f} MB); verified at batch "
                f"{self.verified_batch}: max |diff| {self.max_abs_diff:.2e} (tolerance {self.tolerance:.1e}), "
                f"top-1 agreement {self.top1_agreement:.0%}" + (f"\n{self.load_hint}" if self.load_hint else ""))


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("onnxruntime is not installed, so the ONNX file cannot be verified (or quantized): "
                          "pip install onnxruntime (or pip install 'resnets[deploy]'); pass verify=False / "
                          "--no-verify to export without checking") from None
    return onnxruntime


def default_input_size(model: nn.Module) -> tuple[int, ...]:
    """One input's (C, H, W) at the model's design size, (C, T, H, W) for a video net (``ResNetSpec.
    default_input_size``); spec-less modules: ImageNet's 3 x 224 x 224."""
    spec = getattr(model, "spec", None)
    return (3, 224, 224) if spec is None else spec.default_input_size


def input_size_at(model: nn.Module, side: int | None) -> tuple[int, ...]:
    """``default_input_size`` with its height and width set to ``side`` (None: kept)."""
    size = default_input_size(model)
    return size if side is None else (*size[:-2], side, side)


def _input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    return tuple(input_size) if input_size is not None else default_input_size(model)


def _inputs(model: nn.Module, input_size: Sequence[int] | None, batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, *_input_size(model, input_size), generator=torch.Generator().manual_seed(seed))


def _compare(what: str, got: torch.Tensor, want: torch.Tensor, tolerance: float) -> tuple[float, float]:
    got, want = got.float(), want.float()
    if got.shape != want.shape:
        raise ExportVerificationError(f"{what} (output shape {tuple(got.shape)} vs {tuple(want.shape)})",
                                      float("inf"), tolerance)
    diff = (got - want).abs().max().item()
    agree = (got.argmax(1) == want.argmax(1)).float().mean().item() if got.ndim == 2 else 1.0
    if not diff <= tolerance:  # also catches NaN
        raise ExportVerificationError(what, diff, tolerance)
    return diff, agree


def int8_check_images(calibration: Sequence[torch.Tensor | tuple], count: int = 16) -> torch.Tensor:
    """Images to verify an int8 export on: the first ``count`` calibration images. Quantization ranges fit
    the data's distribution, so random noise would test clipping rather than the export."""
    from .quantize import images_of

    return torch.cat([images_of(batch) for batch in calibration])[:count]  # (empty calibration data was refused while quantizing)


def fp32_logit_tolerance(reference: torch.Tensor, tolerance: float) -> float:
    """``tolerance`` as an absolute logit difference, scaled up by the largest reference logit when that is
    above 1: float rounding grows with the values, and deep nets at random initialisation (BatchNorm's
    running statistics untouched) give logits of 1e5 and more, where 1e-4 absolute would reject exact exports."""
    return tolerance * max(1.0, reference.abs().max().item())


def int8_logit_tolerance(reference: torch.Tensor, given: float | None = None) -> float:
    """The largest logit difference an int8 export may show against the fp32 model: ``given``, else 25% of
    the largest reference logit (quantization moves every logit a little; a broken graph moves them a lot)."""
    return given if given is not None else 0.25 * reference.abs().max().item()


def batch_dim() -> torch.export.Dim:
    """The dynamic batch dimension of every traced program: any batch from 1 up (no upper bound to hit)."""
    return torch.export.Dim("batch", min=1)


def refuse_feature_lists(model: nn.Module, what: str) -> None:
    """The deploy tools compare one output tensor (logits) with the original's; a ``features_only`` backbone
    returns a list of maps, which failed deep inside with "'list' object has no attribute ...". """
    from ..model import ResNetFeatures

    if isinstance(model, ResNetFeatures):
        raise ExportError(f"{what} takes a network with one output (a classifier, or create_model(..., "
                          f"num_classes=0) for pooled features); this features_only backbone returns "
                          f"{len(model.out_indices)} feature maps")


Exporter = TypeVar("Exporter", bound=Callable)


def keeps_model_mode(export: Exporter) -> Exporter:
    """Run ``export(model, ...)`` with ``model`` in eval mode, and give the caller's model its modes back after."""
    @functools.wraps(export)
    def run(model: nn.Module, *args, **kwargs):
        with eval_mode(model):
            return export(model, *args, **kwargs)

    return run  # type: ignore[return-value]


def _unwrap(model: nn.Module) -> nn.Module:
    """Export the plain network (input checks are static here, so they trace away), in eval mode (callers
    restore the caller's modes: ``keeps_model_mode``)."""
    from .fuse import InferenceModel

    if isinstance(model, InferenceModel):
        if model.precision != "fp32":
            raise ExportError("export the fp32 model; bf16 is a runtime choice (autocast), not a file format")
        model = getattr(model.model, "_orig_mod", model.model)
    refuse_feature_lists(model, "export")
    return model.eval()


@keeps_model_mode
def export_onnx(model: nn.Module, path: str | os.PathLike, *, input_size: Sequence[int] | None = None,
                opset: int = DEFAULT_OPSET, verify: bool = True, tolerance: float = 1e-4,
                int8: bool = False, calibration_data: Iterable[torch.Tensor] | None = None,
                int8_tolerance: float | None = None, metadata: dict[str, Any] | None = None) -> ExportReport:
    """Write ``model`` as ONNX with a dynamic batch dimension and check it with onnxruntime.

    ``tolerance`` is the max absolute logit difference allowed for fp32 (per unit of the largest logit when
    that is above 1: ``fp32_logit_tolerance``). With ``int8=True`` the
    fp32 graph is quantized by onnxruntime (static, QDQ, per-channel weights) on ``calibration_data``
    and compared against the fp32 eager model, on calibration images, with ``int8_tolerance`` (default: 25%
    of the largest logit); its top-1 agreement is reported. ``metadata`` (e.g. the checkpoint's preprocessing:
    ``deploy.data.preprocessing_of``) is written into the file's ``metadata_props``, each value as JSON.
    """
    from .quantize import CalibrationError

    path = Path(path)
    check_opset(opset)
    model = _unwrap(model)
    if int8 and calibration_data is None:
        raise CalibrationError("ONNX int8 needs calibration images (a few hundred training images): pass "
                               "calibration_data, or --calib-data DIR on the command line")
    if verify or int8:
        ort = _import_onnxruntime()
    if int8:
        calibration_data = list(calibration_data)  # read twice: to calibrate and to verify on
    example = _inputs(model, input_size, 2, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset,
                                    dynamic_shapes=({0: batch_dim()},), input_names=["images"],
                                    output_names=["logits"], verbose=False)
    from ..weights import atomic_write

    check = int8_check_images(calibration_data) if int8 else _inputs(model, input_size, 3, seed=1)
    measured: list[tuple[float, float, float]] = []

    def write_checked(tmp: str) -> None:  # checked before it replaces anything at path
        if int8:
            _onnx_quantize(fp32_path, Path(tmp), calibration_data, ort)
        else:
            program.save(tmp)
        _check_file_opset(tmp, opset, path)
        if metadata:
            _write_onnx_metadata(tmp, metadata)
        if verify:
            session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: check.numpy()})[0])
            with torch.no_grad():
                want = model(check)
            tol = int8_logit_tolerance(want, int8_tolerance) if int8 else fp32_logit_tolerance(want, tolerance)
            measured.append((*_compare(f"ONNX {path}", got, want, tol), tol))

    # int8: the fp32 graph the quantizer reads is scratch, not a file left (or overwritten) beside the output
    with tempfile.TemporaryDirectory() as scratch:
        fp32_path = Path(scratch) / "fp32.onnx"
        if int8:
            program.save(str(fp32_path))
            _check_file_opset(fp32_path, opset, path)
        atomic_write(path, write_checked)
    diff, agree, tol = measured[0] if measured else (float("nan"), float("nan"), tolerance)
    return ExportReport(path, "onnx", int8, diff, tol, agree, check.shape[0], path.stat().st_size)


def _write_onnx_metadata(path: str, metadata: dict[str, Any]) -> None:
    """Add ``metadata`` to the ONNX file's ``metadata_props`` (string values: each one JSON-encoded)."""
    import json

    import onnx

    model = onnx.load(path)
    props = {entry.key: entry.value for entry in model.metadata_props}
    onnx.helper.set_model_props(model, {**props, **{key: json.dumps(value) for key, value in metadata.items()}})
    onnx.save(model, path)


def _onnx_quantize(fp32_path: Path, out_path: Path, calibration_data: Iterable[torch.Tensor], ort) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .quantize import images_of

    batches = [images_of(batch) for batch in calibration_data]
    if not batches:
        from .quantize import CalibrationError

        raise CalibrationError("the calibration data is empty; give it a few hundred training images")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": b.numpy()} for b in batches])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the raw graph instead
            prepared = fp32_path
        quantize_static(str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


PT2_METADATA_FILE = "resnets.json"
"""The extra file of a .pt2 archive that holds the checkpoint's preprocessing (mean, std, image_size, classes)."""


@keeps_model_mode
def export_program(model: nn.Module, path: str | os.PathLike, *, input_size: Sequence[int] | None = None,
                   verify: bool = True, tolerance: float = 1e-4, int8: bool = False,
                   calibration_data: Iterable[torch.Tensor] | None = None,
                   metadata: dict[str, Any] | None = None) -> ExportReport:
    """Write a ``torch.export`` program (.pt2) with a dynamic batch and check the reloaded file.

    ``metadata`` (the checkpoint's preprocessing, ``deploy.data.preprocessing_of``) goes into the archive as the
    extra file ``PT2_METADATA_FILE`` (JSON): ``torch.export.load(path, extra_files={PT2_METADATA_FILE: ""})``.

    With ``int8=True`` the program is the PT2E x86 int8 model calibrated on ``calibration_data``;
    it is loaded in a fresh Python process with torch and ``PT2_INT8_IMPORT`` only (what a consumer needs), checked
    against the in-memory quantized model (tight), and its top-1 agreement with the fp32 model is reported.
    """
    from .quantize import CalibrationError, quantize_int8

    path = Path(path)
    model = _unwrap(model)
    example = _inputs(model, input_size, 2, seed=0)
    if int8:
        if calibration_data is None:
            raise CalibrationError("int8 export needs calibration images (a few hundred training images): pass "
                                   "calibration_data, or --calib-data DIR on the command line")
        reference = quantize_int8(model, calibration_data, flow="pt2e").net
    else:
        from .quantize import _traceable_copy

        reference = _traceable_copy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(reference, (example,), dynamic_shapes=({0: batch_dim()},))
    from ..weights import atomic_write

    check = _inputs(model, input_size, 3, seed=1)
    measured: list[tuple[float, float, float]] = []

    def write_checked(tmp: str) -> None:  # checked before it replaces anything at path
        from ..jsonfile import to_json

        torch.export.save(exported, tmp, extra_files={PT2_METADATA_FILE: to_json(metadata)} if metadata else None)
        if verify:
            with torch.no_grad():
                got = _run_in_fresh_process(tmp, check, path) if int8 else torch.export.load(tmp).module()(check)
                want = reference(check)
                tol = fp32_logit_tolerance(want, tolerance)
                diff, agree = _compare(f"exported program {path}", got, want, tol)
                if int8:
                    agree = (got.argmax(1) == model(check).argmax(1)).float().mean().item()
            measured.append((diff, agree, tol))

    atomic_write(path, write_checked)
    diff, agree, tol = measured[0] if measured else (float("nan"), float("nan"), tolerance)
    hint = (f"load it with: import torch; import {PT2_INT8_IMPORT}  # registers the quantized ops it calls\n"
            f"              program = torch.export.load({str(path)!r}).module()") if int8 else ""
    return ExportReport(path, "exported-program", int8, diff, tol, agree, check.shape[0], path.stat().st_size,
                        hint)


def _run_in_fresh_process(program_path: str, images: torch.Tensor, shown: Path) -> torch.Tensor:
    """The outputs of the .pt2 at ``program_path`` on ``images``, loaded as a consumer loads it: in a new Python
    process that imports torch and ``PT2_INT8_IMPORT`` only. This process has torchao (and resnets) loaded, which
    register ops the file needs, so loading it here proves nothing about a plain ``torch.export.load``."""
    with tempfile.TemporaryDirectory() as scratch:
        inputs, outputs = Path(scratch) / "images.pt", Path(scratch) / "logits.pt"
        torch.save(images, inputs)
        script = (f"import sys, torch; import {PT2_INT8_IMPORT}; torch.set_grad_enabled(False); "
                  "torch.save(torch.export.load(sys.argv[1]).module()(torch.load(sys.argv[2])), sys.argv[3])")
        run = subprocess.run([sys.executable, "-c", script, program_path, str(inputs), str(outputs)],
                             capture_output=True, text=True, cwd=scratch)
        if run.returncode != 0:
            lines = [line for line in run.stderr.splitlines() if line.strip()]
            cause = next((line for line in lines if "quantized_decomposed" in line), lines[-1] if lines else "")
            raise ExportError(f"{shown} does not load in a fresh Python process with only `import torch; import "
                              f"{PT2_INT8_IMPORT}`, as a consumer would load it: {cause.strip()}; nothing was written")
        return torch.load(outputs)


def export_model(model: nn.Module, path: str | os.PathLike, format: str, **kwargs) -> ExportReport:
    """``export_onnx``, ``export_program`` or ``export_openvino`` by format name."""
    if format == "onnx":
        return export_onnx(model, path, **kwargs)
    if format == "exported-program":
        return export_program(model, path, **kwargs)
    if format == "openvino":
        from .openvino import export_openvino

        return export_openvino(model, path, **kwargs)
    raise ExportError(f"format {format!r} is not supported; choose one of {', '.join(FORMATS)}")


def onnxruntime_session(model: nn.Module, example: torch.Tensor):
    """An onnxruntime CPU session of ``model`` (exported to a temporary file) and its input name."""
    ort = _import_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, input_size=tuple(example.shape[1:]), verify=False)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name
