"""The named models: every variant is a ``ResNetSpec`` plus where it comes from, as data.

Adding a variant means adding an entry here, never a subclass.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from .spec import VIDEO_CLIP, ResNetSpec

HE2015 = "He et al. 2015, Deep Residual Learning (arXiv:1512.03385)"
HE2016 = "He et al. 2016, Identity Mappings in Deep Residual Networks (arXiv:1603.05027)"
GOYAL = "Goyal et al. 2017 / torchvision v1.5 (stride on the 3x3)"
BAG_OF_TRICKS = "He et al. 2019, Bag of Tricks (arXiv:1812.01187)"
RESNEXT = "Xie et al. 2017, Aggregated Residual Transformations (arXiv:1611.05431)"
WRN = "Zagoruyko & Komodakis 2016, Wide Residual Networks (arXiv:1605.07146)"
SENET = "Hu et al. 2018, Squeeze-and-Excitation Networks (arXiv:1709.01507), on the v1.5 layout as timm"
SENET_PAPER = "Hu et al. 2018, Squeeze-and-Excitation Networks (arXiv:1709.01507)"
TRAN = "Tran et al. 2018, A Closer Look at Spatiotemporal Convolutions (arXiv:1711.11248)"


@dataclass(frozen=True)
class ModelEntry:
    spec: ResNetSpec
    input_size: tuple[int, ...]
    """Native input (C, H, W) or (C, T, H, W), used for MAC counts and examples."""
    paper: str
    torchvision: str | None = None
    """Name of the same architecture in torchvision.models, if any (weights load by name)."""
    timm: str | None = None


IMAGENET_INPUT = (3, 224, 224)
CIFAR_INPUT = (3, 32, 32)
VIDEO_INPUT = (3, VIDEO_CLIP[0], VIDEO_CLIP[1], VIDEO_CLIP[1])

_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, spec: ResNetSpec, input_size: tuple[int, ...], paper: str,
             torchvision: str | None = None, timm: str | None = None) -> None:
    if name in _REGISTRY:
        raise KeyError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelEntry(spec.replace(paper=paper), input_size, paper, torchvision, timm)


# ----------------------------------------------------------------- ImageNet
_IMAGENET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3)),
}
for _depth, (_block, _layers) in _IMAGENET_DEPTHS.items():
    _spec = ResNetSpec(block=_block, layers=_layers)
    register(f"resnet{_depth}", _spec, IMAGENET_INPUT, HE2015 if _block == "basic" else GOYAL,
             torchvision=f"resnet{_depth}", timm=f"resnet{_depth}.tv_in1k")
    if _block == "bottleneck":
        register(f"resnet{_depth}_v1", _spec.replace(stride_on="1x1"), IMAGENET_INPUT, HE2015)
        register(f"resnet{_depth}d", _spec.replace(stem="deep", shortcut="D"), IMAGENET_INPUT, BAG_OF_TRICKS,
                 timm=f"resnet{_depth}d")
        register(f"preact_resnet{_depth}", _spec.replace(block="preact_bottleneck"), IMAGENET_INPUT, HE2016,
                 timm=f"resnetv2_{_depth}")
    else:
        register(f"plain{_depth}", _spec.replace(residual=False), IMAGENET_INPUT, HE2015)
        register(f"resnet{_depth}d", _spec.replace(stem="deep", shortcut="D"), IMAGENET_INPUT, BAG_OF_TRICKS,
                 timm=f"resnet{_depth}d")

_R50 = ResNetSpec(block="bottleneck", layers=(3, 4, 6, 3))
_R101 = _R50.replace(layers=(3, 4, 23, 3))
register("resnext50_32x4d", _R50.replace(groups=32, width_per_group=4), IMAGENET_INPUT, RESNEXT,
         torchvision="resnext50_32x4d", timm="resnext50_32x4d")
register("resnext101_32x8d", _R101.replace(groups=32, width_per_group=8), IMAGENET_INPUT, RESNEXT,
         torchvision="resnext101_32x8d", timm="resnext101_32x8d")
register("resnext101_64x4d", _R101.replace(groups=64, width_per_group=4), IMAGENET_INPUT, RESNEXT,
         torchvision="resnext101_64x4d", timm="resnext101_64x4d")
register("wide_resnet50_2", _R50.replace(width_per_group=128), IMAGENET_INPUT, WRN,
         torchvision="wide_resnet50_2", timm="wide_resnet50_2")
register("wide_resnet101_2", _R101.replace(width_per_group=128), IMAGENET_INPUT, WRN,
         torchvision="wide_resnet101_2", timm="wide_resnet101_2")
register("se_resnet50", _R50.replace(se_ratio=1 / 16), IMAGENET_INPUT, SENET, timm="seresnet50")
register("se_resnet101", _R101.replace(se_ratio=1 / 16), IMAGENET_INPUT, SENET, timm="seresnet101")
# the SENet paper's own nets (its Caffe models): the stride on the first 1x1, 3.86 GMACs for SE-ResNet-50
register("se_resnet50_v1", _R50.replace(se_ratio=1 / 16, stride_on="1x1"), IMAGENET_INPUT, SENET_PAPER)
register("se_resnet101_v1", _R101.replace(se_ratio=1 / 16, stride_on="1x1"), IMAGENET_INPUT, SENET_PAPER)

# -------------------------------------------------------------------- CIFAR
_CIFAR = ResNetSpec(block="basic", layers=(3, 3, 3), widths=(16, 32, 64), stem="cifar", stem_width=16,
                    shortcut="A", num_classes=10)
for _depth in (20, 32, 44, 56, 110, 1202):
    _n = (_depth - 2) // 6
    register(f"resnet{_depth}", _CIFAR.replace(layers=(_n,) * 3), CIFAR_INPUT, HE2015)
    if _depth != 1202:
        register(f"plain{_depth}", _CIFAR.replace(layers=(_n,) * 3, residual=False), CIFAR_INPUT, HE2015)

_PREACT_CIFAR = _CIFAR.replace(block="preact_basic", shortcut="B")
register("preact_resnet20", _PREACT_CIFAR, CIFAR_INPUT, HE2016)
register("preact_resnet56", _PREACT_CIFAR.replace(layers=(9, 9, 9)), CIFAR_INPUT, HE2016)
register("preact_resnet110", _PREACT_CIFAR.replace(layers=(18, 18, 18)), CIFAR_INPUT, HE2016)
# the authors' code (KaimingHe/resnet-1k-layers) strides the first 1x1 of a bottleneck, not the 3x3
register("preact_resnet164", _PREACT_CIFAR.replace(block="preact_bottleneck", layers=(18, 18, 18), stride_on="1x1"),
         CIFAR_INPUT, HE2016)
register("preact_resnet1001", _PREACT_CIFAR.replace(block="preact_bottleneck", layers=(111, 111, 111),
                                                    stride_on="1x1"), CIFAR_INPUT, HE2016)

for _depth, _k in ((16, 4), (16, 8), (28, 10), (40, 4), (22, 8)):
    _n = (_depth - 4) // 6
    register(f"wrn_{_depth}_{_k}", _PREACT_CIFAR.replace(layers=(_n,) * 3, width_multiplier=float(_k)),
             CIFAR_INPUT, WRN)

_RESNEXT_CIFAR = ResNetSpec(block="bottleneck", layers=(3, 3, 3), widths=(64, 128, 256), stem="cifar",
                            stem_width=64, shortcut="B", groups=8, width_per_group=64, num_classes=10)
register("resnext29_8x64d", _RESNEXT_CIFAR, CIFAR_INPUT, RESNEXT)
register("resnext29_16x64d", _RESNEXT_CIFAR.replace(groups=16), CIFAR_INPUT, RESNEXT)

# airbench-style fast CIFAR-10 residual net (the `cifar-fast` recipe): a 32-wide stem at full size,
# then three one-block stages at 16, 8 and 4 px, widths 64/256/256, projection shortcuts.
register("resnet_fast", ResNetSpec(block="basic", layers=(1, 1, 1), widths=(64, 256, 256), strides=(2, 2, 2),
                                   stem="cifar", stem_width=32, shortcut="B", num_classes=10),
         CIFAR_INPUT, "this repository: a fast CIFAR-10 ResNet in the spirit of airbench (Jordan 2024)")

# airbench's network (Jordan 2024) with residual branches: a whitening 2x2 patch stem (24 filters), three
# conv_pool stages 64/256/256 that convolve at 31, 15 and 7 px and pool after, scale-free BatchNorm
# with momentum 0.4, GELU, a global max-pool and logits scaled by 1/9.
_AIRBENCH = ResNetSpec(block="conv_pool", layers=(1, 1, 1), widths=(64, 256, 256), strides=(2, 2, 2), stem="patch",
                       stem_width=24, act="gelu", head_pool="max", logit_scale=1 / 9, norm_scale=False,
                       norm_momentum=0.4, num_classes=10)
register("resnet_airbench", _AIRBENCH, CIFAR_INPUT,
         "Jordan 2024 (airbench94), with a residual branch in each stage; Page 2018 (ResNet-9)")
# The same at widths 48/192/192, for short CPU budgets (the `cifar-fast` recipe): a step costs about a third
# less, so a 7.5-minute budget holds about 11 epochs instead of 6.4, which outweighs the narrower layers
# (docs/benchmarks.md).
register("resnet_airbench_narrow", _AIRBENCH.replace(widths=(48, 192, 192)), CIFAR_INPUT,
         "this repository: resnet_airbench narrowed to 48/192/192 for CPU time budgets")

# -------------------------------------------------------------------- video
_VIDEO = ResNetSpec(block="basic", layers=(2, 2, 2, 2), stem="video", conv_type="3d", num_classes=400)
register("r3d_18", _VIDEO, VIDEO_INPUT, TRAN, torchvision="r3d_18")
register("r2plus1d_18", _VIDEO.replace(conv_type="2plus1d"), VIDEO_INPUT, TRAN, torchvision="r2plus1d_18")


class UnknownModelError(KeyError):
    """A model name that is not registered; the message suggests close matches."""

    def __str__(self) -> str:  # KeyError would print the message with quotes
        return str(self.args[0])


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        base, _, tag = name.partition(".")
        if tag and base in _REGISTRY:  # "resnet50.IMAGENET1K_V2": a model and its weights in one string
            raise UnknownModelError(
                f"unknown model {name!r}: {tag!r} names weights, not a model; create_model({name!r}) loads them, "
                f"elsewhere give the model {base!r} and the weights separately") from None
        close = difflib.get_close_matches(name, _REGISTRY, n=4, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `resnets models` (or resnets.list_models()) lists all "
            f"{len(_REGISTRY)} names.") from None


def get_spec(name: str) -> ResNetSpec:
    return get_entry(name).spec


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style pattern (``"resnet*"``, ``"*wrn*"``), sorted naturally;
    with ``pretrained=True`` (timm's keyword) only those with published weights (``pretrained_tags``)."""
    import re

    def natural(name: str) -> list:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    names = [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]
    if pretrained:
        names = [n for n in names if pretrained_tags(n)]
    return sorted(names, key=natural)


