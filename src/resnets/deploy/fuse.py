"""Inference-time rewrites: BatchNorm folded into the preceding convolution, channels-last memory,
bf16 autocast and ``torch.compile``, and ``optimize_for_inference`` which measures the candidates
on this machine and keeps the fastest one whose outputs still agree with the original model.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..precision import native_bf16
from .timing import time_round_robin

Precision = Literal["fp32", "bf16"]


_FOLDABLE = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv3d, nn.BatchNorm3d))


def _fold_in(parent: nn.Module, pairs: Sequence[tuple[str, str]]) -> int:
    """Fold each (conv, norm) pair of ``parent``'s children. The conv may be a Sequential whose output is
    its last convolution's (the deep stem, a (2+1)-D convolution): the norm folds into that last one."""
    folded = 0
    for conv_name, bn_name in pairs:
        owner, name = parent, conv_name
        conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
        while isinstance(conv, nn.Sequential) and len(conv):
            owner, (name, conv) = conv, list(conv.named_children())[-1]
        if any(isinstance(conv, conv_type) and type(bn) is norm_type for conv_type, norm_type in _FOLDABLE) \
                and conv.out_channels == bn.num_features:
            setattr(owner, name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into that convolution's weights.

    Exact up to float rounding, for eval mode only (running statistics become constants). Covers
    the stem (the deep stem's last norm included), post-activation blocks (``convN`` -> ``bnN``), any
    ``nn.Sequential`` holding conv -> bn (projection shortcuts, the deep stem), and the 3-D and (2+1)-D
    video nets. In pre-activation blocks the inner norms (``conv1`` -> ``bn2``, ``conv2`` -> ``bn3``) fold; the
    first norm precedes its convolution and is left as it is (zero padding makes that fold inexact).
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    folded = 0
    for module in list(model.modules()):
        folded += _fold_in(module, _block_pairs(module))
        if isinstance(module, nn.Sequential):
            names = [name for name, _ in module.named_children()]
            folded += _fold_in(module, list(zip(names[:-1], names[1:])))
    if folded:
        model.batchnorm_folded = True  # save_weights refuses it: its spec would rebuild the unfolded layout
    return model


def _block_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """The (conv, norm) pairs of one block that fold exactly."""
    from ..blocks import ConvPoolBlock, PreActBasicBlock, PreActBottleneck

    if isinstance(module, (PreActBasicBlock, PreActBottleneck)):
        # bn1 precedes its convolution (zero padding makes that fold inexact); the inner norms follow one
        return [("conv1", "bn2"), ("conv2", "bn3")]
    if isinstance(module, ConvPoolBlock) and not isinstance(module.pool, nn.Identity):
        # conv1 -> max-pool -> bn1: the norm moves before the pool only where its per-channel scale is
        # positive (max-pooling commutes with x -> a*x + b for a > 0 only).
        bn = module.bn1
        if not isinstance(bn, nn.BatchNorm2d):  # already folded (or not a BatchNorm)
            return [("conv2", "bn2")]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return [("conv2", "bn2")] + ([("conv1", "bn1")] if bool((scale > 0).all()) else [])
    return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]


def count_batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, and every submodule's own mode back after it (a frozen BatchNorm
    in a training model stays in eval): the deploy tools trace and time it without changing the caller's model."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory: ``channels_last`` for images (N, C, H, W), ``channels_last_3d`` for video
    clips (N, C, T, H, W), whose rank ``channels_last`` refuses; other ranks as they are."""
    if x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    if x.ndim == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    return x


class InferenceModel(nn.Module):
    """A model wrapped with the input layout and autocast it runs fastest in; outputs are fp32."""

    def __init__(self, model: nn.Module, channels_last: bool, precision: Precision,
                 description: str = "") -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.precision = precision
        self.description = description

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = to_channels_last(x)
        if self.precision == "bf16":
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return self.model(x).float()
        return self.model(x)

    def extra_repr(self) -> str:
        return self.description


def make_inference_model(model: nn.Module, precision: Precision = "fp32", channels_last: bool = True,
                         fold: bool = True, compile: bool = False) -> InferenceModel:
    """One fixed combination of the rewrites (``optimize_for_inference`` chooses among them)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={precision!r} is not supported here; use 'fp32' or 'bf16' "
                         "(int8 goes through resnets.deploy.quantize_int8)")
    net = fold_batchnorm(model) if fold else copy.deepcopy(model).eval()
    if precision == "bf16" and fold:
        # Cast the weights once: autocast would re-cast every fp32 weight on every call (about 10% of a
        # ResNet-50 batch-1 forward here). With BatchNorm left in, its statistics stay fp32 under autocast.
        net = net.to(torch.bfloat16)
    if channels_last:  # video nets' Conv3d weights are 5-D, for which channels-last is channels_last_3d
        video = any(isinstance(m, nn.Conv3d) for m in net.modules())
        net = net.to(memory_format=torch.channels_last_3d if video else torch.channels_last)
    if compile:
        # Freezing turns the weights into constants Inductor can prepack for oneDNN (inference only).
        net = torch.compile(net, options={"freezing": True})
    parts = [precision, "channels_last" if channels_last else "NCHW"] + (["folded BN"] if fold else []) + \
        (["torch.compile"] if compile else [])
    return InferenceModel(net, channels_last, precision, ", ".join(parts)).eval()


@dataclass
class Candidate:
    description: str
    median_ms: float
    max_abs_diff: float
    top1_agreement: float
    safe: bool


