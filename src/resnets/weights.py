"""Checkpoint IO: safetensors and weights-only ``.pt`` files, torchvision/timm key maps, input and
head adaptation, atomic writes, and mismatch messages in words.

Loading never executes code: ``.pt`` files go through ``torch.load(weights_only=True)`` and
safetensors is data only.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
import stat
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .model import ResNet, ResNetFeatures
from .spec import ResNetSpec, SpecError

FORMAT_NAME = "resnets"
FORMAT_VERSION = 1
_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.body.")


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint, or one that does not fit the model."""


# ------------------------------------------------------------------ writing
def _umasked_file_mode() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


STALE_TEMPORARY_SECONDS = 3600
"""A temporary file of ``atomic_write`` left this long is a killed writer's: no write takes an hour here."""


def _remove_stale_temporaries(path: Path, keep: str) -> None:
    """Delete what a writer killed mid-write (SIGKILL, power loss) left beside ``path``: its temporary files
    older than ``STALE_TEMPORARY_SECONDS`` (a younger one may be another process's write in progress)."""
    now = time.time()
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp{glob.escape(path.suffix)}"):
        try:
            if str(leftover) != keep and now - leftover.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                leftover.unlink()
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write a file so that a crash leaves either the old file or the new one, never a torn one.

    ``write`` receives a temporary path in the same folder; it is fsynced and renamed over ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp makes the file private (0600); the result gets the mode a plain open() would give it (or keeps
        # the mode of the file it replaces), so a run folder shared by a team stays readable
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else _umasked_file_mode()
        # the temporary name ends like the target (".tmp.pt2"): some writers check the extension they are given
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as exc:  # name the file asked for, not the temporary one beside it
        raise OSError(exc.errno, f"cannot write {path} ({exc.strerror}); choose a writable folder") from None
    os.close(fd)
    _remove_stale_temporaries(path, keep=tmp)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
    """Save a model's weights with its spec: safetensors for ``.safetensors``, else a weights-only ``.pt``.

    ``metadata`` (JSON-serialisable: class names, normalisation, ...) is stored beside the spec.
    """
    path = Path(path)
    spec = getattr(model, "spec", None)
    if getattr(model, "batchnorm_folded", False):
        raise CheckpointError("this model's BatchNorms are folded into its convolutions (fold_batchnorm or "
                              "optimize_for_inference), a form for inference that no checkpoint loader rebuilds; save "
                              "the model before folding, or export the folded one (resnets.deploy.export_model)")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "spec": spec.to_dict() if isinstance(spec, ResNetSpec) else None, **dict(metadata or {})}
    if isinstance(model, ResNetFeatures):  # model_from_checkpoint rebuilds the backbone, cut where it was
        meta.setdefault("out_indices", list(model.out_indices))
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        text_meta = {k: json.dumps(v) for k, v in meta.items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=text_meta))
    else:
        atomic_write(path, lambda tmp: torch.save({"state_dict": state, **meta}, tmp))
    return path


# ------------------------------------------------------------------ reading
@dataclass
class Checkpoint:
    """What a checkpoint file holds, whatever its format."""

    state_dict: dict[str, torch.Tensor]
    spec: ResNetSpec | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    """The whole loaded object for ``.pt`` files (training checkpoints keep optimizer state here)."""


