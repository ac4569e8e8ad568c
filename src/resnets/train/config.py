"""Training configuration: recipes are YAML data, resolved once into a typed ``TrainConfig``.

A recipe file (``src/resnets/recipes/NAME.yaml``, or any path) maps ``TrainConfig`` field names to
values. Command-line flags and ``--set key=value`` pairs override it; the result is validated here,
at the boundary, and saved as ``config.yaml`` in the run folder so a run can be read and resumed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from ..evaluate.tta import TTA_MODES
from ..precision import PRECISION_CHOICES

__all__ = ["ConfigError", "TrainConfig", "apply_overrides", "list_recipes", "load_recipe", "parse_set",
           "recipe_path", "resolve_config"]

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
SCHEDULES = ("step", "cosine", "onecycle", "constant")
OPTIMIZERS = ("sgd", "muon")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the compile modes that record CUDA graphs
UNITS = ("steps", "epochs")
ADVERSARIAL_KEYS = ("method", "eps", "steps", "alpha")


class ConfigError(ValueError):
    """A recipe or override that cannot be used; the message names the key and the fix."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field docs are the recipe keys' documentation."""

    # --- what the recipe is
    recipe: str = ""
    description: str = ""
    expected: str = ""
    """The accuracy this recipe is expected to reach, in words (stated by every shipped recipe)."""
    # --- model and data
    model: str = "resnet20"
    model_options: dict = field(default_factory=dict)
    """ResNetSpec field overrides (``drop_path_rate``, ``zero_init_last``, ...)."""
    data: str = "cifar10"
    val_split: float = 0.1
    """Fraction (or count, if > 1) held out for validation when the data has no validation tree."""
    split_seed: int | None = None
    """Seed of that hold-out. New runs get 0 (``resolve_config``), so runs of other ``seed``s are validated on the
    same images and compare honestly; None (configs written before it existed) follows ``seed``."""
    image_size: int | None = None
    normalization: str | list = "auto"
    """``auto`` (known constants for CIFAR and ImageNet-like data, else computed), a known name
    (``cifar10``, ``imagenet``, ...), or ``[mean, std]`` with three values each (what prune and distill
    carry over from the checkpoint they start from)."""
    augment: dict = field(default_factory=dict)
    """``resnets.data.AugmentConfig`` fields (crop_padding, translate, flip, cutout_size, random_resized_crop...)."""
    workers: int = 2
    # --- length
    batch_size: int = 128
    epochs: float | None = None
    steps: int | None = None
    """Total optimizer steps; overrides ``epochs`` when both are given (the paper counts iterations)."""
    time_budget: float | None = None
    """Wall-clock minutes: measure a few steps, then fit the schedule so the run ends in time."""
    # --- optimizer
    optimizer: str = "sgd"
    """``sgd``, or ``muon``: convolution filters take Muon's orthogonalized steps (``train.optim.MuonSGD``),
    everything else SGD with the settings below."""
    lr: float = 0.1
    lr_reference_batch: int | None = None
    """When set, ``lr`` is per this batch size and scales linearly (Goyal et al.: 0.1 per 256)."""
    lr_scaling: str = "linear"
    """How the rate follows the global batch (batch_size x world_size x accum_steps): ``linear`` is
    lr x global / (lr_reference_batch or batch_size); ``none`` uses ``lr`` as given."""
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    no_decay_norm_bias: bool = False
    """Exempt normalisation weights and all biases from weight decay."""
    norm_lr_scale: float = 1.0
    """Learning-rate multiplier for the shifts (biases) of normalisation layers (airbench: 64)."""
    muon_lr: float = 0.02
    """optimizer=muon: the filters' rate at the schedule's peak (the schedule's factor applies; batch scaling
    does not). The defaults here are Muon's reference ones (lr 0.02, momentum 0.95, 5 iterations); cifar-fast's
    measured best is in its recipe's comment (lr 0.12-0.2, momentum 0.6, 3 iterations, normalised filters)."""
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5
    """Newton-Schulz iterations per orthogonalization (airbench94_muon: 3)."""
    muon_normalize: bool = False
    """Hold each filter bank at norm sqrt(out_channels) (for convolutions followed by a norm layer)."""
    grad_clip: float | None = None
    # --- schedule (all resolved to optimizer steps)
    schedule: str = "step"
    milestones: list = field(default_factory=list)
    milestone_unit: str = "steps"
    gamma: float = 0.1
    warmup: float = 0.0
    warmup_unit: str = "steps"
    warmup_start: float | str = 0.0
    """Learning-rate factor at step 0 of the linear warm-up; ``lr``: start at ``lr`` itself, the rate of the
    reference batch, and climb to the linearly scaled rate (Goyal et al.'s gradual warm-up: at the reference
    batch there is nothing to warm up)."""
    peak_at: float = 0.25
    """one-cycle: fraction of training at which the rate peaks (after any warm-up it replaces)."""
    final_lr: float = 0.0
    """cosine/one-cycle: learning-rate factor reached at the last step."""
    error_warmup_lr: float | None = None
    """He et al. 2015 (ResNet-110): train at this rate until the training error drops below ``error_warmup_until``."""
    error_warmup_until: float = 0.8
    error_warmup_models: list = field(default_factory=list)
    """Models the error warm-up applies to (empty: all)."""
    # --- loss
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    # --- weights averaging
    ema_decay: float = 0.0
    """Exponential moving average of the weights (0 = off); evaluation and best weights use the average."""
    ema_every: int = 1
    ema_warmup_steps: int = 0
    """Copy the weights (no averaging) until this step, so the average starts from trained weights."""
    lookahead_every: int = 0
    """Lookahead (``train.optim.Lookahead``): every this many steps the weights restart from a slow
    average whose decay ramps up cubically to ``lookahead_decay``; 0 turns it off."""
    lookahead_decay: float = 0.95 ** 5
    # --- data-dependent initialisation (patch stems)
    whiten_stem: bool = False
    """Set a ``patch`` stem to the whitening of ``whiten_images`` training images' 2x2 patches and
    freeze its weights (airbench); models without a patch stem are left as they are (the run log says
    so). A resumed run keeps its checkpoint's weights."""
    whiten_images: int = 5000
    stem_bias_epochs: int | None = None
    """Train the stem's bias only for this many epochs, then freeze it (airbench: 3); null: always."""
    # --- progressive resizing (train.resolution)
    progressive_min_size: float | None = None
    """Train early steps on images downscaled to this size (pixels, at least 8; or below 1, a fraction of the
    full size), growing to the full size between the fractions ``progressive_ramp`` of the run (cheaper early
    epochs; FFCV, fast.ai DAWNBench); null: off."""
    progressive_ramp: list = field(default_factory=lambda: [0.5, 0.5])
    """[start, end] fractions of the run: ``progressive_min_size`` until start, full size from end, a
    linear ramp between (equal values: one jump)."""
    progressive_size_step: int = 4
    """Sizes on the ramp are rounded down to multiples of this (fewer shapes for oneDNN and compile)."""
    # --- adversarial training (resnets.evaluate.robustness.AdversarialTraining)
    adversarial: dict = field(default_factory=dict)
    """Empty: off. ``method`` (``pgd``: PGD-AT, ``fgsm_rs``: fast FGSM with random start), ``eps``
    (pixel units, default 8/255), ``steps`` (PGD, default 7), ``alpha`` (default 2.5 eps / steps for
    PGD, 1.25 eps for fgsm_rs); e.g. ``--set adversarial.method=fgsm_rs``."""
    # --- speed
    device: str = "cpu"
    precision: str = "fp32"
    """fp32, bf16 or fp16 (CUDA) autocast; ``auto``: bf16 where the device runs it faster than fp32
    (``resnets.precision.bf16_is_faster``), else fp32 (resolved when training starts; the run's config records
    the result)."""
    channels_last: bool = False
    grad_checkpointing: bool = False
    """Activation checkpointing per residual block (``ResNet.set_grad_checkpointing``): activation memory
    falls to about one tensor per block for about a third more compute; results are unchanged. For deep nets
    (ResNet-1202, ResNet-152 at large batches) that would not fit otherwise."""
    compile: bool = False
    compile_mode: str = "default"
    """``torch.compile`` mode when ``compile`` is on. ``reduce-overhead`` replays the training forward and
    backward as CUDA graphs: for small CIFAR nets on a GPU, whose steps are bound by kernel launches, it is
    the mode that pays (it needs a fixed batch shape, so no progressive resizing)."""
    # --- several processes (train/distributed.py, docs/distributed.md)
    accum_steps: int = 1
    """Gradient accumulation: micro-batches of ``batch_size`` per optimizer step, per process."""
    sync_bn: bool = False
    """BatchNorm statistics over the global batch across processes (SyncBatchNorm)."""
    world_size: int = 1
    """Training processes; set by the process context at start (not a recipe choice)."""
    # --- evaluation, checkpoints, logging
    eval_every: int = 1
    eval_batch_size: int = 500
    tta: str = "none"
    """Test-time augmentation of the final evaluation: none, flip, flip-translate, 10crop."""
    checkpoint_every_steps: int = 0
    """Also write last.pt every N steps inside an epoch (long epochs); 0: at epoch ends only."""
    log_every: int = 20
    seed: int = 0
    tensorboard: bool = True
    progress: bool = True

    @property
    def held_out_seed(self) -> int:
        """The seed that picks the validation hold-out (see ``split_seed``)."""
        return held_out_split({"seed": self.seed, "split_seed": self.split_seed})[1]

    # ------------------------------------------------------------------ checks
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        for item in dataclasses.fields(self):  # .inf/.nan from --set: an OverflowError later, or a NaN loss
            value = getattr(self, item.name)
            need(all(math.isfinite(v) for v in (value if isinstance(value, (list, tuple)) else [value])
                     if isinstance(v, float)), f"{item.name}={value} must be a finite number")
        need(self.batch_size >= 1, f"batch_size={self.batch_size} must be at least 1")
        need(self.accum_steps >= 1, f"accum_steps={self.accum_steps} must be at least 1")
        need(self.world_size >= 1, f"world_size={self.world_size} must be at least 1")
        need(self.lr_scaling in ("linear", "none"), f"lr_scaling={self.lr_scaling!r}: choose 'linear' or 'none'")
        need(self.epochs is not None or self.steps is not None or self.time_budget is not None,
             "set the run length: epochs=N, steps=N or time_budget=MINUTES")
        need(self.epochs is None or self.epochs > 0, f"epochs={self.epochs} must be positive")
        need(self.steps is None or self.steps >= 1, f"steps={self.steps} must be at least 1")
        need(self.time_budget is None or self.time_budget > 0, f"time_budget={self.time_budget} must be positive minutes")
        need(self.lr > 0, f"lr={self.lr} must be positive")
        need(self.optimizer in OPTIMIZERS, f"optimizer={self.optimizer!r} is unknown; choose one of {OPTIMIZERS}")
        need(self.muon_lr > 0, f"muon_lr={self.muon_lr} must be positive")
        need(0 <= self.muon_momentum < 1, f"muon_momentum={self.muon_momentum} must be in [0, 1)")
        need(self.muon_ns_steps >= 1, f"muon_ns_steps={self.muon_ns_steps} must be at least 1")
        need(0 <= self.momentum < 1, f"momentum={self.momentum} must be in [0, 1)")
        need(not self.nesterov or self.momentum > 0, "nesterov=true needs momentum > 0")
        need(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        need(self.schedule in SCHEDULES, f"schedule={self.schedule!r} is unknown; choose one of {SCHEDULES}")
        need(self.milestone_unit in UNITS, f"milestone_unit={self.milestone_unit!r}: choose one of {UNITS}")
        need(self.warmup_unit in UNITS, f"warmup_unit={self.warmup_unit!r}: choose one of {UNITS}")
        need(all(isinstance(m, (int, float)) and m > 0 for m in self.milestones),
             f"milestones={self.milestones} must be positive numbers ({self.milestone_unit})")
        need(list(self.milestones) == sorted(self.milestones), f"milestones={self.milestones} must be increasing")
        need(0 < self.gamma <= 1, f"gamma={self.gamma} must be in (0, 1]")
        need(self.warmup >= 0, f"warmup={self.warmup} must be >= 0")
        need(self.warmup_start == "lr" or (not isinstance(self.warmup_start, str) and 0 <= self.warmup_start <= 1),
             f"warmup_start={self.warmup_start!r} is a factor in [0, 1], or 'lr' (start at the unscaled rate)")
        need(0 < self.peak_at < 1, f"peak_at={self.peak_at} must be a fraction in (0, 1)")
        need(0 <= self.final_lr <= 1, f"final_lr={self.final_lr} is a factor of lr in [0, 1]")
        need(0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        need(self.mixup_alpha >= 0 and self.cutmix_alpha >= 0, "mixup_alpha and cutmix_alpha must be >= 0")
        need(0 <= self.mix_prob <= 1, f"mix_prob={self.mix_prob} must be in [0, 1]")
        need(0 <= self.ema_decay < 1, f"ema_decay={self.ema_decay} must be in [0, 1) (0 turns EMA off)")
        need(self.ema_every >= 1, f"ema_every={self.ema_every} must be at least 1")
        need(self.lookahead_every >= 0, f"lookahead_every={self.lookahead_every} must be >= 0 (0 turns it off)")
        need(0 <= self.lookahead_decay < 1, f"lookahead_decay={self.lookahead_decay} must be in [0, 1)")
        need(self.whiten_images >= 1, f"whiten_images={self.whiten_images} must be at least 1")
        need(self.stem_bias_epochs is None or self.stem_bias_epochs >= 0,
             f"stem_bias_epochs={self.stem_bias_epochs} must be >= 0 (or null)")
        need(self.norm_lr_scale > 0, f"norm_lr_scale={self.norm_lr_scale} must be positive")
        need(self.precision in PRECISION_CHOICES,
             f"precision={self.precision!r} is unknown; choose one of {PRECISION_CHOICES}")
        need(self.compile_mode in COMPILE_MODES,
             f"compile_mode={self.compile_mode!r} is unknown; choose one of {COMPILE_MODES}")
        need(not (self.compile and self.compile_mode in CUDA_GRAPH_MODES
                  and self.progressive_min_size is not None),
             f"compile_mode={self.compile_mode} records CUDA graphs for one image size; progressive resizing "
             "changes it: set progressive_min_size=null or compile_mode=default")
        need(self.tta in TTA_MODES, f"tta={self.tta!r} is unknown; choose one of {TTA_MODES}")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip={self.grad_clip} must be positive (or null)")
        need(self.eval_every >= 1, f"eval_every={self.eval_every} must be at least 1")
        need(self.log_every >= 1, f"log_every={self.log_every} must be at least 1")
        need(self.workers >= 0, f"workers={self.workers} must be >= 0 (0 loads in the training process)")
        need(self.eval_batch_size >= 1, f"eval_batch_size={self.eval_batch_size} must be at least 1")
        need(self.checkpoint_every_steps >= 0,
             f"checkpoint_every_steps={self.checkpoint_every_steps} must be >= 0 (0: only at epoch ends)")
        need(self.val_split >= 0, f"val_split={self.val_split} must be >= 0")
        need(self.error_warmup_lr is None or self.error_warmup_lr > 0, "error_warmup_lr must be positive (or null)")
        need(0 < self.error_warmup_until <= 1, "error_warmup_until is a training error in (0, 1]")
        size = self.progressive_min_size
        number = isinstance(size, (int, float)) and not isinstance(size, bool)
        pixels = number and size >= 8 and float(size).is_integer()
        fraction = number and 0 < size < 1
        if size is not None:
            shown = f"{size:g}" if number else repr(size)
            need(pixels or fraction, f"progressive_min_size={shown} must be whole pixels (at least 8) or a fraction "
                                     "of the full size in (0, 1), e.g. 20 or 0.625 (or null: off)")
        ramp = self.progressive_ramp
        need(len(ramp) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ramp)
             and 0 <= ramp[0] <= ramp[1] <= 1,
             f"progressive_ramp={ramp} must be [start, end] fractions of the run with 0 <= start <= end <= 1")
        need(self.progressive_size_step >= 1, f"progressive_size_step={self.progressive_size_step} must be >= 1")
        self._validate_adversarial(need)
        try:
            from ..data import AugmentConfig

            AugmentConfig.from_dict(self.augment)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _validate_adversarial(self, need: Callable[[bool, str], None]) -> None:
        adv = self.adversarial
        if not adv:
            return
        from ..evaluate.robustness import ADV_TRAINING, parse_epsilons

        unknown = sorted(set(adv) - set(ADVERSARIAL_KEYS))
        need(not unknown, f"adversarial.{unknown[0] if unknown else ''} is unknown; keys: {', '.join(ADVERSARIAL_KEYS)}")
        need(adv.get("method") in ADV_TRAINING,
             f"adversarial.method={adv.get('method')!r}: set adversarial.method={' or '.join(ADV_TRAINING)}")
        for key in ("eps", "alpha"):
            value = adv.get(key)
            if isinstance(value, str):  # "8/255" from YAML or --set
                try:
                    [value] = parse_epsilons(value)
                except ValueError:
                    pass  # reported just below, with the key's name
                else:
                    adv[key] = value
            need(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1),
                 f"adversarial.{key}={value!r} must be a number in (0, 1] in pixel units (e.g. 8/255)")
        steps = adv.get("steps")
        need(steps is None or (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1),
             f"adversarial.steps={steps!r} must be a whole number >= 1")

    # -------------------------------------------------------------- derived
    @property
    def global_batch(self) -> int:
        """Images per optimizer step over all processes and accumulated micro-batches."""
        return self.batch_size * self.world_size * self.accum_steps

    @property
    def warmup_start_factor(self) -> float:
        """``warmup_start`` as a factor of ``base_lr`` (``lr``: lr / base_lr, at most 1)."""
        if self.warmup_start == "lr":
            return min(1.0, self.lr / self.base_lr) if self.base_lr > 0 else 1.0
        return float(self.warmup_start)

    @property
    def base_lr(self) -> float:
        """``lr`` scaled linearly to the global batch (see ``lr_scaling``); one process without
        accumulation and no ``lr_reference_batch`` trains at ``lr`` itself."""
        if self.lr_scaling == "none":
            return self.lr
        return self.lr * self.global_batch / (self.lr_reference_batch or self.batch_size)

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        if self.epochs is None:
            raise ConfigError("the run length is unresolved: set epochs or steps (time_budget resolves it at start)")
        return max(1, int(math.ceil(self.epochs * steps_per_epoch)))

    def to_steps(self, value: float, unit: str, steps_per_epoch: int) -> int:
        return int(round(value * steps_per_epoch)) if unit == "epochs" else int(round(value))

    # ----------------------------------------------------------- serialise
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        values = _drop_retired(dict(values), source)
        _check_keys(values, source)
        hints = typing.get_type_hints(cls)
        coerced = {key: _coerce(key, value, hints[key], source) for key, value in values.items()}
        return cls(**coerced)

    def replace(self, **changes: Any) -> "TrainConfig":
        return TrainConfig.from_dict({**self.to_dict(), **changes})


