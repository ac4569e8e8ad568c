"""Test-time augmentation: average a model's logits over a few deterministic views of each batch.

- ``none``: the image as is.
- ``flip``: the image and its mirror (2 views).
- ``flip-translate``: airbench's scheme: the flip pair, plus the flip pairs of the image shifted one
  pixel up-left and one down-right (reflect padding); the two halves weigh 1/2 each (6 views).
- ``10crop``: the four corner crops and the centre crop of 7/8 of the side, and their mirrors, fed
  at their native scale (the network pools globally, so no resizing), as Krizhevsky et al. (10 views).

Views are built on whole batches on the model's device; the inputs are already normalised.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["TTA_MODES", "TTA_VIEW_COUNTS", "tta_logits", "tta_views"]

TTA_MODES = ("none", "flip", "flip-translate", "10crop")
# forward passes per image: what a time budget sets aside for the final evaluation
TTA_VIEW_COUNTS = {"none": 1, "flip": 2, "flip-translate": 6, "10crop": 10}


def _check(mode: str) -> None:
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose one of {', '.join(TTA_MODES)}")


def _ten_crops(images: torch.Tensor) -> list[torch.Tensor]:
    height, width = images.shape[-2:]
    crop_h, crop_w = max(1, round(height * 7 / 8)), max(1, round(width * 7 / 8))
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    corners = [(0, 0), (0, width - crop_w), (height - crop_h, 0), (height - crop_h, width - crop_w), (top, left)]
    crops = [images[..., y:y + crop_h, x:x + crop_w] for y, x in corners]
    return crops + [crop.flip(-1) for crop in crops]


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views ``mode`` averages over (weights are equal except for ``flip-translate``)."""
    _check(mode)
    if mode == "none":
        return [images]
    if mode == "flip":
        return [images, images.flip(-1)]
    if mode == "flip-translate":
        padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
        height, width = images.shape[-2:]
        up_left, down_right = padded[..., :height, :width], padded[..., 2:, 2:]
        return [images, images.flip(-1), up_left, up_left.flip(-1), down_right, down_right.flip(-1)]
    return _ten_crops(images)


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits averaged over the views of ``mode`` (N x classes, float32)."""
    views = tta_views(images, mode)
    if mode == "flip-translate":
        logits = [model(v.contiguous(memory_format=_format_of(images))).float() for v in views]
        plain = (logits[0] + logits[1]) / 2
        shifted = (logits[2] + logits[3] + logits[4] + logits[5]) / 4
        return 0.5 * plain + 0.5 * shifted
    total = None
    for view in views:
        out = model(view.contiguous(memory_format=_format_of(images))).float()
        total = out if total is None else total + out
    return total / len(views)


def _format_of(images: torch.Tensor) -> torch.memory_format:
    if images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