def checkpoint_file_kind(path: Path) -> str:
    """What a file's first bytes say it is: "torch-zip", "torch-legacy", "safetensors", "empty" or "unknown"."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 8:
        return "empty"
    if head[:2] == b"PK":
        return "torch-zip"
    # safetensors before the pickle check: a header length whose low byte is 0x80 looks like a pickle.
    header_len = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 0 < header_len < 100_000_000:
        return "safetensors"
    if head[0] == 0x80:
        return "torch-legacy"
    return "unknown"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any checkpoint we understand, with errors that say what is wrong with the file. A name of published
    weights that is not a file (``"resnet50.IMAGENET1K_V2"``, ``list_pretrained``) reads as a checkpoint too:
    torchvision's weights (downloaded once), the spec, and ``pretrained_config`` as metadata."""
    published = published_weights_name(path)
    if published is not None:
        return published_checkpoint(*published)
    path = Path(path)
    if not path.exists():
        from .zoo import list_models, pretrained_tags, split_pretrained_name

        model_name, tag = split_pretrained_name(str(path)) if "." in path.name else (None, None)
        # a tag-like suffix (BOGUS, imagenet1k_v9), not a file extension (resnet18.pt is a missing file)
        suffix = path.name.rsplit(".", 1)[-1]
        if model_name in list_models() and re.fullmatch(r"[A-Z0-9_]+|[a-z0-9]+_[a-z0-9_]+", suffix):
            tags = pretrained_tags(model_name)
            published = (f"{model_name}'s published weights are "
                         f"{', '.join(f'{model_name}.{t}' for t in ['DEFAULT', *tags])}" if tags else
                         f"torchvision publishes none for {model_name}")
            raise CheckpointError(f"{str(path)!r} is neither a file nor published weights: {published}")
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path")
    if path.is_dir():
        for name in ("best.safetensors", "last.pt", "model.safetensors", "best.pt"):
            if (path / name).exists():
                return read_checkpoint(path / name)
        raise CheckpointError(f"{str(path)!r} is a folder with no checkpoint in it (looked for best.safetensors, "
                              "last.pt, model.safetensors); pass the checkpoint file itself")
    kind = checkpoint_file_kind(path)
    if kind == "empty":
        raise CheckpointError(f"{str(path)!r} is empty or truncated ({path.stat().st_size} bytes); it is not a checkpoint")
    if kind == "safetensors":
        return _refuse_non_finite(_read_safetensors(path), path)
    if kind in ("torch-zip", "torch-legacy"):
        return _refuse_non_finite(_read_torch(path, kind), path)
    raise CheckpointError(f"{str(path)!r} is neither a safetensors file nor a PyTorch checkpoint "
                          f"(first bytes {path.read_bytes()[:8]!r}); pass a .safetensors or .pt/.pth file")


def _refuse_non_finite(checkpoint: Checkpoint, path: Path) -> Checkpoint:
    """A network with a NaN or infinite weight computes nothing meaningful; every command would report NaN
    predictions or chance accuracy as if they were results, or fail deep inside a calibration or quantizer."""
    bad = [k for k, v in checkpoint.state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{str(path)!r} holds non-finite weights (NaN or infinity) in {len(bad)} tensor(s), "
                              f"e.g. {', '.join(bad[:3])}: the training that wrote it diverged. Use an earlier "
                              "checkpoint, or train again (a lower learning rate, or fp32)")
    return checkpoint


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            raw_meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is a damaged or truncated safetensors file ({exc}); "
                              "re-download or re-save it") from None
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            meta[k] = v
    return _checkpoint_from(state, meta, {})


