"""Adversarial robustness: FGSM and PGD (L-inf and L2, random start, restarts) in pixel space.

Every attack works on images in [0, 1]; normalisation lives inside the model (wrap a network
trained on normalised inputs with ``Normalized``). So an epsilon of 8/255 means eight grey
levels, whatever the dataset statistics, as in Madry et al. 2018 and RobustBench. Perturbed
images are clamped to the valid range and projected back into the epsilon ball after each step.

The same attacks generate training examples for adversarial training (``adversarial_examples``):
PGD-AT (Madry et al. 2018) and "fast" FGSM with a random start (Wong et al. 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["linf", "l2"]
NORMS = ("linf", "l2")
ATTACKS = ("fgsm", "pgd")


class Normalized(nn.Module):
    """``model((x - mean) / std)``: lets attacks and corruptions work on pixels in [0, 1]."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values but std has {len(std)}; give one per channel")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast over the image."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def project(delta: torch.Tensor, eps: float, norm: NormKind) -> torch.Tensor:
    """Project a perturbation onto the epsilon ball of ``norm``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def random_start(x: torch.Tensor, eps: float, norm: NormKind, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniform random point of the epsilon ball (L-inf: per pixel; L2: uniform in the ball)."""
    if norm == "linf":
        delta = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        return delta * eps
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / _flat_norm(direction)
    dims = x[0].numel()
    radius = torch.rand((x.shape[0],), generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dims)
    return direction * radius.view(-1, *([1] * (x.ndim - 1))) * eps


def _step(grad: torch.Tensor, alpha: float, norm: NormKind) -> torch.Tensor:
    if norm == "linf":
        return alpha * grad.sign()
    return alpha * grad / _flat_norm(grad)


def _input_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy w.r.t. the input, and the per-sample loss."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv).float()
    losses = F.cross_entropy(logits, y, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), x_adv)
    return grad.detach(), losses.detach()


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: NormKind = "linf",
        steps: int = 10, alpha: float | None = None, rand_init: bool = True, restarts: int = 1,
        lower: float = 0.0, upper: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018): maximise the loss inside the epsilon ball.

    ``alpha`` defaults to ``2.5 * eps / steps`` (Madry's rule, so the walk can reach the ball's
    surface from any start). With several ``restarts``, each sample keeps a restart that fools the
    model (of those, the highest-loss one), else the one with the highest loss. Returns adversarial images in
    [lower, upper] with ``||x_adv - x|| <= eps``. The model's train/eval mode is left as it is.
    """
    _check_norm(norm)
    if eps < 0 or steps < 1 or restarts < 1:
        raise ValueError(f"need eps >= 0, steps >= 1 and restarts >= 1; got eps={eps}, steps={steps}, "
                         f"restarts={restarts}")
    x = x.detach()
    if eps == 0:
        return x.clone()
    alpha = 2.5 * eps / steps if alpha is None else alpha
    best = x.clone()
    best_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        delta = random_start(x, eps, norm, generator) if rand_init else torch.zeros_like(x)
        x_adv = (x + delta).clamp(lower, upper)
        for _ in range(steps):
            grad, _ = _input_gradient(model, x_adv, y)
            delta = project(x_adv + _step(grad, alpha, norm) - x, eps, norm)
            x_adv = (x + delta).clamp(lower, upper)
        with torch.no_grad():
            logits = model(x_adv).float()
            loss = F.cross_entropy(logits, y, reduction="none")
            wrong = logits.argmax(1) != y
        # Prefer a restart that fools the model; among equals, the higher loss.
        better = (wrong & ~fooled) | ((wrong == fooled) & (loss > best_loss))
        best[better] = x_adv[better]
        best_loss = torch.where(better, loss, best_loss)
        fooled |= wrong
    return best


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: NormKind = "linf",
         rand_init: bool = False, alpha: float | None = None, lower: float = 0.0, upper: float = 1.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015); with ``rand_init`` the "fast" variant
    of Wong et al. 2020 (random start, step ``alpha`` = 1.25 eps, then projection).

    For ``norm="l2"`` it is the fast gradient method (one step along the normalised gradient).
    """
    _check_norm(norm)
    x = x.detach()
    if eps == 0:
        return x.clone()
    if alpha is None:
        alpha = 1.25 * eps if rand_init else eps
    delta = random_start(x, eps, norm, generator) if rand_init else torch.zeros_like(x)
    x_start = (x + delta).clamp(lower, upper)
    grad, _ = _input_gradient(model, x_start, y)
    delta = project(x_start + _step(grad, alpha, norm) - x, eps, norm)
    return (x + delta).clamp(lower, upper)


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, method: str = "pgd",
           **kwargs: Any) -> torch.Tensor:
    """Dispatch by name: ``"fgsm"`` or ``"pgd"``."""
    if method == "pgd":
        return pgd(model, x, y, eps, **kwargs)
    if method == "fgsm":
        kwargs.pop("steps", None)
        kwargs.pop("restarts", None)
        return fgsm(model, x, y, eps, **kwargs)
    raise ValueError(f"unknown attack {method!r}; choose one of {', '.join(ATTACKS)}")