@dataclass
class OptimizationReport:
    chosen: str
    candidates: list[Candidate] = field(default_factory=list)
    checked_images: int = 0
    """How many images each candidate's outputs were compared on."""

    def __str__(self) -> str:
        lines = [f"chosen: {self.chosen} (outputs checked on {self.checked_images} images)"]
        for c in self.candidates:
            lines.append(f"  {c.description:<45} {c.median_ms:8.2f} ms  max|diff| {c.max_abs_diff:.2e}  "
                         f"top-1 agree {c.top1_agreement:.0%}{'' if c.safe else '  (rejected: outputs differ)'}")
        return "\n".join(lines)


MIN_CHECK_IMAGES = 16


def _check_batches(example_input: torch.Tensor) -> list[torch.Tensor]:
    """``example_input`` and random batches of its shape, up to ``MIN_CHECK_IMAGES`` images, to compare outputs
    on: over the default 2 images a top-1 agreement can only be 0, 50 or 100%. Same-shaped batches, so no
    candidate (compiled or OpenVINO) sees a new shape."""
    generator = torch.Generator().manual_seed(1)
    batches = [example_input]
    while sum(len(batch) for batch in batches) < MIN_CHECK_IMAGES:
        batches.append(torch.randn(example_input.shape, generator=generator).to(example_input))
    return batches


def optimize_for_inference(model: nn.Module, precision: str = "auto", example_input: torch.Tensor | None = None,
                           compile: bool | str = False, repeats: int = 5,
                           fp32_tolerance: float = 1e-3, min_top1_agreement: float = 0.9,
                           return_report: bool = False, openvino: bool = False):
    """The fastest safe combination of BN folding, channels-last, bf16 and ``torch.compile`` here.

    Each candidate is timed on ``example_input`` and checked against the original model on it and on random
    batches of its shape, ``MIN_CHECK_IMAGES`` images at least: fp32 candidates must agree to ``fp32_tolerance``
    (relative to the output scale), bf16 ones must keep the top-1 class of at least ``min_top1_agreement`` of
    those images.
    ``precision``: ``"fp32"`` (exact), ``"bf16"`` (only if the CPU has native bf16, else it warns
    and stays fp32), or ``"auto"`` (bf16 where native, else fp32 without a warning). ``compile``: False, True, or ``"auto"``
    (also time compiled candidates; compiling costs tens of seconds per candidate). ``openvino=True``
    also times OpenVINO's runtime in the same precisions, compiled with a dynamic batch like the other
    candidates (CPU only; the result may then be an ``OpenVINOModel``, called like the module but not one).
    """
    from .export import refuse_feature_lists

    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision={precision!r}: choose 'auto', 'fp32' or 'bf16' (int8: quantize_int8)")
    refuse_feature_lists(model, "optimize_for_inference")
    with eval_mode(model):  # the caller's model keeps its mode: every candidate is a copy
        if example_input is None:
            from .export import default_input_size

            example_input = torch.randn(2, *default_input_size(model), generator=torch.Generator().manual_seed(0))
        device_bf16 = native_bf16(example_input.device)
        precisions: list[Precision] = ["fp32"]
        if precision in ("bf16", "auto"):
            if device_bf16:
                precisions = ["bf16"] if precision == "bf16" else ["fp32", "bf16"]
            elif precision == "bf16":
                warnings.warn("this CPU has no native bf16 (AVX-512 BF16/AMX); emulated bf16 is slower, staying in fp32")
        compiles = [False, True] if compile == "auto" else [bool(compile)]
        check_batches = _check_batches(example_input)
        with torch.inference_mode():
            reference = torch.cat([model(batch).float() for batch in check_batches])
        scale = reference.abs().max().item() or 1.0
        candidates: list[Candidate] = []
        built: dict[str, tuple[InferenceModel, float, float, bool]] = {}
        nets = [make_inference_model(model, prec, channels_last, fold=True, compile=use_compile)
                for prec in precisions for channels_last in (False, True) for use_compile in compiles]
        if openvino and example_input.device.type == "cpu":
            from .openvino import compile_openvino

            # a dynamic batch, like the PyTorch candidates: a fixed one would fail on any other batch than the example's
            size = tuple(example_input.shape[1:])
            nets += [compile_openvino(model, prec, input_size=size, batch=None) for prec in precisions]
        for net in nets:
            with torch.inference_mode():
                out = torch.cat([net(batch).float() for batch in check_batches])
            diff = (out - reference).abs().max().item()
            agree = (out.argmax(1) == reference.argmax(1)).float().mean().item() if out.ndim == 2 else 1.0
            safe = diff <= fp32_tolerance * scale if net.precision == "fp32" else agree >= min_top1_agreement
            built[net.description] = (net, diff, agree, safe)
        times = time_round_robin({name: (lambda n=entry[0]: n(example_input)) for name, entry in built.items()},
                                 rounds=repeats, warmup=1)
        best: tuple[float, InferenceModel] | None = None
        for name, (net, diff, agree, safe) in built.items():
            ms = statistics.median(times[name]) * 1000
            candidates.append(Candidate(name, ms, diff, agree, safe))
            if safe and (best is None or ms < best[0]):
                best = (ms, net)
        if best is None:
            raise RuntimeError("no optimized variant reproduced the model's outputs:\n"
                               + str(OptimizationReport("none", candidates, len(reference))))
        report = OptimizationReport(best[1].description, candidates, len(reference))
        return (best[1], report) if return_report else best[1]