def _read_torch(path: Path, kind: str) -> Checkpoint:
    if kind == "torch-zip":
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except zipfile.BadZipFile:
            raise CheckpointError(f"{str(path)!r} is a truncated or damaged PyTorch checkpoint (bad zip archive); "
                                  "the file was probably cut short while copying or saving") from None
        if bad is not None:
            raise CheckpointError(f"{str(path)!r} is damaged: entry {bad!r} fails its checksum")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad or unsafe files
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{str(path)!r} contains pickled Python objects, not only tensors, so it could run code when "
                f"loaded; resnets refuses it. Re-save it as a plain state dict (torch.save(model.state_dict(), ...)) "
                f"or as safetensors. ({message})") from None
        raise CheckpointError(f"could not read {str(path)!r} as a PyTorch checkpoint: {message}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    if obj.get("format") == "resnets-int8-fx":  # resnets.deploy.quantize.QUANT_FORMAT; its tensors are int8 modules'
        raise CheckpointError(f"{str(path)!r} is an int8 model written by `resnets quantize`, not a float checkpoint; "
                              "no command reads it: load it in Python with resnets.deploy.load_quantized(path), or "
                              "give this command the float checkpoint it was quantized from (for an int8 file to "
                              "deploy, use `resnets export --int8`)")
    # the raw weights first (torchvision's reference scripts save "model" beside "model_ema"); an EMA only when
    # a file holds nothing else, and `resnets eval --ema` reads ours explicitly
    for key in ("state_dict", "model", "model_state", "module", "state_dict_ema", "model_ema"):
        inner = obj.get(key)
        if isinstance(inner, dict) and key.endswith("ema"):
            inner = {k: v for k, v in inner.items() if k != "n_averaged"}  # AveragedModel's counter, no weight
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            # the run's config too: later commands (eval --held-out, calibrate) redraw its validation split from it
            meta = {k: v for k, v in obj.items()
                    if not isinstance(v, (dict, torch.Tensor)) or k in ("spec", "metadata", "config")}
            return _checkpoint_from(inner, meta, obj)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _checkpoint_from(obj, {}, obj)
    raise CheckpointError(f"{str(path)!r} is a dict without a state dict in it (keys: {sorted(obj)[:10]}); "
                          "expected tensors or a 'state_dict'/'model' entry")


def _checkpoint_from(state: dict[str, torch.Tensor], meta: dict[str, Any], raw: dict[str, Any]) -> Checkpoint:
    spec = None
    spec_data = meta.get("spec")
    if isinstance(spec_data, dict):
        try:
            spec = ResNetSpec.from_dict(spec_data)
        except (SpecError, TypeError) as exc:
            raise CheckpointError(f"checkpoint stores an invalid model spec: {exc}") from None
    return Checkpoint(state_dict=dict(state), spec=spec, metadata=meta, raw=raw)


# -------------------------------------------------------- key translation
def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DDP ``module.``, ``torch.compile``'s ``_orig_mod.``, ...)."""
    out = dict(state)
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if out and all(k.startswith(prefix) for k in out):
                out = {k[len(prefix):]: v for k, v in out.items()}
                changed = True
    return out


def _from_timm_resnetv2(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        new = re.sub(r"^stem\.conv\.", "conv1.", new)
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", new)
        if m:
            rest = m.group(3)
            rest = re.sub(r"^norm(\d)\.", r"bn\1.", rest)
            rest = rest.replace("downsample.conv.", "downsample.0.")
            new = f"layer{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
        new = re.sub(r"^norm\.", "final_bn.", new)
        if new.startswith("head.fc."):
            new = "fc." + new[len("head.fc."):]
            if value.ndim == 4:
                value = value.flatten(1)
        out[new] = value
    return out


def _from_torchvision_video(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision VideoResNet keys -> ours (stem.* -> conv1/bn1; convN.0 -> convN, convN.1 -> bnN)."""
    r2plus1d = "stem.3.weight" in state
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        if key.startswith("stem."):
            idx, rest = key[len("stem."):].split(".", 1)
            if r2plus1d:
                new = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "bn1"}[idx] + "." + rest
            else:
                new = {"0": "conv1", "1": "bn1"}[idx] + "." + rest
        else:
            m = re.match(r"^(layer\d+\.\d+)\.conv(\d)\.(\d)\.(.*)$", key)
            if m:
                block, n, part, rest = m.groups()
                new = f"{block}.conv{n}.{rest}" if part == "0" else f"{block}.bn{n}.{rest}"
        out[new] = value
    return out


def to_resnets_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Translate a torchvision, timm or resnets state dict into resnets (= torchvision) names."""
    state = strip_prefixes(state)
    if any(k.startswith("stages.") for k in state) and any(".blocks." in k for k in state):
        return _from_timm_resnetv2(state)
    if "stem.0.weight" in state:
        return _from_torchvision_video(state)
    return dict(state)


# ------------------------------------------------------- describing nets
def describe_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Infer the architecture a (resnets-named) state dict belongs to, for mismatch messages."""
    stages: dict[int, set[int]] = {}
    for key in state:
        m = re.match(r"^layer(\d+)\.(\d+)\.", key)
        if m:
            stages.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(len(stages[s]) for s in sorted(stages))
    bottleneck = any(re.match(r"^layer\d+\.\d+\.conv3\.", k) for k in state)
    preact = "final_bn.weight" in state
    outs = []
    for s in sorted(stages):
        last = max(stages[s])
        conv = state.get(f"layer{s}.{last}.conv{3 if bottleneck else 2}.weight")
        if conv is None:
            conv = state.get(f"layer{s}.{last}.conv{3 if bottleneck else 2}.3.weight")
        outs.append(int(conv.shape[0]) if conv is not None else None)
    inner, groups = [], []
    for s in sorted(stages):
        conv2 = state.get(f"layer{s}.0.conv2.weight")
        if bottleneck and conv2 is not None and conv2.ndim >= 4:
            inner.append(int(conv2.shape[0]))
            groups.append(int(conv2.shape[0] // conv2.shape[1]))
    first = state.get("conv1.weight", state.get("conv1.0.weight"))
    fc = state.get("fc.weight")
    return {
        "block": ("preact_" if preact else "") + ("bottleneck" if bottleneck else "basic"),
        "layers": layers,
        "stage_out_channels": tuple(outs),
        "in_chans": int(first.shape[1]) if first is not None else None,
        "num_classes": int(fc.shape[0]) if fc is not None else 0,
        "inner_widths": tuple(inner),
        "groups": groups[0] if groups else 1,
        "deep_stem": "conv1.6.weight" in state,
        "residual": any(".downsample." in k for k in state) or not layers,
        "squeeze_excite": any(re.match(r"^layer\d+\.\d+\.se\.", k) for k in state),
    }


def _describe(arch: dict[str, Any]) -> str:
    kind = arch["block"].replace("_", "-")
    outs = "/".join(str(c) for c in arch["stage_out_channels"])
    return (f"a {kind} net with {'-'.join(map(str, arch['layers'])) or 'no'} blocks (stage widths {outs}), "
            f"{arch['in_chans']} input channels, {arch['num_classes']} classes")


def explain_mismatch(state: Mapping[str, torch.Tensor], model: nn.Module) -> str:
    """Say in words why a state dict does not fit a model."""
    src, dst = describe_state_dict(state), describe_state_dict(model.state_dict())
    reasons = []
    if src["block"] != dst["block"]:
        reasons.append(f"checkpoint uses {src['block'].replace('_', '-')} blocks, model uses "
                       f"{dst['block'].replace('_', '-')} blocks")
    if src["layers"] != dst["layers"]:
        reasons.append(f"checkpoint has {'-'.join(map(str, src['layers']))} blocks per stage, model has "
                       f"{'-'.join(map(str, dst['layers']))}")
    if src["stage_out_channels"] != dst["stage_out_channels"] and src["layers"] == dst["layers"]:
        reasons.append(f"stage widths differ: checkpoint {src['stage_out_channels']}, model {dst['stage_out_channels']} "
                       "(a different width, groups or width multiplier)")
    if src["inner_widths"] != dst["inner_widths"] and src["layers"] == dst["layers"]:
        reasons.append(f"bottleneck inner widths differ: checkpoint {src['inner_widths']} with {src['groups']} "
                       f"group(s), model {dst['inner_widths']} with {dst['groups']} group(s) "
                       "(ResNet vs ResNeXt or wide variant)")
    if src["squeeze_excite"] != dst["squeeze_excite"]:
        with_se, without = ("checkpoint", "model") if src["squeeze_excite"] else ("model", "checkpoint")
        reasons.append(f"the {with_se} has squeeze-excitation in its blocks (an SE-ResNet, se_ratio > 0), the "
                       f"{without} has none")
    if src["deep_stem"] != dst["deep_stem"]:
        reasons.append("checkpoint has a " + ("deep 3x3 stem" if src["deep_stem"] else "single-conv stem")
                       + ", model has a " + ("deep 3x3 stem" if dst["deep_stem"] else "single-conv stem"))
    if src["in_chans"] != dst["in_chans"] and src["in_chans"] is not None:
        reasons.append(f"checkpoint takes {src['in_chans']} input channels, model {dst['in_chans']} "
                       "(pass adapt=True / --adapt to convert the first convolution)")
    if src["num_classes"] != dst["num_classes"]:
        reasons.append(f"checkpoint has {src['num_classes']} classes, model {dst['num_classes']} "
                       "(pass adapt=True / --adapt to drop the checkpoint's classifier)")
    summary = (f"checkpoint is {_describe(src)}; model is {_describe(dst)}" if _describe(src) != _describe(dst) else
               f"checkpoint and model are both {_describe(src)}")
    return summary + (": " + "; ".join(reasons) if reasons else "")


# ------------------------------------------------------------- adaptation
def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Fit a first-conv weight to ``in_chans``: sum the RGB filters for 1 channel, repeat and rescale for more."""
    src = weight.shape[1]
    if src == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // src)
    return weight.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :in_chans] * (src / in_chans)


def _first_conv_key(state: Mapping[str, torch.Tensor]) -> str | None:
    for key in ("conv1.weight", "conv1.0.weight"):
        if key in state:
            return key
    return None


def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], adapt: bool = False,
                    strict: bool = True) -> None:
    """Load torchvision/timm/resnets weights into ``model``; adapt input channels and head if asked.

    Raises ``CheckpointError`` with an architectural explanation when the weights do not fit.
    """
    state = to_resnets_keys(state)
    original = dict(state)
    target = model.state_dict()
    if adapt:
        key = _first_conv_key(state)
        if key is not None and key in target and state[key].shape[1] != target[key].shape[1]:
            state[key] = adapt_input_conv(state[key], target[key].shape[1])
        for key in ("fc.weight", "fc.bias"):
            if key in state and (key not in target or state[key].shape != target[key].shape):
                del state[key]  # a new head: keep the model's fresh one
    for key in target:  # files from before PyTorch 0.4.1 and FrozenBatchNorm models have no BN step counter
        if key.endswith(".num_batches_tracked") and key not in state and \
                key.removesuffix("num_batches_tracked") + "running_mean" in state:
            state[key] = torch.zeros_like(target[key])
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong_shape = [k for k in target if k in state and state[k].shape != target[k].shape]
    if adapt or not any(k.startswith("fc.") for k in target):
        unexpected = [k for k in unexpected if not k.startswith("fc.")]  # a backbone takes a classifier's weights
    # a backbone cut after its deepest feature level takes the whole network's weights
    unexpected = [k for k in unexpected if not k.startswith(getattr(model, "unused_checkpoint_prefixes", ()))]
    if adapt:
        missing = [k for k in missing if not k.startswith("fc.")]
    if wrong_shape or (strict and (missing or unexpected)):
        detail = []
        if wrong_shape:
            k = wrong_shape[0]
            detail.append(f"{len(wrong_shape)} tensors differ in shape (first: {k} is {tuple(state[k].shape)} in the "
                          f"checkpoint, {tuple(target[k].shape)} in the model)")
        if missing:
            detail.append(f"{len(missing)} model tensors are not in the checkpoint (first: {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} checkpoint tensors have no place in the model (first: {unexpected[0]})")
        raise CheckpointError(explain_mismatch(original, model) + ". " + "; ".join(detail) + ".")
    state = {k: v for k, v in state.items() if k in target}
    model.load_state_dict(state, strict=False)  # completeness was checked above, with better messages


