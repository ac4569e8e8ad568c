"""Optimizer pieces: parameter groups (no decay on norm/bias), SGD or Muon-for-filters, learning-rate
schedules as pure functions of the step, and weight averaging (EMA, Lookahead).

Schedules are functions ``step -> factor`` rather than ``torch.optim.lr_scheduler`` objects so their
state is a single integer (the step), which checkpoints as data and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn
from torch.optim.sgd import sgd

from ..precision import bf16_is_faster, resolve_precision
from .config import TrainConfig

__all__ = ["LRSchedule", "Lookahead", "ModelEMA", "MuonSGD", "build_optimizer", "orthogonalize", "param_groups",
           "set_learning_rate"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True,
                 norm_lr_scale: float = 1.0, orthogonal_filters: bool = False) -> list[dict]:
    """Split trainable parameters into ``decay`` (conv/linear weights) and ``no_decay`` (norm weights,
    every bias). Each group carries ``name`` and ``lr_scale`` (multiplied into the scheduled rate).
    With ``norm_lr_scale != 1`` the normalisation shifts (biases) get a group of their own, ``norm``, at that
    multiple of the rate (airbench trains its BatchNorm shifts 64x faster than the weights).
    With ``orthogonal_filters`` the convolution filters (4-D weights) form a group ``filters`` flagged
    ``orthogonalize`` for ``MuonSGD``; the classifier and every vector stay with SGD, as in Muon's recipe."""
    decay, no_decay, norms, filters = [], [], [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES) and name == "bias" and norm_lr_scale != 1.0:
                norms.append(param)
            elif isinstance(module, _NORM_TYPES) or name == "bias" or param.ndim <= 1:
                no_decay.append(param)
            elif orthogonal_filters and param.ndim == 4:
                filters.append(param)
            else:
                decay.append(param)
    exempt = 0.0 if no_decay_norm_bias else weight_decay
    groups = [{"params": filters, "weight_decay": weight_decay, "name": "filters", "lr_scale": 1.0,
               "orthogonalize": True},
              {"params": decay, "weight_decay": weight_decay, "name": "decay", "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": exempt, "name": "no_decay", "lr_scale": 1.0},
              {"params": norms, "weight_decay": exempt, "name": "norm", "lr_scale": norm_lr_scale}]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: Sequence[dict] | Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov optional) over ``groups``; groups keep their own weight decay and
    ``lr_scale``. Plain parameter iterables become one group with the config's weight decay.

    ``config.optimizer == "muon"`` returns ``MuonSGD``: groups flagged ``orthogonalize`` step at
    ``muon_lr`` (times the schedule's factor) with ``muon_momentum``, the others as SGD."""
    groups = list(groups)
    if groups and isinstance(groups[0], torch.Tensor):
        groups = [{"params": groups, "name": "all"}]
    # a generator (module.parameters()) can be read once only, and torch takes a lone tensor as a list of one
    groups = [{**g, "params": [g["params"]] if isinstance(g["params"], torch.Tensor) else list(g["params"])}
              for g in groups]
    if not groups or not any(g["params"] for g in groups):
        raise ValueError("nothing to train: no parameter requires gradients")
    prepared = []
    for index, group in enumerate(groups):
        group = dict(group)
        group.setdefault("weight_decay", config.weight_decay)
        group.setdefault("lr_scale", 1.0)
        group.setdefault("name", f"group{index}")
        if group.get("orthogonalize"):
            if config.optimizer != "muon":
                raise ValueError(f"group {group['name']!r} asks for orthogonalized steps; set optimizer=muon")
            group["lr_scale"] = config.muon_lr / config.base_lr
            group["momentum"] = config.muon_momentum
            group["normalize"] = config.muon_normalize
            if config.muon_normalize:
                group["weight_decay"] = 0.0  # decay means nothing to filters held at a fixed norm
        group["lr"] = config.base_lr * group["lr_scale"]
        prepared.append(group)
    if config.optimizer == "muon":
        # the run's own precision decides the orthogonalization's, so it is recorded (config.yaml) and a resumed run
        # computes what the uninterrupted one did; a timing per process could decide otherwise after a restart
        # (on a CPU; a GPU's choice, bf16 where native as Muon does, is a fixed property of the device)
        precision = resolve_precision(config.precision, config.device)
        ns_dtype = None if torch.device(config.device).type == "cuda" else (
            torch.bfloat16 if precision == "bf16" else torch.float32)
        return MuonSGD(prepared, lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov,
                       weight_decay=config.weight_decay, ns_steps=config.muon_ns_steps, ns_dtype=ns_dtype)
    return torch.optim.SGD(prepared, lr=config.base_lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


def orthogonalize(matrix: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately ``U V^T`` of ``matrix``'s SVD (every singular value pushed to about 1) by the quintic
    Newton-Schulz iteration of Muon (Jordan et al. 2024; its coefficients trade exactness for speed: the
    singular values land in roughly [0.7, 1.2]). A 4-D filter bank is treated as out x (in*kh*kw).

    ``dtype`` defaults to bfloat16, as in Muon, where the device runs it faster than fp32 (the iteration
    tolerates it, and it halves the cost: about 10 ms a step for resnet_airbench_narrow's filters on a 2-core AMD
    CPU with AVX-512 BF16), and to float32 elsewhere: emulated bf16 is twice as slow as fp32 (66 vs 33 ms on a
    2-core Xeon without it), and native bf16 without AMX is slower too on Intel CPUs
    (``resnets.precision.bf16_is_faster``)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = matrix.reshape(len(matrix), -1).to(dtype or _newton_schulz_dtype(matrix.device))
    x = x / (x.norm() + 1e-7)
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if not wide:
        x = x.T
    return x.reshape(matrix.shape)


@functools.lru_cache(maxsize=None)
def _newton_schulz_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if bf16_is_faster(device) else torch.float32


class MuonSGD(torch.optim.Optimizer):
    """Muon (Jordan et al. 2024) for the groups flagged ``orthogonalize``, SGD for the rest, in one optimizer.

    A Muon group keeps SGD's (Nesterov) momentum, then replaces the step's direction by its orthogonalized
    form (``orthogonalize``): every direction of a filter bank moves at the same rate, whatever the
    gradient's scale. With ``normalize`` the filters are rescaled to norm sqrt(out_channels) before each
    step, as airbench94_muon does for convolutions followed by BatchNorm (scale-invariant), so the step
    size relative to the weights stays what the schedule says. Weight decay in a Muon group is decoupled
    (``param *= 1 - lr * weight_decay``), as in ``torch.optim.Muon``. ``torch.optim.Muon`` accepts only 2-D
    parameters and trains nothing else, hence this class: one optimizer, one state dict, one scaler step.
    """

    def __init__(self, params: Iterable[dict] | Iterable[nn.Parameter], lr: float, momentum: float = 0.9,
                 nesterov: bool = False, weight_decay: float = 0.0, ns_steps: int = 5,
                 ns_dtype: torch.dtype | None = None) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        orthogonalize=False, normalize=False, ns_steps=ns_steps)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype  # None: orthogonalize's default for the device

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch.optim.Optimizer.step
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not group["orthogonalize"]:
                buffers = [self.state[p].get("momentum_buffer") for p in params]
                sgd(params, [p.grad for p in params], buffers, weight_decay=group["weight_decay"],
                    momentum=group["momentum"], lr=group["lr"], dampening=0.0, nesterov=group["nesterov"],
                    maximize=False)
                for param, buffer in zip(params, buffers):
                    self.state[param]["momentum_buffer"] = buffer
                continue
            momentum = group["momentum"]
            for param in params:
                grad = param.grad
                if group["weight_decay"]:  # decoupled, as torch.optim.Muon: added to the gradient, orthogonalizing
                    param.mul_(1 - group["lr"] * group["weight_decay"])  # would normalise its size away
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(momentum).add_(grad)
                buffer = state["momentum_buffer"]
                direction = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                if group["normalize"]:
                    param.mul_(math.sqrt(len(param)) / param.norm().clamp_min(1e-12))
                param.add_(orthogonalize(direction, group["ns_steps"], self.ns_dtype).to(param.dtype),
                           alpha=-group["lr"])
        return loss


@dataclass(frozen=True)
class LRSchedule:
    """The learning-rate factor at each step: warm-up, then step / cosine / one-cycle / constant.

    - ``step``: multiply by ``gamma`` at each milestone (steps), as the paper's 32k/48k iterations.
    - ``cosine``: half-cosine from 1 to ``final`` over the steps after warm-up.
    - ``onecycle``: triangular, linear up from ``start`` to 1 at the end of warm-up (or at ``peak_at``
      of training when there is no warm-up), then linear down to ``final`` at the last step.
    - ``constant``: 1 after warm-up.
    """

    kind: str
    total_steps: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    start: float = 0.0
    final: float = 0.0
    peak_at: float = 0.25

    @classmethod
    def from_config(cls, config: TrainConfig, steps_per_epoch: int, total_steps: int) -> "LRSchedule":
        milestones = tuple(config.to_steps(m, config.milestone_unit, steps_per_epoch) for m in config.milestones)
        warmup = config.to_steps(config.warmup, config.warmup_unit, steps_per_epoch)
        return cls(config.schedule, total_steps, milestones, config.gamma, warmup, config.warmup_start_factor,
                   config.final_lr, config.peak_at)

    def __call__(self, step: int) -> float:
        if self.kind == "onecycle":
            peak = self.warmup_steps or max(1, int(round(self.peak_at * self.total_steps)))
            if step < peak:
                return self.start + (1.0 - self.start) * step / peak
            remaining = max(1, self.total_steps - peak)
            return max(self.final, 1.0 + (self.final - 1.0) * (step - peak) / remaining)
        if step < self.warmup_steps:
            return self.start + (1.0 - self.start) * step / self.warmup_steps
        if self.kind == "step":
            return self.gamma ** sum(step >= m for m in self.milestones)
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def scaled_to(self, total_steps: int) -> "LRSchedule":
        """The same schedule stretched to another length (time budgets): milestones and warm-up scale."""
        ratio = total_steps / self.total_steps
        return LRSchedule(self.kind, total_steps, tuple(max(1, round(m * ratio)) for m in self.milestones),
                          self.gamma, max(1, round(self.warmup_steps * ratio)) if self.warmup_steps else 0,
                          self.start, self.final, self.peak_at)

    @property
    def peak_step(self) -> int:
        """Where the rate first reaches its full value: the end of warm-up (onecycle: its peak)."""
        if self.kind == "onecycle" and not self.warmup_steps:
            return max(1, int(round(self.peak_at * self.total_steps)))
        return self.warmup_steps

    def refitted(self, fitted: "LRSchedule", total_steps: int, step: int) -> "LRSchedule":
        """This schedule, in force at ``step``, re-fitted to ``total_steps``: ``fitted`` scaled there, except that
        the milestones and the warm-up end (onecycle: the peak) already passed stay where they were. Scaling them
        too would undo a rate drop the run has made (x10 back up until the moved milestone)."""
        scaled = fitted.scaled_to(total_steps)
        milestones = tuple(now if now <= step else later for now, later in zip(self.milestones, scaled.milestones))
        warmup = scaled.warmup_steps
        if self.peak_step and self.peak_step <= step:
            warmup = self.peak_step
        return dataclasses.replace(scaled, milestones=milestones, warmup_steps=warmup)


def set_learning_rate(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    """Set every group's rate to ``base_lr * factor * group['lr_scale']``; returns the base group's rate."""
    for group in optimizer.param_groups:
        group["lr"] = base_lr * factor * group.get("lr_scale", 1.0)
    return base_lr * factor


class _AveragedState:
    """A copy of a model's state that training averages into; saved and restored as a plain dict."""

    state: dict[str, torch.Tensor]
    label = "averaged"

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.state) - set(state)
        if missing:
            raise KeyError(f"{self.label} state lacks {sorted(missing)[:5]}")
        for key, value in state.items():
            self.state[key].copy_(value)


class ModelEMA(_AveragedState):
    """Exponential moving average of a model's floating-point state (parameters and BN statistics).

    Integer buffers (``num_batches_tracked``) are copied. Before ``warmup_steps`` the average is a
    copy of the weights, so it does not start from the random initialisation.
    """

    label = "EMA"

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        self.decay, self.warmup_steps = decay, warmup_steps
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        copy = step < self.warmup_steps
        for key, value in model.state_dict().items():
            average = self.state[key]
            if copy or not value.is_floating_point():
                average.copy_(value)
            else:
                average.lerp_(value.detach().to(average.dtype), 1.0 - self.decay)

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.state)
        return model


class Lookahead(_AveragedState):
    """Lookahead weight averaging (Zhang et al. 2019) as airbench schedules it.

    Every ``every`` steps the slow copy moves toward the trained weights, ``slow = lerp(slow, fast,
    1 - d)``, and the trained weights restart from it. ``d = decay x progress**3`` grows from 0 (no
    averaging early, while the weights move fast) to ``decay`` at the end, where the weights become
    the slow copy. Floating-point state only (parameters and BatchNorm statistics); parameters that do
    not require gradients (a frozen stem) are left alone.
    """

    label = "lookahead"

    def __init__(self, model: nn.Module, every: int, decay: float) -> None:
        if every < 1 or not 0.0 <= decay < 1.0:
            raise ValueError(f"lookahead needs every >= 1 and 0 <= decay < 1, got every={every}, decay={decay}")
        self.every, self.decay = every, decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Call after optimizer step ``step`` (0-based) of ``total_steps``."""
        done = step + 1
        last = done >= total_steps
        if done % self.every and not last:
            return
        decay = self.decay * (done / total_steps) ** 3
        frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
        for key, value in model.state_dict().items():
            slow = self.state.get(key)
            if slow is None:
                continue
            if key in frozen:  # a frozen parameter stays as it is; its slow copy follows it
                slow.copy_(value)
            else:
                slow.lerp_(value.detach().to(slow.dtype), 1.0 - decay)
                value.copy_(slow)
