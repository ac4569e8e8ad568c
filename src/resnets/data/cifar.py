"""CIFAR-10/100 from the official python-format archives: download, verify, extract safely, read.

The archives hold pickled dicts of numpy arrays. They are read with a restricted unpickler that
only rebuilds numpy arrays and plain containers, so a tampered archive cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

__all__ = ["CIFAR_ARCHIVES", "CifarArchive", "CifarArrays", "fetch_cifar", "is_cifar_folder", "read_cifar_folder",
           "safe_extract", "verify_md5"]


@dataclass(frozen=True)
class CifarArchive:
    url: str
    filename: str
    md5: str
    folder: str  # the folder the archive extracts to


CIFAR_ARCHIVES: dict[str, CifarArchive] = {
    "cifar10": CifarArchive("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
                            "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": CifarArchive("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
                             "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}


@dataclass
class CifarArrays:
    """A CIFAR folder read into memory: uint8 N x 3 x 32 x 32 images and int64 labels per split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    name: str  # "cifar10" or "cifar100"


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    """Raise a clear ``DataError`` when the file's MD5 is not ``expected``."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise DataError(
            f"checksum mismatch for {path}: expected MD5 {expected}, got {digest.hexdigest()}. The file is "
            f"corrupt or incomplete; delete it and run again to download a fresh copy"
        )


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Extract a tar archive into ``destination``, refusing any member that would land outside it.

    Absolute paths, ``..`` components, links and device files are all rejected before anything is
    written.
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(destination)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                target = os.path.realpath(os.path.join(root, member.name))
                if os.path.isabs(member.name) or not (target == root or target.startswith(root + os.sep)):
                    raise DataError(f"refusing to extract {archive}: member {member.name!r} would be written "
                                    f"outside {destination} (path traversal); the archive is not a genuine dataset archive")
                if not (member.isfile() or member.isdir()):
                    raise DataError(f"refusing to extract {archive}: member {member.name!r} is a link or special "
                                    f"file; the archive is not a genuine dataset archive")
            try:
                tar.extractall(destination, members=members, filter="data")
            except TypeError:  # Python without extraction filters: our checks above already ran
                tar.extractall(destination, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot extract {archive}: {exc}; delete it and run again to download a fresh copy") from exc


def _download(url: str, path: Path) -> None:
    from tqdm.auto import tqdm

    from ..weights import atomic_write

    def write(tmp: str) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {path.name}", leave=False,
                      disable=total is not None and total < (1 << 22)) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))

    atomic_write(path, write)


def fetch_cifar(name: str, cache_dir: str | os.PathLike, *, download: bool = True) -> Path:
    """The extracted folder of CIFAR ``name`` under ``cache_dir``, downloading and verifying on first use."""
    archive = CIFAR_ARCHIVES[name]
    root = Path(cache_dir) / name
    folder = root / archive.folder
    if is_cifar_folder(folder):
        return folder
    archive_path = root / archive.filename
    if not archive_path.is_file():
        hint = (f"pass --data DIR pointing at an extracted {archive.folder} folder or an ImageFolder tree, "
                f"or place {archive.filename} in {root}")
        if not download:
            raise DataError(f"{name} is not in the cache {root} and downloading is off; {hint}")
        root.mkdir(parents=True, exist_ok=True)
        try:
            _download(archive.url, archive_path)
        except (OSError, ValueError) as exc:  # URLError is an OSError
            raise DataError(f"could not download {archive.url} ({exc}); {hint}") from exc
    verify_md5(archive_path, archive.md5)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        safe_extract(archive_path, staging)
        if not is_cifar_folder(staging / archive.folder):
            raise DataError(f"{archive_path} does not contain a {archive.folder} folder with CIFAR batches")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging / archive.folder, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtin containers only; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _load_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(io.BufferedReader(handle), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError) as exc:
        raise DataError(f"{path} is not a readable CIFAR batch file ({exc}); re-extract the archive") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR batch file (expected a dict, found {type(batch).__name__})")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _layout(folder: Path) -> tuple[str, list[str], str, str] | None:
    if (folder / "batches.meta").is_file() and (folder / "test_batch").is_file():
        # data_batch_1 .. data_batch_5 only: a stray copy (data_batch_1.bak) must not be read as more training data
        numbers = [p.name[len("data_batch_"):] for p in folder.glob("data_batch_*")]
        train = [f"data_batch_{n}" for n in sorted((n for n in numbers if n.isascii() and n.isdigit()), key=int)]
        return ("cifar10", train, "test_batch", "batches.meta") if train else None
    if all((folder / name).is_file() for name in ("train", "test", "meta")):
        return "cifar100", ["train"], "test", "meta"
    return None


def is_cifar_folder(folder: str | os.PathLike) -> bool:
    """True for an extracted ``cifar-10-batches-py`` or ``cifar-100-python`` folder."""
    return Path(folder).is_dir() and _layout(Path(folder)) is not None


def _images_and_labels(batches: list[dict], label_key: str, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = np.concatenate([np.asarray(batch["data"], dtype=np.uint8) for batch in batches])
        labels = np.concatenate([np.asarray(batch[label_key], dtype=np.int64) for batch in batches])
    except KeyError as exc:
        raise DataError(f"CIFAR batch in {path} lacks the {exc} entry") from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise DataError(f"CIFAR batch in {path} holds unreadable data or labels ({exc}); "
                        f"re-extract the archive") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(f"CIFAR batch in {path} has data of shape {data.shape} for {len(labels)} labels; "
                        f"expected N x 3072 with N labels")
    if len(labels) and labels.min() < 0:
        raise DataError(f"CIFAR batch in {path} has a negative label ({labels.min()})")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def read_cifar_folder(folder: str | os.PathLike) -> CifarArrays:
    """Read an extracted CIFAR-10 or CIFAR-100 python folder into uint8 tensors."""
    folder = Path(folder)
    layout = _layout(folder)
    if layout is None:
        raise DataError(f"{folder} is not an extracted CIFAR folder (expected data_batch_*, test_batch and "
                        f"batches.meta, or train, test and meta)")
    name, train_files, test_file, meta_file = layout
    label_key, names_key = ("labels", "label_names") if name == "cifar10" else ("fine_labels", "fine_label_names")
    train_images, train_labels = _images_and_labels([_load_batch(folder / f) for f in train_files], label_key, folder)
    test_images, test_labels = _images_and_labels([_load_batch(folder / test_file)], label_key, folder)
    meta = _load_batch(folder / meta_file)
    names = meta.get(names_key, [])
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{folder / meta_file} holds no list of class names under {names_key!r}")
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names]
    highest = int(torch.cat([train_labels, test_labels]).max()) if len(train_labels) + len(test_labels) else -1
    if len(classes) <= highest:
        raise DataError(f"{folder / meta_file} names {len(classes)} classes but labels go up to {highest}")
    return CifarArrays(train_images, train_labels, test_images, test_labels, classes, name)
