"""Small synthetic image-classification data for tests, examples and smoke runs.

Each class gets a recognisable pattern (its own colour tint plus stripes at its own angle and
frequency), with a random phase and pixel noise per image, so a small network can learn the
classes in a few epochs while no two images are identical. Everything is a pure function of
``seed``: the same call writes byte-identical PNGs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["class_names", "make_image_folder", "make_split_folder", "make_tensor_dataset", "synthetic_images"]


def class_names(classes: int) -> list[str]:
    """Folder names used for ``classes`` synthetic classes: ``class_0``, ``class_1``, ..."""
    return [f"class_{index}" for index in range(classes)]


def synthetic_images(label: int, count: int, size: int = 32, *, classes: int = 3, seed: int = 0) -> np.ndarray:
    """``count`` RGB images of class ``label`` as a uint8 array of shape (count, size, size, 3)."""
    if not 0 <= label < classes:
        raise ValueError(f"label {label} is outside 0..{classes - 1}")
    rng = np.random.default_rng([seed, label, size, classes])
    hue = 2.0 * math.pi * label / classes
    tint = 0.5 + 0.35 * np.array([math.cos(hue), math.cos(hue - 2.1), math.cos(hue + 2.1)])
    angle = math.pi * label / classes
    frequency = 2.0 + (label % 3)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    along = xs * math.cos(angle) + ys * math.sin(angle)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for index in range(count):
        phase = rng.uniform(0.0, 2.0 * math.pi)
        stripes = 0.5 + 0.5 * np.sin(2.0 * math.pi * frequency * along + phase)
        pixels = stripes[..., None] * tint[None, None, :] * 0.8 + 0.1
        pixels = pixels + rng.normal(0.0, 0.06, size=pixels.shape)
        images[index] = np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return images


def make_tensor_dataset(classes: int = 3, per_class: int = 8, size: int = 32,
                        *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """In-memory synthetic data: (uint8 images N x 3 x size x size, int64 labels N), classes in order."""
    arrays = [synthetic_images(label, per_class, size, classes=classes, seed=seed) for label in range(classes)]
    images = torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.arange(classes, dtype=torch.int64).repeat_interleave(per_class)
    return images, labels


def make_image_folder(root: str | os.PathLike, classes: int = 3, per_class: int = 8, size: int = 32,
                      *, fmt: str = "png", seed: int = 0, names: Sequence[str] | None = None) -> Path:
    """Write an ImageFolder tree ``root/<class>/<index>.<fmt>`` and return ``root``.

    ``fmt`` is ``"png"`` (lossless) or ``"jpg"``. ``names`` overrides the class folder names.
    """
    from PIL import Image

    fmt = fmt.lower().lstrip(".")
    if fmt not in ("png", "jpg", "jpeg"):
        raise ValueError(f"fmt must be 'png' or 'jpg', not {fmt!r}")
    names = list(names) if names is not None else class_names(classes)
    if len(names) != classes:
        raise ValueError(f"got {len(names)} class names for {classes} classes")
    root = Path(root)
    for label, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index, pixels in enumerate(synthetic_images(label, per_class, size, classes=classes, seed=seed)):
            path = folder / f"{index:05d}.{fmt}"
            if fmt == "png":
                Image.fromarray(pixels).save(path, format="PNG")
            else:
                Image.fromarray(pixels).save(path, format="JPEG", quality=95)
    return root


def make_split_folder(root: str | os.PathLike, classes: int = 3, train_per_class: int = 8, val_per_class: int = 4,
                      size: int = 32, *, fmt: str = "png", seed: int = 0, val_name: str = "val") -> Path:
    """Write ``root/train/<class>/...`` and ``root/<val_name>/<class>/...`` (different images) and return ``root``."""
    root = Path(root)
    make_image_folder(root / "train", classes, train_per_class, size, fmt=fmt, seed=seed)
    make_image_folder(root / val_name, classes, val_per_class, size, fmt=fmt, seed=seed + 1_000_003)
    return root