# ---------------------------------------------------------------- training
ADV_TRAINING = ("pgd", "fgsm_rs")


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, eps: float,
                         steps: int = 7, alpha: float | None = None) -> torch.Tensor:
    """Training-time adversarial batch for PGD-AT (``"pgd"``) or fast FGSM-RS (``"fgsm_rs"``).

    The model is switched to eval mode while the attack runs, so the batch-norm running
    statistics only see the examples it is then trained on, and restored afterwards.
    """
    if method not in ADV_TRAINING:
        raise ValueError(f"unknown adversarial training method {method!r}; choose one of {', '.join(ADV_TRAINING)}")
    was_training = model.training
    model.eval()
    try:
        if method == "pgd":
            return pgd(model, x, y, eps, steps=steps, alpha=alpha, rand_init=True, restarts=1)
        return fgsm(model, x, y, eps, rand_init=True, alpha=alpha)
    finally:
        model.train(was_training)


# --------------------------------------------------------------- evaluation
@dataclass
class RobustnessResult:
    """Accuracy under attack for each epsilon (epsilon in pixel units of [0, 1])."""

    attack: str
    norm: str
    steps: int
    restarts: int
    epsilons: list[float]
    accuracy: list[float]
    samples: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "norm": self.norm, "steps": self.steps, "restarts": self.restarts,
                "epsilons": self.epsilons, "accuracy": self.accuracy, "samples": self.samples, **self.extra}


def robust_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], epsilons: Sequence[float],
                    method: str = "pgd", norm: NormKind = "linf", steps: int = 10, restarts: int = 1,
                    alpha_ratio: float = 2.5, max_samples: int | None = None, seed: int = 0,
                    device: str | torch.device = "cpu") -> RobustnessResult:
    """Accuracy vs epsilon of ``model`` (taking pixels in [0, 1]) over ``(images, labels)`` batches.

    The model is put in eval mode. A sample counts as robust at epsilon only if the attack
    fails on it; a sample the clean model misclassifies counts as wrong at every epsilon (it is
    not attacked). Random starts are drawn from a generator seeded with ``seed``.
    """
    if method not in ATTACKS:
        raise ValueError(f"unknown attack {method!r}; choose one of {', '.join(ATTACKS)}")
    _check_norm(norm)
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = torch.zeros(len(epsilons))
    seen = 0
    for x, y in batches:
        if max_samples is not None and seen >= max_samples:
            break
        if max_samples is not None:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        x, y = x.to(device).float(), y.to(device)
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"attacks take images in [0, 1], got values in [{x.min():.3f}, {x.max():.3f}]; "
                             "feed un-normalised pixels and wrap the model with Normalized(model, mean, std)")
        with torch.no_grad():
            clean_ok = model(x).argmax(1) == y
        for i, eps in enumerate(epsilons):
            if eps == 0:
                correct[i] += clean_ok.sum().item()
                continue
            idx = clean_ok.nonzero().flatten()
            if idx.numel() == 0:
                continue
            xa, ya = x[idx], y[idx]
            alpha = alpha_ratio * eps / steps if method == "pgd" else None
            x_adv = attack(model, xa, ya, eps, method=method, norm=norm, steps=steps, restarts=restarts,
                           alpha=alpha, rand_init=(method == "pgd"), generator=generator)
            with torch.no_grad():
                correct[i] += (model(x_adv).argmax(1) == ya).sum().item()
        seen += y.shape[0]
    if seen == 0:
        raise ValueError("the evaluation set is empty; nothing to attack")
    return RobustnessResult(attack=method, norm=norm, steps=steps if method == "pgd" else 1,
                            restarts=restarts if method == "pgd" else 1, epsilons=[float(e) for e in epsilons],
                            accuracy=(correct / seen).tolist(), samples=seen)


