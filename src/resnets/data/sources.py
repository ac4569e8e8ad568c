"""``load_data``: turn a ``--data`` value into train/val(/test) datasets with classes and normalisation.

Accepted sources:

- ``cifar10`` / ``cifar100``: the official python archives, downloaded into the cache on first use;
- a path to an extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder;
- a root holding ``train/`` and ``val/`` (or ``validation/``, or ``test/``) ImageFolder trees;
- a single ImageFolder tree ``DIR/<class>/<image>`` (validation is a seeded stratified hold-out).

Images up to 64 px become in-memory uint8 tensors (decoded once, cached on disk); larger ones
are streamed from their files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .cache import cache_root, file_list_key, load_or_decode
from .cifar import CIFAR_ARCHIVES, fetch_cifar, is_cifar_folder, read_cifar_folder
from .datasets import DataSplits, ImageFileDataset, TensorImageDataset, read_image_file
from .errors import DataError
from .folder import FileEntry, map_folder_classes, scan_image_folder, stratified_split, warn_skipped
from .stats import compute_mean_std, resolve_known_stats

__all__ = ["SMALL_IMAGE_LIMIT", "load_data", "load_eval"]

SMALL_IMAGE_LIMIT = 64  # images up to this side are decoded once into an in-memory tensor
VAL_NAMES = ("val", "validation", "test")
DEFAULT_LARGE_SIZE = 224
_CIFAR_MEMORY: dict[str, object] = {}

Normalization = str | tuple[Sequence[float], Sequence[float]]


def _probe_size(entries: Sequence[FileEntry], count: int = 16) -> int:
    """The largest side among a few readable images spread over the list (headers only)."""
    from PIL import Image

    step = max(1, len(entries) // count)
    largest = 0
    for entry in list(entries)[::step][:count * 2]:
        try:
            with Image.open(entry.path) as image:
                largest = max(largest, *image.size)
        except Exception:  # noqa: BLE001 - unreadable files are reported when decoded
            continue
        if largest and largest > SMALL_IMAGE_LIMIT:
            break
    if largest == 0:
        raise DataError(f"none of the sampled images under {Path(entries[0].path).parent.parent} could be read; "
                        f"is it an image folder?")
    return largest


def _native_small_size(entries: Sequence[FileEntry]) -> int:
    """The most common side of a few sampled small images (CIFAR: 32)."""
    from collections import Counter

    from PIL import Image

    sides = Counter()
    for entry in list(entries)[:: max(1, len(entries) // 16)][:32]:
        try:
            with Image.open(entry.path) as image:
                sides[min(image.size)] += 1
        except Exception:  # noqa: BLE001
            continue
    return sides.most_common(1)[0][0]


def _stats(normalization: Normalization, name: str | None, train, cache_dir, key: str) -> tuple[tuple, tuple]:
    if not isinstance(normalization, str):
        mean, std = normalization
        if len(mean) != 3 or len(std) != 3:
            raise DataError(f"normalization must be (mean, std) with 3 values each, got {normalization!r}")
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if normalization != "auto":
        try:
            return resolve_known_stats(normalization)
        except ValueError as exc:
            raise DataError(str(exc)) from None
    if name is not None:
        return resolve_known_stats(name)
    if isinstance(train, TensorImageDataset):
        return compute_mean_std(train.images)
    # Streaming: measure on a seeded sample of 256 training images, remembered on disk per file list.
    path = cache_root(cache_dir) / "stats" / f"{key}.json"
    try:
        stored = json.loads(path.read_text())
        return tuple(stored["mean"]), tuple(stored["std"])
    except (OSError, ValueError, KeyError):
        pass
    from torchvision.transforms.v2.functional import resize

    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:256].tolist()
    sample = []
    for index in chosen:
        try:
            sample.append(resize(read_image_file(train.paths[index]), 64, antialias=True))
        except Exception:  # noqa: BLE001 - bad files are reported by the loader
            continue
    mean, std = compute_mean_std(sample)
    try:
        from ..weights import atomic_write

        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps({"mean": mean, "std": std})))
    except OSError:
        pass
    return mean, std


def _folder_dataset(folder: Path, class_to_index: Mapping[str, int] | None, image_size: int | None, cache_dir,
                    workers: int | None, small: bool | None = None):
    """(dataset without stats, classes, skipped, key, small) for one ImageFolder tree."""
    entries, classes = scan_image_folder(folder, class_to_index)
    if small is None:
        small = _probe_size(entries) <= SMALL_IMAGE_LIMIT and (image_size is None or image_size <= SMALL_IMAGE_LIMIT)
    key = file_list_key(folder, entries, "files")
    if small:
        size = image_size or _native_small_size(entries)
        images, labels, skipped = load_or_decode(folder, entries, size, cache_dir, workers=workers)
        warn_skipped(skipped, str(folder))
        if len(labels) == 0:
            raise DataError(f"none of the {len(entries)} image files under {folder} could be decoded")
        return TensorImageDataset(images, labels, classes, name=folder.name), classes, skipped, key, True
    # Streaming: reject empty and non-image files now (header check only); truncated ones are
    # replaced at load time and reported by the loader.
    from PIL import Image

    good, skipped = [], []
    for entry in entries:
        try:
            if entry.size == 0:
                raise ValueError("empty file")
            with Image.open(entry.path):
                pass
            good.append(entry)
        except Exception as exc:  # noqa: BLE001
            skipped.append((entry.path, f"{type(exc).__name__}: {exc}"[:200]))
    warn_skipped(skipped, str(folder))
    if not good:
        raise DataError(f"none of the {len(entries)} image files under {folder} could be read")
    dataset = ImageFileDataset([e.path for e in good], [e.label for e in good], classes,
                               image_size or DEFAULT_LARGE_SIZE, name=folder.name)
    return dataset, classes, skipped, key, False


def _with_stats(dataset, mean, std):
    if dataset is not None:
        dataset.mean, dataset.std = mean, std
    return dataset


def _split(dataset, val_split: float | int, seed: int):
    if not val_split:
        return dataset, None
    train_idx, val_idx = stratified_split(dataset.labels, val_split, seed)
    return dataset.subset(train_idx), dataset.subset(val_idx)


def _cifar_arrays(folder: Path):
    key = os.path.realpath(folder) + repr(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size)
                                                 for f in Path(folder).iterdir() if f.is_file()))
    if key not in _CIFAR_MEMORY:
        _CIFAR_MEMORY[key] = read_cifar_folder(folder)
    return _CIFAR_MEMORY[key]


def _resolve_source(source: str | os.PathLike, cache_dir, download: bool) -> tuple[Path, str | None]:
    """(path, known dataset name) for a ``--data`` value."""
    text = os.fspath(source)
    if text.lower() in CIFAR_ARCHIVES and not Path(text).exists():
        return fetch_cifar(text.lower(), cache_root(cache_dir), download=download), text.lower()
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"no dataset at {path}: pass cifar10, cifar100, an extracted cifar-10-batches-py folder, "
                        f"an ImageFolder tree DIR/<class>/<image>, or a root with train/ and val/ trees")
    return path, None


def _resize_tensor(dataset: TensorImageDataset, image_size: int | None) -> TensorImageDataset:
    if image_size is None or image_size == dataset.image_size:
        return dataset
    from torchvision.transforms.v2.functional import resize

    images = resize(dataset.images, [image_size, image_size], antialias=True)
    return TensorImageDataset(images, dataset.labels, dataset.classes, dataset.mean, dataset.std, dataset.name)


def load_data(source: str | os.PathLike, val_split: float | int = 0.1, seed: int = 0, image_size: int | None = None,
              cache_dir: str | os.PathLike | None = None, *, classes: Sequence[str] | None = None,
              normalization: Normalization = "auto", workers: int | None = None,
              download: bool = True) -> DataSplits:
    """Load a dataset for training: train and validation splits, classes, normalisation, image size.

    ``val_split`` (a fraction, or a count of images) holds out a seeded, stratified validation set
    from the training images when the source has no validation tree; 0 means no hold-out (then
    CIFAR's ``val`` is its official test set). ``classes`` (e.g. a checkpoint's) fixes the label
    order; folders are matched by name. ``normalization`` is ``"auto"`` (known constants for CIFAR,
    else measured on the training split), ``"imagenet"``/``"cifar10"``/``"cifar100"``, or (mean, std).
    ``workers`` sets the decoding processes for the cache (default: automatic).
    """
    path, name = _resolve_source(source, cache_dir, download)
    label = os.fspath(source)
    if is_cifar_folder(path):
        arrays = _cifar_arrays(path)
        name = arrays.name
        full = TensorImageDataset(arrays.train_images, arrays.train_labels, arrays.classes, name=name)
        test = TensorImageDataset(arrays.test_images, arrays.test_labels, arrays.classes, name=f"{name}-test")
        if classes is not None and list(classes) != arrays.classes:
            raise DataError(f"{label} has classes {arrays.classes}, not the expected {list(classes)}")
        full, test = _resize_tensor(full, image_size), _resize_tensor(test, image_size)
        train, val = _split(full, val_split, seed)
        if val is None:
            val = test
        mean, std = _stats(normalization, name, train, cache_dir, "")
        for dataset in (train, val, test):
            _with_stats(dataset, mean, std)
        return DataSplits(train, val, list(arrays.classes), mean, std, train.image_size, True, test, label)

    class_to_index = None
    if classes is not None:
        train_root = path / "train" if (path / "train").is_dir() else path
        class_to_index = map_folder_classes(classes, train_root)
    if (path / "train").is_dir():
        train, found_classes, skipped, key, small = _folder_dataset(path / "train", class_to_index, image_size,
                                                                    cache_dir, workers)
        if class_to_index is None:
            class_to_index = {name_: index for index, name_ in enumerate(found_classes)}
        held = {}
        for val_name in VAL_NAMES:
            if (path / val_name).is_dir():
                mapping = map_folder_classes(list(found_classes) if classes is None else list(classes), path / val_name)
                size = image_size if image_size is not None else (train.image_size if small else None)
                held[val_name], _, more, _, _ = _folder_dataset(path / val_name, mapping, size, cache_dir, workers, small)
                skipped = skipped + more
        test = held.get("test")
        val = held.get("val", held.get("validation", test))
        if val is None:
            train, val = _split(train, val_split, seed)
    else:
        full, found_classes, skipped, key, small = _folder_dataset(path, class_to_index, image_size, cache_dir, workers)
        train, val = _split(full, val_split, seed)
        test = None
    classes_out = list(classes) if classes is not None else list(found_classes)
    mean, std = _stats(normalization, name, train, cache_dir, key)
    for dataset in (train, val, test):
        _with_stats(dataset, mean, std)
        if dataset is not None:
            dataset.classes = list(classes_out)  # the full list, even when some folders are absent
    return DataSplits(train, val, classes_out, mean, std, train.image_size, small, test, label, list(skipped))


def load_eval(source: str | os.PathLike, classes: Sequence[str] | None = None, *, image_size: int | None = None,
              normalization: Normalization = "auto", cache_dir: str | os.PathLike | None = None,
              workers: int | None = None, download: bool = True):
    """The evaluation set of ``source``, labelled in the order of ``classes`` (a checkpoint's list).

    ``cifar10``/``cifar100`` (or their folders): the official test set. A root with ``val/`` or
    ``test/``: that tree. Any other folder: the whole ImageFolder tree. Class folders are matched to
    ``classes`` by name; unknown folders are an error. Pass the checkpoint's ``(mean, std)`` as
    ``normalization`` so evaluation normalises exactly as training did.
    """
    path, name = _resolve_source(source, cache_dir, download)
    if is_cifar_folder(path):
        splits = load_data(path, val_split=0, classes=classes, image_size=image_size, normalization=normalization,
                           cache_dir=cache_dir, download=download)
        return splits.test
    folder = path
    for val_name in ("val", "validation", "test"):
        if (path / "train").is_dir() and (path / val_name).is_dir():
            folder = path / val_name
            break
    mapping = map_folder_classes(classes, folder) if classes is not None else None
    dataset, found, _, key, _ = _folder_dataset(folder, mapping, image_size, cache_dir, workers)
    if classes is not None:
        dataset.classes = list(classes)
    mean, std = _stats(normalization, name, dataset, cache_dir, key)
    return _with_stats(dataset, mean, std)