def load_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], adapt: bool = False,
                 strict: bool = True) -> Checkpoint | None:
    """Load a checkpoint file (or a state dict) into ``model``; returns what the file held."""
    if isinstance(source, Mapping):
        load_state_dict(model, source, adapt=adapt, strict=strict)
        return None
    ckpt = read_checkpoint(source)
    spec = getattr(model, "spec", None)
    if strict and ckpt.spec is not None and isinstance(spec, ResNetSpec):
        _check_same_function(ckpt.spec, spec, source)
    try:
        load_state_dict(model, ckpt.state_dict, adapt=adapt, strict=strict)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return ckpt


# Spec fields that change what the same tensors compute (a plain net and its option-A twin, v1 and v1.5
# bottlenecks have identical state dicts), so only the stored spec can tell the models apart.
_FUNCTION_FIELDS = ("residual", "stride_on", "act", "head_pool", "logit_scale", "stage_strides",
                    "preact_first_activation")


def _check_same_function(saved: ResNetSpec, model: ResNetSpec, source: str | os.PathLike) -> None:
    fields = [f for f in _FUNCTION_FIELDS  # basic blocks ignore stride_on, post-activation nets the first activation
              if (f != "stride_on" or saved.is_bottleneck) and (f != "preact_first_activation" or saved.is_preact)]
    diffs = [f"{name}={getattr(saved, name)!r} (model: {getattr(model, name)!r})" for name in fields
             if getattr(saved, name) != getattr(model, name)]
    if diffs:
        raise CheckpointError(f"{source}: the checkpoint was saved from another architecture whose tensors have the "
                              f"same names and shapes: {', '.join(diffs)}; rebuild its own model with "
                              "resnets.model_from_checkpoint(path), or call load_weights(model, path, strict=False) to "
                              "load the tensors anyway")


