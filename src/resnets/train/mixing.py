"""Mixup and CutMix on whole batches, and the soft-target cross-entropy (with label smoothing) they need.

Random draws come from a generator derived from (seed, epoch, batch), so a resumed run mixes each
batch exactly as the uninterrupted one did.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.seeding import derive_seed

__all__ = ["mix_batch", "soft_cross_entropy", "smooth_targets"]


def smooth_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets with ``smoothing`` spread uniformly over all classes (as ``F.cross_entropy``)."""
    targets = F.one_hot(labels, num_classes).float()
    return targets * (1.0 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0, probability: float = 1.0, smoothing: float = 0.0,
              seed_parts: tuple = (0,)) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with its reverse: mixup (blend) or CutMix (paste a box), chosen at random when both
    alphas are set. Returns (images, soft targets N x classes)."""
    rng = np.random.default_rng(derive_seed("mix", *seed_parts))
    targets = smooth_targets(labels, num_classes, smoothing)
    if rng.random() >= probability or (mixup_alpha <= 0 and cutmix_alpha <= 0):
        return images, targets
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * np.sqrt(1 - lam)), int(width * np.sqrt(1 - lam))
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
    else:
        images = images * lam + partner * (1.0 - lam)
    return images, targets * lam + targets.flip(0) * (1.0 - lam)
