"""The degradation experiment (He et al. 2015, Fig. 1 and 6): plain and residual twins, one recipe.

Deeper plain networks reach *higher* training error than shallower ones, which overfitting cannot
explain; with shortcuts, depth helps. ``run_degradation`` trains ``plain{d}`` and ``resnet{d}``
for each depth with the same data, seed, schedule and budget, logs training and validation error
along the way and writes the paper-style figure plus a JSON of the final numbers.

The training loop here (``train_classifier``) is deliberately small: SGD with Nesterov momentum,
linear warm-up then linear decay, batch augmentation from ``resnets.data``, bf16 autocast and
channels-last on CPU, optional adversarial training (PGD-AT / fast FGSM-RS) and an optional
per-step callback (e.g. ``GradientFlowCallback``). It trains in pixel space: the network is wrapped
in ``Normalized`` so attacks and corruptions see images in [0, 1].
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate.robustness import ADV_TRAINING, Normalized, adversarial_examples


@dataclass
class Budget:
    """How much training each network gets (identical for every twin)."""

    epochs: float = 3.0
    train_subset: int | None = 10000
    """Train on a seeded, class-balanced subset of this many images (None: all)."""
    val_subset: int | None = 2000
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup: float = 0.1
    """Fraction of steps spent warming the learning rate up linearly from lr/10."""
    log_points: int = 8
    """How many times per run to measure validation error (and close a training-error window)."""
    bf16: bool | None = None
    """bf16 autocast; None (``auto``): where the device runs bf16 faster than fp32
    (``resnets.precision.bf16_is_faster``), else fp32 (a CPU without AVX-512 BF16 or AMX emulates it at a
    fraction of fp32's speed, and an Intel CPU without AMX runs even native bf16 slower)."""
    channels_last: bool = True
    seed: int = 0
    adversarial: str | None = None
    """None, ``"pgd"`` (PGD-AT) or ``"fgsm_rs"`` (fast FGSM with random start)."""
    adv_eps: float = 8 / 255
    adv_steps: int = 7
    adv_alpha: float | None = None

    def __post_init__(self) -> None:
        def need(ok: bool, key: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"budget {key}={getattr(self, key)!r}: {allowed}")

        need(0 < self.epochs < float("inf"), "epochs", "needs a finite number > 0, e.g. epochs=3")
        need(self.batch_size >= 1, "batch_size", "needs a whole number >= 1, e.g. batch_size=128")
        need(0 < self.lr < float("inf"), "lr", "needs a finite number > 0, e.g. lr=0.1")
        for key in ("train_subset", "val_subset"):
            need(getattr(self, key) is None or getattr(self, key) >= 1, key,
                 f"needs a whole number >= 1 or 'all', e.g. {key}=2000")
        need(0 <= self.momentum < 1, "momentum", "needs a number in [0, 1), e.g. momentum=0.9")
        need(self.weight_decay >= 0, "weight_decay", "needs a number >= 0, e.g. weight_decay=5e-4")
        need(0 <= self.warmup <= 1, "warmup", "needs a fraction of the steps in [0, 1], e.g. warmup=0.1")
        need(self.log_points >= 1, "log_points", "needs a whole number >= 1, e.g. log_points=8")
        need(0 < self.adv_eps <= 1, "adv_eps", "needs a number in (0, 1] in pixel units, e.g. adv_eps=8/255")
        need(self.adv_steps >= 1, "adv_steps", "needs a whole number >= 1, e.g. adv_steps=7")
        need(self.adv_alpha is None or self.adv_alpha > 0, "adv_alpha", "needs a number > 0 or 'none'")
        if self.adversarial is not None and self.adversarial not in ADV_TRAINING:
            raise ValueError(f"budget adversarial={self.adversarial!r}: choose one of {', '.join(ADV_TRAINING)} "
                             "or none")

    #: keys that may be ``none`` (``all`` for the subsets, ``auto`` for bf16)
    OPTIONAL = ("train_subset", "val_subset", "bf16", "adversarial", "adv_alpha")
    FLOATS = ("epochs", "lr", "momentum", "weight_decay", "warmup", "adv_eps", "adv_alpha")
    BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                "off": False}

    @classmethod
    def parse(cls, text: str | None) -> "Budget":
        """``"epochs=3,train_subset=10000,bf16=1"``-style overrides of the defaults; every bad item is a
        ``ValueError`` naming the key and what it takes."""
        budget = cls()
        if not text:
            return budget
        values: dict[str, Any] = {}
        fields = list(asdict(budget))
        for part in (p.strip() for p in text.split(",") if p.strip()):
            if "=" not in part:
                raise ValueError(f"budget item {part!r} must be KEY=VALUE (keys: {', '.join(fields)})")
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in fields:
                raise ValueError(f"unknown budget key {key!r}; known keys: {', '.join(fields)}")
            values[key] = cls._value(key, value)
        return cls(**{**asdict(budget), **values})

    @classmethod
    def _example(cls, key: str) -> str:
        default = getattr(cls(), key)
        return f"{default:g}" if isinstance(default, float) else str(default if default is not None else 1)

    @classmethod
    def _value(cls, key: str, value: str) -> Any:
        """One budget value read for its key."""
        low = value.lower()
        if low in ("none", "all", "auto"):
            if key in cls.OPTIONAL and (low != "auto" or key == "bf16"):
                return None
            allowed = {"bf16": "1, 0 or auto", "channels_last": "1 or 0"}.get(
                key, "a whole number" if key not in cls.FLOATS else "a number")
            raise ValueError(f"budget {key}={value}: {key} cannot be {low}; give {allowed}")
        if key in ("bf16", "channels_last"):
            if low not in cls.BOOLEANS:
                raise ValueError(f"budget {key}={value!r}: use 1 or 0 (also true/false, yes/no, on/off)"
                                 + (", or auto" if key == "bf16" else ""))
            return cls.BOOLEANS[low]
        if key == "adversarial":
            return value
        if key in cls.FLOATS:
            try:
                return float(eval_fraction(value))
            except (ValueError, ZeroDivisionError):
                raise ValueError(f"budget {key}={value!r} is not a number; write e.g. {key}={cls._example(key)} "
                                 "(fractions like 8/255 work)") from None
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"budget {key}={value!r} is not a whole number; write e.g. {key}={cls._example(key)}"
                             + (" or all" if key in cls.OPTIONAL else "")) from None

    def resolved(self, device: str | torch.device) -> "Budget":
        """This budget with ``bf16=None`` decided for ``device`` (what a result records)."""
        if self.bf16 is not None:
            return self
        from ..precision import resolve_precision

        return replace(self, bf16=resolve_precision("auto", device) == "bf16")


