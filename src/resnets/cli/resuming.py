"""`--resume` for the commands: which run folder it names, which flags may come with it, and the record a
command that builds its own model, parameter groups or loss (finetune, distill) keeps of its arguments so that
it can rebuild them and continue the run exactly."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

_NOT_RECORDED = ("func", "parser", "resume")
_PATH_ARGS = ("data", "source", "teacher", "student", "checkpoint", "out")  # recorded absolute when they exist


def resume_folder(path: str) -> Path:
    """The run folder ``--resume`` names: the folder itself, or the folder of the ``last.pt`` given."""
    given = Path(path)
    return given.parent if given.name == "last.pt" and given.is_file() else given


def refuse_changes_on_resume(args: argparse.Namespace, may_change: Sequence[str]) -> None:
    """A resumed run continues exactly as it started: refuse every flag given with ``--resume`` that would
    change what it computes (they used to be ignored without a word). ``args.parser`` is the command's parser."""
    from ..train.distributed import namespace_to_argv
    from . import UserError

    changed = [token for token in namespace_to_argv(args.parser, args, drop=("resume", *may_change))
               if token.startswith("--")]
    if changed:
        allowed = ", ".join(f"--{dest.replace('_', '-')}" for dest in may_change)
        raise UserError(f"--resume continues a run exactly as configured; drop {', '.join(dict.fromkeys(changed))} "
                        f"({allowed} may change; start a new run to change the rest)")


def require(args: argparse.Namespace, *dests: str) -> None:
    """Options that are required unless ``--resume`` is given (argparse's own message and exit status 2)."""
    missing = [dest for dest in dests if getattr(args, dest) is None]
    if missing:
        flags = [next(a.option_strings[-1] for a in args.parser._actions if a.dest == dest) for dest in missing]
        args.parser.error(f"the following arguments are required: {', '.join(flags)} (or --resume RUN)")


def recorded_args(args: argparse.Namespace) -> dict[str, Any]:
    """A command's arguments as it records them (the parsed flags, not argparse's plumbing); paths that exist
    (--data, --from, --teacher, ...) absolute, so a resume works from any working folder."""
    import os

    return {k: (os.path.abspath(v) if k in _PATH_ARGS and isinstance(v, str) and v and not os.path.isabs(v)
                and os.path.exists(v) else v)
            for k, v in vars(args).items() if k not in _NOT_RECORDED}


def write_record(out: Path, command: str, args: argparse.Namespace, **extra: Any) -> None:
    """Write ``out``'s record of ``command``'s arguments (``COMMAND_RECORDS``), atomically."""
    import yaml

    from ..train.trainer import COMMAND_RECORDS
    from ..weights import atomic_write

    record = {"command": command, **recorded_args(args), **extra}
    text = yaml.safe_dump(record, sort_keys=False)
    atomic_write(out / COMMAND_RECORDS[command], lambda tmp: Path(tmp).write_text(text))


def read_record(folder: Path, command: str) -> argparse.Namespace:
    """The arguments ``command`` recorded when it started the run in ``folder``; names what is missing."""
    import yaml

    from ..train.trainer import COMMAND_RECORDS, resume_command
    from . import UserError

    if not (folder / "last.pt").is_file():
        what = "there is no such folder" if not folder.is_dir() else "it holds no last.pt (written after each epoch)"
        raise UserError(f"--resume {folder}: {what}; give the folder of a run that `resnets {command}` started")
    path = folder / COMMAND_RECORDS[command]
    if not path.is_file():
        raise UserError(f"--resume {folder}: the folder has no {path.name}, so `resnets {command}` did not start "
                        f"this run; resume it with `{resume_command(folder)}`")
    try:
        record = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path} is not readable ({str(exc).splitlines()[0]}); it records the run's arguments "
                        "and cannot be rebuilt: start a new run") from None
    if not isinstance(record, dict) or record.get("command") != command:
        raise UserError(f"{path} is not a record of `resnets {command}`'s arguments; start a new run")
    return argparse.Namespace(**{k: v for k, v in record.items() if k != "command"})
