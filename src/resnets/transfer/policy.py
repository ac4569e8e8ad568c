"""Fine-tuning policies as pure functions over a model: which parts train, how BatchNorm behaves,
and what learning rate each part gets.

A ResNet is cut into *parts* in forward order: ``stem`` (``conv1``/``bn1``), ``layer1`` ... ``layerN``
(the final norm of pre-activation nets belongs to the last stage) and ``head`` (``fc``).
``apply_finetune_policy(model, config)`` freezes, sets the BatchNorm policy and returns optimizer
parameter groups; it never touches a weight's value, so an unfrozen model is bit-identical.

BatchNorm policies (they survive ``model.train()``):

- ``train``: the usual behaviour, batch statistics and running-stat updates.
- ``eval``: running statistics are used and never updated; the affine scale/shift still train.
- ``frozen``: as ``eval``, and the affine parameters are frozen too.

A frozen part always has its norms ``frozen`` whatever the policy: a frozen stage whose running
statistics drift is not frozen. ``eval``/``frozen`` work through a forward pre-hook that puts the
norm back in inference mode before each call, so the state dict (and therefore the saved
checkpoint) stays that of a plain ``ResNet``. ``to_frozen_batchnorm`` swaps in torchvision's
``FrozenBatchNorm2d`` instead, which detectors use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BNPolicy = Literal["train", "eval", "frozen"]
BN_POLICIES = ("train", "eval", "frozen")
FREEZE_CHOICES_HELP = "none, stem, layer1 ... layerN, all-but-head"


class PolicyError(ValueError):
    """A fine-tuning policy that does not fit the model (an unknown stage, a bad multiplier)."""


# ------------------------------------------------------------------ parts
def part_names(model: nn.Module) -> list[str]:
    """The model's parts in forward order: ``["stem", "layer1", ..., "layerN", "head"]``."""
    stages = list(getattr(model, "stage_names", []))
    if not stages:
        raise PolicyError(f"{type(model).__name__} has no `stage_names`; fine-tuning policies need a resnets ResNet "
                          "(build it with resnets.create_model)")
    has_head = isinstance(getattr(model, "fc", None), nn.Linear)
    return ["stem", *stages] + (["head"] if has_head else [])


def part_of(param_name: str, model: nn.Module) -> str:
    """Which part a parameter or buffer name belongs to."""
    top = param_name.split(".", 1)[0]
    stages = list(model.stage_names)
    if top in ("conv1", "bn1"):
        return "stem"
    if top in stages:
        return top
    if top == "final_bn":
        return stages[-1]
    if top == "fc":
        return "head"
    raise PolicyError(f"parameter {param_name!r} is in no known part of the model (stem, {', '.join(stages)}, head)")


