"""INT8 post-training quantization for x86 CPUs, with calibration and optional quantization-aware
fine-tuning, on the ordinary ``ResNet`` class (no parallel quantized model tree).

Two flows are offered:

* ``"fx"`` (default): FX graph mode with the ``x86`` backend (oneDNN/FBGEMM kernels). The residual
  add is the ``Residual`` module, which traces to an ``add`` that is quantized like any op, so
  conv-bn-relu and add-relu are fused. It runs int8 in eager mode and is what ``resnets bench``
  times as ``int8``.
* ``"pt2e"``: PyTorch's export-based flow (``torch.export`` + ``prepare_pt2e``/``convert_pt2e``
  with ``X86InductorQuantizer``, from ``torchao``). It only becomes fast once compiled with
  ``torch.compile`` (Inductor lowers the q/dq pattern to oneDNN int8 kernels).

A quantized model is saved as a weights-only file (its int8 tensors, scales and zero points plus
the spec) and rebuilt by ``load_quantized`` by replaying the same preparation without data.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import torch
from torch import nn

from ..model import ResNet
from ..spec import ResNetSpec

QuantFlow = Literal["fx", "pt2e"]
QUANT_FORMAT = "resnets-int8-fx"


class CalibrationError(ValueError):
    """Int8 was requested without (enough) calibration data."""


def _traceable_copy(model: nn.Module) -> nn.Module:
    """A copy whose data-dependent input checks are removed so FX / export can trace it."""
    net = copy.deepcopy(model).eval()
    if isinstance(net, ResNet):
        net.check_input = lambda x: None  # checked by QuantizedModel instead
    return net


def _calibrate(model: nn.Module, batches: Iterable[torch.Tensor], limit: int | None) -> int:
    seen = 0
    with torch.no_grad():
        for batch in batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            if limit is not None and seen >= limit:
                break
            model(batch)
            seen += batch.shape[0]
    return seen


class QuantizedModel(nn.Module):
    """An int8 network with the input checks and the spec of the float model it came from."""

    def __init__(self, net: nn.Module, spec: ResNetSpec | None, flow: QuantFlow, calibration_images: int) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.flow = flow
        self.calibration_images = calibration_images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec is not None:
            ResNet.check_input(self, x)  # type: ignore[arg-type]  # only reads self.spec
        return self.net(x)


def _fx_prepare(model: nn.Module, example: torch.Tensor, qat: bool = False) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    torch.backends.quantized.engine = "x86"
    net = _traceable_copy(model)
    if qat:
        return prepare_qat_fx(net.train(), get_default_qat_qconfig_mapping("x86"), (example,))
    return prepare_fx(net, get_default_qconfig_mapping("x86"), (example,))


def _unique_relu_partitions(graph_module: torch.fx.GraphModule) -> None:
    """Give each call of a shared ``nn.ReLU`` its own source partition.

    Our blocks (like torchvision's) call one ReLU module twice; the x86 quantizer groups both calls
    into one partition with two outputs and refuses it ("more than one output node").
    """
    for node in graph_module.graph.nodes:
        stack = node.meta.get("source_fn_stack")
        if stack and isinstance(stack[-1][1], type) and issubclass(stack[-1][1], nn.ReLU):
            node.meta["source_fn_stack"] = stack[:-1] + [(node.name, stack[-1][1])]


def _pt2e_quantize(model: nn.Module, example: torch.Tensor, calibrate: Callable[[nn.Module], int]) -> tuple[nn.Module, int]:
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        raise ImportError("the pt2e int8 flow needs torchao: pip install 'resnets[deploy]' (or pip install torchao)") from None
    net = _traceable_copy(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(net, (example,), dynamic_shapes=({0: batch},)).module()
    _unique_relu_partitions(exported)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    seen = calibrate(prepared)
    return convert_pt2e(prepared), seen


def quantize_int8(model: nn.Module, calibration_data: Iterable[torch.Tensor] | None,
                  flow: QuantFlow = "fx", max_images: int | None = 512, min_images: int = 1) -> QuantizedModel:
    """Post-training int8 quantization, calibrated on ``calibration_data`` (batches or (x, y) pairs).

    A few hundred training images are enough for the activation ranges; fewer than ``min_images``
    raises ``CalibrationError``.
    """
    if calibration_data is None:
        raise CalibrationError("int8 quantization needs calibration images (a few hundred training images): "
                               "pass calibration_data, or --calib-data DIR on the command line")
    batches = list(calibration_data)
    if not batches:
        raise CalibrationError("the calibration data is empty; give it a few hundred training images")
    first = batches[0][0] if isinstance(batches[0], (tuple, list)) else batches[0]
    example = first[:1]
    if flow == "fx":
        prepared = _fx_prepare(model, example)
        seen = _calibrate(prepared, batches, max_images)
        from torch.ao.quantization.quantize_fx import convert_fx

        net = convert_fx(prepared)
    elif flow == "pt2e":
        net, seen = _pt2e_quantize(model, example, lambda m: _calibrate(m, batches, max_images))
    else:
        raise ValueError(f"flow={flow!r} is unknown; choose 'fx' or 'pt2e'")
    if seen < min_images:
        raise CalibrationError(f"only {seen} calibration images were given, at least {min_images} are needed")
    return QuantizedModel(net, getattr(model, "spec", None), flow, seen).eval()


def prepare_qat(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A fake-quantized copy to fine-tune in train mode (quantization-aware training); then ``convert_qat``."""
    return _fx_prepare(model, example, qat=True)


def convert_qat(prepared: nn.Module, spec: ResNetSpec | None) -> QuantizedModel:
    from torch.ao.quantization.quantize_fx import convert_fx

    return QuantizedModel(convert_fx(copy.deepcopy(prepared).eval()), spec, "fx", 0).eval()


def save_quantized(model: QuantizedModel, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Save an FX int8 model: its quantized tensors and the spec, loadable with ``weights_only=True``."""
    from ..weights import atomic_write

    if model.flow != "fx" or model.spec is None:
        raise ValueError("only FX-quantized resnets models are saved this way; export pt2e models with "
                         "resnets.deploy.export_program")
    state = {k: v for k, v in model.net.state_dict().items()}
    payload = {"format": QUANT_FORMAT, "spec": model.spec.to_dict(), "state_dict": state,
               "calibration_images": model.calibration_images, **dict(metadata or {})}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    """Rebuild a model saved by ``save_quantized`` (no code is unpickled)."""
    from ..weights import CheckpointError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        raise CheckpointError(f"could not read int8 model {str(path)!r}: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != QUANT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an int8 model saved by resnets (save_quantized)")
    spec = ResNetSpec.from_dict(payload["spec"])
    float_model = ResNet(spec).eval()
    size = (spec.in_chans, 32, 32) if spec.stem == "cifar" else (spec.in_chans, 224, 224)
    prepared = _fx_prepare(float_model, torch.zeros(1, *size))
    from torch.ao.quantization.quantize_fx import convert_fx

    with torch.no_grad():
        prepared(torch.zeros(1, *size))  # give every observer a range so convert succeeds
    net = convert_fx(prepared)
    net.load_state_dict(payload["state_dict"])
    return QuantizedModel(net, spec, "fx", int(payload.get("calibration_images", 0))).eval()
