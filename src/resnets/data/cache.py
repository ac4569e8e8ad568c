"""Decode small images once into a uint8 tensor file on disk, keyed by the dataset's file list.

The key hashes every file's relative path, size and modification time (plus the target size and a
format version), so editing, adding or removing a file makes a new key and the stale cache is
simply not used. Decoded tensors are also kept in memory for the life of the process, so a second
``load_data`` of the same tree costs nothing. Writes go through ``resnets.weights.atomic_write``:
an interrupted run never leaves a torn cache file.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import DataError
from .folder import FileEntry, chunks, decode_rgb

__all__ = ["cache_root", "decode_entries", "file_list_key", "load_or_decode"]

CACHE_FORMAT = 2  # 2: EXIF orientation applied, 16-bit images scaled (caches of format 1 hold the old pixels)
_MEMORY: dict[str, tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]] = {}
MEMORY_ENTRIES = 4
"""Decoded sets kept in this process, most recently used first out last: a training and a validation tree of two
datasets. A long session that tries several image sizes would otherwise keep a copy of every one."""


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$RESNETS_CACHE``, else ``~/.cache/resnets``.

    A path that is (or lies under) an existing file is an error: cache writes would fail there, and
    since they fail quietly (a cache is optional) the user would never learn why nothing is cached.
    """
    if cache_dir is not None:
        root, origin = Path(cache_dir).expanduser(), "the cache folder (--cache-dir)"
    elif os.environ.get("RESNETS_CACHE"):
        root, origin = Path(os.environ["RESNETS_CACHE"]).expanduser(), "the cache folder ($RESNETS_CACHE)"
    else:
        root, origin = Path.home() / ".cache" / "resnets", "the default cache folder"
    for part in (root, *root.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == root else f"lies under {part}, which is a file"
                raise DataError(f"{origin} {root} {where}; give a folder path (a new or existing folder)")
            break
    return root


def file_list_key(root: str | os.PathLike, entries: Sequence[FileEntry], *extra: object) -> str:
    """Hash of (relative path, size, mtime, change time, label) of every file, plus ``extra`` settings."""
    digest = hashlib.sha256(f"resnets-tensor-cache-v{CACHE_FORMAT}|{extra!r}\n".encode())
    prefix = os.path.join(os.fspath(root), "")
    for entry in entries:
        relative = entry.path[len(prefix):] if entry.path.startswith(prefix) else os.path.relpath(entry.path, root)
        digest.update(f"{relative}\t{entry.size}\t{entry.mtime_ns}\t{entry.ctime_ns}\t{entry.label}\n".encode())
    return digest.hexdigest()[:32]


def _decode_chunk(paths: Sequence[str], size: int) -> tuple[np.ndarray, list[str | None]]:
    """Decode a chunk of files; failures become an error string instead of an exception."""
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = []
    for index, path in enumerate(paths):
        try:
            out[index] = decode_rgb(path, size)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
    return out, errors


def decode_entries(entries: Sequence[FileEntry], size: int, *, workers: int | None = None,
                   desc: str = "decoding") -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decode files to (uint8 N x 3 x size x size, int64 labels, skipped [(path, reason)]).

    Large lists are decoded by a pool of processes in chunks, with a tqdm progress bar on a terminal
    (none in logs: ``disable=None`` turns it off when stderr is not a TTY).
    """
    from tqdm.auto import tqdm

    paths = [entry.path for entry in entries]
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if len(paths) >= 2000 else 0
    chunk_size = 256
    arrays: list[np.ndarray] = []
    errors: list[str | None] = []
    with tqdm(total=len(paths), desc=desc, unit="img", disable=True if len(paths) < 1000 else None, leave=False) as bar:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for array, chunk_errors in pool.map(_decode_chunk, list(chunks(paths, chunk_size)),
                                                    [size] * ((len(paths) + chunk_size - 1) // chunk_size)):
                    arrays.append(array)
                    errors.extend(chunk_errors)
                    bar.update(len(chunk_errors))
        else:
            for chunk in chunks(paths, chunk_size):
                array, chunk_errors = _decode_chunk(chunk, size)
                arrays.append(array)
                errors.extend(chunk_errors)
                bar.update(len(chunk_errors))
    images = np.concatenate(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    good = np.array([error is None for error in errors], dtype=bool)
    skipped = [(path, error) for path, error in zip(paths, errors) if error is not None]
    labels = torch.tensor([entry.label for entry in entries], dtype=torch.int64)[torch.from_numpy(good)]
    tensor = torch.from_numpy(np.ascontiguousarray(images[good].transpose(0, 3, 1, 2)))
    return tensor, labels, skipped


def load_or_decode(root: str | os.PathLike, entries: Sequence[FileEntry], size: int, cache_dir: str | os.PathLike | None,
                   *, workers: int | None = None, use_disk: bool = True,
                   ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """The decoded tensors for ``entries``: from memory, else from the disk cache, else decode and store."""
    from safetensors.torch import load_file, save_file

    from ..weights import atomic_write

    key = file_list_key(root, entries, size)
    if key in _MEMORY:
        _MEMORY[key] = _MEMORY.pop(key)  # most recently used
        return _MEMORY[key]
    path = cache_root(cache_dir) / "tensors" / f"{Path(root).name}-{key}.safetensors"
    result = None
    if use_disk and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                skipped = [tuple(item) for item in json.loads(handle.metadata().get("skipped", "[]"))]
            tensors = load_file(str(path))
            images, labels = tensors["images"], tensors["labels"]
            # a file that reads but does not fit these entries (written by something else) is rebuilt too
            if (images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size)
                    or labels.shape != (images.shape[0],) or images.shape[0] + len(skipped) != len(entries)):
                raise ValueError("cache file does not match the file list")
            result = (images, labels, skipped)
        except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt, never fatal
            result = None
    if result is None:
        images, labels, skipped = decode_entries(entries, size, workers=workers, desc=f"decoding {Path(root).name}")
        result = (images, labels, skipped)
        if use_disk:
            metadata = {"key": key, "root": os.fspath(root), "skipped": json.dumps(skipped)}
            try:
                atomic_write(path, lambda tmp: save_file({"images": images, "labels": labels}, tmp, metadata))
            except OSError:
                pass  # a read-only cache folder costs speed next time, not correctness
    _MEMORY[key] = result
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.pop(next(iter(_MEMORY)))  # the least recently used
    return result


def clear_memory_cache() -> None:
    """Forget the in-process copies (tests use this to force a disk read)."""
    _MEMORY.clear()
