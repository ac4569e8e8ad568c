"""Two models on the same test images: is the difference in accuracy more than the luck of this test set?

Two accuracies with overlapping intervals can still differ reliably, and two that look apart can be a coin
toss: what decides it is the images on which the models disagree. McNemar's exact test looks only at those (one
right, the other wrong); the interval of the difference uses the same paired counts. This is the test-set
side of the question; seed-to-seed variation of training needs several runs of each.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch

__all__ = ["PairedComparison", "compare_hits", "mcnemar_exact_p"]


def mcnemar_exact_p(first_only: int, second_only: int) -> float:
    """Two-sided exact McNemar p-value: the binomial probability, at one half, of a split of the discordant
    images at least as uneven as ``first_only`` against ``second_only``."""
    n, k = first_only + second_only, min(first_only, second_only)
    if n == 0:
        return 1.0
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(k + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2 * tail)


@dataclass
class PairedComparison:
    """Per-image agreement of a first and a second model on the same ``count`` images."""

    count: int
    both: int
    first_only: int
    """Images the first model gets right and the second wrong."""
    second_only: int
    neither: int
    difference: float
    """Top-1 of the first minus top-1 of the second."""
    difference_interval: tuple[float, float]
    """95% interval of ``difference`` (Wald, from the paired counts)."""
    p_value: float
    """Exact two-sided McNemar test of "both are equally accurate on the population these images come from"."""

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self, first: str = "first", second: str = "second") -> str:
        low, high = self.difference_interval
        verdict = ("a difference this test set cannot tell from chance" if self.p_value >= 0.05 else
                   f"{first if self.difference > 0 else second} is more accurate (p < 0.05)")
        return (f"{first} - {second}: {self.difference * 100:+.2f} points top-1 (95% CI {low * 100:+.2f} to "
                f"{high * 100:+.2f}); on {self.first_only + self.second_only} of {self.count} images they disagree "
                f"({self.first_only} only {first} gets right, {self.second_only} only {second}); exact McNemar "
                f"p = {self.p_value:.3g}: {verdict}")


def compare_hits(first: torch.Tensor | Sequence[torch.Tensor], second: torch.Tensor | Sequence[torch.Tensor],
                 z: float = 1.959964) -> PairedComparison:
    """Compare two models from their per-image top-1 correctness on the same images in the same order (the
    ``hits`` that ``evaluate`` collects)."""
    a = torch.cat(list(first)) if not isinstance(first, torch.Tensor) else first
    b = torch.cat(list(second)) if not isinstance(second, torch.Tensor) else second
    a, b = a.bool().flatten(), b.bool().flatten()
    if a.numel() != b.numel():
        raise ValueError(f"the two models were scored on different numbers of images ({a.numel()} and "
                         f"{b.numel()}); a paired comparison needs the same images in the same order")
    n = a.numel()
    both, first_only = int((a & b).sum()), int((a & ~b).sum())
    second_only, neither = int((~a & b).sum()), int((~a & ~b).sum())
    difference = (first_only - second_only) / n if n else 0.0
    spread = math.sqrt(max(first_only + second_only - n * difference ** 2, 0.0)) / n if n else 0.0
    return PairedComparison(count=n, both=both, first_only=first_only, second_only=second_only, neither=neither,
                            difference=difference,
                            difference_interval=(difference - z * spread, difference + z * spread),
                            p_value=mcnemar_exact_p(first_only, second_only))
