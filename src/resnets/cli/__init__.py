"""The ``resnets`` command. Each subcommand lives in its own module here and is a thin call into
one package of the library; a module joins the command by being listed in ``SUBCOMMANDS``.

A subcommand module defines ``register(subparsers)``, which adds its parser and sets
``func=callable(args) -> int | None`` on it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

SUBCOMMANDS = [
    "models",
    "train",
    "eval",
    "predict",
    "finetune",
    "export",
    "bench",
    "quantize",
    "prune",
    "distill",
    "data",
    "explain",
    "experiment",
    "robustness",
    "report",
]


class UserError(Exception):
    """An error caused by the user's input; printed as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="resnets",
        description="The ResNet family on PyTorch: list, train, evaluate, fine-tune, compress, export and "
                    "explain residual networks. Run `resnets COMMAND --help` for each command.",
    )
    parser.add_argument("--version", action="version", version=f"resnets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..spec import SpecError
    from ..weights import CheckpointError
    from ..zoo import UnknownModelError
    from ..model import InputError
    from ..data.errors import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from ..train.config import ConfigError
    from ..train.trainer import NonFiniteLossError

    who = f"resnets {args.command}{_rank_label()}"
    try:
        return int(args.func(args) or 0)
    except (UserError, SpecError, CheckpointError, UnknownModelError, InputError, DataError, ConfigError,
            FileNotFoundError) as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # unwritable folders, a folder where a file was meant, a full disk: the user's to fix
        print(f"{who}: error: {_describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{who}: interrupted", file=sys.stderr)
        return 130


def _rank_label() -> str:
    """`` [rank 1/4]`` in a process torchrun started for a group of several, else nothing: every rank prints its
    own error, and without the label a failure that only one rank hit reads like N copies of one."""
    rank, world_size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")
    if rank is None or not world_size.isdigit() or int(world_size) < 2:
        return ""
    return f" [rank {rank}/{world_size}]"


def _describe_os_error(exc: OSError) -> str:
    where = f": {exc.filename}" if exc.filename else ""
    text = f"{exc.strerror or exc}{where}"
    if isinstance(exc, PermissionError):
        return f"{text} (no permission to write there; choose a folder you can write to)"
    if isinstance(exc, IsADirectoryError):
        return f"{text} (a folder is in the way; give a file name)"
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return f"{text} (a file is in the way; give a folder, or another path)"
    return text


if __name__ == "__main__":
    sys.exit(main())
