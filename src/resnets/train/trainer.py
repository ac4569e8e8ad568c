"""The training loop: one ``Trainer`` for every recipe, resumable exactly, ready for more processes.

    from resnets.train import resolve_config, train
    result = train(resolve_config("cifar-fast", {"data": "path/to/images"}), out_dir="runs/fast")

Extension points (so adversarial training, distillation, fine-tuning and logging plug in without
editing the loop):

- ``loss_fn(trainer, images, targets) -> (loss, logits)`` replaces the forward + loss
  (``targets`` are int labels, or soft targets N x C when mixup/cutmix/label smoothing is on);
- ``param_groups`` (list of optimizer group dicts, or ``callable(model) -> list``) replaces the
  default decay / no-decay split; a group's ``lr_scale`` multiplies the scheduled rate;
- ``callbacks``: objects with any of the ``Callback`` methods, called per batch, after backward,
  per step and per epoch;
- ``process``: a ``ProcessContext`` (rank, world size, metric reduction, stop agreement).

A run folder holds ``config.yaml``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` (the
whole training state, every epoch), ``best.safetensors`` (weights + spec + classes +
normalisation, by validation accuracy), ``summary.json`` and, when TensorBoard is installed,
``tensorboard/``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.folder import within_image_tree
from ..evaluate.metrics import EvalResult, evaluate, evaluate_with_plain
from ..evaluate.robustness import AdversarialTraining
from ..evaluate.tta import TTA_VIEW_COUNTS, TTA_WITH_PLAIN_VIEW
from ..jsonfile import to_json, write_json
from ..precision import autocast_context, resolve_precision, slow_bf16_reason
from ..weights import CheckpointError, atomic_write, save_weights
from .checkpoint import capture_rng_state, load_training_checkpoint, restore_rng_state, save_training_checkpoint
from .config import CUDA_GRAPH_MODES, ConfigError, TrainConfig
from .mixing import mix_batch, soft_cross_entropy
from .optim import (LRSchedule, Lookahead, ModelEMA, build_optimizer, param_groups as default_param_groups,
                    set_learning_rate)
from .distributed import forward_backward, job_id
from .process import ProcessContext
from .resolution import ResolutionSchedule, resize_batch

__all__ = ["Callback", "NonFiniteLossError", "RunResult", "Trainer", "resume", "train"]

LossFn = Callable[["Trainer", torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class Callback:
    """Hooks into the loop; override the ones you need. ``trainer`` gives access to everything."""

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...

    def on_batch(self, trainer: "Trainer", images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return replaced (images, labels) (e.g. adversarial examples), or None to keep them."""

    def on_after_backward(self, trainer: "Trainer") -> None:
        """Gradients are populated (unscaled only for fp32/bf16): gradient-flow logging goes here."""

    def on_step_end(self, trainer: "Trainer", step: int, loss: torch.Tensor) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer", result: "RunResult") -> None: ...


@dataclass
class RunResult:
    """What a finished run reports (also written as ``summary.json``)."""

    run_dir: Path | None
    config: TrainConfig
    best_val_top1: float | None
    best_epoch: int | None
    final: EvalResult | None
    """Final evaluation of the final weights (EMA if on) with the recipe's test-time augmentation."""
    epochs: int
    steps: int
    train_seconds: float
    history: list[dict] = field(default_factory=list)
    model: nn.Module | None = None

    @property
    def final_val_top1(self) -> float | None:
        return self.final.top1 if self.final is not None else None

    def summary(self) -> dict:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None, "recipe": self.config.recipe,
            "model": self.config.model, "epochs": self.epochs, "steps": self.steps,
            "train_minutes": self.train_seconds / 60, "best_val_top1": self.best_val_top1, "best_epoch": self.best_epoch,
            "final_val_top1": self.final_val_top1,
            "final_val_top1_interval": list(self.final.top1_interval) if self.final and self.final.top1_interval else None,
            "final_val_top5": self.final.top5 if self.final else None,
            "final_val_loss": self.final.loss if self.final else None, "final_tta": self.config.tta,
            "expected": self.config.expected,
        }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


PROBE_BUDGET_SHARE = 0.03  # the time-budget probe's timed steps take at most about this share of the budget


def probe_step_count(budget_seconds: float, warm_step_seconds: float, sizes: list[int], steps_per_epoch: int) -> int:
    """How many steps the time-budget probe times at each size: 6 where the budget affords them, down to 3 where
    6 would take more than ``PROBE_BUDGET_SHARE`` of it (on a 2-core CPU without AVX-512, with 2.5 s steps at
    32 px, timing 6 steps at 20 and 32 px took 29 s: a sixth of a 3-minute budget). ``warm_step_seconds`` is
    the last warm-up step at the first size; larger sizes are costed by their pixel count. The re-fits four
    times an epoch correct the rougher first estimate fewer steps give."""
    per_round = sum(warm_step_seconds * (size / sizes[0]) ** 2 for size in sizes)
    affordable = int(PROBE_BUDGET_SHARE * budget_seconds / max(per_round, 1e-9))
    return max(3, min(6, steps_per_epoch, affordable))


def training_images_metadata(data: object) -> dict[str, str]:
    """Where a run's training images are (absolute) and their fingerprint, recorded in its checkpoints so that
    eval can tell them wherever it runs, a copy of them too; empty for CIFAR, whose test set is separate."""
    from ..data.folder import folder_fingerprint
    from ..data.sources import training_folder

    trained_on = training_folder(data) if isinstance(data, (str, os.PathLike)) else None
    fingerprint = folder_fingerprint(trained_on) if trained_on is not None else None
    return {**({"training_folder": str(trained_on)} if trained_on is not None else {}),
            **({"training_fingerprint": fingerprint} if fingerprint is not None else {})}


