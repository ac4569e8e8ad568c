"""Residual blocks: basic and bottleneck, post-activation (He et al. 2015) and pre-activation
(He et al. 2016), and the conv-pool block of the fast CIFAR-10 nets, each built from a ``ResNetSpec``.

Attribute names follow torchvision (``conv1``, ``bn1``, ..., ``downsample``) so checkpoints move
freely. Every block exposes ``last_norm`` (what zero-init touches) and ``add`` (the residual add).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import DropPath, Residual, SqueezeExcite, activation, conv1x1, conv3x3, make_shortcut, norm
from .spec import ResNetSpec


def _mid_planes_2plus1d(in_planes: int, planes: int) -> int:
    """torchvision's middle width for (2+1)-D convs, from the block's (in_planes, planes) and used for both of its
    convs: Tran et al. 2018's formula (M = t d^2 N_in N_out / (d^2 N_in + t N_out)) per conv keeps each one's
    parameter count equal to a 3x3x3 conv's (33.4M for R(2+1)D-18); torchvision's rule, kept here so its
    weights load, does so only where in_planes == planes (31.5M)."""
    return (in_planes * planes * 3 * 3 * 3) // (in_planes * 3 * 3 + 3 * planes)


def _first_3x3_dilation(spec: ResNetSpec, dilation: int, first_dilation: int) -> int:
    """A bottleneck's 3x3 dilation when ``output_stride`` dilates its stage: where the 3x3 carried the stride
    (v1.5) it works at the stage's input resolution (the previous dilation), as torchvision dilates; where the
    first 1x1 did (v1), the 3x3 already works at the strided resolution (the stage's dilation)."""
    return dilation if spec.stride_on == "1x1" else first_dilation


class _Block(nn.Module):
    expansion = 1

    def __init__(self, spec: ResNetSpec, in_planes: int, planes: int, stride: int, dilation: int,
                 first_dilation: int, drop_path: float, shortcut: bool = True) -> None:
        super().__init__()
        self.out_planes = planes * self.expansion
        # a first block whose dilation grows had a stride in the strided net: its shortcut keeps that net's form
        input_dilation = first_dilation if first_dilation != dilation else None
        self.downsample = make_shortcut(spec, in_planes, self.out_planes, stride, input_dilation) if shortcut else None
        self.residual = spec.residual
        self.add = Residual() if spec.residual else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)

    def zero_init_last(self) -> None:
        last = self.last_norm
        if isinstance(last, nn.modules.batchnorm._BatchNorm):
            nn.init.zeros_(last.weight)
        else:  # pre-activation blocks end on a convolution: zero its last one (of a (2+1)-D pair, the temporal
            # conv only; zeroing the spatial conv and the norm between too would leave the branch no gradient at all)
            convs = [m for m in last.modules() if isinstance(m, nn.modules.conv._ConvNd)]
            for p in convs[-1].parameters():
                nn.init.zeros_(p)


class BasicBlock(_Block):
    """3x3 -> 3x3 with a shortcut, ReLU after the add (post-activation)."""

    def __init__(self, spec: ResNetSpec, in_planes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, drop_path: float = 0.0, width: int | None = None) -> None:
        super().__init__(spec, in_planes, planes, stride, dilation, first_dilation, drop_path)
        mid = _mid_planes_2plus1d(in_planes, planes)
        inner = width or planes  # a pruned block keeps its output (residual) width
        self.conv1 = conv3x3(spec, in_planes, inner, stride, dilation=first_dilation, mid_planes=mid)
        self.bn1 = norm(spec, inner)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(spec, inner, planes, dilation=dilation, mid_planes=mid)
        self.bn2 = norm(spec, planes)
        self.se = SqueezeExcite(planes, spec.se_ratio) if spec.se_ratio > 0 else None

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.dropout(out)))
        if self.se is not None:
            out = self.se(out)
        if self.add is not None:
            out = self.add(self.drop_path(out), self._shortcut(x))
        return self.relu(out)


class Bottleneck(_Block):
    """1x1 reduce -> 3x3 (grouped for ResNeXt) -> 1x1 expand, ReLU after the add.

    ``spec.stride_on`` puts the downsampling stride on the 3x3 (v1.5, torchvision) or on the
    first 1x1 (v1, the paper and Caffe models).
    """

    expansion = 4

    def __init__(self, spec: ResNetSpec, in_planes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, drop_path: float = 0.0, width: int | None = None) -> None:
        super().__init__(spec, in_planes, planes, stride, dilation, first_dilation, drop_path)
        width = width or spec.bottleneck_width(planes)
        stride_1x1, stride_3x3 = (stride, 1) if spec.stride_on == "1x1" else (1, stride)
        dilation_3x3 = _first_3x3_dilation(spec, dilation, first_dilation)
        self.conv1 = conv1x1(spec, in_planes, width, stride_1x1)
        self.bn1 = norm(spec, width)
        self.conv2 = conv3x3(spec, width, width, stride_3x3, groups=spec.groups, dilation=dilation_3x3,
                             mid_planes=_mid_planes_2plus1d(width, width))
        self.bn2 = norm(spec, width)
        self.conv3 = conv1x1(spec, width, self.out_planes)
        self.bn3 = norm(spec, self.out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.se = SqueezeExcite(self.out_planes, spec.se_ratio) if spec.se_ratio > 0 else None

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.dropout(out)))
        if self.se is not None:
            out = self.se(out)
        if self.add is not None:
            out = self.add(self.drop_path(out), self._shortcut(x))
        return self.relu(out)


