"""The two dataset kinds ``load_data`` returns, and the ``DataSplits`` bundle.

- ``TensorImageDataset``: small images decoded once into a uint8 N x 3 x H x W tensor (the fast path).
- ``ImageFileDataset``: a list of files decoded on the fly (large images, streamed by DataLoader workers).

Both carry ``classes``, ``mean``/``std`` (0..1 scale) and ``image_size`` so a loader can normalise
without being told again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["DataSplits", "ImageFileDataset", "TensorImageDataset", "read_image_file"]

Triple = tuple[float, float, float]


class TensorImageDataset(Dataset):
    """In-memory uint8 images and int64 labels; ``dataset[i]`` is (3 x H x W uint8, label)."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                 mean: Triple = (0.5, 0.5, 0.5), std: Triple = (0.25, 0.25, 0.25), name: str = "") -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 N x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"got {tuple(labels.shape)} labels for {images.shape[0]} images")
        self.images, self.labels = images, labels.to(torch.int64)
        self.classes, self.mean, self.std, self.name = list(classes), tuple(mean), tuple(std), name

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def subset(self, indices: torch.Tensor) -> "TensorImageDataset":
        return TensorImageDataset(self.images[indices], self.labels[indices], self.classes, self.mean, self.std, self.name)

    def __repr__(self) -> str:
        return (f"TensorImageDataset({self.name or 'images'}: {len(self)} x 3 x {self.images.shape[2]} x "
                f"{self.images.shape[3]} uint8, {len(self.classes)} classes)")


def read_image_file(path: str) -> torch.Tensor:
    """Decode a file to a 3 x H x W uint8 RGB tensor (Pillow: every common format and colour mode)."""
    import numpy as np

    from .folder import open_rgb

    return torch.from_numpy(np.array(open_rgb(path), dtype=np.uint8)).permute(2, 0, 1)


class ImageFileDataset(Dataset):
    """Image files decoded on access; ``dataset[i]`` is (3 x H x W uint8 at native size, label)."""

    in_memory = False

    def __init__(self, paths: Sequence[str], labels: torch.Tensor | Sequence[int], classes: Sequence[str],
                 image_size: int = 224, mean: Triple = (0.485, 0.456, 0.406), std: Triple = (0.229, 0.224, 0.225),
                 name: str = "") -> None:
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"got {tuple(self.labels.shape)} labels for {len(self.paths)} files")
        self.classes, self.image_size, self.mean, self.std, self.name = list(classes), image_size, tuple(mean), tuple(std), name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return read_image_file(self.paths[index]), int(self.labels[index])

    def subset(self, indices: torch.Tensor) -> "ImageFileDataset":
        chosen = [int(i) for i in indices]
        return ImageFileDataset([self.paths[i] for i in chosen], self.labels[indices], self.classes,
                                self.image_size, self.mean, self.std, self.name)

    def __repr__(self) -> str:
        return f"ImageFileDataset({self.name or 'files'}: {len(self)} files -> {self.image_size} px, {len(self.classes)} classes)"


@dataclass
class DataSplits:
    """What ``load_data`` returns: train and validation datasets plus what a checkpoint must remember.

    ``test`` is an independent test set when the source has one (CIFAR's official test batch, or a
    ``test/`` tree next to ``train/`` and ``val/``), else None. ``skipped`` lists unreadable files.
    """

    train: TensorImageDataset | ImageFileDataset
    val: TensorImageDataset | ImageFileDataset | None
    classes: list[str]
    mean: Triple
    std: Triple
    image_size: int
    in_memory: bool
    test: TensorImageDataset | ImageFileDataset | None = None
    source: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> dict:
        """A plain summary for run configs and checkpoint metadata."""
        return {
            "source": self.source, "classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
            "image_size": self.image_size, "in_memory": self.in_memory, "train_size": len(self.train),
            "val_size": len(self.val) if self.val is not None else 0,
            "test_size": len(self.test) if self.test is not None else 0,
        }
