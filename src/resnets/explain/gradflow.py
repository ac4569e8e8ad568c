"""Gradient flow through depth: how the training signal reaches each block, plain vs residual.

For every block we record, on one forward/backward pass:

* ``param_grad``: the L2 norm of the gradient of the loss w.r.t. the block's parameters
  (what the optimizer sees; vanishing in deep plain nets),
* ``output_grad``: the L2 norm of the gradient w.r.t. the block's output (the backward signal),
* for residual blocks, the forward norms of the residual branch F(x) and of the shortcut,
  taken from the two inputs of the block's ``Residual`` add module (``block.add``), and their
  ratio ``branch / shortcut``; also the gradient norm reaching each of the two inputs.

Norms are per-sample means over the batch, except ``param_grad``, the norm of the batch-mean loss's gradient.
The forward norms do not depend on the batch size; the gradient norms w.r.t. activations do: a batch-mean loss
gives each sample 1/N of its own loss's gradient, so compare them at one batch size. Under fp16 loss scaling
the trainer's callback divides every gradient norm by the scale in use, so they read as unscaled.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..jsonfile import finite_or_none, to_json


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) for every residual/plain block, shallow to deep."""
    net = model
    while not hasattr(net, "blocks") and hasattr(net, "model"):
        net = net.model
    if not hasattr(net, "blocks"):
        raise ValueError(f"{type(net).__name__} has no blocks(); gradient flow needs a resnets ResNet")
    names = {id(m): n for n, m in net.named_modules()}
    return [(names[id(b)], b) for b in net.blocks()]


def _per_sample_norm(t: torch.Tensor) -> float:
    return float(t.detach().float().flatten(1).norm(dim=1).mean())


@dataclass
class GradientFlow:
    """Per-block statistics of one forward/backward pass (lists are ordered shallow to deep)."""

    blocks: list[str]
    param_grad: list[float]
    output_grad: list[float]
    branch_norm: list[float | None]
    shortcut_norm: list[float | None]
    branch_grad: list[float | None]
    shortcut_grad: list[float | None]
    """At the shortcut's tensor: for an identity shortcut that is the block's input, so both paths' gradient (the
    previous block's ``output_grad``); for a projection or padded shortcut, the add's gradient (``branch_grad``)."""
    loss: float
    step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def branch_ratio(self) -> list[float | None]:
        return [b / s if b is not None and s else None for b, s in zip(self.branch_norm, self.shortcut_norm)]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON; a diverging run's NaN or infinite values become None (JSON has no NaN)."""
        return finite_or_none({
            "step": self.step, "loss": self.loss, "blocks": self.blocks, "param_grad": self.param_grad,
            "output_grad": self.output_grad, "branch_norm": self.branch_norm,
            "shortcut_norm": self.shortcut_norm, "branch_ratio": self.branch_ratio,
            "branch_grad": self.branch_grad, "shortcut_grad": self.shortcut_grad, **self.extra})


class _Recorder:
    """Hooks on every block (output gradient) and every ``block.add`` (its two inputs)."""

    def __init__(self, model: nn.Module) -> None:
        self.named = _blocks(model)
        n = len(self.named)
        self.output_grad: list[float] = [0.0] * n
        self.branch_norm: list[float | None] = [None] * n
        self.shortcut_norm: list[float | None] = [None] * n
        self.branch_grad: list[float | None] = [None] * n
        self.shortcut_grad: list[float | None] = [None] * n
        self.handles: list[Any] = []
        for i, (_, block) in enumerate(self.named):
            self.handles.append(block.register_forward_hook(self._on_block(i)))
            add = getattr(block, "add", None)
            if add is not None:
                self.handles.append(add.register_forward_hook(self._on_add(i)))

    def _on_block(self, i: int) -> Callable:
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            if out.requires_grad:
                out.register_hook(lambda g: self.output_grad.__setitem__(i, _per_sample_norm(g)))
        return hook

    def _on_add(self, i: int) -> Callable:
        def hook(_m: nn.Module, inputs: tuple, _out: torch.Tensor) -> None:
            branch, shortcut = inputs
            self.branch_norm[i] = _per_sample_norm(branch)
            self.shortcut_norm[i] = _per_sample_norm(shortcut)
            if branch.requires_grad:
                branch.register_hook(lambda g: self.branch_grad.__setitem__(i, _per_sample_norm(g)))
            if shortcut.requires_grad:
                shortcut.register_hook(lambda g: self.shortcut_grad.__setitem__(i, _per_sample_norm(g)))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def param_grads(self) -> list[float]:
        out = []
        for _, block in self.named:
            grads = [p.grad.detach().float().norm() ** 2 for p in block.parameters() if p.grad is not None]
            out.append(float(torch.stack(grads).sum().sqrt()) if grads else 0.0)
        return out

    def result(self, loss: float, step: int) -> GradientFlow:
        return GradientFlow(blocks=[n for n, _ in self.named], param_grad=self.param_grads(),
                            output_grad=list(self.output_grad), branch_norm=list(self.branch_norm),
                            shortcut_norm=list(self.shortcut_norm), branch_grad=list(self.branch_grad),
                            shortcut_grad=list(self.shortcut_grad), loss=loss, step=step)


