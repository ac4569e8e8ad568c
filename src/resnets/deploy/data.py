"""Images for calibration and for measuring what compression costs: a checkpoint's own
normalisation and class order applied to a data folder, with a held-out split to evaluate on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..evaluate.loading import to_grey


PREPROCESSING_KEYS = ("mean", "std", "image_size", "classes")
"""What a deployed file must carry for its user to prepare images as the network expects (and name its outputs)."""


def preprocessing_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's recorded preprocessing: those of ``PREPROCESSING_KEYS`` it has (mean and std also under
    ``data``, as ``normalization_of`` reads them). Exported files carry it: a deployer who guesses the
    normalisation gets wrong answers without an error."""
    from ..evaluate.loading import normalization_of

    mean, std, found = normalization_of(metadata)
    recorded = {"mean": list(mean), "std": list(std)} if found else {}
    recorded.update({key: metadata[key] for key in ("image_size", "classes") if metadata.get(key) is not None})
    return {key: recorded[key] for key in PREPROCESSING_KEYS if key in recorded}


@dataclass
class DeployData:
    splits: Any
    calibration: list[torch.Tensor]
    val_loader: Any
    preprocessing: dict[str, Any]
    """The mean, std, image size and classes the images were prepared with (``PREPROCESSING_KEYS``)."""

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


def checkpoint_hold_out(metadata: dict[str, Any] | None, val_split: float | int | None = None) -> tuple[float | int, int]:
    """(val_split, seed) to hold out from a checkpoint's data: the split its run recorded (``config``), so that the
    images compression measures on are ones the network never trained on, unless ``val_split`` asks for another
    size; 0.1 with seed 0 for a checkpoint that records no run (torchvision and timm files)."""
    from ..train.config import held_out_split

    config = (metadata or {}).get("config")
    if isinstance(config, dict):
        recorded, seed = held_out_split(config)
        return (recorded if val_split is None else val_split), seed
    return (0.1 if val_split is None else val_split), 0


def calibration_batches(train: Any, count: int, seed: int = 0, batch_size: int = 128) -> list[torch.Tensor]:
    """``count`` normalised training images drawn at random (seeded) over every class, in batches: a training
    split is in class order, so its first images are one class's and would set the int8 ranges alone."""
    from ..data import make_loader
    from ..data.seeding import derive_seed

    if count <= 0 or len(train) == 0:
        return []
    generator = torch.Generator().manual_seed(derive_seed(seed, "calibration"))
    chosen = torch.randperm(len(train), generator=generator)[:count]
    loader = make_loader(train.subset(chosen), batch_size=batch_size, train=False, mean=train.mean, std=train.std)
    return [images for images, _ in loader]


def load_deploy_data(data: str, metadata: dict[str, Any] | None = None, calibration_images: int = 512,
                     val_split: float | int | None = None, seed: int | None = None, batch_size: int = 128,
                     in_chans: int = 3, conv_type: str = "2d", source: str = "the checkpoint") -> DeployData:
    """Calibration batches drawn at random from the training split, and a loader of the held-out split.

    The checkpoint's saved mean/std, class list and image size (``best.safetensors`` metadata) are used,
    so the images look exactly as they did in training; a file that records no mean/std (torchvision, timm)
    gets ImageNet's, with a warning, as ``resnets eval`` does. ``val_split``/``seed`` default to the hold-out
    the checkpoint's run recorded (``checkpoint_hold_out``). For a 1-channel model (``in_chans=1``) the batches
    are grey (``to_grey``); the loaders read every image as RGB. Video nets (``conv_type`` 3d or 2plus1d) are
    refused: image folders give no clips. ``source`` names the checkpoint in warnings.
    """
    from ..data import load_data, make_loader
    from ..data.errors import DataError
    from ..evaluate.loading import rgb_normalization

    if conv_type != "2d":
        raise DataError(f"the model is a video network (conv_type={conv_type!r}, clips of C x T x H x W), and "
                        "calibration, pruning and distillation data here are image folders; export it in fp32 "
                        "(resnets export --format onnx) or time it with resnets bench without --calib-data")
    if in_chans not in (1, 3):
        raise DataError(f"the model takes {in_chans}-channel input; calibration and evaluation images are read as "
                        "RGB (3 channels) or, for a 1-channel model, as grey")
    metadata = metadata or {}
    recorded_split, recorded_seed = checkpoint_hold_out(metadata, val_split)
    val_split, seed = recorded_split, (recorded_seed if seed is None else seed)
    normalization = rgb_normalization(metadata, in_chans, source)
    splits = load_data(data, val_split=val_split, seed=seed, image_size=metadata.get("image_size"),
                       classes=metadata.get("classes"), normalization=normalization)
    mean, std = normalization if in_chans == 3 else (normalization[0][:1], normalization[1][:1])  # grey: its own
    preprocessing = {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
                     "image_size": int(splits.image_size), "classes": list(splits.classes)}
    batches = calibration_batches(splits.train, calibration_images, seed, batch_size)
    val_loader = (make_loader(splits.val, batch_size=256, train=False, mean=splits.mean, std=splits.std)
                  if splits.val is not None and len(splits.val) else None)
    if in_chans == 1:
        batches = [to_grey(b) for b in batches]
        val_loader = _GreyLoader(val_loader) if val_loader is not None else None
    return DeployData(splits, batches, val_loader, preprocessing)