def parse_epsilons(text: str, norm: str = "linf") -> list[float]:
    """Parse ``"0,2/255,8/255"`` or ``"0,0.25,0.5"`` into floats (fractions of the pixel range).

    Every item must be a number >= 0; an empty item (``"2/255,,3"``) is refused rather than skipped, since it is
    usually a slip. With ``norm="linf"`` an epsilon above 1 is refused: pixels lie in [0, 1], so ``3`` would
    allow any image at all, and is almost surely a forgotten ``/255``.
    """
    _check_norm(norm)
    out = []
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise ValueError(f"no epsilon in {text!r}; give a comma-separated list such as 0,2/255,4/255,8/255")
    for part in parts:
        if not part:
            raise ValueError(f"empty item in the epsilon list {text!r}; separate numbers by single commas, e.g. "
                             "0,2/255,8/255")
        try:
            if "/" in part:
                num, den = part.split("/")
                value = float(num) / float(den)
            else:
                value = float(part)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read epsilon {part!r}; write numbers like 0.03 or fractions like 8/255") from None
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"epsilon {part!r} must be a finite number >= 0 (e.g. 0, 2/255, 8/255)")
        if norm == "linf" and value > 1:
            raise ValueError(f"L-inf epsilon {part!r} (= {value * 255:g}/255) is above 1, the whole [0, 1] pixel "
                             f"range; did you mean {part}/255?")
        out.append(value)
    return out


# ------------------------------------------------------------- checkpoints
def pixel_model_from_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[Normalized, Any]:
    """Load a resnets checkpoint as a model taking RGB [0, 1] pixels (its normalisation inside), in eval mode,
    with the checkpoint as read. ``load_for_inference`` reads it, so attacks, corruptions and Grad-CAM see the
    model ``resnets eval`` scores (1-channel models read RGB as grey; metadata that does not fit is an error)."""
    from .loading import load_for_inference

    loaded = load_for_inference(path, need_classes=False)
    return Normalized(loaded.model, loaded.mean, loaded.std).to(device).eval(), loaded.checkpoint


# ------------------------------------------------------------------ trainer
class TrainerCallback:
    """No-op versions of every ``resnets.train.Callback`` hook (duck-typed: ``evaluate`` must not
    import ``train``, which imports ``evaluate``). Subclasses override what they need."""

    def on_train_start(self, trainer: Any) -> None: ...

    def on_epoch_start(self, trainer: Any, epoch: int) -> None: ...

    def on_batch(self, trainer: Any, images: torch.Tensor, labels: torch.Tensor) -> tuple | None:
        return None

    def on_after_backward(self, trainer: Any) -> None: ...

    def on_step_end(self, trainer: Any, step: int, loss: torch.Tensor) -> None: ...

    def on_epoch_end(self, trainer: Any, record: dict) -> None: ...

    def on_train_end(self, trainer: Any, result: Any) -> None: ...


class AdversarialTraining(TrainerCallback):
    """Adversarial training as a ``Trainer`` callback: each batch is replaced by its adversarial twin.

    The trainer's loader yields normalised images; they are mapped back to pixels with the run's
    mean/std, attacked in pixel space (so ``eps`` is in units of [0, 1], e.g. 8/255), and
    normalised again. ``method="pgd"`` is PGD-AT (Madry et al. 2018; ``steps`` steps of
    ``alpha``, default 2.5 eps / steps); ``"fgsm_rs"`` is fast FGSM with a random start
    (Wong et al. 2020; ``alpha`` default 1.25 eps).
    """

    def __init__(self, method: str = "pgd", eps: float = 8 / 255, steps: int = 7, alpha: float | None = None) -> None:
        if method not in ADV_TRAINING:
            raise ValueError(f"unknown adversarial training method {method!r}; choose one of {', '.join(ADV_TRAINING)}")
        if not 0 < eps <= 1:
            raise ValueError(f"eps={eps} must be in (0, 1] (pixel units; 8/255 is the usual CIFAR value)")
        self.method, self.eps, self.steps, self.alpha = method, eps, steps, alpha

    def on_batch(self, trainer: Any, images: torch.Tensor, labels: torch.Tensor) -> tuple:
        mean = torch.tensor(trainer.splits.mean, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(trainer.splits.std, device=images.device, dtype=torch.float32).view(1, -1, 1, 1)
        pixels = (images.float() * std + mean).clamp(0, 1)
        pixel_model = Normalized(trainer.model, tuple(trainer.splits.mean), tuple(trainer.splits.std)).to(images.device)
        from ..precision import autocast_context

        with autocast_context(trainer.device, trainer.config.precision):
            adv = adversarial_examples(pixel_model, pixels, labels, self.method, self.eps, self.steps, self.alpha)
        adv = ((adv - mean) / std).to(images.dtype)
        if images.is_contiguous(memory_format=torch.channels_last):
            adv = adv.contiguous(memory_format=torch.channels_last)
        return adv, labels
