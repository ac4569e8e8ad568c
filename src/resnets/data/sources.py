"""``load_data``: turn a ``--data`` value into train/val(/test) datasets with classes and normalisation.

Accepted sources:

- ``cifar10`` / ``cifar100``: the official python archives, downloaded into the cache on first use;
- a path to an extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder;
- a root holding ``train/`` (or ``training/``) and ``val/`` (or ``valid/``, ``validation/``, and/or ``test/``)
  ImageFolder trees; split names match in any case (``Train/``, ``VAL/``);
- a single ImageFolder tree ``DIR/<class>/<image>`` (validation is a seeded stratified hold-out).

Images up to 64 px become in-memory uint8 tensors (decoded once, cached on disk); larger ones
are streamed from their files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .cache import cache_root, file_list_key, load_or_decode
from .cifar import CIFAR_ARCHIVES, fetch_cifar, is_cifar_folder, read_cifar_folder
from .datasets import DataSplits, ImageFileDataset, TensorImageDataset, read_image_file
from .errors import DataError
from .folder import (FileEntry, check_image_size, check_val_split, map_folder_classes, scan_image_folder,
                     stratified_split, warn_skipped, within_image_tree)
from .stats import compute_mean_std, resolve_known_stats

__all__ = ["SMALL_IMAGE_LIMIT", "held_out_folder", "load_data", "load_eval", "training_folder"]

SMALL_IMAGE_LIMIT = 64  # images up to this side are decoded once into an in-memory tensor
# Split folder names (compared lower-cased) and the role each plays.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}
DEFAULT_LARGE_SIZE = 224
_CIFAR_MEMORY: dict[str, object] = {}

Normalization = str | tuple[Sequence[float], Sequence[float]]


def _split_folders(path: Path) -> dict[str, Path]:
    """The split trees of a root, by role (``train``, ``val``, ``test``); empty for a plain ImageFolder tree.

    Names match case-insensitively (``Train/`` + ``Val/`` must not become a two-class dataset). A root is a
    split root when it has a train folder, or when all its folders are split names (``val/`` + ``test/``
    for evaluation). A train folder next to other folders is ambiguous (a split root, or a class called
    "train"?) and so is an error, as are two folders for one role (``val/`` and ``validation/``).
    """
    folders = sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))
    by_role: dict[str, list[str]] = {}
    for name in folders:
        if name.lower() in SPLIT_NAMES:
            by_role.setdefault(SPLIT_NAMES[name.lower()], []).append(name)
    others = [name for name in folders if name.lower() not in SPLIT_NAMES]
    if not by_role or ("train" not in by_role and others):
        return {}
    if others:
        shown = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise DataError(f"{path} has a {by_role['train'][0]}/ folder next to other folders ({shown}): is it a root of "
                        f"split trees (train/, val/, test/) or an ImageFolder whose classes include "
                        f"{by_role['train'][0]!r}? Move the other folders out, or rename that class folder")
    for role, names in by_role.items():
        if len(names) > 1:
            raise DataError(f"{path} has several {role} split folders ({', '.join(names)}); keep one of them")
    return {role: path / names[0] for role, names in by_role.items()}


def _check_training_classes(train, classes: Sequence[str], folder: Path) -> None:
    """Refuse training data with fewer than 2 classes that have images: a one-class "classifier" trains to
    100% accuracy and learns nothing, which is worse than an error. A class folder without readable images
    is refused too (as torchvision's ImageFolder does)."""
    present = sorted(set(train.labels.tolist()))
    if len(present) >= 2:
        with_images = set(present)
        empty = [name for index, name in enumerate(classes) if index not in with_images]
        if empty:  # an output no image teaches: it shifts every probability and the run's class count
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            raise DataError(f"{folder} has class folder(s) without readable images: {shown}; add images to "
                            "them or move them out of the tree (each class folder becomes a model output)")
        return
    with_images = [classes[index] for index in present]
    shown = ", ".join(classes[:10]) + (" ..." if len(classes) > 10 else "")
    found = f"{len(classes)} class folder(s) ({shown})" if classes else "no class folders"
    detail = f", and only {', '.join(with_images) or 'none'} has readable images" if len(classes) >= 2 else ""
    raise DataError(f"{folder} has {found}{detail}: training needs at least 2 classes, one sub-folder of images "
                    f"per class ({folder}/<class>/<image>)")


def _check_held_out_classes(folder: Path, train_classes: Sequence[str], train_root: Path) -> None:
    """A val/ or test/ class folder that train/ lacks: say so in training's terms (the evaluation message
    would speak of a model "not trained on" it, and suggest evaluating another model)."""
    from .folder import find_classes

    known = set(train_classes)
    extra = [name for name in find_classes(folder) if name not in known]
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise DataError(f"{folder} has class folder(s) that {train_root} lacks: {shown}; every class to validate "
                        f"on needs training images: add {train_root}/<class>/ folders for them, or move them out "
                        f"of {folder}")


def _probe_size(entries: Sequence[FileEntry], count: int = 32, folder: object = None) -> int:
    """The typical (median) largest side of up to ``count`` readable images spread over the list (headers only).

    The median, not the largest: one big image among small ones must not move a whole folder to streaming at
    224 px, nor make the choice depend on whether its file name falls among the sampled. Mixed sizes are said."""
    from PIL import Image

    step = max(1, len(entries) // count)
    sides = []
    for entry in list(entries)[::step][:count]:
        try:
            with Image.open(entry.path) as image:
                sides.append(max(image.size))
        except Exception:  # noqa: BLE001 - unreadable files are reported when decoded
            continue
    if not sides:
        raise DataError(f"none of the sampled images under {Path(entries[0].path).parent.parent} could be read; "
                        f"is it an image folder?")
    typical = sorted(sides)[len(sides) // 2]
    large = sum(side > SMALL_IMAGE_LIMIT for side in sides)
    if 0 < large < len(sides):
        import warnings

        warnings.warn(f"{folder or 'the image folder'} mixes image sizes: {large} of {len(sides)} sampled images are "
                      f"larger than {SMALL_IMAGE_LIMIT} px; treating it as {'large' if typical > SMALL_IMAGE_LIMIT else 'small'} "
                      f"images (typical side {typical} px). Pass --image-size to choose the training size",
                      UserWarning, stacklevel=3)
    return typical


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
    # Streaming: measure on a seeded sample of 256 training images, remembered on disk per file list and per
    # training split (another seed or val_split holds out other files: its statistics must not depend on which
    # run filled the cache first, or a run resumed with another cache would find them changed).
    chosen_files = hashlib.sha256("\n".join(train.paths).encode()).hexdigest()[:16]
    path = cache_root(cache_dir) / "stats" / f"{key}-{chosen_files}.json"
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
        typical = _probe_size(entries, folder=folder)
        small = typical <= SMALL_IMAGE_LIMIT and (image_size is None or image_size <= SMALL_IMAGE_LIMIT)
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


def check_source(source: str | os.PathLike) -> None:
    """Refuse a ``--data`` value that names neither a known archive nor an existing path, without reading
    anything: the torchrun launcher calls it before starting processes that would each fail (and restart)."""
    text = os.fspath(source)
    if text.lower() in CIFAR_ARCHIVES:
        return
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"no dataset at {path}: pass cifar10, cifar100, an extracted cifar-10-batches-py folder, "
                        f"an ImageFolder tree DIR/<class>/<image>, or a root with train/ and val/ trees")


def training_folder(source: str | os.PathLike) -> Path | None:
    """The folder of images training reads from ``source`` (its ``train/`` tree for a root of split trees, the
    tree itself for a plain ImageFolder), absolute; None for CIFAR (by name or as a batch folder), whose test
    set is separate, and for a path that is not a folder. ``resnets eval`` uses it to notice a training set."""
    found = _image_tree_splits(source)
    if found is None:
        return None
    path, splits = found
    return (splits.get("train") or path).resolve() if "train" in splits or not splits else None


def held_out_folder(source: str | os.PathLike) -> Path | None:
    """The tree ``load_data`` validates on instead of a ``val_split`` hold-out: a split root's ``val/`` (else
    ``test/``) folder; None when ``source`` has none (a plain ImageFolder, CIFAR, not a folder)."""
    found = _image_tree_splits(source)
    if found is None or "train" not in found[1]:
        return None
    return found[1].get("val") or found[1].get("test")


def _image_tree_splits(source: str | os.PathLike) -> tuple[Path, dict[str, Path]] | None:
    """(folder, its split trees by role) for a folder that is not CIFAR's; None for anything else, or for a
    folder whose split trees are ambiguous (``_split_folders`` refuses it, and training would say why)."""
    path = Path(os.fspath(source)).expanduser()
    if not path.is_dir() or is_cifar_folder(path):
        return None
    try:
        return path, _split_folders(path)
    except DataError:
        return None


def _resolve_source(source: str | os.PathLike, cache_dir, download: bool) -> tuple[Path, str | None]:
    """(path, known dataset name) for a ``--data`` value."""
    text = os.fspath(source)
    if text.lower() in CIFAR_ARCHIVES and not Path(text).exists():
        return fetch_cifar(text.lower(), cache_root(cache_dir), download=download), text.lower()
    check_source(source)
    return Path(text).expanduser(), None


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
    image_size = check_image_size(image_size)
    val_split = check_val_split(val_split)
    cache = cache_root(cache_dir)  # a bad --cache-dir fails now, not quietly at the first write
    path, name = _resolve_source(source, cache_dir, download)
    if not is_cifar_folder(path) and within_image_tree(cache, path, directory=True):
        raise DataError(f"the cache folder {cache} is inside the data folder {path}: its files would be read as a "
                        "class of that dataset. Choose a cache folder outside it (--cache-dir or $RESNETS_CACHE)")
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

    splits = _split_folders(path) if path.is_dir() else {}
    if splits and "train" not in splits:
        present = ", ".join(f"{folder.name}/" for folder in splits.values())
        raise DataError(f"{path} has {present} but no train/ folder; training needs {path}/train/<class>/<image> "
                        f"(evaluate a checkpoint on it with `resnets eval` instead)")
    train_root = splits.get("train", path)
    class_to_index = map_folder_classes(classes, train_root) if classes is not None else None
    if splits:
        train, found_classes, skipped, key, small = _folder_dataset(train_root, class_to_index, image_size,
                                                                    cache_dir, workers)
        if classes is None:
            _check_training_classes(train, list(found_classes), train_root)
        held = {}
        for role in ("val", "test"):
            if role in splits:
                if classes is None:
                    _check_held_out_classes(splits[role], found_classes, train_root)
                mapping = map_folder_classes(list(found_classes) if classes is None else list(classes), splits[role])
                size = image_size if image_size is not None else (train.image_size if small else None)
                held[role], _, more, _, _ = _folder_dataset(splits[role], mapping, size, cache_dir, workers, small)
                skipped = skipped + more
        test = held.get("test")
        val = held.get("val", test)
        if val is None:
            train, val = _split(train, val_split, seed)
    else:
        full, found_classes, skipped, key, small = _folder_dataset(path, class_to_index, image_size, cache_dir, workers)
        if classes is None:
            _check_training_classes(full, list(found_classes), path)
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

    ``cifar10``/``cifar100`` (or their folders): the official test set. A root of split trees: its ``val/``
    (else ``test/``) tree. Any other folder: the whole ImageFolder tree. Class folders are matched to
    ``classes`` by name; unknown folders are an error. Pass the checkpoint's ``(mean, std)`` as
    ``normalization`` so evaluation normalises exactly as training did.
    """
    image_size = check_image_size(image_size)
    cache_root(cache_dir)
    path, name = _resolve_source(source, cache_dir, download)
    if is_cifar_folder(path):
        splits = load_data(path, val_split=0, classes=classes, image_size=image_size, normalization=normalization,
                           cache_dir=cache_dir, download=download)
        return splits.test
    splits = _split_folders(path) if path.is_dir() else {}
    folder = splits.get("val", splits.get("test", path))
    if splits and folder == path:
        raise DataError(f"{path} has a {splits['train'].name}/ tree but no val/ or test/ tree to evaluate on; "
                        f"add {path}/val/<class>/<image>, or point --data at a folder of held-out images")
    mapping = map_folder_classes(classes, folder) if classes is not None else None
    dataset, found, _, key, _ = _folder_dataset(folder, mapping, image_size, cache_dir, workers)
    if classes is not None:
        dataset.classes = list(classes)
    mean, std = _stats(normalization, name, dataset, cache_dir, key)
    return _with_stats(dataset, mean, std)