def measure_gradient_flow(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                          step: int = 0) -> GradientFlow:
    """One forward/backward pass on ``(x, y)`` with hooks; the model's ``.grad`` are restored after.

    The model's mode is left as it is (train mode shows the flow the optimizer sees).
    """
    saved = {p: p.grad for p in model.parameters()}
    for p in model.parameters():
        p.grad = None
    recorder = _Recorder(model)
    try:
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            if not torch.isfinite(loss):
                raise ValueError(f"loss is {float(loss)}; cannot measure gradients of a diverged model")
            loss.backward()
        result = recorder.result(float(loss.detach()), step)
    finally:
        recorder.remove()
        for p, g in saved.items():
            p.grad = g
    return result


class GradientFlowCallback:
    """Training callback: every ``every`` steps, record gradient flow of the current batch.

    Call it after ``loss.backward()`` (before ``optimizer.step()``) as ``callback(model, step)``;
    it reads the ``.grad`` the trainer just computed, plus branch/shortcut norms captured by
    hooks during that step's forward pass (installed by ``attach``). Records are appended to
    ``path`` as JSON lines, so a run directory keeps ``gradflow.jsonl`` next to ``metrics.jsonl``.
    """

    def __init__(self, path: str | os.PathLike | None = None, every: int = 100) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.path = Path(path) if path is not None else None
        self.every = every
        self.records: list[GradientFlow] = []
        self._recorder: _Recorder | None = None

    def attach(self, model: nn.Module) -> "GradientFlowCallback":
        self.detach()
        self._recorder = _Recorder(model)
        return self

    def detach(self) -> None:
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None

    def wants(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, model: nn.Module, step: int, loss: float | torch.Tensor | None = None,
                 grad_scale: float = 1.0) -> GradientFlow | None:
        """``grad_scale``: the factor the gradients carry (fp16 loss scaling), divided out of every gradient norm."""
        if self._recorder is None:
            self.attach(model)
            return None  # hooks were not in place for this step's forward pass
        if not self.wants(step):
            return None
        record = self._recorder.result(float(loss) if loss is not None else float("nan"), step)
        if grad_scale != 1.0:
            for name in ("param_grad", "output_grad", "branch_grad", "shortcut_grad"):
                setattr(record, name, [g / grad_scale if g is not None else None for g in getattr(record, name)])
        self.records.append(record)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(to_json(record.to_dict(), indent=None) + "\n")
        return record


class GradientFlowLogger:
    """``GradientFlowCallback`` as a ``resnets.train.Trainer`` callback: writes
    ``RUN_DIR/gradflow.jsonl`` (or ``path``) every ``every`` steps, from the gradients of the
    trainer's own backward pass."""

    def __init__(self, every: int = 100, path: str | os.PathLike | None = None) -> None:
        self.every, self.path = every, path
        self.callback: GradientFlowCallback | None = None

    def on_train_start(self, trainer: Any) -> None:
        path = self.path
        if path is None and getattr(trainer, "out_dir", None) is not None:
            path = Path(trainer.out_dir) / "gradflow.jsonl"
        self.callback = GradientFlowCallback(path, self.every).attach(trainer.model)

    def on_after_backward(self, trainer: Any) -> None:
        if self.callback is not None:
            scaler = getattr(trainer, "scaler", None)  # fp16: the gradients are still multiplied by the loss scale
            scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
            self.callback(trainer.model, trainer.step, loss=getattr(trainer, "step_loss", None), grad_scale=scale)

    def on_train_end(self, trainer: Any, result: Any) -> None:
        if self.callback is not None:
            self.callback.detach()

    def on_epoch_start(self, trainer: Any, epoch: int) -> None: ...

    def on_batch(self, trainer: Any, images: torch.Tensor, labels: torch.Tensor) -> None:
        return None

    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None: ...

    def on_epoch_end(self, trainer: Any, record: dict) -> None: ...


def read_gradflow(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def plot_gradient_flow(runs: dict[str, Sequence[GradientFlow | dict[str, Any]]], path: str | os.PathLike,
                       title: str = "") -> Path:
    """Per-block gradient norms (log scale) for each run and record, and residual branch/shortcut ratios.

    ``runs`` maps a label (e.g. ``"plain56"``) to its records (e.g. at init and after training).
    """
    from ..report.figures import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    any_ratio = False
    for ci, (label, records) in enumerate(runs.items()):
        for ri, rec in enumerate(records):
            d = rec.to_dict() if isinstance(rec, GradientFlow) else rec
            depth = list(range(1, len(d["blocks"]) + 1))
            style = dict(color=colours[ci % len(colours)], ls=styles[ri % len(styles)], lw=1.4)
            name = f"{label} step {d['step']}"
            # a diverged run's NaN/inf are stored as null: a gap in the line, not a crash
            axes[0].semilogy(depth, [math.nan if v is None else max(v, 1e-12) for v in d["param_grad"]],
                             label=name, **style)
            axes[1].semilogy(depth, [math.nan if v is None else max(v, 1e-12) for v in d["output_grad"]],
                             label=name, **style)
            ratio = d.get("branch_ratio") or []
            points = [(i, r) for i, r in zip(depth, ratio) if r is not None]
            if points:
                any_ratio = True
                axes[2].semilogy([p[0] for p in points], [p[1] for p in points], label=name, **style)
    axes[0].set_title("|dL/dθ| per block (parameters)", fontsize=10)
    axes[1].set_title("|dL/d out| per block (backward signal)", fontsize=10)
    axes[2].set_title("|F(x)| / |shortcut| (residual blocks)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("block (input → output)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    if not any_ratio:
        axes[2].text(0.5, 0.5, "no residual blocks", ha="center", va="center", transform=axes[2].transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
