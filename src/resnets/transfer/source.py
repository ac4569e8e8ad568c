"""Where a fine-tune starts: our checkpoints, torchvision/timm state dicts (files or in memory), or
torchvision's published weights by tag, checked against the architecture in words.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..model import ResNet
from ..spec import ResNetSpec
from ..weights import (Checkpoint, CheckpointError, describe_state_dict, load_state_dict, read_checkpoint, to_resnets_keys,
                       torchvision_state_dict)
from ..zoo import get_entry, list_models


@dataclass
class SourceInfo:
    """What the pretrained network was: its spec, classes and where it came from."""

    origin: str
    spec: ResNetSpec
    num_classes: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str] | None:
        names = self.metadata.get("class_names") or self.metadata.get("classes")
        return list(names) if isinstance(names, (list, tuple)) else None


def _is_tag(text: str) -> bool:
    return not os.path.exists(text) and re.fullmatch(r"[A-Z0-9_]+", text) is not None


def load_source(source: str | os.PathLike | Mapping[str, torch.Tensor], model_name: str | None = None,
                in_chans: int | None = None, adapt_in_chans: bool = False,
                checkpoint: Checkpoint | None = None) -> tuple[ResNet, SourceInfo]:
    """The pretrained network, exactly as it was trained (head included), with its weights.

    ``source`` is a resnets checkpoint (its spec is inside; ``model_name`` optional), a torchvision or
    timm state dict file or mapping (``model_name`` says which architecture), a torchvision weight
    tag such as ``"IMAGENET1K_V1"`` (``model_name`` required), or both in one (``"resnet50.IMAGENET1K_V1"``, read
    by ``read_checkpoint`` with its spec and published class names). Weights that do not fit the named
    architecture raise ``CheckpointError`` naming the difference. ``in_chans`` different from the
    source's is refused unless ``adapt_in_chans`` (sum/repeat the first convolution's filters).
    ``checkpoint`` is ``source`` as the caller already read it (``read_checkpoint``), so it is not read again.
    """
    metadata: dict[str, Any] = {}
    spec: ResNetSpec | None = None
    if isinstance(source, Mapping):
        state, origin = dict(source), "state dict"
    elif _is_tag(str(source)):
        if model_name is None:
            raise CheckpointError(f"{str(source)!r} looks like a torchvision weight tag; name the architecture too "
                                  "(model_name / --model, e.g. resnet50)")
        state, origin = torchvision_state_dict(model_name, str(source)), f"torchvision {model_name} {source}"
    else:
        ckpt = checkpoint if checkpoint is not None else read_checkpoint(source)
        state, spec, metadata, origin = ckpt.state_dict, ckpt.spec, dict(ckpt.metadata), str(source)
    state = to_resnets_keys(state)
    if spec is None:
        if model_name is None:
            raise CheckpointError(f"{origin} holds weights without a model spec (a torchvision or timm file); name "
                                  "its architecture with model_name / --model (e.g. resnet50)")
        arch = describe_state_dict(state)
        spec = get_entry(model_name).spec.replace(num_classes=arch["num_classes"], paper="")
        if arch["in_chans"] is not None:
            spec = spec.replace(in_chans=arch["in_chans"])
    elif model_name is not None:
        named = get_entry(model_name).spec
        same = named.replace(num_classes=spec.num_classes, in_chans=spec.in_chans, paper="") == spec.replace(paper="")
        if not same:
            raise CheckpointError(f"{origin} is a {spec.describe()}, not {model_name} ({named.describe()}); "
                                  "drop model_name / --model to use the checkpoint's own architecture")
    model = ResNet(spec)
    try:
        load_state_dict(model, state, adapt=False)
    except CheckpointError as exc:
        raise CheckpointError(f"{origin} does not fit {model_name or 'its stored spec'}: {exc}") from None
    if in_chans is not None and in_chans != spec.in_chans:
        if not adapt_in_chans:
            raise CheckpointError(f"{origin} takes {spec.in_chans} input channels but the data has {in_chans}; pass "
                                  f"adapt_in_chans=True / --adapt-in-chans to convert the first convolution, or "
                                  f"convert the images to {spec.in_chans} channels")
        adapted = ResNet(spec.replace(in_chans=in_chans))
        load_state_dict(adapted, model.state_dict(), adapt=True)
        model, spec = adapted, adapted.spec
    return model, SourceInfo(origin=origin, spec=spec, num_classes=spec.num_classes, metadata=metadata)


def check_head(info: SourceInfo, num_classes: int, replace_head: bool, class_names: list[str] | None = None,
               advice: str | None = None) -> None:
    """Refuse to keep a head that does not fit the new task, in words; ``advice`` is the caller's fix (fine-tuning
    can replace the head, distillation needs another student)."""
    if replace_head:
        return
    if info.num_classes != num_classes:
        raise CheckpointError(f"{info.origin} has a {info.num_classes}-class head but the data has {num_classes} "
                              f"classes; {advice or 'let the head be replaced (drop keep_head / --keep-head)'}")
    src_names = info.class_names
    if class_names is not None and src_names is not None and list(src_names) != list(class_names):
        raise CheckpointError(f"{info.origin} was trained on classes {src_names[:5]}... but the data's classes are "
                              f"{class_names[:5]}...; keeping its head would mislabel them; "
                              f"{advice or 'replace the head instead'}")


def zoo_name(spec: ResNetSpec) -> str | None:
    """The registered name of ``spec``'s architecture (classes and input channels aside), if any."""
    key = spec.replace(num_classes=0, in_chans=3)
    for name in list_models():
        if get_entry(name).spec.replace(num_classes=0, in_chans=3) == key:
            return name
    return None
