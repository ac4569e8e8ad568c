"""Knowledge distillation (Hinton et al. 2015): the student matches the teacher's softened class
distribution (KL divergence at temperature T, scaled by T^2 so its gradients keep their size as T
changes) plus the usual cross-entropy on the labels.

``DistillationLoss`` is the trainer's ``loss_fn`` hook: ``loss_fn(trainer, images, targets) ->
(loss, logits)``, so ``resnets.train.Trainer(config, model=student, loss_fn=DistillationLoss(teacher))``
distils with every feature of the training loop (schedules, bf16, checkpoints, resume).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over the batch."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive (Hinton et al. use 2-20; 4 is common)")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the two models must predict the same classes")
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 4.0, alpha: float = 0.9,
                      label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``alpha * KL term + (1 - alpha) * cross-entropy``; ``targets`` are labels or soft targets (N x C).

    ``label_smoothing`` applies to integer labels (soft targets already carry theirs)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (the weight of the soft-target term)")
    kl = distillation_kl(student_logits, teacher_logits, temperature)
    logits = student_logits.float()
    if targets.ndim == 2:
        hard = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    else:
        hard = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    return alpha * kl + (1.0 - alpha) * hard, {"kl": kl.detach(), "ce": hard.detach()}


class DistillationLoss(nn.Module):
    """A frozen teacher and the loss above, usable as ``Trainer(loss_fn=...)``.

    The teacher runs in eval mode without gradients (in the trainer's autocast, so bf16 on CPU);
    the last KL and CE values are kept in ``last`` for logging.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha} must be in [0, 1]")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha
        self.last: dict[str, float] = {}
        self._teacher_placed = False

    def train(self, mode: bool = True) -> "DistillationLoss":  # the teacher always stays in eval mode
        super().train(mode)
        self.teacher.eval()
        return self

    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(images)

    def __call__(self, trainer: Any, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        if not self._teacher_placed:
            param = next(self.teacher.parameters(), None)
            if param is not None and param.device != images.device:
                self.teacher.to(images.device)
            if images.is_contiguous(memory_format=torch.channels_last) and images.ndim == 4:
                self.teacher.to(memory_format=torch.channels_last)
            self._teacher_placed = True
        student = trainer.forward_model(images) if trainer is not None else None
        teacher = self.teacher_logits(images)
        # the trainer passes integer labels unsmoothed when only label smoothing is on (no mixup/cutmix)
        smoothing = float(getattr(getattr(trainer, "config", None), "label_smoothing", 0.0) or 0.0)
        loss, parts = distillation_loss(student, teacher, targets, self.temperature, self.alpha, smoothing)
        self.last = {k: float(v) for k, v in parts.items()}
        return loss, student