def model_from_checkpoint(path: str | os.PathLike, **overrides: Any) -> tuple[ResNet, Checkpoint]:
    """Rebuild the exact network a resnets checkpoint was saved from, with its weights."""
    ckpt = read_checkpoint(path)
    if ckpt.spec is None:
        raise CheckpointError(f"{path} holds weights but no model spec (not saved by resnets); "
                              "build the model with create_model(NAME, weights=PATH) instead")
    spec = ckpt.spec.replace(**overrides) if overrides else ckpt.spec
    out_indices = ckpt.metadata.get("out_indices")
    model = ResNetFeatures(spec, out_indices) if isinstance(out_indices, list) else ResNet(spec)
    try:
        load_state_dict(model, ckpt.state_dict, adapt=bool(overrides))
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return model, ckpt


# -------------------------------------------------------- torchvision tags
def torchvision_state_dict(model_name: str, tag: str) -> dict[str, torch.Tensor]:
    """Fetch torchvision's published weights (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...) for a model."""
    weights = _torchvision_weights(model_name, tag)
    try:  # torch.hub unpickles with weights_only=False unless told: a tampered cached file would run its code
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        raise CheckpointError(f"refused to load {cached}: it holds more than tensors, so reading it could run code "
                              f"({str(exc).splitlines()[0]}); delete it to download {weights.url} again") from None
    except Exception as exc:  # noqa: BLE001 - network failures come in many types
        raise CheckpointError(f"could not download {type(weights).__name__}.{weights.name} from {weights.url} ({exc}). "
                              "When offline, download the file elsewhere and pass its path instead of the tag "
                              "(weights=PATH in Python; `resnets finetune --from PATH --model NAME`).") from None


