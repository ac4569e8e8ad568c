"""Feature-pyramid backbones on resnets models, and torchvision's Faster R-CNN / Mask R-CNN on them.

No detector code lives here: ``fpn_backbone`` wraps one of our ``ResNetFeatures`` with
torchvision's ``FeaturePyramidNetwork`` (the same ``body``/``fpn`` module names as torchvision's
``BackboneWithFPN``, so torchvision's detection checkpoints load by name), and the builders hand
it to ``torchvision.models.detection.FasterRCNN`` / ``MaskRCNN``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ..factory import create_model, requested_weights
from ..model import ResNet, ResNetFeatures
from ..spec import ResNetSpec
from ..weights import load_state_dict
from .policy import PolicyError, set_bn_policy, set_trainable, to_frozen_batchnorm

NORMS = ("frozen", "eval", "train")


class ResNetFPN(nn.Module):
    """``body`` (a ``ResNetFeatures``) -> ``fpn``; returns an ordered dict of ``out_channels`` maps.

    Keys are ``"0"``, ``"1"``, ... for the chosen stages (finest first) plus ``"pool"`` from the
    extra max-pool level, as torchvision's detectors expect.
    """

    def __init__(self, body: ResNetFeatures, out_channels: int = 256,
                 extra_blocks: ExtraFPNBlock | None = None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork([info["num_chs"] for info in body.feature_info], out_channels,
                                         extra_blocks=extra_blocks if extra_blocks is not None else LastLevelMaxPool())
        self.out_channels = out_channels

    @property
    def strides(self) -> list[int]:
        return [info["reduction"] for info in self.body.feature_info]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _features_model(name_or_model: str | ResNetSpec | nn.Module, returned_layers: Sequence[int],
                    weights: str | os.PathLike | None, **overrides: Any) -> ResNetFeatures:
    if isinstance(name_or_model, nn.Module):
        if not isinstance(name_or_model, ResNet):
            raise PolicyError(f"fpn_backbone takes a model name, a ResNetSpec or a resnets ResNet, not "
                              f"{type(name_or_model).__name__}")
        if weights is not None:
            raise PolicyError(f"weights={os.fspath(weights)!r} with a built model would be ignored: load them into "
                              "the model first (create_model(NAME, weights=...)), or pass the model's name")
        spec = name_or_model.spec.replace(**overrides) if overrides else name_or_model.spec
        body = ResNetFeatures(spec, returned_layers)
        load_state_dict(body, name_or_model.state_dict())
        return body
    return create_model(name_or_model, features_only=True, out_indices=tuple(returned_layers), weights=weights,
                        **overrides)


def fpn_backbone(name_or_model: str | ResNetSpec | nn.Module = "resnet50", trainable_layers: int | None = None,
                 norm: str | None = None, returned_layers: Sequence[int] | None = None, out_channels: int = 256,
                 weights: str | os.PathLike | None = None, extra_blocks: ExtraFPNBlock | None = None,
                 **overrides: Any) -> ResNetFPN:
    """A feature-pyramid backbone on any 2-D resnets model (by name, spec, or a built/pretrained model).

    ``trainable_layers`` counts from the top of the whole net as torchvision does (0: none, 1: layer4 of a
    4-stage net, ..., N+1: every stage and the stem), whatever ``returned_layers`` keeps. ``norm``:
    ``"frozen"`` swaps every BatchNorm for ``FrozenBatchNorm2d``, ``"eval"`` keeps running statistics fixed
    but trains the affine parts of trainable layers, ``"train"`` is plain BatchNorm. Norms in non-trainable
    layers are always frozen. The defaults are torchvision's: a pretrained backbone (``weights``,
    ``pretrained=True``, or a built model) trains 3 layers with frozen norms; a randomly initialised one
    trains every layer with plain BatchNorm, since frozen random layers would never learn. ``returned_layers``
    are stage numbers (1 = layer1); default all stages, or a ``features_only`` model's own ``out_indices``.
    ``weights`` is a checkpoint path or torchvision tag for the classifier.
    """
    if norm is not None and norm not in NORMS:
        raise PolicyError(f"norm={norm!r} is unknown; choose one of {', '.join(NORMS)}")
    try:
        name_or_model, weights = requested_weights(name_or_model, weights, bool(overrides.pop("pretrained", False)))
    except ValueError as exc:
        raise PolicyError(str(exc)) from None
    if isinstance(name_or_model, ResNetFeatures) and returned_layers is None:
        returned_layers = _returned_stages(name_or_model)
    spec = name_or_model.spec if isinstance(name_or_model, ResNet) else None
    if spec is None and not isinstance(name_or_model, nn.Module):
        from ..factory import resolve_spec

        spec = resolve_spec(name_or_model, **overrides)
    if spec is not None and spec.conv_type != "2d":
        raise PolicyError(f"a feature pyramid needs a 2-D image network; this one is a {spec.conv_type} video network")
    n_stages = len(spec.layers) if spec is not None else 4
    pretrained = weights is not None or isinstance(name_or_model, nn.Module)
    trainable_layers, norm = _training_defaults(trainable_layers, norm, pretrained, n_stages)
    returned = tuple(returned_layers) if returned_layers is not None else tuple(range(1, n_stages + 1))
    bad = [i for i in returned if not 1 <= i <= n_stages]
    if not returned or bad:
        raise PolicyError(f"returned_layers {returned} out of range: this model has stages 1..{n_stages} "
                          f"(layer1..layer{n_stages}); the stem (0) is not a pyramid level")
    if not 0 <= trainable_layers <= n_stages + 1:
        raise PolicyError(f"trainable_layers={trainable_layers} must be between 0 and {n_stages + 1} "
                          f"({n_stages} stages plus the stem)")
    body = _features_model(name_or_model, returned, weights, **overrides)
    stage_names = list(body.stage_names)
    # torchvision's list, over the whole net: with returned_layers=(1, 2), trainable_layers=1 names layer4,
    # which the truncated body does not hold, so nothing trains
    all_stages = [f"layer{i}" for i in range(1, n_stages + 1)]
    train_parts = (list(reversed(all_stages)) + ["conv1"])[:trainable_layers]
    if trainable_layers == n_stages + 1:
        train_parts.append("bn1")
    if norm == "frozen":
        to_frozen_batchnorm(body)
    for name, module in body.named_children():
        trainable = name in train_parts or (name == "final_bn" and stage_names[-1] in train_parts)
        set_trainable(module, trainable)
        if norm != "frozen":
            set_bn_policy([module], norm if trainable else "frozen")
    return ResNetFPN(body, out_channels, extra_blocks)


def _returned_stages(features: ResNetFeatures) -> tuple[int, ...]:
    """The stage numbers (1 = layer1) a ``features_only`` model returns; the stem is no pyramid level."""
    if 0 in features.out_indices:
        raise PolicyError(f"this features_only model returns the stem (out_indices {features.out_indices}); a "
                          "feature pyramid takes stages only: pass returned_layers=(1, 2, ...)")
    return tuple(features.out_indices)


def _training_defaults(trainable_layers: int | None, norm: str | None, pretrained: bool,
                       n_stages: int) -> tuple[int, str]:
    """torchvision's rule: frozen layers and norms only make sense on pretrained weights."""
    import warnings

    if pretrained:
        return (3 if trainable_layers is None else trainable_layers), (norm or "frozen")
    if (trainable_layers is not None and trainable_layers < n_stages + 1) or norm in ("frozen", "eval"):
        warnings.warn(f"the backbone has no pretrained weights, yet trainable_layers={trainable_layers} and "
                      f"norm={norm!r} keep some of its random layers or norm statistics fixed; pass weights= (or "
                      f"pretrained=True), or leave both at their defaults (every layer trains, plain BatchNorm)",
                      stacklevel=3)
    return (n_stages + 1 if trainable_layers is None else trainable_layers), (norm or "train")


