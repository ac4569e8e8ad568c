"""Parameter and multiply-accumulate counts, exact for convolutions and linear layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Profile:
    params: int
    macs: int
    input_size: tuple[int, ...]

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    def __str__(self) -> str:
        return f"{self.mparams:.2f}M params, {self.gmacs:.3f} GMACs at {self.input_size}"


def profile(model: nn.Module, input_size: Sequence[int] | None = None) -> Profile:
    """Count parameters and MACs of one forward pass of a single input of ``input_size`` (C, H, W).

    MACs are counted for every convolution (output elements x input channels per group x kernel
    size) and linear layer; norms, activations, pooling and adds are not (the convention behind
    the published 1.8 / 4.1 GMAC figures of ResNet-18 / -50).
    """
    if input_size is None:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise ValueError("profile needs input_size for models without a spec")
        input_size = spec.default_input_size
    total = 0

    def conv_hook(module: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        total += out.numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * module.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        with torch.no_grad():  # the input follows the weights: a bf16 or CUDA model is profiled where it is
            model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Profile(params=params, macs=total, input_size=tuple(input_size))
