"""ImageFolder trees: scanning, class lists, stratified splits, and robust decoding to RGB.

A tree is ``root/<class>/<image>`` (images may sit in nested sub-folders of a class folder).
Scanning only reads directory entries and ``stat``; decoding happens later, and any file that
cannot be decoded (empty, truncated, not an image) is reported once and skipped, never a crash.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from .errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS", "FileEntry", "check_image_size", "check_val_split", "class_aliases", "decode_rgb", "open_rgb",
    "find_classes", "folder_fingerprint", "imagenet_wnids", "map_folder_classes", "scan_image_folder", "stratified_split", "warn_skipped",
    "within_image_tree",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


@dataclass(frozen=True)
class FileEntry:
    """One image file found by a scan: where it is, what it looked like (for cache keys), its label."""

    path: str
    size: int
    mtime_ns: int
    label: int
    ctime_ns: int = 0
    """The inode's change time: unlike mtime, no copy (``cp -p``, ``rsync -t``) or ``touch`` can set it back, so a
    file rewritten with its old size and mtime still gets a new cache key."""


def within_image_tree(path: str | os.PathLike, folder: str | os.PathLike, directory: bool) -> bool:
    """Whether writing ``path`` (existing or not; a folder when ``directory``) would change what a scan of the
    image tree ``folder`` (or root of split trees) reads: any folder in it becomes a class (or breaks the split
    layout), and a file inside a class or split folder may replace an image. A file at the top level is not read,
    nor is anything under a hidden folder."""
    if not os.path.isdir(folder):
        return False
    root, target = Path(folder).resolve(), Path(path).resolve()
    if target != root and root not in target.parents:
        return False
    parts = target.relative_to(root).parts
    return not any(part.startswith(".") for part in parts) and (directory or len(parts) > 1)


def find_classes(folder: str | os.PathLike) -> list[str]:
    """Sorted names of the class sub-folders of ``folder`` (hidden folders ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; expected an ImageFolder tree {folder}/<class>/<image>")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        loose = [entry.name for entry in os.scandir(folder)
                 if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)]
        if loose:  # the common mistake: images straight in the folder, no class sub-folders
            raise DataError(f"{folder} holds {len(loose)} image(s) directly but no class folders; move each image "
                            f"into a sub-folder named after its class: {folder}/<class>/<image>")
        raise DataError(f"no class folders in {folder}; expected an ImageFolder tree {folder}/<class>/<image>")
    return classes


def check_image_size(image_size: int | None, option: str = "image_size") -> int | None:
    """``image_size`` as a positive int (or None: the data's own size); a clear error instead of a crash
    deep in a resize ("negative dimensions are not allowed")."""
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, float)) or int(image_size) != image_size \
            or image_size < 1:
        raise DataError(f"{option}={image_size!r} is not a positive whole number of pixels; give e.g. 32 or 224 "
                        f"(or leave it unset for the data's own size)")
    return int(image_size)


def check_val_split(val_split: float | int, total: int | None = None) -> float | int:
    """``val_split`` as a fraction in [0, 1) or a whole count of images (1 <= count < ``total``).

    One check for every caller (``resnets data``, ``train``, ``finetune``), so 2.5 is refused everywhere rather
    than silently truncated to 2 by one of them. Returns an int for a count, a float for a fraction.
    """
    import math

    hint = ("give a fraction in [0, 1) (e.g. 0.1 holds out 10% of each class), a whole count of images "
            "(e.g. 500), or 0 for no hold-out")
    if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not math.isfinite(val_split):
        raise DataError(f"val_split (--val-split) {val_split!r} is not a number; {hint}")
    if val_split < 0:
        raise DataError(f"val_split (--val-split) {val_split:g} is negative; {hint}")
    if val_split < 1:
        return float(val_split)
    if int(val_split) != val_split:
        raise DataError(f"val_split (--val-split) {val_split:g} is neither a fraction below 1 nor a whole count "
                        f"of images; {hint}")
    if total is not None and val_split >= total:
        raise DataError(f"val_split (--val-split) {val_split:g} holds out at least as many images as there are "
                        f"({total}), leaving none to train on; give a count below {total} or a fraction such as 0.1")
    return int(val_split)


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids (``n01440764``, ...) in class-index order (sorted, as torchvision's and
    timm's ImageNet weights number their outputs): the folder names of an ILSVRC2012 tree and of Imagenette."""
    return tuple(Path(__file__).with_name("imagenet_wnids.txt").read_text().split())


@functools.lru_cache(maxsize=1)
def _imagenet_categories() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])  # the same list for every ImageNet-1k weight


def class_aliases(classes: Sequence[str]) -> dict[str, int]:
    """Other folder names for the classes of a list, by index: the WordNet ids when ``classes`` are torchvision's
    1,000 ImageNet category names (published weights name their outputs so, while ImageNet trees name their
    folders by id), else none."""
    if len(classes) == 1000 and tuple(classes) == _imagenet_categories():
        return {wnid: index for index, wnid in enumerate(imagenet_wnids())}
    return {}


