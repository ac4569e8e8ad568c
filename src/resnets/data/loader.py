"""Deterministic, resumable batch loaders over the two dataset kinds.

Order and augmentation are pure functions of (seed, epoch, batch index, rank):

- the epoch's order is ``randperm(n)`` from a generator seeded by (seed, epoch), the same on every rank;
- with ``world_size > 1`` rank r takes positions r, r + world_size, ... of that order (disjoint,
  together every sample once). For training (``drop_last=True``) the order is first cut to a
  multiple of ``world_size`` so all ranks run the same number of steps (at most world_size - 1
  samples, different ones each epoch, sit out), and a final partial batch is dropped; for
  evaluation (``drop_last=False``) nothing is dropped and the last ranks may get one sample less;
- batch b's augmentation draws come from a generator seeded by (seed, "augment", epoch, rank, b).

So ``set_epoch(e)`` then ``skip_batches(k)`` yields exactly the batches k, k+1, ... of epoch e.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import replace
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .augment import AugmentConfig, alternating_flip, alternating_flip_coins, augment_batch, cutout
from .datasets import ImageFileDataset, TensorImageDataset
from .errors import DataError
from .seeding import derive_seed, generator_for

__all__ = ["InMemoryLoader", "StreamingLoader", "load_eval_image", "make_loader"]

EVAL_CROP_FRACTION = 0.875  # resize to size / 0.875 (256 for 224), then centre-crop: the ImageNet convention


def check_crop_fraction(crop_fraction: float) -> float:
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1] (the centre crop's share of the resized shorter side, "
                         f"0.875 for the ImageNet convention), got {crop_fraction}")
    return float(crop_fraction)


def eval_resize(image_size: int, crop_fraction: float = EVAL_CROP_FRACTION) -> tuple[list, int]:
    """How evaluation prepares a large (streamed) image: (transforms.v2 steps, JPEG draft size). The shorter
    side is resized to ``image_size / crop_fraction``, then the centre ``image_size`` square is cut: the one
    definition behind the streaming loader, ``resnets predict`` and per-group evaluation."""
    from torchvision.transforms import v2

    resize_to = round(image_size / check_crop_fraction(crop_fraction))
    return [v2.Resize(resize_to, antialias=True), v2.CenterCrop(image_size)], resize_to


def load_eval_image(path: str | os.PathLike, image_size: int | None,
                    crop_fraction: float = EVAL_CROP_FRACTION) -> torch.Tensor:
    """One image file as an RGB uint8 3 x S x S tensor, prepared as ``resnets eval`` prepares a folder of such
    images, so a prediction agrees with the evaluation of the same file.

    Small images (neither side above 64 px, for a size up to 64: the in-memory route) are fitted to S x S
    (shorter side resized, centre crop, as the tensor cache decodes them); an image already S x S is left
    alone. Larger ones go the streaming route (``eval_resize``): shorter side to ``image_size / crop_fraction``
    (256 for 224 by default; torchvision's V2 ImageNet weights use 232), then the centre crop.
    ``image_size=None`` keeps the image as it is. Raises :class:`DataError` naming the file when it is
    missing, empty, truncated or not an image.
    """
    from PIL import Image
    from torchvision.transforms import v2

    from .folder import check_image_size, decode_rgb, open_rgb
    from .sources import SMALL_IMAGE_LIMIT

    crop_fraction = check_crop_fraction(crop_fraction)
    image_size = check_image_size(image_size)
    try:
        if os.path.getsize(path) == 0:
            raise ValueError("empty file")
        with Image.open(path) as header:  # the size decides the route; the pixels are decoded below
            largest = max(header.size)
        if image_size is None:
            return v2.PILToTensor()(open_rgb(path))
        if largest <= SMALL_IMAGE_LIMIT and image_size <= SMALL_IMAGE_LIMIT:
            return torch.from_numpy(decode_rgb(path, image_size).copy()).permute(2, 0, 1)
        steps, draft_size = eval_resize(image_size, crop_fraction)
        image = open_rgb(path, draft_size)
    except FileNotFoundError:
        raise DataError(f"image {str(path)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {str(path)!r} as an image ({exc})") from None
    return v2.Compose(steps + [v2.PILToTensor()])(image)


class _EpochLoader:
    """What both loaders share: the epoch plan (order, sharding, batch count) and normalisation."""

    def __init__(self, dataset, batch_size: int, train: bool, augment: AugmentConfig | None, device, seed: int,
                 rank: int, world_size: int, drop_last: bool | None, shuffle: bool | None, channels_last: bool,
                 dtype: torch.dtype, mean, std) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        if len(dataset) == 0:
            raise ValueError("cannot make a loader over an empty dataset")
        if isinstance(augment, dict):
            augment = AugmentConfig.from_dict(augment)
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.augment = (augment or AugmentConfig()) if train else AugmentConfig()
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.channels_last, self.dtype = channels_last, dtype
        mean = tuple(mean if mean is not None else dataset.mean)
        std = tuple(std if std is not None else dataset.std)
        self.mean, self.std = mean, std
        std_tensor = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std_tensor)
        self._shift = -torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1) / std_tensor
        self.epoch = 0
        self._start = 0
        if len(self) == 0 and not self.drop_last and world_size > 1:  # a shard is empty: fewer images than processes
            raise DataError(f"{len(dataset)} {'training' if train else 'evaluation'} image(s) over {world_size} "
                            f"processes leave process {rank} none; every process needs at least one: hold out at "
                            f"least {world_size} images (--val-split) or run fewer processes")
        if len(self) == 0:
            raise DataError(f"{len(dataset)} images over {world_size} process(es) make no full batch of {batch_size}: "
                            f"lower the batch size (--batch-size) or add images (in Python: or pass drop_last=False)")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = int(epoch)
        self._start = 0

    def skip_batches(self, count: int) -> None:
        """Start the next iteration at batch ``count`` of the current epoch (mid-epoch resume)."""
        if not 0 <= count <= len(self):
            raise ValueError(f"cannot skip {count} batches of an epoch of {len(self)}")
        self._start = int(count)

    def _rank_size(self) -> int:
        total = len(self.dataset)
        if self.world_size == 1:
            return total
        if self.drop_last:
            return total // self.world_size
        return len(range(self.rank, total, self.world_size))

    def __len__(self) -> int:
        size = self._rank_size()
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)

    def epoch_indices(self, epoch: int | None = None) -> torch.Tensor:
        """This rank's sample indices for ``epoch`` (default: the current one), in visiting order."""
        epoch = self.epoch if epoch is None else epoch
        total = len(self.dataset)
        order = (torch.randperm(total, generator=generator_for(self.seed, "shuffle", epoch)) if self.shuffle
                 else torch.arange(total))
        if self.world_size > 1:
            if self.drop_last:
                order = order[: (total // self.world_size) * self.world_size]
            order = order[self.rank::self.world_size]
        return order

    def _batches(self) -> Iterator[tuple[int, torch.Tensor]]:
        order = self.epoch_indices()
        start, self._start = self._start, 0
        for batch in range(start, len(self)):
            yield batch, order[batch * self.batch_size:(batch + 1) * self.batch_size]

    def _finish(self, images: torch.Tensor, batch: int, normalized: bool = False) -> torch.Tensor:
        """uint8 (or 0..255 float) batch on device -> normalised ``dtype`` tensor, then cutout, layout."""
        images = images.to(self.dtype) if normalized else (images.float() * self._scale + self._shift).to(self.dtype)
        if self.train and self.augment.cutout_size:
            images = cutout(images, self.augment.cutout_size, generator_for(self.seed, "cutout", self.epoch,
                                                                            self.rank, batch))
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images


class InMemoryLoader(_EpochLoader):
    """Batches from a ``TensorImageDataset`` held on the training device; augmentation on whole batches."""

    def __init__(self, dataset: TensorImageDataset, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)
        # alternating flip: the batch augmentation runs without flips, the per-sample coins do them
        self._flip_coins = (alternating_flip_coins(len(dataset), self.seed)
                            if self.augment.flip == "alternate" else None)
        self._batch_augment = replace(self.augment, flip=False) if self._flip_coins is not None else self.augment

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch, indices in self._batches():
            indices = indices.to(self.device)
            images = self._images[indices]
            if self.train:
                images = augment_batch(images, self._batch_augment, generator_for(self.seed, "augment", self.epoch,
                                                                                  self.rank, batch), erase=False)
                if self._flip_coins is not None:
                    images = alternating_flip(images, indices, self.epoch, self._flip_coins)
            yield self._finish(images, batch), self._labels[indices]


class _TransformedFiles(Dataset):
    """Per-image decode + transforms.v2 geometry on the PIL image, seeded per (epoch, sample).

    A file that fails to decode is replaced by the next readable one, and its path is returned so
    the loader can report it.
    """

    def __init__(self, files: ImageFileDataset, train: bool, augment: AugmentConfig, image_size: int,
                 normalize: tuple | None = None, crop_fraction: float = EVAL_CROP_FRACTION) -> None:
        from torchvision.transforms import v2

        self.files = files
        self.draft_size = None
        if train and augment.random_resized_crop:
            steps = [v2.RandomResizedCrop(image_size, scale=augment.rrc_scale, ratio=augment.rrc_ratio,
                                          antialias=True)]
        else:  # shrinking anyway: let the JPEG decoder skip detail we drop
            steps, self.draft_size = eval_resize(image_size, crop_fraction)
        if normalize is not None:
            # Everything per image in the workers (CPU training): pad-crop/translate, flip, then normalise.
            if train and (augment.crop_padding or augment.translate):
                padding = augment.crop_padding or augment.translate
                mode = "reflect" if augment.crop_padding and augment.pad_mode == "reflect" else "constant"
                steps.append(v2.RandomCrop(image_size, padding=padding, padding_mode=mode))
            if train and augment.flip:
                steps.append(v2.RandomHorizontalFlip())
            steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*normalize)]
        else:
            steps.append(v2.PILToTensor())
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        from .folder import open_rgb

        index, sample_seed = item
        bad: list[str] = []
        for attempt in range(len(self.files)):
            position = (index + attempt) % len(self.files)
            path = self.files.paths[position]
            try:
                image = open_rgb(path, self.draft_size)
                break
            except Exception as exc:  # noqa: BLE001 - any decode failure: report and use the next file
                bad.append(f"{path} ({type(exc).__name__}: {str(exc)[:80]})")
                if attempt >= 32:
                    raise RuntimeError(f"{len(bad)} unreadable images in a row, starting at {bad[0]}") from exc
        # transforms.v2 draws from the global CPU generator: seed it for this image, and put its state
        # back afterwards (only the CPU generator: torch.manual_seed would also touch CUDA, 100x slower).
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(sample_seed)
        try:
            tensor = self.transform(image)
        finally:
            generator.set_state(state)
        return tensor, int(self.files.labels[position]), "\n".join(bad)


class _EpochBatchSampler:
    """Yields the loader's batches as lists of (index, per-sample seed) for ``_TransformedFiles``."""

    def __init__(self, loader: "StreamingLoader") -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader) - self.loader._start

    def __iter__(self):
        loader = self.loader
        epoch = loader.epoch
        for _, indices in loader._batches():
            yield [(int(i), derive_seed(loader.seed, "sample", epoch, int(i))) for i in indices]


