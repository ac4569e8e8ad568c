"""A checkpoint made ready for inference: the model in eval mode, the class names, and the preprocessing it was
trained with, so ``resnets eval``, ``resnets predict`` and Python callers read images the same way."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, NamedTuple

import torch
from torch import nn

from ..data.stats import KNOWN_STATS
from ..weights import Checkpoint, CheckpointError

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601, PIL's "L"


def to_grey(images: torch.Tensor) -> torch.Tensor:
    """A normalised RGB batch as the normalised grey batch a 1-channel model takes: the luminance-weighted sum
    (ITU-R 601, PIL's "L"), exact when the 3 channels were normalised with the grey statistics repeated."""
    weights = torch.tensor(LUMINANCE, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


class GrayscaleInput(nn.Module):
    """Lets a 1-channel model take the RGB batches every loader makes (``to_grey`` first)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spec = getattr(model, "spec", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(to_grey(x))


class LoadedModel(NamedTuple):
    model: nn.Module  # in eval mode, taking 3-channel (RGB) input normalised with mean and std
    classes: list[str] | None
    mean: tuple[float, ...]  # per RGB channel
    std: tuple[float, ...]
    image_size: int | None
    crop_fraction: float  # centre crop / resize, for images larger than image_size
    checkpoint: Checkpoint  # the file as read: its metadata, spec and raw contents


def normalization_of(metadata: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """(mean, std, found) from checkpoint metadata (``mean``/``std``, possibly under ``data``); ImageNet's
    statistics when the checkpoint does not say (weights converted from torchvision or timm), with
    ``found=False`` so callers can warn."""
    for where in (metadata, metadata.get("data") if isinstance(metadata.get("data"), dict) else None):
        if where and where.get("mean") is not None and where.get("std") is not None:
            return tuple(map(float, where["mean"])), tuple(map(float, where["std"])), True
    mean, std = KNOWN_STATS["imagenet"]
    return tuple(mean), tuple(std), False


def rgb_normalization(metadata: dict[str, Any], in_chans: int,
                      checkpoint: str | os.PathLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) to normalise RGB-read images with for a checkpoint: its own (one value each for a grey
    model, repeated over RGB), or ImageNet's with a warning when it records none (torchvision and timm files;
    a grey model gets ImageNet's luminance-weighted statistics). Malformed statistics are refused."""
    mean, std, found = normalization_of(metadata)
    if not found:
        warnings.warn(f"{checkpoint} does not record its input normalisation (metadata 'mean'/'std'); assuming "
                      "ImageNet statistics", UserWarning, stacklevel=3)
        if in_chans == 1:  # ImageNet's grey: the luminance-weighted channel statistics
            mean, std = (sum(w * m for w, m in zip(LUMINANCE, mean)),), (sum(w * s for w, s in zip(LUMINANCE, std)),)
    if (len(mean) not in (1, in_chans) or len(std) != len(mean) or not all(0 < s < math.inf for s in std)
            or not all(abs(m) < math.inf for m in mean)):
        raise CheckpointError(f"{checkpoint} stores mean {list(mean)} and std {list(std)} for a model with "
                              f"{in_chans} input channel(s); save it with one mean and one positive std per channel, "
                              "all finite")
    return tuple(mean) * (3 // len(mean)), tuple(std) * (3 // len(std))  # one value: every RGB channel


def load_for_inference(checkpoint: str | os.PathLike, use_ema: bool = False,
                       need_classes: bool = True, read: Checkpoint | None = None) -> LoadedModel:
    """Load a resnets checkpoint (best.safetensors, last.pt, a run folder) for evaluation, prediction or
    explanation: the one reader behind ``resnets eval``, ``predict``, ``explain gradcam`` and ``robustness``, so
    each prepares images alike. Errors name what does not fit. ``crop_fraction`` is the checkpoint's (published
    weights saved with ``pretrained_cfg``) or the ImageNet convention's 0.875. A 1-channel model is wrapped
    (``GrayscaleInput``) to take RGB. Without ``need_classes`` a checkpoint with no class names gives
    ``classes=None``. ``read``: the file's ``read_checkpoint`` result where the caller has it already."""
    from ..data.loader import EVAL_CROP_FRACTION
    from ..model import ResNet
    from ..weights import load_state_dict, read_checkpoint

    ckpt = read if read is not None else read_checkpoint(checkpoint)
    if ckpt.spec is None:
        raise CheckpointError(f"{checkpoint} holds no model spec; use a checkpoint written by resnets (`resnets "
                              "train`, `finetune`, `save_weights`: best.safetensors or last.pt)")
    meta = ckpt.metadata
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{checkpoint} stores 'classes' as {classes!r}, not a list of class names; save it with "
                              "metadata={'classes': [name, ...]}")
    if not classes and need_classes:
        raise CheckpointError(f"{checkpoint} stores no class names, so dataset folders cannot be matched to outputs")
    if classes and len(classes) != ckpt.spec.num_classes:
        raise CheckpointError(f"{checkpoint} names {len(classes)} classes but its model has {ckpt.spec.num_classes} "
                              "outputs; save it with the class list of the head it has (after reset_classifier, "
                              "the new classes)")
    in_chans = ckpt.spec.in_chans
    if in_chans not in (1, 3):
        raise CheckpointError(f"{checkpoint} takes {in_chans}-channel input; images are read as RGB (3 channels) "
                              "or, for a 1-channel model, as grey")
    model: nn.Module = ResNet(ckpt.spec)
    state = ckpt.state_dict
    if use_ema:
        state = ckpt.raw.get("state_dict_ema")
        if state is None:
            raise CheckpointError(f"{checkpoint} holds no EMA weights (the run had ema_decay=0, or it is not a "
                                  "last.pt)")
    load_state_dict(model, state)
    mean, std = rgb_normalization(meta, in_chans, checkpoint)
    if in_chans == 1:
        model = GrayscaleInput(model)
    return LoadedModel(model.eval(), list(classes) if classes else None, mean, std, meta.get("image_size"),
                       float(meta.get("crop_fraction") or EVAL_CROP_FRACTION), ckpt)


def held_out_images(data: str | os.PathLike, checkpoint: Checkpoint, checkpoint_name: str | os.PathLike,
                    classes: list[str] | None, image_size: int | None,
                    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None):
    """The validation images the checkpoint's run drew from ``data``: the same split, by the val_split and seed
    its config recorded (``--held-out`` of ``resnets eval`` and ``robustness``). Raises ``DataError`` when the
    checkpoint has no run config or its run held out nothing."""
    from ..data import DataError, load_data
    from ..train.config import held_out_split

    config = checkpoint.metadata.get("config")
    if not isinstance(config, dict):
        raise DataError(f"--held-out needs the run's config in {checkpoint_name} (a best.safetensors or last.pt "
                        "written by resnets train); without it, evaluate on images it did not train on")
    _refuse_other_training_folder(data, checkpoint, checkpoint_name)
    val_split, seed = held_out_split(config)
    splits = load_data(data, val_split=val_split, seed=seed, classes=classes, image_size=image_size,
                       **({"normalization": normalization} if normalization is not None else {}))
    if splits.val is None or len(splits.val) == 0:
        raise DataError(f"the run held out nothing (val_split={val_split}); evaluate on images it did not train on")
    return splits.val


def _as_training_images(folder: os.PathLike, checkpoint: Checkpoint, recorded: str | os.PathLike | None) -> str | None:
    """How ``folder`` holds the images the checkpoint's run trained on: it is the ``recorded`` training folder, or
    a copy of it (the same ``training_fingerprint``: paths inside the tree, file sizes and the bytes of a sample of
    files); None when it is neither (or nothing was recorded)."""
    from pathlib import Path

    from ..data.folder import folder_fingerprint

    if recorded is not None and Path(recorded) == Path(folder):
        return str(folder)
    fingerprint = checkpoint.metadata.get("training_fingerprint")
    if fingerprint and folder_fingerprint(folder) == fingerprint:
        return f"{folder} is a copy of {recorded or 'its training folder'}: the same files, names and sizes"
    return None


def _refuse_other_training_folder(data: str | os.PathLike, checkpoint: Checkpoint,
                                  checkpoint_name: str | os.PathLike) -> None:
    """The hold-out is a split of the folder the run trained on: redrawn from any other folder it names images the
    run may never have seen as "held out", and a share of the others as if they were all it held out."""
    from ..data import DataError
    from ..data.sources import training_folder

    recorded = checkpoint.metadata.get("training_folder")
    folder = training_folder(data)
    if not (recorded and checkpoint.metadata.get("training_fingerprint") and folder is not None):
        return
    if _as_training_images(folder, checkpoint, recorded) is None:
        raise DataError(f"--held-out redraws the images {checkpoint_name}'s run held out of its training folder "
                        f"{recorded}, but {data} holds other images; evaluate {data} without --held-out (the run "
                        f"never trained on it), or pass --data {recorded}")


def refuse_training_images(data: str | os.PathLike, checkpoint: Checkpoint, checkpoint_name: str | os.PathLike) -> None:
    """An accuracy on the images a model trained on is not an evaluation: raise ``DataError`` when ``data`` is the
    ImageFolder tree the checkpoint's run trained on (recorded as ``training_folder``; older checkpoints: the
    config's ``data``, read from the current folder) or a copy of it (``_as_training_images``). A root of split trees
    is evaluated on its val/ or test/ tree and CIFAR on its test set, so neither is refused."""
    from pathlib import Path

    from ..data import DataError
    from ..data.sources import training_folder

    evaluated = Path(data).expanduser().resolve()
    if training_folder(data) != evaluated:
        return
    config = checkpoint.metadata.get("config")
    recorded = checkpoint.metadata.get("training_folder") or (
        training_folder(config["data"]) if isinstance(config, dict) and isinstance(config.get("data"), str) else None)
    where = _as_training_images(evaluated, checkpoint, recorded)
    if where is None:
        return
    raise DataError(f"{data} holds the images {checkpoint_name} was trained on ({where}), so an accuracy there "
                    "counts images it learned; pass --held-out to score only the images its run held out for "
                    "validation, evaluate on other images, or pass --include-training-images to measure the "
                    "training set on purpose")