def _torchvision_weights(model_name: str, tag: str):
    from torchvision.models import get_model_weights

    from .zoo import get_entry

    tv_name = get_entry(model_name).torchvision
    if tv_name is None:
        raise CheckpointError(f"torchvision publishes no weights for {model_name!r}; pass a checkpoint path instead")
    enum = get_model_weights(tv_name)
    try:
        return enum[tag] if tag != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise CheckpointError(f"torchvision has no weights {tag!r} for {tv_name}; "
                              f"available: {', '.join(['DEFAULT'] + [w.name for w in enum])}") from None


def published_weights_name(text: str | os.PathLike) -> tuple[str, str] | None:
    """``"resnet50.IMAGENET1K_V2"`` (``list_pretrained``'s form) as (model, tag), when it is not a file and its tag
    is one torchvision publishes for that model (so a missing ``resnet50.pt`` still reads as a missing file)."""
    from .zoo import list_models, pretrained_tags, split_pretrained_name

    text = str(text)
    if os.path.exists(text) or "." not in text or text.endswith("."):
        return None
    model_name, tag = split_pretrained_name(text)
    if model_name not in list_models() or tag not in ["DEFAULT", *pretrained_tags(model_name)]:
        return None
    return model_name, tag


def published_checkpoint(model_name: str, tag: str = "DEFAULT") -> Checkpoint:
    """torchvision's published weights for a registered model as a resnets checkpoint: our parameter names, the
    spec (with the published head), and ``pretrained_config`` as metadata, so ``resnets predict``, ``eval`` and
    ``finetune`` use them as they would a file they wrote."""
    from .zoo import get_spec

    metadata = pretrained_config(model_name, tag)
    spec = get_spec(model_name).replace(num_classes=len(metadata["classes"]))
    state = to_resnets_keys(torchvision_state_dict(model_name, tag))
    return Checkpoint(state_dict=state, spec=spec, metadata={**metadata, "spec": spec.to_dict()})


