"""Batch augmentation on whole tensors on the training device (airbench style: no per-image Python).

Every function takes a CPU ``torch.Generator`` for its random draws, draws a few small tensors
(offsets, masks) on the CPU and moves them to the images' device, so a batch is augmented the same
way on any device and a given generator state always yields the same batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch

__all__ = ["AugmentConfig", "augment_batch", "cutout", "random_crop", "random_flip", "random_resized_crop"]

PAD_MODES = ("reflect", "zeros")


@dataclass(frozen=True)
class AugmentConfig:
    """Which training augmentations to apply; recipes give it as a YAML mapping (see ``from_dict``).

    - ``crop_padding``: pad by this many pixels (``pad_mode`` reflect or zeros) and crop back at a
      random offset (He et al. 2016 CIFAR: 4, zeros).
    - ``translate``: shift by up to this many pixels, vacated pixels zero (same as crop_padding with
      zeros; the name used by airbench-style recipes). Use one of the two.
    - ``flip``: horizontal flip with probability 1/2; ``alternate`` (in-memory data): each image is
      flipped at random in epoch 0 and then flipped in every other epoch, so consecutive epochs show
      both orientations (airbench's alternating flip).
    - ``cutout_size``: zero (after normalisation: the mean) a random square of this side.
    - ``random_resized_crop``: Inception-style crop of a random area ``rrc_scale`` and aspect ratio
      ``rrc_ratio``, resized back to the image size (the standard ImageNet training augmentation).
    """

    crop_padding: int = 0
    pad_mode: str = "reflect"
    translate: int = 0
    flip: bool | str = False
    cutout_size: int = 0
    random_resized_crop: bool = False
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        for name in ("crop_padding", "translate", "cutout_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"augment.{name} must be a non-negative integer, not {value!r}")
        if not (isinstance(self.flip, bool) or self.flip == "alternate"):  # 1 == True would pass a membership test
            raise ValueError(f"augment.flip must be true, false or 'alternate', not {self.flip!r}")
        if not isinstance(self.random_resized_crop, bool):
            raise ValueError(f"augment.random_resized_crop must be true or false, not {self.random_resized_crop!r}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"augment.pad_mode must be one of {PAD_MODES}, not {self.pad_mode!r}")
        if self.crop_padding and self.translate:
            raise ValueError("augment.crop_padding and augment.translate do the same thing; set only one")
        for name in ("rrc_scale", "rrc_ratio"):
            low, high = getattr(self, name)
            if not (0 < low <= high) or (name == "rrc_scale" and high > 1):
                raise ValueError(f"augment.{name} must be (low, high) with 0 < low <= high"
                                 f"{' <= 1' if name == 'rrc_scale' else ''}, not {(low, high)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "AugmentConfig":
        """Build from a recipe mapping; unknown keys are an error naming the valid ones."""
        values = dict(values or {})
        valid = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"unknown augment option(s) {unknown}; valid options: {sorted(valid)}")
        for name in ("rrc_scale", "rrc_ratio"):
            if name in values:
                values[name] = tuple(float(v) for v in values[name])
        return cls(**values)

    @classmethod
    def preset(cls, name: str) -> "AugmentConfig":
        """Named settings: ``none``, ``he2015`` (CIFAR: pad 4 zeros + flip), ``cifar`` (pad 4 reflect +
        flip), ``airbench`` (pad 2 reflect + alternating flip), ``imagenet`` (random resized crop + flip)."""
        presets = {
            "none": cls(),
            "he2015": cls(crop_padding=4, pad_mode="zeros", flip=True),
            "cifar": cls(crop_padding=4, pad_mode="reflect", flip=True),
            "airbench": cls(crop_padding=2, pad_mode="reflect", flip="alternate"),
            "imagenet": cls(random_resized_crop=True, flip=True),
        }
        if name not in presets:
            raise ValueError(f"unknown augment preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["rrc_scale"], values["rrc_ratio"] = list(self.rrc_scale), list(self.rrc_ratio)
        return values

    @property
    def is_identity(self) -> bool:
        return not (self.crop_padding or self.translate or self.flip or self.cutout_size or self.random_resized_crop)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator, mode: str = "reflect") -> torch.Tensor:
    """Pad by ``padding`` (reflect or zeros) and crop back to the input size at a random offset per image.

    Done as one gather with computed source indices, never materialising the padded batch; works
    for any dtype (uint8 included).
    """
    if padding == 0:
        return images
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, not {mode!r}")
    count, channels, height, width = images.shape
    if mode == "reflect" and padding >= min(height, width):
        raise ValueError(f"reflect padding {padding} needs images larger than {padding} px, got {height}x{width}")
    shifts = torch.randint(-padding, padding + 1, (2, count), generator=generator).to(images.device)
    rows = torch.arange(height, device=images.device) + shifts[0, :, None]  # (N, H) source rows
    cols = torch.arange(width, device=images.device) + shifts[1, :, None]  # (N, W) source cols
    if mode == "reflect":
        rows, cols = _reflect(rows, height), _reflect(cols, width)
    else:
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
        rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
    flat = (rows[:, :, None] * width + cols[:, None, :]).reshape(count, 1, height * width)
    out = torch.gather(images.reshape(count, channels, height * width), 2, flat.expand(count, channels, -1))
    out = out.reshape(count, channels, height, width)
    if mode == "zeros":
        out = out * inside[:, None].to(out.dtype)
    return out


def random_flip(images: torch.Tensor, generator: torch.Generator, probability: float = 0.5) -> torch.Tensor:
    """Flip each image left-right with ``probability``."""
    flip = (torch.rand(images.shape[0], generator=generator) < probability).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Fill a ``size`` x ``size`` square at a random centre of each image (may overlap the border)."""
    if size == 0:
        return images
    count, _, height, width = images.shape
    centres = torch.stack([torch.randint(0, height, (count,), generator=generator),
                           torch.randint(0, width, (count,), generator=generator)]).to(images.device)
    top, left = centres[0] - size // 2, centres[1] - size // 2
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
    return images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], fill)


