"""Argument types and checks shared by the subcommands, so a bad value fails at parse time with one line
naming the option, and no command can write its output over the file it reads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Iterable


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


def finite_float(text: str) -> float:
    value = _number(text, float)
    if not abs(value) < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number of 0 or more")
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


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors", ".ckpt", ".bin")


def _protected_folders(reads: Iterable[str | os.PathLike | None]) -> list[Path]:
    """The run folders behind the inputs: an input folder, or the folder of an input file that holds a run's
    files (its sibling checkpoints are as precious as the one named)."""
    from ..train.trainer import files_of_a_run

    folders = []
    for source in reads:
        if source is None or not os.path.exists(source):
            continue
        source = Path(source)
        if source.is_dir():
            folders.append(source.resolve())
        elif files_of_a_run(source.parent):
            folders.append(source.parent.resolve())
    return folders


def val_split(text: str) -> float | int:
    """``--val-split``: a fraction below 1 or a whole count of images, the data layer's one rule."""
    from ..data.errors import DataError
    from ..data.folder import check_val_split

    try:
        return check_val_split(_number(text, float))
    except DataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_writable(out: Path, option: str, directory: bool) -> None:
    """Fail before any work where nothing can be written: try a temporary file in the output's nearest existing
    folder (a file output's parent, or the output folder itself)."""
    import tempfile

    from . import UserError

    place = out.absolute() if directory else out.absolute().parent
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        return  # a file where a folder is needed: the checks below name it
    try:
        with tempfile.TemporaryFile(dir=place):
            pass
    except OSError as exc:
        raise UserError(f"{option} {out}: nothing can be written in {place} ({exc.strerror}); choose a writable "
                        "place") from None


def check_output(path: str | os.PathLike, *, reads: Iterable[str | os.PathLike | None] = (), option: str = "--out",
                 directory: bool = False, kind: str | tuple[str, ...] | None = None,
                 data: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Refuse, before any work, an output that would destroy something the user made; return it as a Path.

    Refused: a folder where a file is meant (or the reverse); the command's own input (``reads``); a file the run
    behind an input wrote (``--out RUN/last.pt`` while reading ``RUN/best.safetensors``; a command's own earlier
    output beside them may be replaced); any existing file a training run wrote (``RUN/best.safetensors``), read or
    not; for a folder output (``directory``), an input's run folder itself; anything inside an image tree the
    command reads (``data``: it would add a class or replace images). With ``kind`` (".json", or the suffixes a
    command writes), also an existing file of another kind (a typo must not turn weights into a report), and for
    non-checkpoint kinds a checkpoint's name. Raises ``UserError``."""
    from ..data.folder import within_image_tree
    from ..train.trainer import files_of_a_run
    from . import UserError

    out = Path(path)
    reads = [r for r in reads if r is not None]
    for folder in data:
        if folder is not None and within_image_tree(out, folder, directory):
            raise UserError(f"{option} {out} is inside {folder}, the image folder this command reads: writing there "
                            "would add a class to that dataset or replace its images; choose a path outside it")
    _check_writable(out, option, directory)
    if out.exists():
        if directory and not out.is_dir():
            raise UserError(f"{option} {out} is a file; give a folder (a new or an empty one)")
        if not directory and out.is_dir():
            raise UserError(f"{option} {out} is a folder; give a file name, e.g. {out / 'out'}")
    destroys = None
    if out.exists() and reads:  # only an existing path can destroy anything; a new one needs no look at the inputs
        destroys = next((Path(r) for r in reads if os.path.exists(r) and os.path.samefile(out, r)), None)
        if destroys is None and directory and out.resolve() in _protected_folders(reads):
            destroys = out
    if destroys is not None:
        raise UserError(f"{option} {out}: writing there would destroy it ({destroys} is what this command reads, or "
                        f"part of the run it reads); choose another {option}")
    if not directory and out.is_file() and out.name in files_of_a_run(out.parent):  # any run's, read or not
        raise UserError(f"{option} {out} is a file of the training run in {out.parent}; writing there would destroy "
                        f"it; choose another {option}")
    if kind is not None:
        kinds = (".html", ".htm") if kind == ".html" else (kind,) if isinstance(kind, str) else tuple(kind)
        if out.suffix.lower() in CHECKPOINT_SUFFIXES and not set(kinds) & set(CHECKPOINT_SUFFIXES):
            raise UserError(f"{option} {out} is a checkpoint's name; give a {kinds[0]} file name, e.g. "
                            f"{out.with_suffix(kinds[0])}")
        if out.is_file() and out.suffix.lower() not in kinds:
            raise UserError(f"{option} {out} exists and is not a {' or '.join(kinds)} file; writing there would "
                            f"destroy it. Choose a {kinds[0]} file name")
    return out


def load_network(path: str, model_name: str | None, option: str, model_option: str,
                 name_for_spec_less_only: bool = False) -> tuple[Any, dict]:
    """The network in checkpoint ``path`` and its metadata, reading the file once. A state dict without a spec
    (torchvision, timm) needs its architecture named, which the error says how to do on the command line
    (``model_option``). ``name_for_spec_less_only``: a name beside a checkpoint's own spec is the caller's to check
    (``resnets bench`` lets it repeat the architecture), not the loader's to refuse."""
    from ..transfer import load_source
    from ..weights import read_checkpoint
    from . import UserError

    checkpoint = read_checkpoint(path)
    if checkpoint.spec is None and model_name is None:
        raise UserError(f"{option} {path} holds weights without a model spec (a torchvision or timm state dict); "
                        f"name its architecture with {model_option} NAME (e.g. {model_option} resnet18; "
                        "`resnets models` lists the names)")
    if name_for_spec_less_only and checkpoint.spec is not None:
        model_name = None
    model, info = load_source(path, model_name=model_name, checkpoint=checkpoint)
    return model, info.metadata


def image_files(arguments: Iterable[str]) -> list[str]:
    """The files named, each folder replaced by the image files under it (recursively, sorted, hidden ones left
    out); an empty folder is an error. Files are not opened here: the caller reports a missing or unreadable one."""
    from ..data.folder import IMAGE_EXTENSIONS
    from . import UserError

    paths = []
    for argument in arguments:
        if not os.path.isdir(argument):
            paths.append(argument)  # a missing or unreadable file is reported when it is read
            continue
        found = []
        for folder, subfolders, files in os.walk(argument, followlinks=True):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            found += [os.path.join(folder, name) for name in sorted(files)
                      if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise UserError(f"no images under the folder {argument} (looked for {', '.join(IMAGE_EXTENSIONS)})")
        paths += found
    return paths
