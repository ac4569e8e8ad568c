"""Images for calibration and for measuring what compression costs: a checkpoint's own
normalisation and class order applied to a data folder, with a held-out split to evaluate on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..evaluate.loading import to_grey


@dataclass
class DeployData:
    splits: Any
    calibration: list[torch.Tensor]
    val_loader: Any

    @property
    def num_classes(self) -> int:
        return len(self.splits.classes)


class _GreyLoader:
    """A loader of (RGB images, labels) yielding grey images instead, for a 1-channel model."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:
            yield to_grey(images), labels


def load_deploy_data(data: str, metadata: dict[str, Any] | None = None, calibration_images: int = 512,
                     val_split: float = 0.1, seed: int = 0, batch_size: int = 128, in_chans: int = 3,
                     conv_type: str = "2d") -> DeployData:
    """Calibration batches from the training split and a loader of the held-out split.

    The checkpoint's saved mean/std, class list and image size (``best.safetensors`` metadata) are
    used when present, so the images look exactly as they did in training. For a 1-channel model
    (``in_chans=1``) the batches are grey (``to_grey``); the loaders read every image as RGB. Video nets
    (``conv_type`` 3d or 2plus1d) are refused: image folders give no clips.
    """
    from ..data import load_data, make_loader
    from ..data.errors import DataError

    if conv_type != "2d":
        raise DataError(f"the model is a video network (conv_type={conv_type!r}, clips of C x T x H x W), and "
                        "calibration, pruning and distillation data here are image folders; export it in fp32 "
                        "(resnets export --format onnx) or time it with resnets bench without --calib-data")
    if in_chans not in (1, 3):
        raise DataError(f"the model takes {in_chans}-channel input; calibration and evaluation images are read as "
                        "RGB (3 channels) or, for a 1-channel model, as grey")
    metadata = metadata or {}
    normalization: Any = "auto"
    if isinstance(metadata.get("mean"), list) and isinstance(metadata.get("std"), list):
        mean, std = tuple(metadata["mean"]), tuple(metadata["std"])
        if in_chans == 1 and len(mean) == len(std) == 1:  # the grey statistics, on each RGB channel
            mean, std = mean * 3, std * 3
        normalization = (mean, std)
    splits = load_data(data, val_split=val_split, seed=seed, image_size=metadata.get("image_size"),
                       classes=metadata.get("classes"), normalization=normalization)
    calib_loader = make_loader(splits.train, batch_size=batch_size, train=False, mean=splits.mean, std=splits.std)
    batches, seen = [], 0
    for images, _ in calib_loader:
        if seen >= calibration_images:
            break
        batches.append(images[: calibration_images - seen])
        seen += batches[-1].shape[0]
    val_loader = (make_loader(splits.val, batch_size=256, train=False, mean=splits.mean, std=splits.std)
                  if splits.val is not None and len(splits.val) else None)
    if in_chans == 1:
        batches = [to_grey(b) for b in batches]
        val_loader = _GreyLoader(val_loader) if val_loader is not None else None
    return DeployData(splits, batches, val_loader)