_FIELD_NAMES = [f.name for f in dataclasses.fields(TrainConfig)]
MAPPING_KEYS = ("augment", "model_options", "adversarial")
"""Options that are mappings: ``--set KEY.SUB=V`` sets one entry and overrides merge entry by entry."""


_RETIRED_KEYS = {
    "bias_lr_scale": (1.0, "it was replaced by norm_lr_scale, which scales the learning rate of norm shifts only"),
}
"""Options older runs may hold: ``key -> (value that meant 'off', why it went)``. A run saved with the 'off'
value resumes unchanged; any other value cannot be honoured and is refused rather than silently ignored."""


def _drop_retired(values: dict[str, Any], source: str) -> dict[str, Any]:
    for key, (neutral, why) in _RETIRED_KEYS.items():
        if key in values:
            value = values.pop(key)
            if value != neutral:
                raise ConfigError(f"{key}={value} in {source} is no longer supported: {why}; "
                                  f"set {key} to {neutral} or remove it")
    return values


def _check_keys(values: Mapping[str, Any], source: str) -> None:
    unknown = [key for key in values if key not in _FIELD_NAMES]
    if unknown:
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(key, _FIELD_NAMES, n=1)
            parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown training option {', '.join(parts)} in {source}; valid keys: "
                          f"{', '.join(_FIELD_NAMES)}")


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check a YAML value against the field type (int accepted for float; '1e-4' strings parsed)."""
    if key == "normalization":
        return _normalization(value, source)
    if key == "warmup_start" and isinstance(value, str):
        if value == "lr":
            return value
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"warmup_start={value!r} in {source}: give a factor in [0, 1], or 'lr' (start at the "
                              "unscaled rate)") from None
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} in {source} cannot be null")
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            raise TypeError
        if origin is int:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, float) and not value.is_integer():
                raise TypeError
            return int(float(value)) if isinstance(value, str) else int(value)
        if origin is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if origin is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if origin is list:
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return list(value)
        if origin is dict:
            if not isinstance(value, Mapping):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} in {source} is not a valid {getattr(base, '__name__', base)}") from None
    return value


def _normalization(value: Any, source: str) -> str | list:
    if isinstance(value, str):
        return value
    try:
        mean, std = value
        pair = [[float(v) for v in mean], [float(v) for v in std]]
        if len(pair[0]) == len(pair[1]) == 3 and all(v > 0 for v in pair[1]):
            return pair
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"normalization={value!r} in {source}: give auto, a dataset name (cifar10, imagenet, ...) or "
                      "[[mean_r, mean_g, mean_b], [std_r, std_g, std_b]] with positive stds")


# ------------------------------------------------------------------ recipes
def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        if path.is_dir():
            raise ConfigError(f"recipe {text!r} is a folder; pass a recipe .yaml file or a shipped recipe's name "
                              "(`resnets train --list-recipes`)")
        if not path.is_file():
            raise ConfigError(f"recipe file {text!r} does not exist")
        return path
    candidate = RECIPE_DIR / f"{text}.yaml"
    if not candidate.is_file():
        close = difflib.get_close_matches(text, list_recipes(), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown recipe {text!r}.{hint} Shipped recipes: {', '.join(list_recipes())}; "
                          "or pass a path to a .yaml file")
    return candidate


def load_recipe(name_or_path: str | os.PathLike, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's raw values (not yet validated), with ``recipe`` set to its name.

    ``extends: OTHER`` (a shipped name, or a path relative to this file) starts from that recipe's values and
    overrides them with this file's, the way ``--set`` does; ``description`` and ``expected`` are this file's
    own, since the accuracy a variant reaches is its own claim."""
    path = recipe_path(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {str(path)!r} is not a text file; a recipe is YAML (see `resnets train "
                          "--list-recipes`)") from None
    if not isinstance(values, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping of option: value")
    base_name = values.pop("extends", None)
    _check_keys(values, f"recipe {path.name}")
    if base_name is not None:
        if not isinstance(base_name, str) or not base_name:
            raise ConfigError(f"recipe {path.name}: extends must name a recipe, not {base_name!r}")
        chain = (*_chain, path.resolve())
        relative = path.parent / base_name
        base_path = recipe_path(relative if relative.suffix in (".yaml", ".yml") else base_name)
        if base_path.resolve() in chain:
            cycle = " -> ".join(p.stem for p in (*chain, base_path))
            raise ConfigError(f"recipe {path.name} extends itself through {cycle}; break the cycle")
        base = load_recipe(base_path, chain)
        for own in ("recipe", "description", "expected"):
            base.pop(own, None)
        values = apply_overrides(base, values)
    values.setdefault("recipe", path.stem)
    return values


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["lr=0.2", "augment.flip=false"]`` -> ``{"lr": 0.2, "augment": {"flip": False}}`` (values are YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like key=value (for example --set lr=0.05)")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if "." in key:
            head, sub = key.split(".", 1)
            if head not in MAPPING_KEYS:
                _check_keys({head: None}, "--set")
                raise ConfigError(f"--set {key}: only augment.*, model_options.* and adversarial.* take dotted keys")
            out.setdefault(head, {})[sub] = value
        else:
            _check_keys({key: None}, "--set")
            out[key] = value
    return out


def apply_overrides(values: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge overrides into recipe values; the ``MAPPING_KEYS`` options merge key by key."""
    merged = dict(values)
    for key, value in overrides.items():
        if key in MAPPING_KEYS and isinstance(value, Mapping):
            merged[key] = {**dict(merged.get(key) or {}), **dict(value)}
        else:
            merged[key] = value
    return merged


def held_out_split(config: Mapping[str, Any]) -> tuple[float | int, int]:
    """(val_split, seed) a run drew its validation hold-out with, from its saved config (a checkpoint's
    ``config`` metadata, possibly written before ``split_seed`` existed), so a later command can score the very
    images the run never trained on."""
    seed = config.get("split_seed")
    return config.get("val_split", 0.1), int(config.get("seed", 0) if seed is None else seed)


def resolve_config(recipe: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Recipe (name or path) + overrides -> a validated ``TrainConfig``.

    A run length in epochs among the overrides replaces a recipe's length in steps (``steps`` would otherwise
    win without a word); both among the overrides is an error. Another ``model`` than the recipe's drops the
    recipe's ``model_options`` (the narrow widths of cifar-fast-muon's net made ``--model resnet20`` a 1.7M-parameter
    net); options given with it are kept."""
    values = load_recipe(recipe) if recipe else {}
    overrides = dict(overrides or {})
    if overrides.get("model") not in (None, values.get("model")):
        values.pop("model_options", None)
    if overrides.get("epochs") is not None:
        if overrides.get("steps") is not None:
            raise ConfigError(f"epochs={overrides['epochs']:g} and steps={overrides['steps']} both set the run "
                              "length; give one")
        overrides["steps"] = None
    values = apply_overrides(values, overrides)
    values.setdefault("split_seed", 0)  # a new run: the same hold-out whatever its training seed
    return TrainConfig.from_dict(values, source=f"recipe {recipe}" if recipe else "config")