def eval_fraction(text: str) -> float:
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def _balanced_subset(labels: torch.Tensor, count: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded subset with (almost) the same number of images per class."""
    if count is None or count >= labels.numel():
        return torch.arange(labels.numel())
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = max(1, count // len(classes))
    picks = []
    for c in classes:
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


def lr_at(step: int, total: int, budget: Budget) -> float:
    warm = max(1, int(total * budget.warmup))
    if step < warm:
        return budget.lr * (0.1 + 0.9 * step / warm)
    return budget.lr * max(0.0, (total - step) / max(1, total - warm))


@torch.no_grad()
def error_rate(model: nn.Module, loader: Any, bf16: bool, channels_last: bool = False) -> float:
    """Top-1 error of ``model`` on ``loader``, in the precision the run trains in (no default: a bf16 default
    would run emulated bf16 on CPUs without it, at a fraction of fp32's speed)."""
    model.eval()
    wrong, seen = 0, 0
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        wrong += (logits.argmax(1) != y).sum().item()
        seen += y.numel()
    return wrong / max(1, seen)


def train_classifier(model: nn.Module, train_loader: Any, val_loader: Any | None, budget: Budget,
                     callback: Callable[[nn.Module, int, float], Any] | None = None,
                     log: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` (taking pixels in [0, 1]) with ``budget``; return the logged history.

    Each history row: ``step``, ``epoch``, ``lr``, ``train_loss`` and ``train_error`` (running, over
    the augmented batches since the previous row, as He et al. plot; the last row also takes the steps left
    over after the last full window, so it never rests on a few batches), ``images`` (the row's window),
    ``val_error``, ``seconds``.
    """
    budget = budget.resolved(next(model.parameters()).device)
    steps_per_epoch = len(train_loader)
    total = max(1, int(round(budget.epochs * steps_per_epoch)))
    log_every = max(1, total // max(1, budget.log_points))
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": budget.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=budget.lr, momentum=budget.momentum, nesterov=True)
    if budget.channels_last:
        model.to(memory_format=torch.channels_last)
    history: list[dict[str, Any]] = []
    window_loss, window_wrong, window_seen = 0.0, 0, 0
    start = time.perf_counter()
    step, epoch = 0, 0
    while step < total:
        train_loader.set_epoch(epoch)
        for x, y in train_loader:
            if step >= total:
                break
            if budget.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            lr = lr_at(step, total, budget)
            for group in optimizer.param_groups:
                group["lr"] = lr
            use_bf16, device_type = budget.bf16, x.device.type
            if budget.adversarial:
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
                    x = adversarial_examples(model, x, y, budget.adversarial, budget.adv_eps,
                                             steps=budget.adv_steps, alpha=budget.adv_alpha)
            model.train()
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate "
                                         f"(budget lr={budget.lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if callback is not None:
                callback(model, step, loss.item())
            optimizer.step()
            window_loss += loss.item() * y.numel()
            window_wrong += (logits.argmax(1) != y).sum().item()
            window_seen += y.numel()
            step += 1
            if step == total or (step % log_every == 0 and total - step >= log_every):
                row = {"step": step, "epoch": step / steps_per_epoch, "lr": lr,
                       "train_loss": window_loss / window_seen, "train_error": window_wrong / window_seen,
                       "images": window_seen,
                       "val_error": (error_rate(model, val_loader, budget.bf16, budget.channels_last)
                                     if val_loader is not None else None),
                       "seconds": time.perf_counter() - start}
                history.append(row)
                if log is not None:
                    log(row)
                window_loss, window_wrong, window_seen = 0.0, 0, 0
        epoch += 1
    model.eval()
    return history


@dataclass
class DegradationResult:
    budget: dict[str, Any]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """model name -> history rows."""
    params: dict[str, int] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def final(self) -> dict[str, dict[str, float]]:
        """Each run's last row. A history logged before the last row took the leftover steps (its last window
        shorter than the one before) has the two windows merged, weighted by their steps."""
        out = {}
        for name, rows in self.runs.items():
            tail = rows[-1]
            train_error = tail["train_error"]
            if "images" not in tail and len(rows) >= 3:
                gaps = [rows[-1]["step"] - rows[-2]["step"], rows[-2]["step"] - rows[-3]["step"]]
                if gaps[0] < gaps[1]:
                    train_error = (tail["train_error"] * gaps[0] + rows[-2]["train_error"] * gaps[1]) / sum(gaps)
            out[name] = {"train_error": train_error, "val_error": tail["val_error"],
                         "seconds": tail["seconds"], "params": self.params.get(name)}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "data": self.data, "final": self.final(), "runs": self.runs}


def load_pixel_splits(source: str | os.PathLike, budget: Budget, val_split: float | int = 0.1,
                      cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """Train/validation loaders yielding pixels in [0, 1] (normalisation goes inside the model)."""
    from ..data import AugmentConfig, load_data, make_loader

    splits = load_data(source, val_split=val_split, seed=budget.seed, cache_dir=cache_dir)
    train, val = splits.train, splits.val
    if not getattr(train, "in_memory", False):
        raise ValueError(f"{source} is not held in memory; the degradation experiment needs a small in-memory "
                         "dataset such as cifar10")
    train = train.subset(_balanced_subset(train.labels, budget.train_subset, budget.seed))
    val = val.subset(_balanced_subset(val.labels, budget.val_subset, budget.seed + 1))
    if len(train) < budget.batch_size:  # the training loader drops the last partial batch: none would be left
        raise ValueError(f"the training set has {len(train)} images, fewer than one batch of "
                         f"batch_size={budget.batch_size}; lower it with --budget batch_size=N (N <= {len(train)})")
    augment = AugmentConfig.preset("he2015") if splits.image_size <= 64 else AugmentConfig.preset("imagenet")
    pixel = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    train_loader = make_loader(train, budget.batch_size, train=True, augment=augment, seed=budget.seed,
                               device=device, **pixel)
    val_loader = make_loader(val, 500, train=False, device=device, **pixel)
    return splits, train_loader, val_loader


def run_degradation(source: str | os.PathLike, depths: Sequence[int], budget: Budget, out_dir: str | os.PathLike,
                    cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    log: Callable[[str], None] | None = print) -> DegradationResult:
    """Train plain and residual twins at each depth; write ``degradation.json`` and ``degradation.png``."""
    from ..factory import create_model
    from ..zoo import list_models

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = budget.resolved(device)
    for d in depths:
        for prefix in ("plain", "resnet"):
            if f"{prefix}{d}" not in list_models():
                raise ValueError(f"no model {prefix}{d}; CIFAR depths are 6n+2 (20, 32, 44, 56, 110)")
    splits, train_loader, val_loader = load_pixel_splits(source, budget, cache_dir=cache_dir, device=device)
    result = DegradationResult(budget=asdict(budget), data={"source": str(source), "train": len(train_loader.dataset),
                                                             "val": len(val_loader.dataset),
                                                             "image_size": splits.image_size})
    previous = out / "degradation.json"
    if previous.exists():  # keep twins already trained with this exact budget (resume, or add depths)
        try:
            old = json.loads(previous.read_text(encoding="utf-8"))
            if not isinstance(old, dict):
                raise ValueError(f"a JSON {type(old).__name__}, not an object")
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{previous} is damaged ({exc}); it records the twins already trained there, so it is "
                             "not overwritten: repair or move it away, or choose another --out") from None
        old_data = old.get("data") if isinstance(old.get("data"), dict) else {}
        if _same_source(old_data.get("source"), result.data["source"]):  # tdata, ./tdata/ and its absolute path
            old["data"] = {**old_data, "source": result.data["source"]}
        if old.get("budget") != result.budget or old.get("data") != result.data:
            changed = [f"{key} {old.get(part, {}).get(key)!r} -> {value!r}" for part in ("budget", "data")
                       for key, value in getattr(result, part).items() if old.get(part, {}).get(key) != value]
            raise ValueError(f"{previous} records twins trained with another budget or data ({'; '.join(changed)}); "
                             "it is kept: choose another --out for this budget, or move that folder away")
        result.runs.update(old.get("runs", {}))
        result.params.update({k: v["params"] for k, v in old.get("final", {}).items() if v.get("params")})
    for d in depths:
        for prefix in ("plain", "resnet"):
            name = f"{prefix}{d}"
            if name in result.runs:
                if log is not None:
                    log(f"{name}: already trained with this budget in {previous}, kept")
                continue
            torch.manual_seed(budget.seed)
            net = create_model(name, num_classes=len(splits.classes))
            model = Normalized(net, splits.mean, splits.std).to(device)
            result.params[name] = sum(p.numel() for p in net.parameters())

            def echo(row: dict[str, Any], name: str = name) -> None:
                if log is not None:
                    log(f"{name} step {row['step']} epoch {row['epoch']:.2f} loss {row['train_loss']:.3f} "
                        f"train err {row['train_error'] * 100:.1f}% val err {row['val_error'] * 100:.1f}% "
                        f"({row['seconds']:.0f}s)")

            result.runs[name] = train_classifier(model, train_loader, val_loader, budget, log=echo)
            _write(result, out)
    return result


def _same_source(old: Any, new: str) -> bool:
    """The same --data spelt another way (a trailing slash, ./, an absolute path): the twins trained on it count."""
    if old == new:
        return True
    try:
        return isinstance(old, str) and os.path.samefile(old, new)
    except OSError:  # either path is gone (or a dataset name such as cifar10): only the same text is the same
        return False


def _write(result: DegradationResult, out: Path) -> None:
    from ..jsonfile import write_json

    write_json(out / "degradation.json", result.to_dict())
    plot_degradation(result.to_dict(), out / "degradation.png")


def plot_degradation(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """He et al. Fig. 6 layout: plain nets left, ResNets right; thin = training, bold = validation error."""
    from ..report.figures import pyplot, save_figure

    plt = pyplot()

    runs = data["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colours = {}
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for name, rows in runs.items():
        family = 0 if name.startswith("plain") else 1
        depth = "".join(ch for ch in name if ch.isdigit())
        colour = colours.setdefault(depth, palette[len(colours) % len(palette)])
        epochs = [r["epoch"] for r in rows]
        axes[family].plot(epochs, [100 * r["train_error"] for r in rows], color=colour, lw=1, ls="--",
                          label=f"{name} train")
        axes[family].plot(epochs, [100 * r["val_error"] for r in rows], color=colour, lw=2.2, label=f"{name} val")
    budget = data.get("budget", {})
    for ax, title in zip(axes, ("plain", "ResNet")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    sub = data.get("data", {})
    source = Path(str(sub.get("source", "")))
    label = source.parent.name if source.name in ("train", "val", "test") else source.name
    fig.suptitle(f"Degradation on {label or 'data'}: {sub.get('train', '?')} train / "
                 f"{sub.get('val', '?')} val images, {budget.get('epochs')} epochs, batch {budget.get('batch_size')}, "
                 f"lr {budget.get('lr')}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