def part_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The top-level modules of each part (for setting BatchNorm behaviour part by part)."""
    out: dict[str, list[nn.Module]] = {name: [] for name in part_names(model)}
    for name, module in model.named_children():
        try:
            part = part_of(name, model)
        except PolicyError:
            continue  # parameter-free glue: relu, maxpool, avgpool, dropout
        out.setdefault(part, []).append(module)
    return out


def parts_to_freeze(model: nn.Module, freeze: str) -> list[str]:
    """The parts a ``--freeze`` value freezes: everything up to and including the named part."""
    names = part_names(model)
    body = [n for n in names if n != "head"]
    if freeze in ("none", "", None):
        return []
    if freeze == "all-but-head":
        if "head" not in names:
            raise PolicyError("freeze='all-but-head' needs a classifier head; this model has none "
                              "(create it with num_classes > 0 or set FinetuneConfig.num_classes)")
        return body
    if freeze not in body:
        raise PolicyError(f"cannot freeze up to {freeze!r}: this model has no such stage. Its parts are "
                          f"{', '.join(body)} (freeze one of: none, {', '.join(body)}, all-but-head)")
    return body[: body.index(freeze) + 1]


def frozen_parts(model: nn.Module, config: "FinetuneConfig") -> list[str]:
    """The parts ``config`` keeps fixed: those up to ``config.freeze``, and any whose learning-rate multiplier is 0
    (a part that never steps must not have its BatchNorm statistics drift either)."""
    mults = lr_multipliers(model, config)
    up_to = set(parts_to_freeze(model, config.freeze))
    return [n for n in part_names(model) if n in up_to or mults.get(n) == 0]


# -------------------------------------------------------------- BatchNorm
def _keep_inference_mode(module: nn.Module, args: Any) -> None:
    """Forward pre-hook: a norm under the ``eval``/``frozen`` policy never uses batch statistics."""
    if getattr(module, "resnets_bn_policy", "train") != "train":
        module.training = False


def set_trainable(module: nn.Module, trainable: bool) -> None:
    """``requires_grad`` for every parameter of ``module``, except the norm scales its architecture fixes at 1
    (``norm_scale=False``: the airbench nets), which no policy turns into trained parameters."""
    module.requires_grad_(trainable)
    for m in module.modules():
        if getattr(m, "resnets_fixed_scale", False) and getattr(m, "weight", None) is not None:
            m.weight.requires_grad_(False)


def set_bn_policy(modules: Iterable[nn.Module], policy: str) -> None:
    """Give every BatchNorm inside ``modules`` a policy that survives ``model.train()``."""
    if policy not in BN_POLICIES:
        raise PolicyError(f"unknown BatchNorm policy {policy!r}; choose one of {', '.join(BN_POLICIES)}")
    for root in modules:
        for m in root.modules():
            if not isinstance(m, _BatchNorm):
                continue
            if not getattr(m, "_resnets_bn_hooked", False):
                m.register_forward_pre_hook(_keep_inference_mode)
                m._resnets_bn_hooked = True
            m.resnets_bn_policy = policy
            if policy != "train":
                m.training = False
            if m.affine:
                m.bias.requires_grad_(policy != "frozen")
                m.weight.requires_grad_(policy != "frozen" and not getattr(m, "resnets_fixed_scale", False))


def to_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` by torchvision's ``FrozenBatchNorm2d`` with the same statistics.

    The result has no trainable norm parameters and no batch statistics in any mode; detectors
    use it because their per-GPU batches are too small for BatchNorm. Returns the (new) module.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
        return frozen.to(module.running_mean.device if module.running_mean is not None else "cpu")
    for name, child in module.named_children():
        new = to_frozen_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


# ----------------------------------------------------------------- config
@dataclass
class FinetuneConfig:
    """Everything that decides how a pretrained network is fine-tuned.

    ``lr`` is the base learning rate; a part's rate is ``lr * stage multiplier`` (from
    ``stage_lr_mults``, or ``layer_decay ** depth-from-the-top`` when ``layer_decay`` is set), and
    the head's is ``lr * head_lr_mult`` (or ``stage_lr_mults["head"]``: one of the two, not both).
    """

    num_classes: int | None = None
    """Classes of the new task: a freshly initialised head replaces the old one when set (even with the
    same count: CIFAR-10's head means nothing for another 10 classes); None keeps the head."""
    freeze: str = "none"
    """Freeze every part up to and including this one: none, stem, layer1 ... layerN, all-but-head."""
    bn: str = "train"
    """BatchNorm policy in the parts that train: train, eval (running stats frozen), frozen (affine too)."""
    lr: float = 0.01
    head_lr_mult: float = 1.0
    stage_lr_mults: Mapping[str, float] = field(default_factory=dict)
    """Per-part multipliers, e.g. {"stem": 0.1, "layer1": 0.1, "layer2": 0.3}; unnamed parts get 1."""
    layer_decay: float | None = None
    """Layer-wise decay: the part k steps below the head gets ``lr * layer_decay ** k``."""
    weight_decay: float = 5e-4
    decay_norm_and_bias: bool = False
    """Apply weight decay to norm scales/shifts and biases too (usually not)."""

    def validate(self) -> None:
        if self.bn not in BN_POLICIES:
            raise PolicyError(f"unknown BatchNorm policy {self.bn!r}; choose one of {', '.join(BN_POLICIES)}")
        if not (0 < self.lr < math.inf and 0 <= self.head_lr_mult < math.inf):
            raise PolicyError(f"lr must be positive and head_lr_mult non-negative (got lr={self.lr}, "
                              f"head_lr_mult={self.head_lr_mult})")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise PolicyError(f"layer_decay={self.layer_decay} must be in (0, 1]")
        if self.layer_decay is not None and self.stage_lr_mults:
            raise PolicyError("give either layer_decay or stage_lr_mults, not both")
        if "head" in self.stage_lr_mults and self.head_lr_mult != 1.0:
            raise PolicyError(f"the head's learning rate is set twice (head_lr_mult={self.head_lr_mult} and "
                              f"stage_lr_mults['head']={self.stage_lr_mults['head']}); give one of them "
                              "(--head-lr-mult or head= in --stage-lr)")
        bad = {k: v for k, v in self.stage_lr_mults.items() if not 0 <= v < math.inf}
        if bad:
            raise PolicyError(f"learning-rate multipliers must be finite and >= 0, got {bad}")
        if self.num_classes is not None and self.num_classes < 1:
            raise PolicyError(f"num_classes={self.num_classes} must be at least 1")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh classifier for ``num_classes``; every other tensor stays bit-identical."""
    if not hasattr(model, "reset_classifier"):
        raise PolicyError(f"{type(model).__name__} has no reset_classifier; build the model with resnets.create_model")
    model.reset_classifier(num_classes)
    return model


def lr_multipliers(model: nn.Module, config: FinetuneConfig) -> dict[str, float]:
    """The learning-rate multiplier of every part of ``model`` under ``config``."""
    names = part_names(model)
    unknown = sorted(set(config.stage_lr_mults) - set(names))
    if unknown:
        raise PolicyError(f"stage_lr_mults names {unknown}, which this model does not have; its parts are "
                          f"{', '.join(names)}")
    body = [n for n in names if n != "head"]
    mults: dict[str, float] = {}
    for depth_from_top, name in enumerate(reversed(body), start=1):
        if config.layer_decay is not None:
            mults[name] = config.layer_decay ** depth_from_top
        else:
            mults[name] = float(config.stage_lr_mults.get(name, 1.0))
    if "head" in names:
        mults["head"] = float(config.stage_lr_mults.get("head", config.head_lr_mult))
    return mults


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def apply_finetune_policy(model: nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Prepare ``model`` for fine-tuning under ``config`` and return optimizer parameter groups.

    Replaces the head if ``config.num_classes`` is set, freezes the parts up to ``config.freeze``
    (``requires_grad=False`` and BatchNorm ``frozen``), applies ``config.bn`` to the rest, and
    groups the trainable parameters by part (and decay / no decay). Each group carries ``lr``,
    ``weight_decay``, ``lr_scale`` and ``name``, so ``torch.optim.SGD(groups, lr=config.lr)`` and
    schedulers built on ``initial_lr`` work unchanged.
    """
    config.validate()
    if config.num_classes is not None:  # a new task gets a fresh head even with the same class count
        replace_head(model, config.num_classes)
    frozen = set(frozen_parts(model, config))
    mults = lr_multipliers(model, config)
    modules = part_modules(model)
    for part, mods in modules.items():
        for m in mods:
            set_trainable(m, part not in frozen)
        set_bn_policy(mods, "frozen" if part in frozen else config.bn)

    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = part_of(name, model)
        if mults[part] == 0:
            param.requires_grad_(False)
            continue
        no_decay = _is_no_decay(name, param) and not config.decay_norm_and_bias
        key = (part, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "name": f"{part}{'/no_decay' if no_decay else ''}", "part": part,
                           "lr": config.lr * mults[part], "lr_scale": mults[part],
                           "weight_decay": 0.0 if no_decay else config.weight_decay}
        groups[key]["params"].append(param)
    order = {p: i for i, p in enumerate(part_names(model))}
    return [groups[k] for k in sorted(groups, key=lambda k: (order[k[0]], k[1]))]


def trainable_summary(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per part: parameter count, how many train, and the BatchNorm policy in force (for logs)."""
    out: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        part = part_of(name, model)
        row = out.setdefault(part, {"params": 0, "trainable": 0, "bn": set()})
        row["params"] += param.numel()
        row["trainable"] += param.numel() if param.requires_grad else 0
    for part, mods in part_modules(model).items():
        for root in mods:
            for m in root.modules():
                if isinstance(m, _BatchNorm):
                    out.setdefault(part, {"params": 0, "trainable": 0, "bn": set()})["bn"].add(
                        getattr(m, "resnets_bn_policy", "train"))
    return {k: {**v, "bn": ",".join(sorted(v["bn"])) or "-"} for k, v in out.items()}


# ------------------------------------------------------ progressive unfreezing
class ProgressiveUnfreezer:
    """Gradual unfreezing (Howard & Ruder 2018): start with only the head (and the parts ``config``
    leaves trainable above the frozen ones) and unfreeze one more part from the top every
    ``epochs_per_part`` epochs, down to (not past) ``config.freeze``.

    Build the optimizer from ``param_groups`` once: it holds every parameter that will ever train;
    parameters still locked have ``requires_grad=False``, get no gradient and are skipped by the
    optimizer (weight decay included).
    """

    def __init__(self, model: nn.Module, config: FinetuneConfig, epochs_per_part: int = 1) -> None:
        if epochs_per_part < 1:
            raise PolicyError(f"epochs_per_part={epochs_per_part} must be at least 1")
        self.model, self.config, self.epochs_per_part = model, config, epochs_per_part
        self.param_groups = apply_finetune_policy(model, config)
        permanently_frozen = set(parts_to_freeze(model, config.freeze))
        self._never_train = set(frozen_parts(model, config)) - permanently_frozen  # lr multiplier 0
        body = [n for n in part_names(model) if n != "head"]
        self.schedule = [n for n in reversed(body) if n not in permanently_frozen]
        self.unlocked: list[str] = []
        self._modules = part_modules(model)
        self._trainable = {id(p) for g in self.param_groups for p in g["params"]}
        for part in self.schedule:
            self._lock(part)

    def _lock(self, part: str) -> None:
        for m in self._modules[part]:
            set_trainable(m, False)
        set_bn_policy(self._modules[part], "frozen")

    def _unlock(self, part: str) -> None:
        policy = "frozen" if part in self._never_train else self.config.bn
        set_bn_policy(self._modules[part], policy)
        for m in self._modules[part]:
            for p in m.parameters():
                p.requires_grad_(id(p) in self._trainable)
            if policy == "train":  # the hook left these norms in inference mode: follow the model's mode again
                for norm in m.modules():
                    if isinstance(norm, _BatchNorm):
                        norm.training = self.model.training

    def step(self, epoch: int) -> list[str]:
        """Call at the start of every epoch (0-based); returns the parts unfrozen now."""
        target = min(len(self.schedule), epoch // self.epochs_per_part)
        newly = [p for p in self.schedule[:target] if p not in self.unlocked]
        for part in newly:
            self._unlock(part)
            self.unlocked.append(part)
        return newly


class UnfreezeCallback:
    """Progressive unfreezing as a ``resnets.train.Trainer`` callback: ``on_epoch_start`` calls
    ``unfreezer.step(epoch)`` (which also re-applies the right state when a run resumes mid-way).

    It implements every hook of the trainer's ``Callback`` protocol (the rest do nothing), so it
    needs no import of ``resnets.train``.
    """

    def __init__(self, unfreezer: ProgressiveUnfreezer) -> None:
        self.unfreezer = unfreezer

    def on_train_start(self, trainer: Any) -> None: ...

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        parts = self.unfreezer.step(epoch)
        if parts and hasattr(trainer, "log"):
            trainer.log(f"epoch {epoch}: unfroze {', '.join(parts)}")  # 0-based, as the epoch lines count

    def on_batch(self, trainer: Any, images: torch.Tensor, labels: torch.Tensor) -> None:
        return None

    def on_after_backward(self, trainer: Any) -> None: ...

    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None: ...

    def on_epoch_end(self, trainer: Any, record: dict) -> None: ...

    def on_train_end(self, trainer: Any, result: Any) -> None: ...
