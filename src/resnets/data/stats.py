"""Per-channel normalisation statistics: published constants, or measured on a training sample."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["KNOWN_STATS", "compute_mean_std", "resolve_known_stats"]

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

# Per-pixel statistics over the training sets, on the 0..1 scale.
KNOWN_STATS: dict[str, Stats] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def resolve_known_stats(name: str) -> Stats:
    try:
        return KNOWN_STATS[name]
    except KeyError:
        raise ValueError(f"unknown normalisation {name!r}; use 'auto', one of {sorted(KNOWN_STATS)}, "
                         f"or a (mean, std) pair of 3-tuples") from None


def compute_mean_std(images: torch.Tensor | Sequence[torch.Tensor], *, sample: int = 2000, seed: int = 0) -> Stats:
    """Mean and std per channel (0..1 scale) of uint8 images (N x 3 x H x W, or a list of 3 x H x W).

    At most ``sample`` images (a seeded random subset) are used: the statistics settle long before.
    """
    if isinstance(images, torch.Tensor):
        count = images.shape[0]
        if count > sample:
            chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:sample]
            images = images[chosen]
        pixels = images.permute(1, 0, 2, 3).reshape(3, -1)
    else:
        pixels = torch.cat([image.reshape(3, -1) for image in images], dim=1)
    if pixels.numel() == 0:
        raise ValueError("cannot compute normalisation statistics of an empty dataset")
    pixels = pixels.double() / 255.0
    mean = pixels.mean(dim=1)
    std = pixels.std(dim=1).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())  # type: ignore[return-value]
