"""A small, complete fine-tuning loop: the policy's parameter groups, SGD/AdamW with warmup and a
cosine schedule that keeps every group's multiplier, optional progressive unfreezing, bf16
autocast, a run directory with ``metrics.jsonl`` and ``best``/``last`` checkpoints.

It exists because fine-tuning needs per-group learning rates and an unfreezing callback at epoch
boundaries; anything heavier (EMA, distributed, resumable recipes) belongs to ``resnets.train``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .. import jsonfile
from ..jsonfile import to_json
from ..weights import save_weights
from .policy import ProgressiveUnfreezer


@dataclass
class LoopConfig:
    epochs: int = 10
    optimizer: str = "sgd"
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    device: str = "cpu"
    amp: bool = False
    """bf16 autocast (fast on CPUs with AVX-512 bf16 and on GPUs)."""
    channels_last: bool = False
    grad_clip: float | None = None


@dataclass
class FinetuneHistory:
    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best_val_accuracy(self) -> float | None:
        accs = [e["val_acc"] for e in self.epochs if e.get("val_acc") is not None]
        return max(accs) if accs else None

    @property
    def final_val_accuracy(self) -> float | None:
        return self.epochs[-1].get("val_acc") if self.epochs else None


def make_optimizer(param_groups: list[dict[str, Any]], name: str, momentum: float = 0.9) -> torch.optim.Optimizer:
    if not param_groups:
        raise ValueError("nothing to train: every parameter is frozen (check freeze / bn / learning-rate multipliers)")
    if name == "sgd":
        return torch.optim.SGD(param_groups, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(param_groups)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The factor applied to every group's own learning rate at each step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def evaluate(model: nn.Module, batches: Iterable, device: str = "cpu", amp: bool = False) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy over ``batches`` (``resnets.evaluate``'s metrics), in eval mode."""
    from ..evaluate.metrics import evaluate as evaluate_logits

    result = evaluate_logits(model, batches, model.spec.num_classes, device=device, precision="bf16" if amp else "fp32")
    return {"acc": result.top1, "loss": result.loss, "n": result.count}


def run_finetune(model: nn.Module, param_groups: list[dict[str, Any]], train_batches: Iterable,
                 loop: LoopConfig, val_batches: Iterable | None = None, unfreezer: ProgressiveUnfreezer | None = None,
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None, out_dir: str | Path | None = None,
                 metadata: dict[str, Any] | None = None, log: Callable[[str], None] | None = print) -> FinetuneHistory:
    """Train ``model`` on ``param_groups`` for ``loop.epochs``; ``train_batches`` is re-iterated each epoch.

    ``augment`` runs on each training batch after it reaches the device (batch augmentation).
    With ``out_dir`` it writes ``metrics.jsonl``, ``last.safetensors`` and (with validation data)
    ``best.safetensors``, each with ``metadata`` (class names, normalisation, the policy).
    """
    dev = torch.device(loop.device)
    model.to(dev)
    if loop.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(param_groups, loop.optimizer, loop.momentum)
    steps_per_epoch = len(train_batches) if hasattr(train_batches, "__len__") else None
    if steps_per_epoch is None or steps_per_epoch == 0:
        raise ValueError("the training data is empty or has no length; pass a DataLoader or a list of batches")
    total = steps_per_epoch * loop.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total, int(round(loop.warmup_epochs * steps_per_epoch))))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("")
    history = FinetuneHistory()
    best = -1.0
    for epoch in range(loop.epochs):
        unfrozen = unfreezer.step(epoch) if unfreezer is not None else []
        if hasattr(train_batches, "set_epoch"):  # resnets.data loaders: a new order each epoch
            train_batches.set_epoch(epoch)
        model.train()
        start = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in train_batches:
            x, y = x.to(dev, non_blocking=True), torch.as_tensor(y).to(dev, non_blocking=True)
            if augment is not None:
                x = augment(x)
            if loop.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=loop.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=loop.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}: lower the learning rate "
                                         f"(now {optimizer.param_groups[0]['lr']:.3g} for {param_groups[0].get('name')})"
                                         " or check the inputs for NaN")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if loop.grad_clip is not None:
                nn.utils.clip_grad_norm_([p for g in param_groups for p in g["params"]], loop.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                               "lr": {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)},
                               "unfrozen": unfrozen, "seconds": time.perf_counter() - start}
        if val_batches is not None:
            metrics = evaluate(model, val_batches, loop.device, loop.amp)
            row.update(val_acc=metrics["acc"], val_loss=metrics["loss"])
        history.epochs.append(row)
        if log is not None:
            val = f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else ""
            log(f"epoch {epoch + 1}/{loop.epochs} loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f}"
                f"{val}{' unfroze ' + ','.join(unfrozen) if unfrozen else ''} ({row['seconds']:.1f}s)")
        if out is not None:
            with open(out / "metrics.jsonl", "a") as fh:
                fh.write(to_json(row, indent=None) + "\n")
            meta = {**(metadata or {}), "epoch": epoch + 1, "val_acc": row.get("val_acc"), "loop": asdict(loop)}
            if row.get("val_acc") is not None and row["val_acc"] > best:
                best = row["val_acc"]
                save_weights(model, out / "best.safetensors", meta)
            save_weights(model, out / "last.safetensors", meta)
    return history


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    jsonfile.write_json(path, data, default=str)