class Trainer:
    """Trains one model under one ``TrainConfig``; see the module docstring for the extension points."""

    def __init__(self, config: TrainConfig, out_dir: str | os.PathLike | None = None, *, splits: Any = None,
                 model: nn.Module | None = None, loss_fn: LossFn | None = None,
                 param_groups: Sequence[dict] | Callable[[nn.Module], Sequence[dict]] | None = None,
                 callbacks: Iterable[Callback] = (), process: ProcessContext | None = None) -> None:
        self.process = process or ProcessContext()
        self.config = config = self.process.configure(config)  # records world_size (lr scaling follows it)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.callbacks = list(callbacks)
        if config.adversarial:  # the recipe option; an explicitly passed AdversarialTraining is not doubled
            if not any(isinstance(c, AdversarialTraining) for c in self.callbacks):
                self.callbacks.append(AdversarialTraining(**config.adversarial))  # keys validated by the config
        self.loss_fn = loss_fn
        # what the caller supplied that a run folder cannot rebuild: resume() needs them given again
        self._resume_needs = ([f"loss_fn ({type(loss_fn).__name__})"] if loss_fn is not None else []) + \
            (["param_groups"] if param_groups is not None else [])
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA GPU is available; use --device cpu")
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("precision=fp16 needs a CUDA device; on CPU use precision=bf16")
        if config.precision == "auto":  # the config (and so the checkpoint) records what runs
            self.config = config = config.replace(precision=resolve_precision("auto", self.device))
        elif config.precision == "bf16" and (reason := slow_bf16_reason(self.device)):
            warnings.warn(f"precision=bf16 on {self.device.type}: {reason}, so training in bf16 is likely slower than "
                          "in fp32. Use --precision fp32 or auto", UserWarning, stacklevel=2)
        if isinstance(config.data, str) and config.data and os.path.exists(config.data) \
                and not os.path.isabs(config.data):  # recorded absolute: a resume may start in another folder
            self.config = config = config.replace(data=os.path.abspath(config.data))
        _seed_everything(config.seed)
        if self.out_dir is not None and config.data and within_image_tree(self.out_dir, str(config.data), True):
            raise ConfigError(f"the run folder {self.out_dir} is inside the data folder {config.data}: the next scan "
                              "of that folder would read the run as a class. Choose a run folder outside it (a run "
                              "already there can be moved out and resumed from its new place)")

        self.splits = splits if splits is not None else self._load_data()
        self._training_images = training_images_metadata(config.data)  # with the data, before a budget's clock
        self._setup_start = time.perf_counter()  # a time budget counts from here: setup after the data load
        self.classes = list(self.splits.classes)
        self.num_classes = len(self.classes)
        self.model = model if model is not None else self._build_model()
        if config.whiten_stem:
            self._whiten_stem()
        self.model.to(self.device)
        if config.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if config.grad_checkpointing:
            if config.sync_bn and self.process.world_size > 1:
                raise ConfigError("grad_checkpointing with sync_bn would repeat every BatchNorm's cross-process "
                                  "reduction inside backward, interleaved with DDP's gradient reductions: use one "
                                  "of the two (per-process BatchNorm, or no checkpointing)")
            if not hasattr(self.model, "set_grad_checkpointing"):
                raise ConfigError(f"grad_checkpointing=true needs a model with set_grad_checkpointing (a resnets "
                                  f"ResNet or a timm model); {type(self.model).__name__} has none: set it to false")
            self.model.set_grad_checkpointing(True)
        self._wrap_for_training()
        self._cuda_graphs = config.compile and self.device.type == "cuda" and config.compile_mode in CUDA_GRAPH_MODES

        groups = param_groups(self.model) if callable(param_groups) else param_groups
        if groups is None:
            groups = default_param_groups(self.model, config.weight_decay, config.no_decay_norm_bias,
                                          config.norm_lr_scale, orthogonal_filters=config.optimizer == "muon")
        self.optimizer = build_optimizer(groups, config)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.ema = ModelEMA(self.model, config.ema_decay, config.ema_warmup_steps) if config.ema_decay > 0 else None
        self.eval_model = copy.deepcopy(self.model) if self.ema is not None else self.model
        self.lookahead = (Lookahead(self.model, config.lookahead_every, config.lookahead_decay)
                          if config.lookahead_every else None)

        # one loader batch per optimizer step; forward_backward splits it into accum_steps micro-batches
        self.train_loader = self._make_loader(self.splits.train, config.batch_size * config.accum_steps, train=True)
        self.val_loader = (self._make_loader(self.splits.val, config.eval_batch_size, train=False)
                           if self.splits.val is not None and len(self.splits.val) else None)
        self.steps_per_epoch = len(self.train_loader)
        self.resolution = ResolutionSchedule.from_setting(int(self.splits.image_size), config.progressive_min_size,
                                                          *config.progressive_ramp, config.progressive_size_step)
        self._probe_size: int | None = None  # the size the time-budget probe is timing

        # progress state (all of it goes into last.pt)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_val_top1: float | None = None
        self.best_epoch: int | None = None
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.error_warmup_active = bool(config.error_warmup_lr) and (
            not config.error_warmup_models or config.model in config.error_warmup_models)
        self._reset_epoch_sums()
        # a time budget fits the length at start (fit_time_budget): a recipe's steps or epochs are its nominal length
        self.total_steps = config.total_steps(self.steps_per_epoch) if config.time_budget is None else 0
        self.schedule = (LRSchedule.from_config(config, self.steps_per_epoch, self.total_steps)
                         if self.total_steps else None)
        self.lr = config.base_lr
        self.budget_fit: dict | None = None
        self._final_result: EvalResult | None = None  # the final TTA result, when the last epoch's pass made it
        if self.schedule is not None and any(m >= self.total_steps for m in self.schedule.milestones):
            warnings.warn(f"milestones {list(self.schedule.milestones)} (steps) lie at or beyond the run's end "
                          f"({self.total_steps} steps): the learning rate never drops there. Shorten milestones "
                          "with --set milestones=[...] (or use --time-budget, which scales them)", UserWarning)
        if self.schedule is not None and self.schedule.warmup_steps >= self.total_steps > 1:
            warnings.warn(f"the warm-up ({self.schedule.warmup_steps} steps) is as long as the run or longer "
                          f"({self.total_steps} steps): the learning rate never reaches lr={config.base_lr:g}. "
                          "Shorten it (resnets train: --set warmup=N, in warmup_unit steps or epochs; resnets finetune: "
                          "--warmup-epochs)", UserWarning)
        self._writer = None
        self._resumed = False

    # ------------------------------------------------------------ set-up
    def _load_data(self):
        from ..data import DataError, load_data

        c = self.config
        try:
            return load_data(c.data, val_split=c.val_split, seed=c.held_out_seed, image_size=c.image_size,
                             normalization=c.normalization)
        except DataError as exc:
            raise ConfigError(str(exc)) from None

    def _build_model(self) -> nn.Module:
        from ..factory import create_model

        return create_model(self.config.model, num_classes=self.num_classes, **self.config.model_options)

    def _make_loader(self, dataset, batch_size: int, train: bool):
        from ..data import make_loader

        c = self.config
        return make_loader(dataset, batch_size=batch_size, train=train, augment=c.augment if train else None,
                           device=self.device, seed=c.seed, rank=self.process.rank, world_size=self.process.world_size,
                           drop_last=train, workers=c.workers, channels_last=c.channels_last,
                           mean=self.splits.mean, std=self.splits.std)

    def _whiten_stem(self) -> None:
        """airbench's data-dependent stem: whiten the training images' 2x2 patches, then freeze it."""
        c, train = self.config, self.splits.train
        init = getattr(self.model, "init_patch_whitening", None)
        if init is None or getattr(self.spec, "stem", None) != "patch":
            self.log(f"whiten_stem: {c.model} has no patch stem to whiten (resnet_airbench has one); "
                     "its stem keeps the usual initialisation")
            return
        if not getattr(train, "in_memory", False):
            raise ConfigError("whiten_stem=true needs small images held in memory (32-64 px); these stream from "
                              "files: set whiten_stem=false")
        mean = torch.tensor(self.splits.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.splits.std).view(1, -1, 1, 1)
        images = (train.images[:c.whiten_images].float() / 255.0 - mean) / std
        try:
            init(images)
        except ValueError as exc:
            raise ConfigError(f"whiten_stem: {exc}") from None
        self.model.conv1.weight.requires_grad_(False)

    def _freeze_stem_bias(self) -> None:
        """``stem_bias_epochs``: the stem's bias trains for that many epochs, then stays fixed."""
        bias = getattr(getattr(self.model, "conv1", None), "bias", None)
        if self.config.stem_bias_epochs is not None and isinstance(bias, nn.Parameter):
            bias.requires_grad_(self.epoch < self.config.stem_bias_epochs)

    def _reset_epoch_sums(self) -> None:
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, seen
        self._bad_loss = torch.zeros((), dtype=torch.bool, device=self.device)
        self.error_window = torch.zeros(2, dtype=torch.float64, device=self.device)  # wrong, seen since last check

    @property
    def is_main(self) -> bool:
        return self.process.is_main

    def log(self, message: str) -> None:
        if self.is_main and self.config.progress is not None:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    # ------------------------------------------------------------ metadata
    @property
    def spec(self):
        return getattr(self.model, "spec", None)

    def _wrap_for_training(self) -> None:
        """``forward_model``: the model under DDP (several processes) and ``torch.compile`` (when asked)."""
        self.forward_model = self.process.wrap_model(self.model)
        if self.config.compile:
            self.forward_model = torch.compile(self.forward_model, mode=self.config.compile_mode)
        self._wrapped_trainable = self._trainable_parameter_names()

    def _trainable_parameter_names(self) -> frozenset[str]:
        return frozenset(name for name, p in self.model.named_parameters() if p.requires_grad)

    def _rewrap_if_trainable_set_changed(self) -> None:
        """DDP all-reduces only the parameters that required grad when it was built: a callback that unfreezes
        layers (progressive unfreezing) would leave their gradients local and the processes' weights apart."""
        if self.process.world_size > 1 and self._trainable_parameter_names() != self._wrapped_trainable:
            self._wrap_for_training()

    def weights_metadata(self) -> dict[str, Any]:
        """What ``best.safetensors`` stores beside the weights (for eval/predict/fine-tuning)."""
        return {"classes": self.classes, "mean": list(self.splits.mean), "std": list(self.splits.std),
                "image_size": int(self.splits.image_size), "model_name": self.config.model,
                "recipe": self.config.recipe, "config": self.config.to_dict(), **self._training_images}

    # ------------------------------------------------------------ the step
    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.loss_fn is not None:
            return self.loss_fn(self, images, targets)
        logits = self.forward_model(images)
        if targets.ndim == 2:
            return soft_cross_entropy(logits, targets), logits
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.config.label_smoothing), logits

    def current_lr_factor(self) -> float:
        if self.error_warmup_active:
            return self.config.error_warmup_lr / self.config.base_lr
        return self.schedule(self.step)

    def train_image_size(self) -> int:
        """The size this step trains at (progressive resizing; the full size when it is off)."""
        if self._probe_size is not None:
            return self._probe_size
        return self.resolution.size_at(self.step, self.total_steps)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.resolution.active:
            images = resize_batch(images, self.train_image_size())
        for callback in self.callbacks:
            replaced = callback.on_batch(self, images, labels)
            if replaced is not None:
                images, labels = replaced
        targets: torch.Tensor = labels
        if c.mixup_alpha > 0 or c.cutmix_alpha > 0:
            images, targets = mix_batch(images, labels, self.num_classes, mixup_alpha=c.mixup_alpha,
                                        cutmix_alpha=c.cutmix_alpha, probability=c.mix_prob,
                                        smoothing=c.label_smoothing,
                                        seed_parts=(c.seed, self.epoch, self.batch_in_epoch, self.process.rank))
        self.lr = set_learning_rate(self.optimizer, c.base_lr, self.current_lr_factor())
        self.optimizer.zero_grad(set_to_none=True)
        if self._cuda_graphs:  # a new step: the previous step's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        loss, logits = forward_backward(self, images, targets)  # accum_steps micro-batches (distributed.py)
        self.step_loss = loss.detach()  # for callbacks; read (a device sync) only by those that record this step
        for callback in self.callbacks:
            callback.on_after_backward(self)
        if c.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None and (self.step + 1) % c.ema_every == 0:
            self.ema.update(self.model, self.step)
        if self.lookahead is not None and self.total_steps:  # (not during a time-budget probe)
            self.lookahead.step(self.model, self.step, self.total_steps)
        with torch.no_grad():
            loss_value = loss.detach().float()
            wrong = (logits.detach().argmax(1) != labels).sum()
            count = labels.shape[0]
            self._bad_loss |= ~torch.isfinite(loss_value)
            self.epoch_sums += torch.stack([loss_value.double() * count, (count - wrong).double(),
                                            torch.tensor(float(count), dtype=torch.float64, device=self.device)])
            self.error_window += torch.stack([wrong.double(), torch.tensor(float(count), dtype=torch.float64,
                                                                           device=self.device)])
        return loss_value

    # ------------------------------------------------------------ stop decisions
    def check_finite(self) -> None:
        """Stop every process when any saw a non-finite loss; the last checkpoint is left as it was."""
        if self.process.any_true(bool(self._bad_loss)):
            where = f" (last good checkpoint: {self.out_dir / 'last.pt'})" if self.out_dir and (
                self.out_dir / "last.pt").exists() else " (no checkpoint had been written yet)"
            raise NonFiniteLossError(
                f"training stopped: the loss became non-finite (NaN or inf) by step {self.step} of epoch "
                f"{self.epoch}{where}. Lower the learning rate (lr={self.config.lr}), set grad_clip, or use "
                f"precision=fp32/bf16 instead of fp16, in a new run (a resumed run keeps its settings, so it would "
                f"diverge again at the same step).")

    def update_error_warmup(self) -> None:
        """He et al.'s ResNet-110 warm-up ends once the training error since the last check is below the bar."""
        if not self.error_warmup_active:
            return
        window = self.process.reduce_sum(self.error_window.clone())
        wrong, seen = float(window[0]), float(window[1])
        self.error_window.zero_()
        if seen and wrong / seen < self.config.error_warmup_until:
            self.error_warmup_active = False
            self.log(f"step {self.step}: training error {wrong / seen:.1%} < {self.config.error_warmup_until:.0%}, "
                     f"warm-up at lr {self.config.error_warmup_lr} ends; lr {self.config.base_lr} from now on")

    # ------------------------------------------------------------ time budget
    def fit_time_budget(self) -> None:
        """Measure a few steps (then undo them), and set the run length so it ends within the budget."""
        c = self.config
        spe = self.steps_per_epoch
        nominal = c.total_steps(spe) if (c.epochs is not None or c.steps is not None) else None
        budget = c.time_budget * 60.0
        probe_start = time.perf_counter()
        model_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        ema_state = {k: v.clone() for k, v in self.ema.state.items()} if self.ema else None
        scaler_state = copy.deepcopy(self.scaler.state_dict())
        rng = capture_rng_state()
        self.schedule = LRSchedule("constant", 1)
        saved_active = self.error_warmup_active
        self.error_warmup_active = False
        batches = iter(self.train_loader)
        self.train_loader.set_epoch(0)

        def timed_step() -> float:
            nonlocal batches
            try:
                images, labels = next(batches)
            except StopIteration:
                batches = iter(self.train_loader)
                images, labels = next(batches)
            start = time.perf_counter()
            float(self.train_step(images, labels))
            return time.perf_counter() - start

        sizes = self.resolution.probe_sizes()  # one size unless progressive resizing
        measured: dict[int, float] = {}
        timed = 0
        for position, size in enumerate(sizes):
            self._probe_size = size
            warm = [timed_step() for _ in range(2 if position == 0 else 1)]  # first steps build kernels
            if position == 0:  # every rank runs rank 0's count: the steps are collectives under DDP
                timed = self.process.broadcast_int(probe_step_count(budget, warm[-1], sizes, spe))
            measured[size] = float(np.median([timed_step() for _ in range(timed)]))
        self._probe_size = None
        seconds_by_size = self.resolution.interpolate_step_seconds(measured)
        step_seconds = self.resolution.mean_step_seconds(seconds_by_size)
        eval_seconds = 0.0
        if self.val_loader is not None:
            images, _ = next(iter(self.val_loader))
            self.eval_model.eval()

            def timed_forward() -> float:
                start = time.perf_counter()
                float(self.eval_model(images)[0, 0])  # reading a value waits for a GPU to finish
                return time.perf_counter() - start

            # the slower of two forwards: one alone read the final pass of cifar-fast-muon 11-19% low on a 2-core
            # CPU whose forwards of the same batch varied by that much (benchmarks/final_pass_estimate.py)
            with torch.no_grad(), autocast_context(self.device, c.precision):
                batch_seconds = max(timed_forward() for _ in range(2))
            self.eval_model.train()
            eval_seconds = batch_seconds * len(self.val_loader)
        # undo the probe
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        if self.ema:
            self.ema.load_state_dict(ema_state)
        self.scaler.load_state_dict(scaler_state)
        restore_rng_state(rng)
        self.error_warmup_active = saved_active
        self._reset_epoch_sums()
        views = self._final_pass_views()
        final_eval = eval_seconds * views
        per_epoch = spe * step_seconds + eval_seconds / c.eval_every
        # what the budget already spent before the first step: model and loader setup, whitening, this probe
        setup_seconds = time.perf_counter() - self._setup_start
        # per_epoch holds the evaluations of whole epochs only; the run's last one is the final pass
        available = budget * 0.97 - final_eval - self.elapsed - setup_seconds
        total = max(1, int(available / per_epoch * spe)) if available > 0 else 1
        total = self.process.broadcast_int(total)  # every rank runs rank 0's fitted length
        nominal_schedule = LRSchedule.from_config(c, spe, nominal or total)
        fitted = nominal_schedule.scaled_to(total) if nominal else nominal_schedule
        self.config = c.replace(steps=total, epochs=None, milestones=list(fitted.milestones), milestone_unit="steps",
                                warmup=fitted.warmup_steps, warmup_unit="steps", time_budget=c.time_budget)
        self.total_steps = total
        self.schedule = LRSchedule.from_config(self.config, spe, total)
        self.budget_fit = {"step_seconds": step_seconds, "seconds_by_size": seconds_by_size,
                           "probed_sizes": sorted(measured), "probe_steps": timed,
                           "eval_seconds": eval_seconds, "nominal_steps": nominal,
                           "fitted_steps": total, "fitted_epochs": total / spe, "final_eval_seconds": final_eval,
                           "probe_seconds": time.perf_counter() - probe_start, "setup_seconds": setup_seconds,
                           "fitted_milestones": list(fitted.milestones), "fitted_warmup": fitted.warmup_steps,
                           "tta_views": views, "eval_seconds_spent": 0.0, "refits": []}
        self._fitted_schedule = self.schedule
        self.log(f"time budget {c.time_budget:g} min: {step_seconds * 1000:.0f} ms/step, eval {eval_seconds:.1f} s "
                 f"-> {total} steps ({total / spe:.1f} epochs)" + (f", recipe's {nominal} scaled" if nominal else ""))

    def refit_time_budget(self, progress=None) -> None:
        """At an epoch end and every quarter of an epoch, re-fit the run length to the budget from the pace
        measured so far (a shared or throttled machine can be slower than the probe said). The schedule stretches or shrinks (at most
        to 1.5x the first fit); the new length goes into the config and the checkpoint."""
        fit = self.budget_fit
        if fit is None or self.step == 0 or self.step >= self.total_steps:
            return
        seconds_per_step = self.elapsed / self.step  # training and per-epoch evaluation, as it really went
        remaining = self.config.time_budget * 60.0 * 0.97 - fit["setup_seconds"] - self.elapsed \
            - fit["final_eval_seconds"]
        # the probe's per-size step times predict the steps done; their ratio to the clock spent training (a
        # slower machine) scales the prediction of the steps left; the evaluations left are added at their
        # measured cost (a run shorter than an epoch has not paid for its one evaluation yet)
        by_size, cost = fit["seconds_by_size"], self.resolution.cost
        training_seconds = self.elapsed - fit.get("eval_seconds_spent", 0.0)
        pace = training_seconds / max(cost(by_size, 0, self.step, self.total_steps), 1e-9)
        low, high = self.step + 1, max(self.step + 1, int(fit["fitted_steps"] * 1.5))
        while low < high:  # the longest run whose remaining steps and evaluations fit what is left of the budget
            middle = (low + high + 1) // 2
            if pace * cost(by_size, self.step, middle, middle) \
                    + self._evaluations_left(middle) * fit["eval_seconds"] <= remaining:
                low = middle
            else:
                high = middle - 1
        total = self.process.broadcast_int(low)  # each rank's clock differs: all follow rank 0's, or they part
        if abs(total - self.total_steps) <= max(1, 0.02 * self.total_steps):
            return
        self.total_steps = total
        self.schedule = self.schedule.refitted(self._fitted_schedule, total, self.step)
        self.config = self.config.replace(steps=total, milestones=list(self.schedule.milestones),
                                          warmup=self.schedule.warmup_steps)
        fit["refits"].append({"step": self.step, "total_steps": self.total_steps})
        self.log(f"time budget: {seconds_per_step * 1000:.0f} ms/step so far -> {self.total_steps} steps in all")
        if progress is not None:
            progress.total = self.total_steps
        if self.is_main and self.out_dir is not None:
            text = self.config.to_yaml()
            atomic_write(self.out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))

    def _evaluations_left(self, total_steps: int) -> int:
        """Validation passes a run of ``total_steps`` still makes after this step, before its final one (at
        the last step, costed apart): at the ends of epochs ``eval_every`` picks."""
        if self.val_loader is None:
            return 0
        spe, every = self.steps_per_epoch, self.config.eval_every
        ends = range(self.step // spe + 1, -(-total_steps // spe))  # epoch ends strictly between now and the end
        return sum(1 for k in ends if k % every == 0)

    def _final_pass_views(self) -> int:
        """Forward passes per image of the run's last validation pass, which yields the plain result and the
        test-time-augmented one together (one more view where the TTA views leave out the image as is)."""
        tta = self.config.tta
        return TTA_VIEW_COUNTS[tta] + (tta not in TTA_WITH_PLAIN_VIEW)

    def _note_evaluation_time(self, seconds: float) -> None:
        """A validation pass measured in full replaces the probe's estimate for the evaluations left and the
        final test-time-augmented one: a whole pass averages out the pace changes that one batch can catch
        (on a shared 2-core CPU the same batch's forward varied by up to 30%)."""
        fit = self.budget_fit
        if fit is None:
            return
        fit["eval_seconds_spent"] = fit.get("eval_seconds_spent", 0.0) + seconds
        fit["eval_seconds"] = seconds
        fit["final_eval_seconds"] = seconds * self._final_pass_views()

    # ------------------------------------------------------------ checkpoints
    def training_state(self) -> dict[str, Any]:
        """The whole resumable state as tensors and primitive containers."""
        state = {
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                         "total_steps": self.total_steps, "best_val_top1": self.best_val_top1,
                         "best_epoch": self.best_epoch, "elapsed": self.elapsed,
                         "error_warmup_active": self.error_warmup_active, "lr": self.lr,
                         "budget_fit": copy.deepcopy(self.budget_fit)},
            "epoch_sums": self.epoch_sums.detach().cpu(),
            "error_window": self.error_window.detach().cpu(),
            "spec": self.spec.to_dict() if self.spec is not None else None,
            **self.weights_metadata(),  # what best.safetensors records (classes, statistics, config, training folder)
            "resume_needs": list(self._resume_needs),
            "job_id": job_id(),  # a torchrun restart continues only its own job's checkpoint
            "data_sizes": self._data_sizes(),
        }
        if self.ema is not None:
            state["state_dict_ema"] = {k: v.detach().cpu() for k, v in self.ema.state.items()}
        if self.lookahead is not None:
            state["lookahead"] = {k: v.detach().cpu() for k, v in self.lookahead.state.items()}
        return state

    def save_last(self) -> None:
        # all ranks: the partial epoch sums in last.pt are the global ones (rank 0 restores them)
        sums, window = self.process.reduce_sum(self.epoch_sums), self.process.reduce_sum(self.error_window)
        if self.is_main and self.out_dir is not None:
            state = self.training_state()
            state["epoch_sums"], state["error_window"] = sums.detach().cpu(), window.detach().cpu()
            save_training_checkpoint(self.out_dir / "last.pt", state)

    def load_training_state(self, body: dict[str, Any]) -> None:
        saved = body.get("config") if isinstance(body.get("config"), dict) else {}
        ran_on = int(saved.get("world_size") or 1)
        if ran_on != self.process.world_size:  # its global batch, rate and steps per epoch would all change mid-run
            how = (f"resnets train --resume RUN --nproc {ran_on}, or torchrun with {ran_on} processes in all"
                   if ran_on > 1 else "resnets train --resume RUN in one process")
            raise CheckpointError(f"the run trained on {ran_on} process(es) and is resumed on {self.process.world_size}: "
                                  "its global batch, its learning rate (scaled to that batch) and its steps per epoch "
                                  f"would change mid-run, and it could not continue as it would have; resume it with "
                                  f"{how}")
        try:
            self.model.load_state_dict(body["state_dict"])
            self.optimizer.load_state_dict(body["optimizer"])
            self.scaler.load_state_dict(body["scaler"])
            if self.ema is not None:
                self.ema.load_state_dict(body["state_dict_ema"])
            if self.lookahead is not None:
                self.lookahead.load_state_dict(body["lookahead"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"the checkpoint does not match this run's model/optimizer: {exc}") from None
        if list(body["classes"]) != self.classes:
            raise CheckpointError(f"the checkpoint's classes {body['classes'][:5]}... differ from the data's "
                                  f"{self.classes[:5]}...; resume with the same --data")
        saved = [list(map(float, body.get(key) or [])) for key in ("mean", "std")]
        now = [list(map(float, self.splits.mean)), list(map(float, self.splits.std))]
        if all(saved) and not torch.allclose(torch.tensor(saved), torch.tensor(now), atol=1e-6):
            raise CheckpointError(f"the checkpoint was trained on images normalised with mean/std {saved}, but the "
                                  f"data now gives {now}; resume with the data and normalization the run started with")
        if int(body.get("image_size", self.splits.image_size)) != int(self.splits.image_size):
            raise CheckpointError(f"the checkpoint was trained on {body['image_size']} px images, but the data now "
                                  f"gives {self.splits.image_size} px; resume with the data the run started with")
        sizes = body.get("data_sizes")  # absent in checkpoints of older versions
        if sizes is not None and list(sizes) != self._data_sizes():
            then, now = (f"{train} training and {val} validation images" for train, val in (sizes, self._data_sizes()))
            raise CheckpointError(f"the data changed since the run started ({then} then, {now} now): the run "
                                  "cannot continue exactly; restore the data it started with, or start a new run")
        p = body["progress"]
        self.step, self.epoch, self.batch_in_epoch = int(p["step"]), int(p["epoch"]), int(p["batch_in_epoch"])
        self.total_steps = int(p["total_steps"])
        self.schedule = LRSchedule.from_config(self.config, self.steps_per_epoch, self.total_steps)
        self.best_val_top1, self.best_epoch, self.elapsed = p["best_val_top1"], p["best_epoch"], float(p["elapsed"])
        self.error_warmup_active = bool(p["error_warmup_active"])
        self.lr = float(p.get("lr", self.lr))  # the rate of the last step: an epoch that ends right after a resume
        self._restore_budget_fit(p.get("budget_fit"))  # absent in checkpoints of older versions: no re-fits
        self.epoch_sums = body["epoch_sums"].to(self.device)
        self.error_window = body["error_window"].to(self.device)
        if not self.is_main:  # the checkpoint's sums are over all ranks: count them once
            self.epoch_sums.zero_()
            self.error_window.zero_()
        self._bad_loss = torch.zeros((), dtype=torch.bool, device=self.device)
        restore_rng_state(body["rng"])
        self._resumed = True

    def _data_sizes(self) -> list[int]:
        """The sizes of the splits, recorded in last.pt: a resume on other data would visit other batches."""
        return [len(self.splits.train), len(self.splits.val) if self.splits.val is not None else 0]

    def _restore_budget_fit(self, fit: dict | None) -> None:
        """A resumed time-budgeted run keeps re-fitting to what is left of its budget (the checkpoint's
        ``elapsed``), from the schedule its first fit chose."""
        if fit is None or "fitted_milestones" not in fit or self.config.time_budget is None:
            return
        self.budget_fit = fit
        first = self.config.replace(milestones=list(fit["fitted_milestones"]), milestone_unit="steps",
                                    warmup=fit["fitted_warmup"], warmup_unit="steps")
        self._fitted_schedule = LRSchedule.from_config(first, self.steps_per_epoch, int(fit["fitted_steps"]))

    def _eval_weights_model(self) -> nn.Module:
        if self.ema is not None:
            self.ema.copy_to(self.eval_model)
        return self.eval_model

    # ------------------------------------------------------------ files
    RUN_FILES = ("last.pt", "best.safetensors", "metrics.jsonl", "summary.json", "config.yaml")
    """What a run writes; a new run refuses a folder holding any of them, so no run is overwritten."""

    def _refuse_a_used_run_dir(self) -> None:
        """A new run (train, finetune, prune, distill) never writes over another run's files. Every rank
        answers before rank 0 writes anything; a group that torchrun restarted after a failure is exempt
        (its first attempt made these files)."""
        from .distributed import restart_count

        if self.out_dir is None or restart_count() > 0:
            return
        own = [name for name in self.RUN_FILES if (self.out_dir / name).exists()]  # finetune/distill.yaml: the caller's
        if self.process.any_true(bool(own)):
            check_new_run_dir(self.out_dir, self.RUN_FILES)

    def _prepare_run_dir(self) -> None:
        if not (self.is_main and self.out_dir is not None):
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(".*.tmp*"):  # a save a kill cut short (atomic_write's temporary files)
            if stale.name.split(".")[1] in {name.split(".")[0] for name in self.RUN_FILES}:
                stale.unlink(missing_ok=True)
        text = self.config.to_yaml()
        atomic_write(self.out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))
        metrics = self.out_dir / "metrics.jsonl"
        if self._resumed and metrics.exists():
            kept = []
            for line in metrics.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by the kill
                if record.get("epoch", -1) < self.epoch:  # epochs the checkpoint has completed
                    kept.append(line)
            self.history = [json.loads(line) for line in kept]
            atomic_write(metrics, lambda tmp: Path(tmp).write_text("".join(line + "\n" for line in kept)))
        elif not self._resumed:
            atomic_write(metrics, lambda tmp: Path(tmp).write_text(""))
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                self._writer = None

    def _write_record(self, record: dict) -> None:
        self.history.append(record)
        if not (self.is_main and self.out_dir is not None):
            return
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(to_json(record, indent=None) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                    self._writer.add_scalar(key, value, record["step"])
            self._writer.flush()

    # ------------------------------------------------------------ the run
    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def fit(self) -> RunResult:
        c = self.config
        if not self._resumed:
            self._refuse_a_used_run_dir()
        if not self._resumed and c.time_budget is not None:  # a resumed run keeps its fit (load_training_state)
            self.fit_time_budget()
        self._prepare_run_dir()
        for callback in self.callbacks:
            callback.on_train_start(self)
        if not self._resumed:
            self.log(f"training {c.model} ({sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params) on "
                     f"{len(self.splits.train)} images ({self.num_classes} classes), validating on "
                     f"{len(self.splits.val) if self.splits.val is not None else 0}: {self.total_steps} steps = "
                     f"{self.total_steps / self.steps_per_epoch:.1f} epochs of {self.steps_per_epoch}, "
                     f"{c.precision}{', channels_last' if c.channels_last else ''} on {self.device}")
            if self.resolution.active:
                self.log(f"progressive resizing: {' -> '.join(map(str, self.resolution.sizes()))} px, full size "
                         f"from {c.progressive_ramp[1]:.0%} of the steps")
            elif c.progressive_min_size is not None:
                self.log(f"progressive resizing off: progressive_min_size={c.progressive_min_size:g} is not below "
                         f"the images' {self.resolution.full_size} px")
        else:
            self.log(f"resuming at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch}) of "
                     f"{self.total_steps}")
        progress = self._progress_bar()
        check_every = 1 if self.device.type == "cpu" else c.log_every
        # a budget re-fits four times an epoch, not only at its end: a run of one or two epochs (three minutes
        # on a slow CPU) would otherwise get one correction at most, and a slow stretch after it overran the budget
        refit_every = max(1, self.steps_per_epoch // 4)
        run_start = time.perf_counter() - self.elapsed
        try:
            while self.step < self.total_steps:
                self.train_loader.set_epoch(self.epoch)
                self._freeze_stem_bias()
                if self.batch_in_epoch:
                    self.train_loader.skip_batches(self.batch_in_epoch)
                for callback in self.callbacks:
                    callback.on_epoch_start(self, self.epoch)
                self._rewrap_if_trainable_set_changed()  # the stem bias and unfreezing callbacks change it
                epoch_start = time.perf_counter()
                images_seen = 0
                self.model.train()
                for images, labels in self.train_loader:
                    loss = self.train_step(images, labels)
                    self.step += 1
                    self.batch_in_epoch += 1
                    images_seen += labels.shape[0]
                    for callback in self.callbacks:
                        callback.on_step_end(self, self.step, loss)
                    if self.step % check_every == 0:
                        self.check_finite()
                    if self.step % c.log_every == 0:
                        self.update_error_warmup()
                        self._update_progress(progress, images_seen, epoch_start)
                    if c.checkpoint_every_steps and self.step % c.checkpoint_every_steps == 0 \
                            and self.step < self.total_steps:
                        self.elapsed = time.perf_counter() - run_start
                        self.check_finite()
                        self.save_last()
                    if self.budget_fit is not None and self.step % refit_every == 0 \
                            and self.batch_in_epoch < self.steps_per_epoch:  # the epoch end re-fits below
                        self.elapsed = time.perf_counter() - run_start
                        self.refit_time_budget(progress)
                    if self.step >= self.total_steps:
                        break
                self.check_finite()
                self.elapsed = time.perf_counter() - run_start
                record = self._end_epoch(images_seen, time.perf_counter() - epoch_start)
                self.elapsed = time.perf_counter() - run_start
                self.refit_time_budget(progress)
                self.save_last()
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record)
                if progress is None:  # without a bar (--no-progress, batch jobs), one line per epoch
                    self.log(self._epoch_line(record))
                else:
                    self._update_progress(progress, images_seen, epoch_start, record)
        finally:
            if progress is not None:
                progress.close()
        result = self._finish(time.perf_counter() - run_start)
        for callback in self.callbacks:
            callback.on_train_end(self, result)
        return result

    def _end_epoch(self, images_seen: int, seconds: float) -> dict:
        sums = self.process.reduce_sum(self.epoch_sums.clone())
        loss_sum, correct, seen = (float(v) for v in sums)
        record: dict[str, Any] = {
            "epoch": self.epoch, "step": self.step, "lr": self.lr,
            "train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
            "images_per_s": images_seen * self.process.world_size / max(seconds, 1e-9), "epoch_seconds": seconds,
        }
        last_epoch = self.step >= self.total_steps
        if self.val_loader is not None and ((self.epoch + 1) % self.config.eval_every == 0 or last_epoch):
            start = time.perf_counter()
            if last_epoch:  # the plain result and the final test-time-augmented one come from one pass
                self._final_result, result = self.evaluate_with_plain(tta=self.config.tta)
                if self.budget_fit is not None:  # beside final_eval_seconds, the estimate the budget used
                    self.budget_fit["final_pass_seconds"] = time.perf_counter() - start
            else:
                result = self.evaluate()
                self._note_evaluation_time(time.perf_counter() - start)
            record.update(val_top1=result.top1, val_top5=result.top5, val_loss=result.loss)
            if self.best_val_top1 is None or result.top1 > self.best_val_top1:
                self.best_val_top1, self.best_epoch = result.top1, self.epoch
                if self.is_main and self.out_dir is not None:
                    save_weights(self._eval_weights_model(), self.out_dir / "best.safetensors",
                                 {**self.weights_metadata(), "epoch": self.epoch, "step": self.step,
                                  "val_top1": result.top1})
        record["elapsed_minutes"] = self.elapsed / 60
        self._write_record(record)
        self.epoch += 1
        self.batch_in_epoch = 0
        self._reset_epoch_sums()
        return record

    def evaluate(self, loader: Iterable | None = None, tta: str = "none") -> EvalResult:
        """Evaluate the current evaluation weights (EMA when on) on ``loader`` (default: validation)."""
        return self._run_evaluation(evaluate, loader, tta)

    def evaluate_with_plain(self, tta: str) -> tuple[EvalResult, EvalResult]:
        """The validation results with ``tta`` and without it: one pass where ``tta`` includes the image as is."""
        return self._run_evaluation(evaluate_with_plain, None, tta)

    def _run_evaluation(self, function: Callable, loader: Iterable | None, tta: str):
        loader = loader if loader is not None else self.val_loader
        if loader is None:
            raise ConfigError("no validation data to evaluate on (val_split=0 and no validation tree)")
        model = self._eval_weights_model()
        self.process.sync_buffers(model)  # every rank evaluates rank 0's BatchNorm statistics
        return function(model, loader, self.num_classes, self.classes, tta=tta, device=self.device,
                        precision=self.config.precision, reduce_sum=self.process.reduce_sum)

    def _finish(self, seconds: float) -> RunResult:
        final = self._final_result
        if final is None and self.val_loader is not None:  # e.g. resumed from a last.pt written at the end
            final = self.evaluate(tta=self.config.tta)
        result = RunResult(self.out_dir, self.config, self.best_val_top1, self.best_epoch, final, self.epoch,
                           self.step, seconds, list(self.history), self._eval_weights_model())
        if self.is_main and self.out_dir is not None:
            summary = result.summary()
            if final is not None:
                summary["final_per_class_top1"] = final.per_class_accuracy
            write_json(self.out_dir / "summary.json", summary)
            if self._writer is not None:
                self._writer.close()
        if final is not None:
            best = f"best {self.best_val_top1 * 100:.2f}% (epoch {self.best_epoch}), " if self.best_val_top1 else ""
            self.log(f"done: {self.step} steps, {self.epoch} epochs in {seconds / 60:.2f} min; validation {best}"
                     f"final {final.top1 * 100:.2f}% top-1 (tta={self.config.tta}, {final.count} images)"
                     + (f"; expected: {self.config.expected}" if self.config.expected else ""))
        return result

    # ------------------------------------------------------------ progress bar
    def _progress_bar(self):
        if not (self.config.progress and self.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True, file=sys.stderr,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0, desc=f"epoch {self.epoch}")

    def _epoch_line(self, record: dict) -> str:
        val = f", val top-1 {record['val_top1']:.2%}" if "val_top1" in record else ""
        return (f"epoch {record['epoch']} (step {record['step']}/{self.total_steps}): loss {record['train_loss']:.3f}, "
                f"train top-1 {record['train_top1']:.2%}{val}, {record['images_per_s']:.0f} img/s, "
                f"lr {record['lr']:.4g}, {record['elapsed_minutes']:.1f} min")

    def _update_progress(self, bar, images_seen: int, epoch_start: float, record: dict | None = None) -> None:
        if bar is None:
            return
        bar.update(self.step - bar.n)
        if record is not None:
            shown = {"loss": f"{record['train_loss']:.3f}", "acc": f"{record['train_top1']:.3f}"}
            if "val_top1" in record:
                shown["val"] = f"{record['val_top1']:.4f}"
        else:
            sums = self.epoch_sums
            seen = max(float(sums[2]), 1.0)
            shown = {"loss": f"{float(sums[0]) / seen:.3f}", "acc": f"{float(sums[1]) / seen:.3f}"}
        shown["img/s"] = f"{images_seen / max(time.perf_counter() - epoch_start, 1e-9):.0f}"
        shown["lr"] = f"{self.lr:.4g}"
        # the epoch the figures describe: after an epoch's record, self.epoch already counts the next one
        bar.set_description(f"epoch {record['epoch'] if record is not None else self.epoch}", refresh=False)
        bar.set_postfix(shown, refresh=False)


COMMAND_RECORDS = {"finetune": "finetune.yaml", "distill": "distill.yaml"}
"""The file in which a command that builds its own model, parameter groups or loss records its arguments,
so that the same command can rebuild them and resume the run (``resnets finetune --resume RUN``)."""


def files_of_a_run(folder: str | os.PathLike) -> list[str]:
    """The files in ``folder`` that a training run (train, finetune, prune, distill) writes."""
    return [name for name in (*Trainer.RUN_FILES, *COMMAND_RECORDS.values()) if (Path(folder) / name).exists()]


def resume_command(folder: str | os.PathLike) -> str:
    """The command line that resumes the run in ``folder``: the command whose record it holds, else train."""
    command = next((c for c, name in COMMAND_RECORDS.items() if (Path(folder) / name).exists()), "train")
    return f"resnets {command} --resume {folder}"


def check_new_run_dir(folder: str | os.PathLike, names: Sequence[str] | None = None) -> None:
    """Refuse a folder that holds another run (any of ``names``, default: every file a run writes), so nothing a
    run made is overwritten; the commands call it before any work, the Trainer again when it starts."""
    found = files_of_a_run(folder) if names is None else [n for n in names if (Path(folder) / n).exists()]
    if found:
        how = f"resume it with `{resume_command(folder)}`, or " if "last.pt" in found else ""
        raise ConfigError(f"{folder} already holds a run ({', '.join(found)}); {how}choose another output folder, "
                          "or delete that one first")


def train(config: TrainConfig, out_dir: str | os.PathLike | None = None, **kwargs: Any) -> RunResult:
    """Train under ``config`` (see ``Trainer`` for ``splits``, ``model``, ``loss_fn``, ``callbacks``...)."""
    return Trainer(config, out_dir, **kwargs).fit()


RESUME_OVERRIDABLE = ("progress", "tensorboard", "workers", "log_every", "device")
"""Settings a resumed run may change: they do not change what is computed (``device`` may change the
last bits of the arithmetic, nothing else)."""


def resume(run_dir: str | os.PathLike, overrides: dict[str, Any] | None = None, *,
           checkpoint: dict[str, Any] | None = None, **kwargs: Any) -> RunResult:
    """Continue the run in ``run_dir`` from its ``last.pt``; the result equals an uninterrupted run's (CPU).

    ``overrides`` may change only ``RESUME_OVERRIDABLE`` keys (logging, workers, device). ``checkpoint`` is
    ``last.pt`` when the caller has already read it (to rebuild what it passes in ``kwargs``)."""
    run_dir = Path(run_dir)
    body = checkpoint if checkpoint is not None else load_training_checkpoint(run_dir / "last.pt")
    values = dict(body["config"])
    refused = sorted(set(overrides or {}) - set(RESUME_OVERRIDABLE))
    if refused:
        raise ConfigError(f"a resumed run keeps its configuration; {refused} cannot change (only "
                          f"{', '.join(RESUME_OVERRIDABLE)} can). Start a new run to change them.")
    values.update(overrides or {})
    config = TrainConfig.from_dict(values, source=f"{run_dir / 'last.pt'}")
    missing = [need for need in body.get("resume_needs", []) if need.split(" ")[0] not in kwargs]
    if missing:
        command = resume_command(run_dir)
        how = (f"resume it with `{command}`" if not command.startswith("resnets train")
               else "pass them again (Python: resume(run_dir, loss_fn=..., param_groups=...))")
        raise ConfigError(f"{run_dir} was started with {' and '.join(missing)} from the command that made it, "
                          f"which `resnets train --resume` cannot rebuild: {how}")
    if "model" not in kwargs and body.get("spec"):  # the architecture that made the weights (pruned widths too)
        from ..factory import create_model
        from ..spec import ResNetSpec

        kwargs["model"] = create_model(ResNetSpec.from_dict(body["spec"]))
    trainer = Trainer(config, run_dir, **kwargs)
    trainer.load_training_state(body)
    return trainer.fit()