class PreActBasicBlock(_Block):
    """BN-ReLU-3x3, BN-ReLU-3x3, then the add with nothing after it (He et al. 2016; WRN).

    A projection shortcut takes the pre-activated input, as in the authors' code. The network's first block
    (``preactivated_shortcut``) passes it down the identity path too: He et al. 2016 (appendix) "adopt the first
    activation right after conv1 and before splitting into two paths", so the stem's raw output never reaches the
    sum.
    """

    preactivated_shortcut = False

    def __init__(self, spec: ResNetSpec, in_planes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, drop_path: float = 0.0, width: int | None = None) -> None:
        super().__init__(spec, in_planes, planes, stride, dilation, first_dilation, drop_path)
        inner = width or planes
        self.bn1 = norm(spec, in_planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv3x3(spec, in_planes, inner, stride, dilation=first_dilation,
                             mid_planes=_mid_planes_2plus1d(in_planes, planes))
        self.bn2 = norm(spec, inner)
        self.conv2 = conv3x3(spec, inner, planes, dilation=dilation,
                             mid_planes=_mid_planes_2plus1d(in_planes, planes))

    @property
    def last_norm(self) -> nn.Module:
        return self.conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = (pre if self.preactivated_shortcut else x) if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        if self.add is not None:
            out = self.add(self.drop_path(out), shortcut)
        return out


class PreActBottleneck(_Block):
    """BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1, then the add (He et al. 2016), laid out like timm's ResNetV2.

    The network's first block pre-activates its identity path too (``PreActBasicBlock``); the registered bottleneck
    nets project there, where the projection already takes the pre-activated input."""

    expansion = 4
    preactivated_shortcut = False

    def __init__(self, spec: ResNetSpec, in_planes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, drop_path: float = 0.0, width: int | None = None) -> None:
        super().__init__(spec, in_planes, planes, stride, dilation, first_dilation, drop_path)
        width = width or spec.bottleneck_width(planes)
        stride_1x1, stride_3x3 = (stride, 1) if spec.stride_on == "1x1" else (1, stride)
        dilation_3x3 = _first_3x3_dilation(spec, dilation, first_dilation)
        self.bn1 = norm(spec, in_planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv1 = conv1x1(spec, in_planes, width, stride_1x1)
        self.bn2 = norm(spec, width)
        self.conv2 = conv3x3(spec, width, width, stride_3x3, groups=spec.groups, dilation=dilation_3x3,
                             mid_planes=_mid_planes_2plus1d(width, width))
        self.bn3 = norm(spec, width)
        self.conv3 = conv1x1(spec, width, self.out_planes)

    @property
    def last_norm(self) -> nn.Module:
        return self.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = (pre if self.preactivated_shortcut else x) if self.downsample is None else self.downsample(pre)
        out = self.conv1(pre)
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.dropout(self.relu(self.bn3(out))))
        if self.add is not None:
            out = self.add(self.drop_path(out), shortcut)
        return out


class ConvPoolBlock(_Block):
    """conv3x3 -> (2x2 max-pool) -> norm -> act, then ``y + act(norm(conv3x3(y)))``.

    The layout of ResNet-9 (Page 2018) and airbench (Jordan 2024): each stage convolves at its input
    resolution and pools afterwards instead of striding, and the residual branch is added to the
    pooled activation, so no projection shortcut is needed. Both convolutions start as a partial
    identity (Dirac init on their first ``in_channels`` filters), as airbench does.
    """

    def __init__(self, spec: ResNetSpec, in_planes: int, planes: int, stride: int = 1, dilation: int = 1,
                 first_dilation: int = 1, drop_path: float = 0.0, width: int | None = None) -> None:
        super().__init__(spec, in_planes, planes, stride, dilation, first_dilation, drop_path, shortcut=False)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if stride == 2 else nn.Identity()
        self.bn1 = norm(spec, planes)
        self.act1 = activation(spec)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = norm(spec, planes)
        self.act2 = activation(spec)

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def reset_parameters(self) -> None:
        """PyTorch's default conv init plus a Dirac identity on the first ``in_channels`` filters."""
        for conv in (self.conv1, self.conv2):
            conv.reset_parameters()
            with torch.no_grad():
                nn.init.dirac_(conv.weight[:conv.in_channels])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.pool(self.conv1(x))))
        out = self.act2(self.bn2(self.conv2(self.dropout(x))))
        if self.add is not None:
            return self.add(self.drop_path(out), x)
        return out


BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
    "conv_pool": ConvPoolBlock,
}


def block_class(spec: ResNetSpec) -> type[_Block]:
    return BLOCKS[spec.block]