def _sample_boxes(count: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                  generator: torch.Generator, trials: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop box sampling, vectorised: (N, 4) x1, y1, x2, y2 boxes."""
    area = float(height * width)
    target = area * torch.empty(count, trials).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(count, trials).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    crop_w = torch.sqrt(target * aspect).round()
    crop_h = torch.sqrt(target / aspect).round()
    valid = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = torch.where(valid.any(1), valid.float().argmax(1), torch.full((count,), -1))
    # Fallback (no valid trial): the central crop with the aspect ratio clamped to the range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    pick = first.clamp_min(0)[:, None]
    crop_w = torch.where(first >= 0, crop_w.gather(1, pick)[:, 0], torch.tensor(float(fallback_w)))
    crop_h = torch.where(first >= 0, crop_h.gather(1, pick)[:, 0], torch.tensor(float(fallback_h)))
    offsets = torch.rand(2, count, generator=generator)
    # the fallback is centred as torchvision does it, (size - crop) // 2 (round() would go half to even)
    top = torch.where(first >= 0, (offsets[0] * (height - crop_h + 1)).floor(), ((height - crop_h) / 2).floor())
    left = torch.where(first >= 0, (offsets[1] * (width - crop_w + 1)).floor(), ((width - crop_w) / 2).floor())
    return torch.stack([left, top, left + crop_w, top + crop_h], dim=1)


def random_resized_crop(images: torch.Tensor, generator: torch.Generator,
                        output_size: int | tuple[int, int] | None = None,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Inception-style random resized crop of a whole float batch in one ``roi_align`` call.

    Boxes follow torchvision's sampling; resampling is bilinear with area averaging when shrinking.
    ``output_size`` (an int for a square, or (height, width)) defaults to the input's height and width.
    """
    from torchvision.ops import roi_align

    if not images.is_floating_point():
        raise TypeError("random_resized_crop needs a floating-point batch; convert uint8 images first")
    count, _, height, width = images.shape
    output_size = output_size or (height, width)
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    # roi_align has no bf16/fp16 kernel on the CPU: resample half-precision batches in fp32
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    boxes = _sample_boxes(count, height, width, scale, ratio, generator).to(work.device, work.dtype)
    indices = torch.arange(count, device=work.device, dtype=work.dtype)[:, None]
    return roi_align(work, torch.cat([indices, boxes], dim=1), tuple(output_size),
                     spatial_scale=1.0, sampling_ratio=-1, aligned=True).to(images.dtype)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator, *,
                  geometric: bool = True, erase: bool = True, fill: float = 0.0) -> torch.Tensor:
    """Apply ``config`` to a batch: (random resized crop) -> pad-crop / translate -> flip -> cutout.

    ``geometric=False`` skips the first three (e.g. already done per image); ``erase=False`` skips
    cutout (so a loader can apply it after normalisation, where 0 is the mean).
    """
    if geometric:
        if config.random_resized_crop:
            images = random_resized_crop(images.float() if not images.is_floating_point() else images,
                                         generator, None, config.rrc_scale, config.rrc_ratio)
        if config.crop_padding:
            images = random_crop(images, config.crop_padding, generator, config.pad_mode)
        elif config.translate:
            images = random_crop(images, config.translate, generator, "zeros")
        if config.flip:
            images = random_flip(images, generator)
    if erase and config.cutout_size:
        images = cutout(images, config.cutout_size, generator, fill)
    return images


def alternating_flip_coins(dataset_size: int, seed: int) -> torch.Tensor:
    """One fixed coin per sample of the dataset (bool, CPU), drawn from ``seed``: epoch 0's flips."""
    from .seeding import generator_for

    return torch.rand(dataset_size, generator=generator_for(seed, "alternating-flip")) < 0.5


def alternating_flip(images: torch.Tensor, indices: torch.Tensor, epoch: int, coins: torch.Tensor) -> torch.Tensor:
    """airbench's alternating flip: sample ``i`` is flipped in epoch ``e`` iff ``coins[i] xor (e odd)``."""
    flip = (coins[indices.cpu()] ^ bool(epoch % 2)).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
