"""JSON as resnets writes it: strict and atomic.

Python's ``json`` writes NaN and Infinity, which are not JSON: browsers, ``jq`` and most other parsers reject the
whole file. A diverged run's loss or an empty group's ratio becomes ``null`` here instead, and files are written
atomically (a crash leaves the old file or the new one).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["finite_or_none", "to_json", "write_json"]


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN or infinite float (in dicts, lists and tuples too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def to_json(data: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> str:
    """``data`` as strict JSON text: non-finite floats become null."""
    return json.dumps(finite_or_none(data), indent=indent, allow_nan=False, default=default)


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` to ``path`` as strict JSON, atomically; returns the path."""
    from .weights import atomic_write

    text = to_json(data, indent=indent, default=default)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))
