"""A checkpoint made ready for inference: the model in eval mode, the class names, and the preprocessing it was
trained with, so ``resnets eval``, ``resnets predict`` and Python callers read images the same way."""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

import torch
from torch import nn

from ..weights import CheckpointError


class GrayscaleInput(nn.Module):
    """Lets a 1-channel model take the RGB batches every loader makes. With the grey statistics repeated over the
    3 channels, the luminance-weighted sum (ITU-R 601, PIL's "L") of the normalised channels is the normalised
    grey image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spec = getattr(model, "spec", None)
        self.register_buffer("weights", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x * self.weights.to(x.dtype)).sum(1, keepdim=True))


class InferenceModel(NamedTuple):
    model: nn.Module  # in eval mode, taking 3-channel (RGB) input
    classes: list[str] | None
    mean: tuple[float, ...]  # per RGB channel
    std: tuple[float, ...]
    image_size: int | None
    crop_fraction: float  # centre crop / resize, for images larger than image_size


def load_for_inference(checkpoint: str | os.PathLike, use_ema: bool = False,
                       need_classes: bool = True) -> InferenceModel:
    """Load a resnets checkpoint (best.safetensors, last.pt) for evaluation or prediction; errors name what is
    missing. ``crop_fraction`` is the checkpoint's (published weights saved with ``pretrained_cfg``) or the
    ImageNet convention's 0.875. A 1-channel model is wrapped (``GrayscaleInput``) to take RGB. Without
    ``need_classes`` a checkpoint with no class names gives ``classes=None``."""
    from ..data.loader import EVAL_CROP_FRACTION
    from ..model import ResNet
    from ..weights import load_state_dict, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    if ckpt.spec is None:
        raise CheckpointError(f"{checkpoint} holds no model spec; evaluate a checkpoint written by `resnets train` "
                              "(best.safetensors or last.pt)")
    meta = ckpt.metadata
    classes = meta.get("classes")
    if not classes and need_classes:
        raise CheckpointError(f"{checkpoint} stores no class names, so dataset folders cannot be matched to outputs")
    if classes and len(classes) != ckpt.spec.num_classes:
        raise CheckpointError(f"{checkpoint} names {len(classes)} classes but its model has {ckpt.spec.num_classes} "
                              "outputs; save it with the class list of the head it has (after reset_classifier, "
                              "the new classes)")
    in_chans = ckpt.spec.in_chans
    if in_chans not in (1, 3):
        raise CheckpointError(f"{checkpoint} takes {in_chans}-channel input; evaluation and prediction read images "
                              "as RGB (3 channels) or, for a 1-channel model, as grey")
    model: nn.Module = ResNet(ckpt.spec)
    state = ckpt.state_dict
    if use_ema:
        state = ckpt.raw.get("state_dict_ema")
        if state is None:
            raise CheckpointError(f"{checkpoint} holds no EMA weights (the run had ema_decay=0, or it is not a "
                                  "last.pt)")
    load_state_dict(model, state)
    mean: Sequence[float] = tuple(meta.get("mean") or (0.5,) * in_chans)
    std: Sequence[float] = tuple(meta.get("std") or (0.25,) * in_chans)
    if len(mean) != in_chans or len(std) != in_chans:
        raise CheckpointError(f"{checkpoint} stores {len(mean)} mean and {len(std)} std values for a model with "
                              f"{in_chans} input channel(s); save it with one value per channel")
    if in_chans == 1:
        model, mean, std = GrayscaleInput(model), tuple(mean) * 3, tuple(std) * 3
    return InferenceModel(model.eval(), list(classes) if classes else None, tuple(mean), tuple(std),
                          meta.get("image_size"), float(meta.get("crop_fraction") or EVAL_CROP_FRACTION))
