"""Linear probe: pooled features computed once (and cached), then a multinomial logistic
regression fit on them; the result is folded back into the network's ``fc`` so it is a normal
checkpoint that predicts from images.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..weights import atomic_write


@dataclass
class ProbeResult:
    model: nn.Module
    train_accuracy: float
    val_accuracy: float | None
    num_train: int
    feature_dim: int
    cache_hit: bool


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every weight and buffer except the head, and of the architecture (pooling, dilation): features
    depend on nothing else."""
    h = hashlib.sha1()
    spec = getattr(model, "spec", None)
    if spec is not None and hasattr(spec, "to_dict"):
        h.update(json.dumps(spec.replace(num_classes=0).to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("fc."):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.no_grad()
def extract_features(model: nn.Module, batches: Iterable, device: str | torch.device = "cpu",
                     amp: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logit features (float32, N x D) and labels for every batch, in eval mode."""
    was_training = model.training
    model.eval().to(device)
    feats, labels = [], []
    device = torch.device(device)
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y).cpu())
    model.train(was_training)
    if not feats:
        raise ValueError("no data to extract features from: the dataset is empty")
    return torch.cat(feats), torch.cat(labels).long()


def _require_data_key(cache: str | os.PathLike | None, data_key: str) -> None:
    if cache is not None and not data_key:
        raise ValueError("a feature cache needs data_key naming the data and its preprocessing (paths, image size, "
                         "split seed); without it a cache for other data would be reused")


def cached_features(model: nn.Module, batches: Iterable, cache_path: str | os.PathLike | None, data_key: str,
                    device: str | torch.device = "cpu", amp: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``extract_features`` through a safetensors cache keyed by the weights and ``data_key``.

    ``data_key`` must name the data and its preprocessing (paths, image size, split seed): a cache
    written for other data or other weights is recomputed, never silently reused.
    """
    _require_data_key(cache_path, data_key)
    key = hashlib.sha1(f"{model_fingerprint(model)}|{data_key}|amp={bool(amp)}".encode()).hexdigest()
    if cache_path is not None and Path(cache_path).exists():
        from safetensors import safe_open

        try:
            with safe_open(str(cache_path), framework="pt") as fh:
                if (fh.metadata() or {}).get("key") == key:
                    return fh.get_tensor("features"), fh.get_tensor("labels"), True
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed
            pass
    feats, labels = extract_features(model, batches, device, amp)
    if cache_path is not None:
        from safetensors.torch import save_file

        atomic_write(cache_path, lambda tmp: save_file({"features": feats.contiguous(), "labels": labels},
                                                       tmp, metadata={"key": key, "data_key": json.dumps(data_key)}))
    return feats, labels, False


def fit_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-4,
               max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised softmax regression by full-batch L-BFGS on standardised features.

    Returns ``(weight, bias)`` acting on the *raw* features: the standardisation is folded in.
    """
    if labels.numel() == 0:
        raise ValueError("cannot fit a linear classifier on zero samples")
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise ValueError(f"labels span {int(labels.min())}..{int(labels.max())} but num_classes={num_classes}")
    mean = features.mean(0)
    std = features.std(0, unbiased=False).clamp_min(1e-6)
    z = (features - mean) / std
    w = torch.zeros(num_classes, z.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, labels) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / std
        bias = b - (weight * mean).sum(1)
    return weight.detach(), bias.detach()


def linear_probe(model: nn.Module, train_batches: Iterable, num_classes: int, val_batches: Iterable | None = None,
                 cache_dir: str | os.PathLike | None = None, data_key: str = "", weight_decay: float = 1e-4,
                 device: str | torch.device = "cpu", amp: bool = False) -> ProbeResult:
    """Fit a new linear head on frozen features of ``model`` and install it as ``model.fc``."""
    _require_data_key(cache_dir, data_key)  # checked here: the per-split keys below are never empty
    cache = Path(cache_dir) if cache_dir is not None else None
    train_f, train_y, hit = cached_features(model, train_batches, cache / "train_features.safetensors" if cache else None,
                                            f"train|{data_key}", device, amp)
    weight, bias = fit_linear(train_f, train_y, num_classes, weight_decay)
    model.reset_classifier(num_classes)
    # forward_head multiplies the fc output by the spec's logit_scale (the airbench nets): divide it out so the
    # served logits, and so the probabilities and the loss, are the fitted ones
    scale = float(getattr(getattr(model, "spec", None), "logit_scale", 1.0))
    with torch.no_grad():
        model.fc.weight.copy_((weight / scale).to(model.fc.weight.device))
        model.fc.bias.copy_((bias / scale).to(model.fc.bias.device))
    train_acc = ((train_f @ weight.T + bias).argmax(1) == train_y).float().mean().item()
    val_acc = None
    if val_batches is not None:
        val_f, val_y, _ = cached_features(model, val_batches, cache / "val_features.safetensors" if cache else None,
                                          f"val|{data_key}", device, amp)
        val_acc = ((val_f @ weight.T + bias).argmax(1) == val_y).float().mean().item()
    return ProbeResult(model, train_acc, val_acc, int(train_y.numel()), int(train_f.shape[1]), hit)