def map_folder_classes(classes: Sequence[str], folder: str | os.PathLike) -> dict[str, int]:
    """Map the class folders of an evaluation tree to the indices of a checkpoint's class list, by name (or, for
    ImageNet's category names, by WordNet id: ``class_aliases``).

    Folders may cover a subset of ``classes``; a folder whose name is not in ``classes`` is an error
    (its images would be scored against a label the model never learned).
    """
    index_of = {name: index for index, name in enumerate(classes)}
    if len(index_of) != len(classes):
        raise DataError(f"the class list has duplicate names: {sorted(set(c for c in classes if list(classes).count(c) > 1))}")
    aliases = class_aliases(classes)
    found = find_classes(folder)
    unknown = [name for name in found if name not in index_of and name not in aliases]
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        known = ", ".join(list(classes)[:10]) + (" ..." if len(classes) > 10 else "")
        ids = " or their WordNet ids (n01440764 ...)" if aliases else ""
        raise DataError(
            f"{folder} has class folders the model was not trained on: {shown}; the model knows "
            f"{len(classes)} classes ({known}){ids}. Rename or remove those folders, or evaluate a model trained on them."
        )
    return {name: index_of[name] if name in index_of else aliases[name] for name in found}


def _folder_identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of the folder ``path`` resolves to; None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def scan_image_folder(folder: str | os.PathLike,
                      class_to_index: Mapping[str, int] | None = None) -> tuple[list[FileEntry], list[str]]:
    """List the image files of ``folder/<class>/...`` in a stable order; return (entries, classes).

    ``class_to_index`` fixes the labels (e.g. from :func:`map_folder_classes`); by default the
    classes are the sorted folder names. Zero-byte files are kept here and rejected at decode time.
    """
    folder = Path(folder)
    if class_to_index is None:
        classes = find_classes(folder)
        class_to_index = {name: index for index, name in enumerate(classes)}
    else:
        classes = [name for name, _ in sorted(class_to_index.items(), key=lambda item: item[1])]
    entries: list[FileEntry] = []
    class_folders = {name: folder / name for name in class_to_index if (folder / name).is_dir()}
    # each folder is read once: a symlink back up the tree (or into another class) would repeat its images,
    # and a repeated image can land in training and in the hold-out at once. A linked folder inside the tree is
    # never followed (its images belong to the class folder that holds them); links to folders outside it are.
    seen = {_folder_identity(path) for path in class_folders.values()}
    tree = os.path.realpath(folder)
    for name, label in sorted(class_to_index.items()):
        if name not in class_folders:
            continue
        for dirpath, dirnames, filenames in os.walk(class_folders[name], followlinks=True):
            kept = []
            for sub in sorted(d for d in dirnames if not d.startswith(".")):
                path = os.path.join(dirpath, sub)
                if os.path.islink(path) and os.path.realpath(path).startswith(tree + os.sep):
                    continue
                identity = _folder_identity(path)
                if identity is not None and identity not in seen:
                    seen.add(identity)
                    kept.append(sub)
            dirnames[:] = kept
            for filename in sorted(filenames):
                if filename.startswith(".") or not filename.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, filename)
                try:
                    stat = os.stat(path)
                    entries.append(FileEntry(path, stat.st_size, stat.st_mtime_ns, label, stat.st_ctime_ns))
                except OSError:  # a dangling symlink: an unreadable file, skipped and named at decode time
                    entries.append(FileEntry(path, 0, 0, label))
    if not entries:
        raise DataError(
            f"no images found under {folder} (looked for {', '.join(IMAGE_EXTENSIONS)} files in "
            f"{folder}/<class>/); point --data at an ImageFolder tree or a cifar-10-batches-py folder"
        )
    return entries, classes


def folder_fingerprint(folder: str | os.PathLike, sampled: int = 32) -> str | None:
    """What identifies an ImageFolder tree's images wherever the tree lies: a hash of each image's path inside
    ``folder`` and its size in bytes (not its mtime, which a copy changes), and of the bytes of ``sampled`` files
    spread evenly through the tree (generated trees share names and, for noise images, sizes too). None when
    ``folder`` holds no ImageFolder tree. ``resnets eval`` compares it with the training folder's to notice a
    copy of it; reading a few dozen files keeps that cheap for ImageNet-sized trees."""
    try:
        entries, _ = scan_image_folder(folder)
        digest = hashlib.sha256(b"resnets-folder-fingerprint-v1\n")
        for entry in entries:
            digest.update(f"{os.path.relpath(entry.path, folder)}\t{entry.size}\n".encode())
        for index in sorted({round(i * (len(entries) - 1) / max(sampled - 1, 1)) for i in range(sampled)}):
            digest.update(Path(entries[index].path).read_bytes())
    except (DataError, OSError):
        return None
    return digest.hexdigest()[:32]


EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _upright(image):
    """Apply the EXIF orientation tag (phone photos are stored sideways with a "rotate me" tag), so every
    path sees the picture as a viewer shows it. Unreadable EXIF is ignored, never fatal."""
    from PIL import ImageOps

    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a good image unreadable
        return image
    return ImageOps.exif_transpose(image) if orientation in (2, 3, 4, 5, 6, 7, 8) else image