def pretrained_config(model_name: str, tag: str = "DEFAULT") -> dict[str, Any]:
    """How torchvision's published weights ``tag`` for ``model_name`` expect images, and what they output
    (torchvision's ``weights.transforms()`` and ``weights.meta``; no download): ``classes`` (the 1,000 category
    names), ``mean``, ``std``, ``image_size`` (the crop), ``crop_fraction`` (crop / resized shorter side:
    224/256 for V1, 224/232 for V2), ``interpolation``, ``source`` and ``published_top1``. The keys are the
    checkpoint metadata ``resnets predict`` and ``resnets eval`` read, so
    ``save_weights(model, path, metadata=model.pretrained_cfg)`` makes a checkpoint they can use directly."""
    weights = _torchvision_weights(model_name, tag)
    preset = weights.transforms()
    metrics = next(iter(weights.meta.get("_metrics", {}).values()), {})
    return {"classes": list(weights.meta["categories"]), "mean": list(preset.mean), "std": list(preset.std),
            "image_size": int(preset.crop_size[0]), "crop_fraction": preset.crop_size[0] / preset.resize_size[0],
            "interpolation": preset.interpolation.value, "source": f"torchvision {type(weights).__name__}."
            f"{weights.name}", "published_top1": metrics.get("acc@1")}


def load_pretrained(model: nn.Module, weights: str | os.PathLike, model_name: str | None = None,
                    adapt: bool = True) -> None:
    """``create_model``'s ``weights=``: a file path, or a torchvision tag for a registered name."""
    text = str(weights)
    if not os.path.exists(text) and model_name is not None and re.fullmatch(r"[A-Za-z0-9_]+", text):
        from .zoo import pretrained_tags

        if text.upper() in ("DEFAULT", *pretrained_tags(model_name)):  # tags read in any case, as in tagged names
            text = text.upper()
    if not os.path.exists(text) and re.fullmatch(r"[A-Z0-9_]+", text):
        if model_name is None:
            raise CheckpointError(f"weights={text!r} looks like a torchvision weight tag, which needs a model name")
        load_state_dict(model, torchvision_state_dict(model_name, text), adapt=adapt)
        config = pretrained_config(model_name, text)
        if getattr(getattr(model, "spec", None), "num_classes", None) != len(config["classes"]):
            del config["classes"]  # the head was replaced: the published categories no longer apply
        model.pretrained_cfg = config  # timm's attribute name
        return
    load_weights(model, weights, adapt=adapt)
