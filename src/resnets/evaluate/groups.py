"""Slices and bias: accuracy per group of images and the worst-group gap.

A groups file is a CSV with a header containing ``path`` and ``group`` columns (``image`` is
accepted for ``path``). Paths may be absolute or relative to the evaluation folder; they are
matched to evaluated images by their trailing path components, so ``cat/001.jpg`` matches
``/data/val/cat/001.jpg``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Sequence

from ..data.loader import EVAL_CROP_FRACTION


class GroupsFileError(ValueError):
    """A groups CSV that cannot be read or does not match the evaluated images."""


EXPECTED = "a UTF-8 text CSV whose header has 'path' and 'group' columns (optional 'label'), e.g. 'path,group'"


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV; a binary or non-UTF-8 file is a ``GroupsFileError`` naming the expected format,
    not a UnicodeDecodeError."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            return list(reader.fieldnames or []), list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise GroupsFileError(f"{path} is not a CSV text file ({exc.__class__.__name__}: {exc}); the groups file "
                              f"must be {EXPECTED}") from None


def read_groups(path: str | os.PathLike) -> dict[str, str]:
    """Read ``path,group`` rows into {normalised path: group}."""
    path = Path(path)
    if path.is_dir():
        raise GroupsFileError(f"groups file {str(path)!r} is a folder; pass a CSV file with 'path,group' columns")
    if not path.is_file():
        raise GroupsFileError(f"groups file {str(path)!r} does not exist; pass a CSV with 'path,group' columns")
    fieldnames, rows = _csv_rows(path)
    fields = [f.strip().lower() for f in fieldnames]
    path_col = next((c for c in ("path", "image", "file", "filename") if c in fields), None)
    if path_col is None or "group" not in fields:
        raise GroupsFileError(f"{path} needs a header with 'path' and 'group' columns, found {fields or 'none'}")
    original = {f.strip().lower(): f for f in fieldnames}
    groups: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        image, group = (row.get(original[path_col]) or "").strip(), (row.get(original["group"]) or "").strip()
        if not image or not group:
            raise GroupsFileError(f"{path}:{line}: empty path or group; every row needs both")
        key = PurePath(image).as_posix()
        if groups.get(key, group) != group:  # the later row silently took the image out of the earlier group
            raise GroupsFileError(f"{path}:{line}: {image} is already in group {groups[key]!r}; each image belongs to "
                                  "one group (for overlapping slices, evaluate one groups file per slicing)")
        groups[key] = group
    if not groups:
        raise GroupsFileError(f"{path} has a header but no rows")
    return groups


def _match(image: str, groups: dict[str, str], by_suffix: dict[str, list[str]]) -> str | None:
    key = PurePath(image).as_posix()
    if key in groups:
        return groups[key]
    parts = PurePath(key).parts
    for n in range(len(parts), 0, -1):
        candidates = by_suffix.get("/".join(parts[-n:]))
        if candidates and len(candidates) == 1:
            return groups[candidates[0]]
    return None


@dataclass
class GroupReport:
    accuracy: dict[str, float]
    count: dict[str, int]
    overall: float
    worst_group: str
    unmatched: int

    @property
    def worst_accuracy(self) -> float:
        return self.accuracy[self.worst_group]

    @property
    def gap(self) -> float:
        """Overall accuracy minus worst-group accuracy."""
        return self.overall - self.worst_accuracy

    @property
    def spread(self) -> float:
        """Best-group minus worst-group accuracy."""
        return max(self.accuracy.values()) - self.worst_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {"per_group": {g: {"accuracy": self.accuracy[g], "count": self.count[g]} for g in self.accuracy},
                "overall": self.overall, "worst_group": self.worst_group, "worst_group_accuracy": self.worst_accuracy,
                "worst_group_gap": self.gap, "best_minus_worst": self.spread, "unmatched_images": self.unmatched}

    def table(self) -> str:
        lines = [f"{'group':<24} {'n':>7} {'accuracy':>9}"]
        for g in sorted(self.accuracy, key=self.accuracy.get):
            lines.append(f"{g:<24} {self.count[g]:>7} {self.accuracy[g] * 100:>8.2f}%")
        lines.append(f"worst group {self.worst_group!r}: {self.worst_accuracy * 100:.2f}% "
                     f"(gap to overall {self.gap * 100:.2f} points, to best {self.spread * 100:.2f})")
        return "\n".join(lines)


def group_accuracy(images: Sequence[str], correct: Sequence[bool], groups: dict[str, str],
                   require_all: bool = False) -> GroupReport:
    """Accuracy per group for evaluated ``images`` whose predictions were ``correct``.

    Images not named in ``groups`` are counted in ``unmatched`` (an error with ``require_all``);
    ``overall`` is the accuracy over the matched images, so the gap compares like with like.
    """
    if len(images) != len(correct):
        raise ValueError(f"{len(images)} images but {len(correct)} predictions")
    by_suffix: dict[str, list[str]] = {}
    for key in groups:
        parts = PurePath(key).parts
        for n in range(1, len(parts) + 1):
            by_suffix.setdefault("/".join(parts[-n:]), []).append(key)
    hits: dict[str, int] = {}
    count: dict[str, int] = {}
    unmatched = 0
    for image, ok in zip(images, correct):
        group = _match(str(image), groups, by_suffix)
        if group is None:
            unmatched += 1
            continue
        count[group] = count.get(group, 0) + 1
        hits[group] = hits.get(group, 0) + int(bool(ok))
    if not count:
        example = next(iter(groups))
        raise GroupsFileError(f"no evaluated image matches a path in the groups file (e.g. {example!r} vs "
                              f"{str(images[0]) if len(images) else 'no images'!r}); write paths relative to the "
                              "evaluation folder")
    if require_all and unmatched:
        raise GroupsFileError(f"{unmatched} evaluated images have no group in the groups file")
    accuracy = {g: hits[g] / count[g] for g in count}
    overall = sum(hits.values()) / sum(count.values())
    worst = min(accuracy, key=lambda g: (accuracy[g], g))
    return GroupReport(accuracy=accuracy, count=count, overall=overall, worst_group=worst, unmatched=unmatched)


def _label_of(path: Path, classes: Sequence[str], explicit: str | None) -> int:
    name = explicit if explicit else path.parent.name
    if name not in classes:
        raise GroupsFileError(f"{path}: its class {name!r} (from " + ("the label column" if explicit else
                              "its folder name") + f") is not one of the model's classes ({', '.join(classes[:10])}"
                              + (" ..." if len(classes) > 10 else "") + ")")
    return list(classes).index(name)


def read_group_rows(path: str | os.PathLike) -> list[tuple[str, str, str | None]]:
    """(image path, group, optional label) rows of a groups CSV (``label`` column optional)."""
    groups = read_groups(path)
    labels: dict[str, str] = {}
    fieldnames, reader = _csv_rows(Path(path))
    original = {f.strip().lower(): f for f in fieldnames}
    path_col = next(c for c in ("path", "image", "file", "filename") if c in original)
    if "label" in original:
        for row in reader:
            labels[PurePath((row.get(original[path_col]) or "").strip()).as_posix()] = \
                (row.get(original["label"]) or "").strip()
    return [(p, g, labels.get(p) or None) for p, g in groups.items()]


def evaluate_groups(model: Any, groups_csv: str | os.PathLike, data_root: str | os.PathLike | None,
                    classes: Sequence[str], mean: Sequence[float], std: Sequence[float], image_size: int | None,
                    batch_size: int = 128, device: str = "cpu", crop_fraction: float = EVAL_CROP_FRACTION, *,
                    tta: str = "none", precision: str = "fp32") -> GroupReport:
    """Predict every image named in ``groups_csv`` and report accuracy per group.

    Paths are resolved as given, else relative to ``data_root``, else relative to the CSV's folder.
    The true class is the ``label`` column when present, else the image's folder name. Images are
    prepared as ``resnets eval`` prepares them (``load_eval_image``: small ones fitted, large ones resized to
    ``image_size / crop_fraction`` and centre-cropped); ``model`` takes normalised images (``mean``/``std``
    are applied here). ``tta`` and ``precision`` are ``resnets eval``'s, so the groups are scored as the whole set is.
    """
    import torch

    from ..data import load_eval_image
    from ..precision import autocast_context
    from .tta import tta_logits

    csv_dir = Path(groups_csv).parent
    rows = read_group_rows(groups_csv)
    resolved: list[tuple[Path, str, int]] = []
    for image, group, label in rows:
        candidates = [Path(image)] + ([Path(data_root) / image] if data_root else []) + [csv_dir / image]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise GroupsFileError(f"image {image!r} from {groups_csv} not found (looked in "
                                  f"{', '.join(str(c.parent) for c in candidates)}); write paths relative to the "
                                  "data folder")
        resolved.append((found, group, _label_of(found, classes, label)))
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    correct: list[bool] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(resolved), batch_size):
            chunk = resolved[start:start + batch_size]
            arrays = [load_eval_image(p, image_size, crop_fraction) for p, _, _ in chunk]
            sizes = {tuple(a.shape) for a in arrays}
            if len(sizes) > 1:
                raise GroupsFileError(f"images have different sizes {sorted(sizes)[:3]}; the checkpoint records no "
                                      "image_size to resize them to")
            x = (torch.stack(arrays).float() / 255 - mean_t) / std_t
            with autocast_context(device, precision):
                pred = tta_logits(model, x.to(device), tta).argmax(1).cpu()
            correct.extend((pred == torch.tensor([lbl for _, _, lbl in chunk])).tolist())
    images = [str(p) for p, _, _ in resolved]
    return group_accuracy(images, correct, {str(p): g for p, g, _ in resolved}, require_all=True)