def _to_8bit(image):
    """High-bit-depth single-channel images as 8-bit ``L``, scaled instead of clipped.

    ``convert("RGB")`` clips these modes at 255, so a 16-bit PNG comes out almost white. The rule:
    ``I;16*`` (16-bit by declaration) is divided by 257 (65535 -> 255). ``I`` (32-bit int) and ``F``
    (float) carry no declared range, so it is read off the values: all in [0, 1] (``F`` only) -> x 255;
    all in [0, 255] -> kept; all in [0, 65535] -> / 257 (16-bit data, the usual source of ``I``); anything
    else (negative or wider) -> stretched from the image's own min..max to 0..255.
    """
    from PIL import Image

    if image.mode not in SIXTEEN_BIT_MODES + ("I", "F"):
        return image
    values = np.asarray(image).astype(np.float64)
    if image.mode in SIXTEEN_BIT_MODES:
        scaled = values / 257.0
    else:
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if image.mode == "F" and low >= 0 and high <= 1:
            scaled = values * 255.0
        elif low >= 0 and high <= 255:
            scaled = values
        elif low >= 0 and high <= 65535:
            scaled = values / 257.0
        else:
            scaled = (values - low) * (255.0 / (high - low))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def open_rgb(path: str | os.PathLike, draft_size: int | None = None):
    """Open and fully decode an image file as an upright RGB ``PIL.Image``: the one decoder behind the tensor
    cache, streaming, evaluation and prediction, so they all see the same pixels.

    Grayscale, RGBA, CMYK and palette images become RGB; 16-bit and float images are scaled to 8 bits
    (see :func:`_to_8bit`); the EXIF orientation is applied (see :func:`_upright`). ``draft_size`` lets the
    JPEG decoder downscale by a power of two while keeping both sides at least that large (much faster
    for big photos that will be shrunk anyway; rotation does not change the shorter side). Raises
    ``OSError``/``ValueError`` for empty, truncated or non-image files.
    """
    from PIL import Image

    if os.path.getsize(path) == 0:
        raise ValueError("empty file")
    with Image.open(path) as image:
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.load()  # a truncated file fails here, not later in training
        image = _to_8bit(_upright(image))
        return image if image.mode == "RGB" else image.convert("RGB")


def decode_rgb(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Decode one image file to an RGB uint8 array (H, W, 3); see :func:`open_rgb`.

    With ``size``, the image is resized (shorter side) and centre-cropped to ``size`` x ``size``
    unless it already has that shape.
    """
    from PIL import Image, ImageOps

    rgb = open_rgb(path)
    if size is not None and rgb.size != (size, size):
        rgb = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def warn_skipped(bad: Sequence[tuple[str, str]], where: str) -> None:
    """One summary warning for all unreadable files: the count and the first few paths with reasons."""
    if not bad:
        return
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {where}: {shown}{more}", UserWarning, stacklevel=3)


def stratified_split(labels: torch.Tensor | Sequence[int], val_split: float | int,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, stratified hold-out: (train indices, val indices), both sorted.

    ``val_split`` is a fraction in [0, 1) or a count of images (>= 1). Each class contributes in
    proportion to its size (largest-remainder rounding, so the total is exact); a class never
    loses all its training images.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    total = labels.numel()
    val_split = check_val_split(val_split, total)
    if val_split >= 1:
        fraction = float(val_split) / total
        wanted = int(val_split)
    else:
        fraction = float(val_split)
        wanted = int(round(fraction * total))
    if wanted == 0:
        return torch.arange(total), torch.empty(0, dtype=torch.int64)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * fraction
    take = exact.floor().long()
    remainder = exact - take
    capacity = counts - 1  # keep at least one training image per class
    take = torch.minimum(take, capacity)
    # Classes capped at one training image give their share to the others, largest remainder first, as many
    # rounds as it takes (one round can fall short when several are capped); each round visits only the classes
    # that can still give, so a long tail of one-image classes costs one pass, not one per missing image.
    counts_taken, room = take.tolist(), capacity.tolist()
    taken = sum(counts_taken)
    givers = [p for p in torch.argsort(-remainder, stable=True).tolist() if counts_taken[p] < room[p]]
    while taken < wanted and givers:
        for position in givers:
            if taken >= wanted:
                break
            counts_taken[position] += 1
            taken += 1
        givers = [p for p in givers if counts_taken[p] < room[p]]
    take = torch.tensor(counts_taken, dtype=torch.int64)
    if int(take.sum()) < wanted:
        import warnings

        warnings.warn(f"holding out {int(take.sum())} images, not the {wanted} asked for: each class keeps at least "
                      "one training image, and the small classes have no more to give", UserWarning, stacklevel=2)
    from .seeding import derive_seed

    val_parts = []
    for class_id, count in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == class_id).flatten()
        generator = torch.Generator().manual_seed(derive_seed(seed, "val_split", class_id))
        val_parts.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    val = torch.sort(torch.cat(val_parts)).values
    is_val = torch.zeros(total, dtype=torch.bool)
    is_val[val] = True
    return torch.nonzero(~is_val).flatten(), val


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
