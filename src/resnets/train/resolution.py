"""Progressive resizing: the image size each training step sees, and what a run of such steps costs.

Early steps on downscaled images are cheap (a 24 px CIFAR batch trains about 2x faster than a 32 px one
on this machine's CPU) and still teach the coarse features; the last steps at full size fit the fine ones
and leave BatchNorm statistics for the size evaluation uses. The size grows linearly from ``min_size``
at ``ramp_start`` to the full size at ``ramp_end`` (fractions of the run, so a time budget or another
length stretches it), rounded down to a multiple of ``size_step``: the scheme of FFCV's ImageNet
recipes and fast.ai's DAWNBench runs, here in fractions instead of epochs. The size is a function of
(step, total steps) alone, so a resumed run sees exactly the sizes an uninterrupted one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F


_GRID = 10_000
"""Steps of the notional run on which run-length-free quantities (the sizes, the mean step) are read."""


@dataclass(frozen=True)
class ResolutionSchedule:
    full_size: int
    min_size: int | None = None
    ramp_start: float = 0.5
    ramp_end: float = 0.5
    size_step: int = 4

    @classmethod
    def from_setting(cls, full_size: int, min_size: float | None, ramp_start: float = 0.5, ramp_end: float = 0.5,
                     size_step: int = 4) -> "ResolutionSchedule":
        """``min_size`` as a config gives it: pixels (8 or more), or a fraction of the full size below 1
        (0.625: 20 px of CIFAR's 32, 140 px of a 224 px crop), so one recipe carries across image sizes."""
        if min_size is not None and 0 < min_size < 1:
            min_size = max(8, int(round(min_size * full_size)))
        return cls(full_size, None if min_size is None else int(min_size), ramp_start, ramp_end, size_step)

    @property
    def active(self) -> bool:
        return self.min_size is not None and self.min_size < self.full_size

    def size_at(self, step: int, total_steps: int) -> int:
        return int(self.sizes_at(np.array([step]), total_steps)[0])

    def sizes_at(self, steps: np.ndarray, total_steps: int) -> np.ndarray:
        """The size of each step in ``steps`` of a ``total_steps`` run (vectorised for cost sums)."""
        if not self.active:
            return np.full(len(steps), self.full_size, dtype=np.int64)
        fraction = np.asarray(steps, dtype=np.float64) / max(total_steps, 1)
        span = self.ramp_end - self.ramp_start
        ramp = np.clip((fraction - self.ramp_start) / span, 0.0, 1.0) if span > 0 else \
            (fraction >= self.ramp_end).astype(np.float64)
        size = self.min_size + ramp * (self.full_size - self.min_size)
        size = np.floor(size / self.size_step + 1e-9) * self.size_step
        size = np.where(ramp >= 1.0, self.full_size, size)  # the end of the ramp is the full size, a multiple or not
        return np.clip(size, self.min_size, self.full_size).astype(np.int64)

    def sizes(self) -> list[int]:
        """Every size a run can see, smallest first."""
        if not self.active:
            return [self.full_size]
        return sorted(set(self.sizes_at(np.arange(_GRID + 1), _GRID).tolist()))

    def probe_sizes(self) -> list[int]:
        """The sizes a time-budget probe needs to time: the smallest and the full one. A step's time is
        close to affine in the pixel count (this CPU, cifar-fast: 24 and 28 px predicted within 4% from
        20 and 32 px), so timing the sizes between would spend budget to learn little."""
        sizes = self.sizes()
        return sizes if len(sizes) <= 2 else [sizes[0], sizes[-1]]

    def interpolate_step_seconds(self, measured: Mapping[int, float]) -> dict[int, float]:
        """Step times for every size, from those measured at ``probe_sizes()``: affine in size squared."""
        (small, small_seconds), (large, large_seconds) = min(measured.items()), max(measured.items())
        slope = (large_seconds - small_seconds) / max(large ** 2 - small ** 2, 1)
        return {size: float(measured.get(size, small_seconds + slope * (size ** 2 - small ** 2)))
                for size in self.sizes()}

    def cost(self, seconds_by_size: Mapping[int, float], first: int, stop: int, total_steps: int) -> float:
        """Seconds for steps ``first..stop-1`` of a ``total_steps`` run at the given per-size step times."""
        if stop <= first:
            return 0.0
        sizes, counts = np.unique(self.sizes_at(np.arange(first, stop), total_steps), return_counts=True)
        return float(sum(seconds_by_size[int(size)] * int(count) for size, count in zip(sizes, counts)))

    def mean_step_seconds(self, seconds_by_size: Mapping[int, float]) -> float:
        """The average step time over a whole run (independent of its length, up to rounding)."""
        return self.cost(seconds_by_size, 0, _GRID, _GRID) / _GRID


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Downscale a batch (N, C, H, W) to ``size`` x ``size`` with antialiasing, keeping its memory format."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    channels_last = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
