"""Calibration: do the model's confidences mean anything?

Expected calibration error (Naeini et al. 2015; Guo et al. 2017) with equal-width confidence
bins, the reliability diagram, and temperature scaling (Guo et al. 2017): one scalar ``T``
fitted on held-out validation logits by minimising the NLL with LBFGS. ``T`` is stored in the
checkpoint's metadata as ``temperature``; dividing logits by it changes confidences, never the
predicted class.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (equal-width confidence bins on [0, 1])."""

    edges: list[float]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "confidence": self.confidence, "accuracy": self.accuracy, "count": self.count}


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"expected probabilities (N, K) and labels (N,), got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("no samples: calibration needs at least one prediction")


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> ReliabilityBins:
    """Bin top-1 confidence into ``n_bins`` equal-width bins; accuracy and mean confidence per bin."""
    _check(probs, labels)
    confidence, prediction = probs.float().max(dim=1)
    correct = (prediction == labels).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 falls in the first bin.
    index = (torch.bucketize(confidence, edges[1:-1], right=False)).clamp(0, n_bins - 1)
    count = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    nonzero = count.clamp_min(1).float()
    return ReliabilityBins(edges=edges.tolist(), confidence=(conf_sum / nonzero).tolist(),
                           accuracy=(acc_sum / nonzero).tolist(), count=count.tolist())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over top-1 confidence bins."""
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(bins.count)
    return float(sum(n / total * abs(a - c) for n, a, c in zip(bins.count, bins.accuracy, bins.confidence)))


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits.float() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature minimising validation NLL (LBFGS on log T, so T stays positive)."""
    _check(logits, labels)
    logits = logits.detach().float()
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    if not torch.isfinite(torch.tensor(t)):
        raise ValueError("temperature fit diverged (non-finite); check the logits for NaN/inf")
    return t


@torch.no_grad()
def collect_logits(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """All logits and labels of ``model`` (in eval mode) over ``(images, labels)`` batches."""
    model.eval()
    all_logits, all_labels = [], []
    for x, y in batches:
        all_logits.append(model(x.to(device)).float().cpu())
        all_labels.append(y.cpu())
    if not all_logits:
        raise ValueError("the evaluation set is empty")
    return torch.cat(all_logits), torch.cat(all_labels)


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                       n_bins: int = 15) -> dict[str, Any]:
    """ECE, NLL, accuracy and the reliability bins, before and after dividing logits by ``temperature``."""
    probs = F.softmax(logits.float(), dim=1)
    scaled = F.softmax(logits.float() / temperature, dim=1)
    return {
        "samples": int(labels.shape[0]),
        "accuracy": float((logits.argmax(1) == labels).float().mean()),
        "n_bins": n_bins,
        "temperature": temperature,
        "ece": expected_calibration_error(probs, labels, n_bins),
        "nll": nll(logits, labels),
        "ece_scaled": expected_calibration_error(scaled, labels, n_bins),
        "nll_scaled": nll(logits, labels, temperature),
        "bins": reliability_bins(probs, labels, n_bins).to_dict(),
        "bins_scaled": reliability_bins(scaled, labels, n_bins).to_dict(),
    }


def reliability_diagram(report: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Draw the reliability diagram (accuracy vs confidence per bin, before/after scaling) as PNG."""
    from ..report.figures import pyplot, save_figure

    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    panels = [("bins", f"uncalibrated: ECE {report['ece']:.3f}"),
              ("bins_scaled", f"T = {report['temperature']:.2f}: ECE {report['ece_scaled']:.3f}")]
    for ax, (key, label) in zip(axes, panels):
        bins = report[key]
        edges = bins["edges"]
        width = edges[1] - edges[0]
        centers = [e + width / 2 for e in edges[:-1]]
        acc = [a if n > 0 else 0 for a, n in zip(bins["accuracy"], bins["count"])]
        gap = [c - a if n > 0 else 0 for a, c, n in zip(bins["accuracy"], bins["confidence"], bins["count"])]
        ax.bar(centers, acc, width=width, edgecolor="black", color="#4c72b0", label="accuracy")
        ax.bar(centers, gap, bottom=acc, width=width, edgecolor="#c44e52", color="#c44e52", alpha=0.3,
               label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_title(label, fontsize=10)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def store_temperature(checkpoint: str | os.PathLike, temperature: float) -> Path:
    """Write ``temperature`` into a checkpoint's metadata in place (atomically), keeping everything else."""
    from ..weights import CheckpointError, atomic_write, read_checkpoint

    path = Path(checkpoint)
    ckpt = read_checkpoint(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(path), framework="pt") as fh:
            text_meta = dict(fh.metadata() or {})
        text_meta["temperature"] = json.dumps(float(temperature))
        state = {k: v.contiguous() for k, v in ckpt.state_dict.items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=text_meta))
    elif ckpt.raw and any(isinstance(v, dict) for v in ckpt.raw.values()):
        raw = dict(ckpt.raw)
        raw["temperature"] = float(temperature)
        atomic_write(path, lambda tmp: torch.save(raw, tmp))
    else:
        raise CheckpointError(f"{path} is a bare state dict with nowhere to keep metadata; "
                              "re-save it with resnets.save_weights first")
    return path
