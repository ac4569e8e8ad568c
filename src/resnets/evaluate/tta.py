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

__all__ = ["TTA_MODES", "TTA_VIEW_COUNTS", "TTA_WITH_PLAIN_VIEW", "tta_and_plain_logits", "tta_logits", "tta_views"]

TTA_MODES = ("none", "flip", "flip-translate", "10crop")
# forward passes per image: what a time budget sets aside for the final evaluation
TTA_VIEW_COUNTS = {"none": 1, "flip": 2, "flip-translate": 6, "10crop": 10}
# modes whose first view is the image as is: one pass over them also gives the plain (no-TTA) logits
TTA_WITH_PLAIN_VIEW = ("none", "flip", "flip-translate")


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


def _view_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    return [model(view.contiguous(memory_format=_format_of(images))).float() for view in tta_views(images, mode)]


def _average(logits: list[torch.Tensor], mode: str) -> torch.Tensor:
    if mode == "flip-translate":
        plain = (logits[0] + logits[1]) / 2
        shifted = (logits[2] + logits[3] + logits[4] + logits[5]) / 4
        return 0.5 * plain + 0.5 * shifted
    return torch.stack(logits).sum(0) / len(logits)


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """Logits averaged over the views of ``mode`` (N x classes, float32)."""
    return _average(_view_logits(model, images, mode), mode)


def tta_and_plain_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                         mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of ``mode`` and those of the image as is, from one set of forward passes where ``mode``
    includes the image as is (``TTA_WITH_PLAIN_VIEW``): a training run's last validation pass and its
    final test-time-augmented one then cost one pass, not two."""
    logits = _view_logits(model, images, mode)
    plain = logits[0] if mode in TTA_WITH_PLAIN_VIEW else model(images).float()
    return _average(logits, mode), plain


def _format_of(images: torch.Tensor) -> torch.memory_format:
    if images.ndim == 4 and images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
