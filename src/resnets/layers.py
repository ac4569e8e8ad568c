"""Small building parts shared by every block: convolutions for 2-D/3-D/(2+1)-D nets, norms,
the four shortcut options, the residual add as a module, stochastic depth and squeeze-excitation.

The residual add is a module (``Residual``) rather than an inline ``out += identity`` so fusion,
quantization, pruning and gradient-flow analysis can find it without a parallel class tree.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import ResNetSpec


def _triple(spatial: int, temporal: int) -> tuple[int, int, int]:
    return (temporal, spatial, spatial)


class Conv2Plus1D(nn.Sequential):
    """A 3x3x3 convolution factored into a spatial 1x3x3 and a temporal 3x1x1 one (Tran et al. 2018).

    The layout (conv, norm, relu, conv) and the middle width follow torchvision's video models so
    their checkpoints load by name.
    """

    def __init__(self, in_planes: int, out_planes: int, mid_planes: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv3d(in_planes, mid_planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid_planes),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid_planes, out_planes, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
        )


def conv3x3(spec: ResNetSpec, in_planes: int, out_planes: int, stride: int = 1, groups: int = 1,
            dilation: int = 1, mid_planes: int | None = None) -> nn.Module:
    """The block's main 3x3 convolution in the spec's dimensionality."""
    if spec.conv_type == "2d":
        return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation,
                         groups=groups, bias=False)
    if spec.conv_type == "3d":
        return nn.Conv3d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)
    assert mid_planes is not None, "(2+1)-D convolutions need their middle width"
    return Conv2Plus1D(in_planes, out_planes, mid_planes, stride)


def conv1x1(spec: ResNetSpec, in_planes: int, out_planes: int, stride: int = 1) -> nn.Module:
    conv = nn.Conv2d if spec.conv_type == "2d" else nn.Conv3d
    return conv(in_planes, out_planes, 1, stride=stride, bias=False)


def norm(spec: ResNetSpec, channels: int) -> nn.Module:
    """BatchNorm with the spec's momentum; with ``norm_scale=False`` its scale is fixed at 1 (not trained)."""
    layer = (nn.BatchNorm2d if spec.conv_type == "2d" else nn.BatchNorm3d)(channels, momentum=spec.norm_momentum)
    if not spec.norm_scale:
        layer.weight.requires_grad_(False)
        layer.resnets_fixed_scale = True  # fine-tuning policies that unfreeze a part leave this weight fixed
    return layer


def activation(spec: ResNetSpec) -> nn.Module:
    """The spec's activation (conv_pool blocks and the patch stem; the papers' blocks use ReLU)."""
    return nn.GELU() if spec.act == "gelu" else nn.ReLU(inplace=True)


def pool_layer(spec: ResNetSpec) -> nn.Module:
    if spec.head_pool == "max":
        return nn.AdaptiveMaxPool2d(1) if spec.conv_type == "2d" else nn.AdaptiveMaxPool3d(1)
    return nn.AdaptiveAvgPool2d(1) if spec.conv_type == "2d" else nn.AdaptiveAvgPool3d(1)


class Residual(nn.Module):
    """``branch + shortcut``: the residual connection, as a module so tools can see it."""

    def forward(self, branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return branch + shortcut


class PadShortcut(nn.Module):
    """Option A (He et al. 2015, CIFAR): identity with stride-2 subsampling and zero-padded channels.

    It has no parameters, which is why the CIFAR ResNets have exactly the parameter counts of
    their plain twins.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.in_planes, self.out_planes, self.stride = in_planes, out_planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_planes - self.in_planes
        if extra > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, extra))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_planes}->{self.out_planes}, stride={self.stride}"


class DilatedAvgPool2x2(nn.Module):
    """ResNet-D's 2x2 shortcut average where ``output_stride`` replaced its stride by dilation: every position
    averages itself and its neighbours ``dilation`` away (where the strided net's positions now lie), so the
    positions the strided net keeps hold exactly its values. A window running off the edge averages only what
    lies inside it, as the strided pool's ``count_include_pad=False`` does."""

    def __init__(self, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, (h, w) = self.dilation, x.shape[-2:]
        padded = F.pad(x, (0, d, 0, d))
        total = padded[..., :h, :w] + padded[..., d:, :w] + padded[..., :h, d:] + padded[..., d:, d:]
        rows = 1 + (torch.arange(h, device=x.device) + d < h).to(x.dtype)
        cols = 1 + (torch.arange(w, device=x.device) + d < w).to(x.dtype)
        return total / (rows[:, None] * cols[None, :])

    def extra_repr(self) -> str:
        return f"dilation={self.dilation}"


def make_shortcut(spec: ResNetSpec, in_planes: int, out_planes: int, stride: int,
                  input_dilation: int | None = None) -> nn.Module | None:
    """The shortcut of one block, or None when it is the identity (or the net is plain).

    A: zero-pad identity; B: projection only where the shape changes; C: projection always;
    D: average-pool then 1x1 projection where the shape changes (ResNet-D). Pre-activation
    blocks project the already normalised input, so their projections carry no norm.
    ``input_dilation`` is set where ``output_stride`` turned the block's stride into dilation: the dilation
    of its input. Its shortcut stays the strided net's (same parameters, same values at the positions the
    strided net keeps).
    """
    if not spec.residual:
        return None
    changes_shape = stride != 1 or input_dilation is not None or in_planes != out_planes
    if spec.shortcut == "A":
        return PadShortcut(in_planes, out_planes, stride) if changes_shape else None
    if spec.shortcut in ("B", "D") and not changes_shape:
        return None
    projection = conv1x1(spec, in_planes, out_planes, 1 if spec.shortcut == "D" else stride)
    if spec.shortcut == "D":
        pool = (nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else
                DilatedAvgPool2x2(input_dilation) if input_dilation is not None else nn.Identity())
        layers = [pool, projection]
    else:
        layers = [projection]
    if not spec.is_preact:
        layers.append(norm(spec, out_planes))
    return nn.Sequential(*layers)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def make_divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Channel attention of SENet (Hu et al. 2018), laid out like timm's so its weights load; as timm, the hidden
    width C/r is rounded up to a multiple of 8 (a 64-channel stage at r=16 gets 8, not 4)."""

    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = make_divisible(channels * ratio, 8)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(scale))))
