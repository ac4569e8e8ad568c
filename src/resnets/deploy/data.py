"""Images for calibration and for measuring what compression costs: a checkpoint's own
normalisation and class order applied to a data folder, with a held-out split to evaluate on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class DeployData:
    splits: Any
    calibration: list[torch.Tensor]
    val_loader: Any

    @property
    def num_classes(self) -> int:
        return len(self.splits.classes)


def load_deploy_data(data: str, metadata: dict[str, Any] | None = None, calibration_images: int = 512,
                     val_split: float = 0.1, seed: int = 0, batch_size: int = 128) -> DeployData:
    """Calibration batches from the training split and a loader of the held-out split.

    The checkpoint's saved mean/std, class list and image size (``best.safetensors`` metadata) are
    used when present, so the images look exactly as they did in training.
    """
    from ..data import load_data, make_loader

    metadata = metadata or {}
    normalization: Any = "auto"
    if isinstance(metadata.get("mean"), list) and isinstance(metadata.get("std"), list):
        normalization = (tuple(metadata["mean"]), tuple(metadata["std"]))
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
    return DeployData(splits, batches, val_loader)

