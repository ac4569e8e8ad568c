"""Classification metrics over a loader: top-1, top-5, per-class accuracy, confusion matrix, loss.

Sums are kept as tensors (counts, loss sum, confusion matrix) so several processes can add theirs
with one reduction before the ratios are taken (``EvalSums.reduce``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast_context
from .tta import tta_and_plain_logits, tta_logits

__all__ = ["EvalResult", "EvalSums", "OnlyClasses", "autocast_context", "evaluate", "evaluate_with_plain",
           "save_confusion_png", "wilson_interval"]


def wilson_interval(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval (95% for the default ``z``) of a proportion, such as top-1 on ``total`` images.
    It says how far the accuracy on this many test images can sit from the accuracy on the population they are
    drawn from: 90% on 5,000 images is 89.1-90.8%, on 500 it is 87.1-92.4%. It does not cover seed-to-seed
    variation of training, which needs several runs."""
    if total <= 0:
        return (0.0, 1.0)
    p = successes / total
    z2 = z * z / total
    centre = (p + z2 / 2) / (1 + z2)
    half = z / (1 + z2) * math.sqrt(p * (1 - p) / total + z2 / (4 * total))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class EvalSums:
    """Additive evaluation state: confusion matrix (true x predicted), top-5 hits, loss sum."""

    confusion: torch.Tensor
    top5_correct: torch.Tensor
    loss_sum: torch.Tensor

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device | str = "cpu") -> "EvalSums":
        return cls(torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device),
                   torch.zeros((), dtype=torch.int64, device=device), torch.zeros((), dtype=torch.float64, device=device))

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Count a batch; return which of its images were classified right (top-1), in order."""
        logits = logits.float()
        classes = self.confusion.shape[0]
        # the confusion matrix is indexed by label * classes + prediction: an out-of-range index would land in
        # another cell (a wider model's extra outputs) or fail with a cryptic reshape error
        if logits.ndim != 2 or logits.shape[1] != classes:
            raise ValueError(f"the model gives {tuple(logits.shape)} logits for {classes} classes; evaluate with "
                             f"num_classes equal to the model's number of outputs")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise ValueError(f"labels must lie in 0..{classes - 1}, got {int(labels.min())}..{int(labels.max())}")
        predicted = logits.argmax(1)
        self.confusion += torch.bincount(labels * classes + predicted, minlength=classes * classes).view(classes, classes)
        k = min(5, logits.shape[1])
        self.top5_correct += (logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        return predicted == labels

    def reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> "EvalSums":
        """Sum over processes with ``reduce_sum`` (e.g. ``ProcessContext.reduce_sum``)."""
        return EvalSums(reduce_sum(self.confusion), reduce_sum(self.top5_correct), reduce_sum(self.loss_sum))

    def result(self, classes: Sequence[str] | None = None, tta: str = "none") -> "EvalResult":
        confusion = self.confusion.cpu()
        total = int(confusion.sum())
        correct = int(confusion.diag().sum())
        per_class_total = confusion.sum(1)
        per_class = (confusion.diag().double() / per_class_total.clamp_min(1).double()).tolist()
        names = list(classes) if classes is not None else [str(i) for i in range(confusion.shape[0])]
        return EvalResult(
            top1=correct / max(total, 1), top5=int(self.top5_correct) / max(total, 1),
            loss=float(self.loss_sum) / max(total, 1), count=total, classes=names,
            per_class_accuracy={name: (acc if int(n) else None) for name, acc, n in
                                zip(names, per_class, per_class_total.tolist())},
            confusion=confusion.tolist(), tta=tta, top1_interval=wilson_interval(correct, total))


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    count: int
    classes: list[str]
    per_class_accuracy: dict[str, float | None]
    """Accuracy of each class (None for a class with no images)."""
    confusion: list[list[int]]
    """Rows: true class; columns: predicted class."""
    tta: str = "none"
    extra: dict = field(default_factory=dict)
    top1_interval: tuple[float, float] | None = None
    """95% Wilson interval of top-1 over the images evaluated (``wilson_interval``): test-set sampling only."""

    def to_dict(self) -> dict:
        # shallow: asdict deep-copies the confusion matrix, 6 s for ImageNet's 1,000 x 1,000 on a 2-core CPU
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def write_json(self, path: str | os.PathLike) -> Path:
        from ..jsonfile import write_json

        return write_json(path, self.to_dict())

    def summary(self) -> str:
        interval = (f" (95% CI {self.top1_interval[0] * 100:.2f}-{self.top1_interval[1] * 100:.2f})"
                    if self.top1_interval is not None and self.count else "")
        return (f"top-1 {self.top1 * 100:.2f}%{interval}  top-5 {self.top5 * 100:.2f}%  loss {self.loss:.4f}  "
                f"({self.count} images, tta={self.tta})")


class OnlyClasses(nn.Module):
    """A classifier restricted to some of its classes: the others' logits are set to -inf, so top-1, top-5 and the
    loss are taken among ``classes`` only. The protocol for a test set that covers a subset of the classes a model
    knows (ImageNet-R and ImageNet-A's 200, Imagenette's 10 of ImageNet's 1,000)."""

    def __init__(self, model: nn.Module, classes: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.spec = getattr(model, "spec", None)
        excluded = torch.ones(num_classes, dtype=torch.bool)
        excluded[torch.as_tensor(list(classes), dtype=torch.long)] = False
        self.register_buffer("excluded", excluded, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).masked_fill(self.excluded, float("-inf"))


def evaluate(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], loader: Iterable, num_classes: int,
             classes: Sequence[str] | None = None, tta: str = "none", device: torch.device | str = "cpu",
             precision: str = "fp32", reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
             hits: list[torch.Tensor] | None = None) -> EvalResult:
    """Evaluate ``model`` on a loader of (normalised images, labels); puts a module in eval mode. A ``hits`` list
    receives each batch's per-image top-1 correctness (bool, on the CPU, in loader order): what a paired
    comparison of two models on the same images needs (``evaluate.compare``)."""
    return _evaluate(model, loader, num_classes, classes, tta, device, precision, reduce_sum, False, hits)[0]


def evaluate_with_plain(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], loader: Iterable,
                        num_classes: int, classes: Sequence[str] | None = None, tta: str = "none",
                        device: torch.device | str = "cpu", precision: str = "fp32",
                        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                        hits: list[torch.Tensor] | None = None) -> tuple[EvalResult, EvalResult]:
    """``evaluate`` with ``tta`` and without test-time augmentation, in one pass where ``tta`` includes the
    image as is (``TTA_WITH_PLAIN_VIEW``): (TTA result, plain result). ``hits`` as in ``evaluate`` (with TTA)."""
    return _evaluate(model, loader, num_classes, classes, tta, device, precision, reduce_sum, True, hits)


