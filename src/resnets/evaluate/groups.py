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


class GroupsFileError(ValueError):
    """A groups CSV that cannot be read or does not match the evaluated images."""


def read_groups(path: str | os.PathLike) -> dict[str, str]:
    """Read ``path,group`` rows into {normalised path: group}."""
    path = Path(path)
    if not path.is_file():
        raise GroupsFileError(f"groups file {str(path)!r} does not exist; pass a CSV with 'path,group' columns")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip().lower() for f in (reader.fieldnames or [])]
        path_col = next((c for c in ("path", "image", "file", "filename") if c in fields), None)
        if path_col is None or "group" not in fields:
            raise GroupsFileError(f"{path} needs a header with 'path' and 'group' columns, found {fields or 'none'}")
        original = {f.strip().lower(): f for f in reader.fieldnames or []}
        groups: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            image, group = (row.get(original[path_col]) or "").strip(), (row.get(original["group"]) or "").strip()
            if not image or not group:
                raise GroupsFileError(f"{path}:{line}: empty path or group; every row needs both")
            groups[PurePath(image).as_posix()] = group
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
