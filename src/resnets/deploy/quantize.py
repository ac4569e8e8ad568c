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

import contextlib
import copy
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

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


def images_of(batch: torch.Tensor | tuple | list) -> torch.Tensor:
    """The images of a calibration batch, which may be an (images, labels) pair as data loaders yield."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _calibrate(model: nn.Module, batches: Iterable[torch.Tensor], limit: int | None) -> int:
    """Run ``batches`` through the observers, ``limit`` images at most (the last batch is cut to fit)."""
    seen = 0
    with torch.no_grad():
        for batch in map(images_of, batches):
            if limit is not None:
                batch = batch[: limit - seen]
                if not len(batch):
                    break
            model(batch)
            seen += batch.shape[0]
    return seen


class QuantizedModel(nn.Module):
    """An int8 network with the input checks and the spec of the float model it came from.

    ``calibration_images``: how many images its activation ranges were measured on (after quantization-aware
    training: the images it ran before its observers froze); ``qat_images``: how many it was fine-tuned on."""

    def __init__(self, net: nn.Module, spec: ResNetSpec | None, flow: QuantFlow, calibration_images: int,
                 qat_images: int = 0) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.flow = flow
        self.calibration_images = calibration_images
        self.qat_images = qat_images

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec is not None:
            ResNet.check_input(self, x)  # type: ignore[arg-type]  # only reads self.spec
        return self.net(x)


@contextlib.contextmanager
def _fx_quietly() -> Iterator[None]:
    """Hide torch's deprecation notices for the FX flow (``torch.ao.quantization``, quint8 tensors, observers'
    ``reduce_range``, the storage torch's loader builds for quantized tensors): they address whoever calls torch,
    here resnets, and a user of ``resnets quantize`` can do nothing about them. docs/deploy.md records the
    deprecation and the PT2E flow that replaces FX."""
    with warnings.catch_warnings():
        for message in ("torch.ao.quantization is deprecated", "Please use quant_min and quant_max",
                        "torch.quantize_per_tensor, torch.quantize_per_channel", "TypedStorage is deprecated"):
            warnings.filterwarnings("ignore", message=message)
        yield


def _fx_prepare(model: nn.Module, example: torch.Tensor, qat: bool = False) -> nn.Module:
    from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

    torch.backends.quantized.engine = "x86"
    net = _traceable_copy(model)
    with _fx_quietly():
        if qat:
            return prepare_qat_fx(net.train(), get_default_qat_qconfig_mapping("x86"), (example,))
        return prepare_fx(net, get_default_qconfig_mapping("x86"), (example,))


def _fx_convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    with _fx_quietly():
        return convert_fx(prepared)


def _unique_source_partitions(graph_module: torch.fx.GraphModule) -> None:
    """Give each ReLU call and each residual add its own source partition for the x86 quantizer.

    Exported graphs carry only the module path of each op. Our blocks (like torchvision's) call one
    ReLU module twice, so both calls land in one partition with two outputs, which the quantizer
    refuses ("more than one output node"); and the add inside ``Residual`` is not recognised as an
    add. Tagging each node as its own ``nn.ReLU`` / ``operator.add`` source fixes both, so
    conv-add-relu is fused and quantized.
    """
    import operator

    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.meta.get("source_fn_stack"):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        owner = list(stack.values())[-1][1] if stack else None
        owner_name = owner if isinstance(owner, str) else getattr(owner, "__qualname__", "")
        if node.target in (torch.ops.aten.relu.default, torch.ops.aten.relu_.default) and owner_name.endswith("ReLU"):
            node.meta["source_fn_stack"] = [(node.name, nn.ReLU)]
        elif node.target in (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor) and owner_name.endswith("Residual"):
            node.meta["source_fn_stack"] = [(node.name, operator.add)]


def _pt2e_quantize(model: nn.Module, example: torch.Tensor, calibrate: Callable[[nn.Module], int]) -> tuple[nn.Module, int]:
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError:
        raise ImportError("the pt2e int8 flow needs torchao: pip install 'resnets[deploy]' (or pip install torchao)") from None
    from .export import batch_dim

    net = _traceable_copy(model)
    example = example.expand(2, *example.shape[1:])  # batch 1 would be specialised as a constant
    exported = torch.export.export(net, (example,), dynamic_shapes=({0: batch_dim()},)).module()
    _unique_source_partitions(exported)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    seen = calibrate(prepared)
    converted = convert_pt2e(prepared)
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(converted)  # so .eval() on the wrapper is harmless
    return converted, seen


def quantize_int8(model: nn.Module, calibration_data: Iterable[torch.Tensor] | None,
                  flow: QuantFlow = "fx", max_images: int | None = 512, min_images: int = 1) -> QuantizedModel:
    """Post-training int8 quantization, calibrated on ``calibration_data`` (batches or (x, y) pairs).

    A few hundred training images are enough for the activation ranges: the first ``max_images`` images are
    used (None: all); fewer than ``min_images`` raises ``CalibrationError``.
    """
    if calibration_data is None:
        raise CalibrationError("int8 quantization needs calibration images (a few hundred training images): "
                               "pass calibration_data, or --calib-data DIR on the command line")
    if max_images is not None and max_images < min_images:
        raise CalibrationError(f"max_images={max_images} is below min_images={min_images}, so no calibration data "
                               "could pass: raise max_images (a few hundred images), or pass None for no cap")
    batches = list(calibration_data)
    if not batches:
        raise CalibrationError("the calibration data is empty; give it a few hundred training images")
    example = images_of(batches[0])[:1]
    if flow == "fx":
        prepared = _fx_prepare(model, example)
        seen = _calibrate(prepared, batches, max_images)
        net = _fx_convert(prepared)
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


def convert_qat(prepared: nn.Module, spec: ResNetSpec | None, calibration_images: int = 0,
                qat_images: int = 0) -> QuantizedModel:
    """The int8 model of a ``prepare_qat`` copy; the counts are recorded (``QuantizedModel``)."""
    return QuantizedModel(_fx_convert(copy.deepcopy(prepared).eval()), spec, "fx", calibration_images,
                          qat_images).eval()


def save_quantized(model: QuantizedModel, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Save an FX int8 model: its quantized tensors and the spec, loadable with ``weights_only=True``."""
    from ..weights import atomic_write

    if model.flow != "fx" or model.spec is None:
        raise ValueError("only FX-quantized resnets models are saved this way; export pt2e models with "
                         "resnets.deploy.export_program")
    state = model.net.state_dict()
    # Quantized modules read their layout version from the state dict's metadata; keep it.
    versions = {k: int(v["version"]) for k, v in getattr(state, "_metadata", {}).items() if "version" in v}
    payload = {"format": QUANT_FORMAT, "spec": model.spec.to_dict(), "state_dict": dict(state),
               "module_versions": versions,
               "calibration_images": model.calibration_images, "qat_images": model.qat_images,
               **dict(metadata or {})}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_quantized(path: str | os.PathLike) -> QuantizedModel:
    """Rebuild a model saved by ``save_quantized`` (no code is unpickled)."""
    from ..weights import CheckpointError

    try:
        with _fx_quietly():
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for unreadable files
        raise CheckpointError(f"could not read int8 model {str(path)!r}: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != QUANT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an int8 model saved by resnets (save_quantized)")
    spec = ResNetSpec.from_dict(payload["spec"])
    float_model = ResNet(spec).eval()
    size = spec.default_input_size
    prepared = _fx_prepare(float_model, torch.zeros(1, *size))
    with torch.no_grad():
        prepared(torch.zeros(1, *size))  # give every observer a range so convert succeeds
    net = _fx_convert(prepared)
    from collections import OrderedDict

    state = OrderedDict(payload["state_dict"])
    state._metadata = OrderedDict((k, {"version": v}) for k, v in payload.get("module_versions", {}).items())  # type: ignore[attr-defined]
    net.load_state_dict(state)
    return QuantizedModel(net, spec, "fx", int(payload.get("calibration_images", 0)),
                          int(payload.get("qat_images", 0))).eval()


def quantization_aware_finetune(model: nn.Module, splits: Any, epochs: float = 1.0, lr: float = 1e-3,
                                batch_size: int = 128, log: Callable[[str], None] | None = print) -> QuantizedModel:
    """Fine-tune with fake quantization (FX QAT, x86) on ``splits.train`` and convert to int8.

    A short, low-rate run: observers freeze after half the steps and BatchNorm statistics after
    three quarters, the usual recipe for converging QAT.
    """
    import torch.nn.functional as F

    from ..data import make_loader

    loader = make_loader(splits.train, batch_size=min(batch_size, len(splits.train)), train=True,
                         augment={"flip": True}, mean=splits.mean, std=splits.std, drop_last=False)
    total = max(1, int(epochs * len(loader)))
    from ..evaluate.loading import to_grey

    grey = getattr(getattr(model, "spec", None), "in_chans", 3) == 1  # the loader reads every image as RGB
    example = next(iter(loader))[0][:2]
    example = to_grey(example) if grey else example
    prepared = prepare_qat(model, example)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9, weight_decay=1e-5)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    step = observed = trained = 0
    # never at step 0: observers frozen before any batch has no ranges to convert with (a 1-step run)
    freeze_observers, freeze_bn = max(1, total // 2), max(1, 3 * total // 4)
    prepared.train()
    while step < total:
        for images, labels in loader:
            if step == freeze_observers:
                prepared.apply(torch.ao.quantization.disable_observer)
            if step == freeze_bn:
                prepared.apply(torch.nn.intrinsic.qat.freeze_bn_stats)
            loss = F.cross_entropy(prepared(to_grey(images) if grey else images), labels)
            if not torch.isfinite(loss):
                raise RuntimeError(f"quantization-aware training diverged (loss {loss.item()}) at step {step}; "
                                   "lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            trained += len(images)
            observed += len(images) if step <= freeze_observers else 0
            if log and step % 50 == 0:
                log(f"QAT step {step}/{total}: loss {loss.item():.3f}")
            if step >= total:
                break
    return convert_qat(prepared, getattr(model, "spec", None), calibration_images=observed, qat_images=trained)
