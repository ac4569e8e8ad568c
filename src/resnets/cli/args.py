"""Argument types and checks shared by the subcommands, so a bad value fails at parse time with one line
naming the option, and no command can write its output over the file it reads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Iterable


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite number")
    return value


def unit_fraction(text: str) -> float:
    """A fraction in [0, 1]."""
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``, checked against what this machine has (``--device`` of every command)."""
    import torch

    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no usable CUDA device (torch "
                                             f"{torch.__version__}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                             f"numbered from 0")
    elif parsed.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use --device cpu")
    elif parsed.type != "cpu":
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported; use cpu, cuda or cuda:N")
    return text


def check_output(path: str | os.PathLike, *, reads: Iterable[str | os.PathLike | None] = (), option: str = "--out",
                 directory: bool = False) -> Path:
    """Refuse an output path that is one of the command's inputs (a checkpoint written over by its own export),
    a folder where a file is meant (or the reverse); return it as a Path. Raises ``UserError``."""
    from . import UserError

    out = Path(path)
    if out.exists():
        if directory and not out.is_dir():
            raise UserError(f"{option} {out} is a file; give a folder (a new or an empty one)")
        if not directory and out.is_dir():
            raise UserError(f"{option} {out} is a folder; give a file name, e.g. {out / 'out'}")
        for source in reads:
            if source is None:
                continue
            source = Path(source)
            inside = source.is_dir() and out.parent.resolve() == source.resolve() \
                and out.suffix in (".pt", ".pth", ".safetensors")  # a run folder given as the input
            if (source.exists() and os.path.samefile(out, source)) or inside:
                raise UserError(f"{option} {out} is the input {source}; writing there would destroy it. "
                                f"Choose another {option}")
    return out