def _anchor_generator(n_levels: int, anchor_sizes: Sequence[int] | None) -> AnchorGenerator:
    sizes = tuple(anchor_sizes) if anchor_sizes is not None else tuple(32 * 2 ** i for i in range(n_levels))
    if len(sizes) != n_levels:
        raise PolicyError(f"anchor_sizes has {len(sizes)} entries but the pyramid has {n_levels} levels "
                          "(one per returned layer plus the pooled level)")
    return AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * n_levels)


def _detector_parts(backbone: str | ResNetSpec | nn.Module, returned_layers: Sequence[int] | None,
                    anchor_sizes: Sequence[int] | None, backbone_kwargs: dict[str, Any]) -> tuple[ResNetFPN, dict]:
    fpn = backbone if isinstance(backbone, ResNetFPN) else fpn_backbone(backbone, returned_layers=returned_layers,
                                                                          **backbone_kwargs)
    names = [str(i) for i in range(len(fpn.body.feature_info))]
    parts = {"rpn_anchor_generator": _anchor_generator(len(names) + 1, anchor_sizes),
             "box_roi_pool": MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)}
    return fpn, parts


def _check_detector_kwargs(detector: type, kwargs: dict[str, Any]) -> None:
    """torchvision's detectors pass unknown keywords to their image transform, which ignores them: a backbone
    option given here (in_chans=1, drop_path_rate) built a different model than asked, without a word."""
    import dataclasses
    import inspect

    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    known = {name for cls in (detector, GeneralizedRCNNTransform)
             for name, p in inspect.signature(cls.__init__).parameters.items()
             if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self" and not name.startswith("_")}
    unknown = sorted(set(kwargs) - known)
    if not unknown:
        return
    backbone_options = [name for name in unknown if name in {f.name for f in dataclasses.fields(ResNetSpec)}]
    hint = (f"; {', '.join(backbone_options)} {'is an option' if len(backbone_options) == 1 else 'are options'} of "
            f"the backbone: build it with fpn_backbone(NAME, {backbone_options[0]}=...) and pass that as backbone "
            "(with image_mean/image_std of its channel count)" if backbone_options else "")
    raise PolicyError(f"{detector.__name__} takes no keyword {', '.join(map(repr, unknown))}{hint}")


def faster_rcnn(backbone: str | ResNetSpec | nn.Module = "resnet50", num_classes: int = 91,
                weights_backbone: str | os.PathLike | None = None, trainable_layers: int | None = None,
                norm: str | None = None,
                returned_layers: Sequence[int] | None = None, anchor_sizes: Sequence[int] | None = None,
                **detector_kwargs: Any) -> FasterRCNN:
    """torchvision's ``FasterRCNN`` on a resnets FPN backbone.

    ``num_classes`` counts the background. ``backbone`` is a model name, spec, resnets model or a
    ready ``ResNetFPN``. Other keywords go to ``FasterRCNN`` (``min_size``, ``max_size``,
    ``box_detections_per_img``, ...). With ``backbone="resnet50"`` the state dict has torchvision's
    ``fasterrcnn_resnet50_fpn`` names and shapes, so its checkpoints load directly.
    """
    _check_detector_kwargs(FasterRCNN, detector_kwargs)
    fpn, parts = _detector_parts(backbone, returned_layers, anchor_sizes,
                                 {"trainable_layers": trainable_layers, "norm": norm, "weights": weights_backbone})
    return FasterRCNN(fpn, num_classes=num_classes, **{**parts, **detector_kwargs})


def mask_rcnn(backbone: str | ResNetSpec | nn.Module = "resnet50", num_classes: int = 91,
              weights_backbone: str | os.PathLike | None = None, trainable_layers: int | None = None,
              norm: str | None = None,
              returned_layers: Sequence[int] | None = None, anchor_sizes: Sequence[int] | None = None,
              **detector_kwargs: Any) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` on a resnets FPN backbone (arguments as ``faster_rcnn``)."""
    _check_detector_kwargs(MaskRCNN, detector_kwargs)
    fpn, parts = _detector_parts(backbone, returned_layers, anchor_sizes,
                                 {"trainable_layers": trainable_layers, "norm": norm, "weights": weights_backbone})
    names = parts["box_roi_pool"].featmap_names
    parts["mask_roi_pool"] = MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2)
    return MaskRCNN(fpn, num_classes=num_classes, **{**parts, **detector_kwargs})