class StreamingLoader(_EpochLoader):
    """Batches from an ``ImageFileDataset`` decoded by DataLoader workers.

    For an accelerator, workers send uint8 crops (4x less to copy) and flip / pad-crop / normalise /
    cutout run on whole batches on the device. For the CPU, where the main process would compete
    with the workers for the same cores, the workers also flip, pad-crop and normalise each image
    (``normalize_in_workers``); only cutout stays a batch operation. Either way each image's draws
    are seeded by (seed, epoch, index), so results do not depend on the number of workers.

    Unreadable files met during an epoch are replaced by the next readable file and reported in one
    warning at the end of the epoch.
    """

    def __init__(self, dataset: ImageFileDataset, workers: int = 2, image_size: int | None = None,
                 normalize_in_workers: bool | None = None, crop_fraction: float = EVAL_CROP_FRACTION,
                 **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        if self.train and self.augment.flip == "alternate":
            raise ValueError("augment.flip='alternate' needs images held in memory (32-64 px); for images "
                             "streamed from files use flip=true")
        self.image_size = image_size or dataset.image_size
        self.skipped: list[str] = []
        self.normalize_in_workers = self.device.type == "cpu" if normalize_in_workers is None else normalize_in_workers
        self._loader = DataLoader(
            _TransformedFiles(dataset, self.train, self.augment, self.image_size,
                              (self.mean, self.std) if self.normalize_in_workers else None, crop_fraction),
            batch_sampler=_EpochBatchSampler(self), num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            # each new iterator draws a base seed: from the global RNG, that draw would shift dropout, drop_path
            # and adversarial starts by where a run resumed and by the number of workers
            generator=torch.Generator().manual_seed(derive_seed(self.seed, "dataloader", self.rank)),
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = self._start
        bad: list[str] = []
        try:
            for batch, (images, labels, problems) in enumerate(self._loader, start=first):
                bad.extend(line for text in problems if text for line in text.split("\n"))
                images = images.to(self.device, non_blocking=True)
                if self.train and not self.normalize_in_workers:
                    # Geometry beyond the per-image crop (pad-crop/translate, flip) on the whole batch.
                    batch_config = AugmentConfig(crop_padding=self.augment.crop_padding,
                                                 pad_mode=self.augment.pad_mode, translate=self.augment.translate,
                                                 flip=self.augment.flip)
                    images = augment_batch(images, batch_config, generator_for(self.seed, "augment", self.epoch,
                                                                               self.rank, batch), erase=False)
                yield self._finish(images, batch, self.normalize_in_workers), labels.to(self.device, non_blocking=True)
        finally:
            if bad:
                self.skipped.extend(bad)
                shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
                warnings.warn(f"replaced {len(bad)} unreadable image(s) during epoch {self.epoch} with the next "
                              f"readable file: {shown}", UserWarning, stacklevel=2)


def make_loader(dataset: TensorImageDataset | ImageFileDataset, batch_size: int = 128, train: bool = True,
                augment: AugmentConfig | dict | None = None, device: torch.device | str = "cpu", seed: int = 0,
                rank: int = 0, world_size: int = 1, drop_last: bool | None = None, workers: int = 2,
                channels_last: bool = False, dtype: torch.dtype = torch.float32, *, shuffle: bool | None = None,
                mean=None, std=None, image_size: int | None = None,
                normalize_in_workers: bool | None = None,
                crop_fraction: float = EVAL_CROP_FRACTION) -> InMemoryLoader | StreamingLoader:
    """A loader yielding (normalised ``dtype`` images on ``device``, int64 labels), resumable exactly.

    ``train`` turns on shuffling, ``augment`` and ``drop_last`` (each overridable). ``mean``/``std``
    default to the dataset's. In-memory datasets ignore ``workers``. ``normalize_in_workers`` (streaming
    only; default: on for a CPU device) moves flip, pad-crop and normalisation into the worker processes.
    ``crop_fraction`` (streaming evaluation): the shorter side is resized to ``image_size / crop_fraction``
    before the centre crop.
    """
    common = dict(batch_size=batch_size, train=train, augment=augment, device=device, seed=seed, rank=rank,
                  world_size=world_size, drop_last=drop_last, shuffle=shuffle, channels_last=channels_last,
                  dtype=dtype, mean=mean, std=std)
    if isinstance(dataset, TensorImageDataset):
        return InMemoryLoader(dataset, **common)
    if isinstance(dataset, ImageFileDataset):
        return StreamingLoader(dataset, workers=workers, image_size=image_size,
                               normalize_in_workers=normalize_in_workers, crop_fraction=crop_fraction, **common)
    raise TypeError(f"make_loader needs a dataset from resnets.data.load_data, got {type(dataset).__name__}")