@torch.no_grad()
def _evaluate(model, loader, num_classes, classes, tta, device, precision, reduce_sum,
              with_plain: bool, hits: list[torch.Tensor] | None) -> tuple[EvalResult, EvalResult | None]:
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    sums = EvalSums.zeros(num_classes, device)
    plain_sums = EvalSums.zeros(num_classes, device) if with_plain else None
    try:
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast_context(device, precision):
                logits, plain = (tta_and_plain_logits(model, images, tta) if with_plain
                                 else (tta_logits(model, images, tta), None))
            right = sums.add(logits, labels)
            if hits is not None:
                hits.append(right.cpu())
            if plain is not None:
                plain_sums.add(plain, labels)
    finally:
        if was_training:
            model.train()

    def result(state: EvalSums, mode: str) -> EvalResult:
        return (state.reduce(reduce_sum) if reduce_sum is not None else state).result(classes, mode)

    return result(sums, tta), (result(plain_sums, "none") if plain_sums is not None else None)


def save_confusion_png(result: EvalResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Plot the row-normalised confusion matrix (counts in the cells for up to 20 classes) as a PNG."""
    from ..report.figures import pyplot, save_figure

    plt = pyplot()

    matrix = torch.tensor(result.confusion, dtype=torch.float64)
    normalised = matrix / matrix.sum(1, keepdim=True).clamp_min(1)
    count = len(result.classes)
    side = min(4 + 0.45 * count, 30)
    fig, ax = plt.subplots(figsize=(side, side * 0.9))
    image = ax.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if count <= 50:
        ax.set_xticks(range(count), result.classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(count), result.classes, fontsize=8)
    if count <= 20:
        for i in range(count):
            for j in range(count):
                value = int(matrix[i, j])
                if value:
                    ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                            color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"confusion matrix: top-1 {result.top1 * 100:.2f}% ({result.count} images, tta={result.tta})")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