def pretrained_tags(name: str) -> list[str]:
    """torchvision's published weight tags for a registered model (``["IMAGENET1K_V1", "IMAGENET1K_V2"]``);
    ``[]`` when torchvision publishes none. Read from torchvision's weight enums: nothing is downloaded."""
    torchvision_name = get_entry(name).torchvision
    if torchvision_name is None:
        return []
    from torchvision.models import get_model_weights

    return [weights.name for weights in get_model_weights(torchvision_name)]


def list_pretrained(pattern: str = "*") -> list[str]:
    """Published weights as ``"model.TAG"`` names (timm's form; ``create_model`` takes them), for the models
    whose name, or whose ``model.TAG``, matches ``pattern``: ``list_pretrained("resnet50")`` gives
    ``["resnet50.IMAGENET1K_V1", "resnet50.IMAGENET1K_V2"]``."""
    return [f"{name}.{tag}" for name in list_models() for tag in pretrained_tags(name)
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(f"{name}.{tag}", pattern)]


def split_pretrained_name(name: str) -> tuple[str, str | None]:
    """``"resnet50.IMAGENET1K_V2"`` -> ``("resnet50", "IMAGENET1K_V2")``; a plain name -> ``(name, None)``.
    The tag is upper-cased (torchvision spells its tags so; timm's are lower case)."""
    base, dot, tag = name.partition(".")
    if not dot:
        return name, None
    if not tag:
        raise UnknownModelError(f"model name {name!r} ends in a dot; give a model ({base!r}) or a model and "
                                f"its weights ({base!r}.TAG; resnets.list_pretrained({base!r}) lists them)")
    return base, tag.upper()
