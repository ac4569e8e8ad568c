"""``create_model``: a name or spec in, a ready network out (optionally with weights)."""

from __future__ import annotations

import os
from typing import Any, Sequence

from torch import nn

from .model import ResNet, ResNetFeatures
from .spec import ResNetSpec
from .zoo import get_entry, split_pretrained_name


def resolve_spec(name_or_spec: str | ResNetSpec | dict, **overrides: Any) -> ResNetSpec:
    """The spec for a registered name, a spec, or a spec dict, with field overrides applied."""
    if isinstance(name_or_spec, ResNetSpec):
        spec = name_or_spec
    elif isinstance(name_or_spec, dict):
        spec = ResNetSpec.from_dict(name_or_spec)
    elif isinstance(name_or_spec, str):
        spec = get_entry(name_or_spec).spec
    else:
        raise TypeError(f"create_model takes a model name, a ResNetSpec or a spec dict, not {type(name_or_spec).__name__}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return spec.replace(**overrides) if overrides else spec


def requested_weights(name_or_spec: Any, weights: str | os.PathLike | None,
                      pretrained: bool) -> tuple[Any, str | os.PathLike | None]:
    """(model name without a weights tag, the weights asked for) from the three ways to ask for them: a tagged
    name (``"resnet50.IMAGENET1K_V2"``), ``weights=``, and ``pretrained=True`` (``"DEFAULT"``). Two at once
    that disagree are refused."""
    if isinstance(name_or_spec, str):
        name_or_spec, tag = split_pretrained_name(name_or_spec)
        if tag is not None:
            if weights is not None and str(weights) != tag:
                raise ValueError(f"{name_or_spec + '.' + tag!r} with weights={str(weights)!r} names two sets of "
                                 f"weights; pass the model {name_or_spec!r} with weights=, or the tagged name alone")
            weights = tag
    if pretrained:
        if weights is not None:
            raise ValueError(f"pretrained=True with weights={str(weights)!r} names weights twice; pass one of them")
        weights = "DEFAULT"
    return name_or_spec, weights


def create_model(
    name_or_spec: str | ResNetSpec | dict,
    num_classes: int | None = None,
    in_chans: int | None = None,
    weights: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: int | Sequence[int] | None = None,
    adapt: bool = True,
    pretrained: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a ResNet by name (``"resnet50"``), ``ResNetSpec`` or spec dict.

    ``weights`` is a checkpoint path (safetensors or .pt, ours, torchvision's or timm's) or a
    torchvision weight tag (``"DEFAULT"``, ``"IMAGENET1K_V2"``) for architectures torchvision
    publishes; ``"resnet50.IMAGENET1K_V2"`` (a name from ``list_pretrained``) is the same as
    ``"resnet50", weights="IMAGENET1K_V2"``. When ``num_classes``/``in_chans`` differ from the checkpoint and ``adapt`` is
    true, the head is dropped and the first convolution adapted instead of failing. Any other
    keyword is a ``ResNetSpec`` field (``drop_path_rate=0.1``, ``zero_init_last=True``, ...).
    ``pretrained=True`` (timm's keyword) is ``weights="DEFAULT"``: torchvision's recommended published weights.
    ``features_only`` returns the stage outputs ``out_indices`` names (0 = stem, 1.. = stages; default: every
    stage; an int n: the last n levels; -1: the deepest).
    """
    name_or_spec, weights = requested_weights(name_or_spec, weights, pretrained)
    spec = resolve_spec(name_or_spec, num_classes=num_classes, in_chans=in_chans, **overrides)
    model: ResNet = ResNetFeatures(spec, out_indices) if features_only else ResNet(spec)
    if weights is not None:
        from .weights import load_pretrained

        load_pretrained(model, weights, model_name=name_or_spec if isinstance(name_or_spec, str) else None,
                        adapt=adapt)
    return model
