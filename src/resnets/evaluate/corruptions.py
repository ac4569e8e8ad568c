"""Common corruptions (Hendrycks & Dietterich 2019, CIFAR-10-C / ImageNet-C), generated on the fly.

Each corruption takes a float batch ``(N, C, H, W)`` in [0, 1] and returns one of the same
shape, dtype and range, at severity 1..5. Severity parameters are those of CIFAR-10-C (the
authors' ``make_cifar_c.py``); spatial ones (blur radii, motion length, fog scale, pixel size)
are scaled by ``min(H, W) / 32`` so larger images get a visually similar corruption.
Randomness comes only from ``torch.Generator``s seeded from the caller's seed and each image's index
in the evaluation set, so an image gets the same noise whatever the batch size it is evaluated in.

Differences from the published files, on purpose: everything runs in torch on whole batches
(no ImageMagick/Wand; the random ones draw per image); motion blur is a one-sided Gaussian-weighted line kernel at a random
angle (ImageMagick's ``motion_blur``); fog is fractal (sum of octaves) noise instead of the
diamond-square plasma; brightness adds to the HSV value channel in closed form.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SEVERITIES = (1, 2, 3, 4, 5)

# CIFAR-10-C parameters, one per severity.
_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),  # (10, 1) ... are Tiny-ImageNet-C's
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "zoom_blur": ((1.0, 1.06, 0.01), (1.0, 1.11, 0.01), (1.0, 1.16, 0.01), (1.0, 1.21, 0.01), (1.0, 1.26, 0.01)),
    "brightness": (0.05, 0.10, 0.15, 0.20, 0.30),
    "contrast": (0.75, 0.50, 0.40, 0.30, 0.15),
    "fog": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),
    "pixelate": (0.95, 0.90, 0.85, 0.75, 0.65),
    "jpeg_compression": (80, 65, 58, 50, 40),
}

FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"),
    "blur": ("defocus_blur", "motion_blur", "gaussian_blur", "zoom_blur"),
    "weather": ("brightness", "fog"),
    "digital": ("contrast", "pixelate", "jpeg_compression"),
}


def _scale(x: torch.Tensor) -> float:
    return min(x.shape[-2:]) / 32.0


def _conv_per_channel(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve every channel of every image with ``kernel`` (kh, kw), reflect-padded (same size)."""
    kh, kw = kernel.shape
    c = x.shape[1]
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(c, 1, kh, kw)
    pad = (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2)
    mode = "reflect" if min(x.shape[-2:]) > max(kh, kw) // 2 else "replicate"
    return F.conv2d(F.pad(x, pad, mode=mode), weight, groups=c)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / max(sigma, 1e-6)) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


# ------------------------------------------------------------------- noise
def gaussian_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = _PARAMS["gaussian_noise"][severity - 1]
    return x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def shot_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = _PARAMS["shot_noise"][severity - 1]
    return torch.poisson(x.clamp(0, 1) * c, generator=generator) / c


def impulse_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Salt-and-pepper noise on a fraction ``amount`` of the values (skimage's ``s&p``)."""
    amount = _PARAMS["impulse_noise"][severity - 1]
    hit = torch.rand(x.shape, generator=generator, device=x.device) < amount
    salt = torch.rand(x.shape, generator=generator, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def speckle_noise(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c = _PARAMS["speckle_noise"][severity - 1]
    return x + x * c * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


# -------------------------------------------------------------------- blur
def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """A normalised disk (the defocus point-spread function), softened by a small Gaussian."""
    size = max(3, int(2 * math.ceil(radius) + 1)) if radius > 1 else 3
    r = size // 2
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).float()
    if disk.sum() == 0:
        disk[r, r] = 1.0
    disk = disk / disk.sum()
    soft = _gaussian_kernel(alias_blur)
    return F.conv2d(disk[None, None], soft[None, None], padding=soft.shape[0] // 2)[0, 0]


def defocus_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    radius, alias = _PARAMS["defocus_blur"][severity - 1]
    kernel = _disk_kernel(radius * _scale(x), alias * _scale(x))
    return _conv_per_channel(x, kernel / kernel.sum())


def gaussian_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    sigma = _PARAMS["gaussian_blur"][severity - 1] * _scale(x)
    return _conv_per_channel(x, _gaussian_kernel(sigma))


def _motion_kernel(radius: float, sigma: float, angle_deg: float) -> torch.Tensor:
    """One-sided line of Gaussian weights starting at the centre, rotated by ``angle_deg``."""
    length = max(1, int(round(radius)))
    size = 2 * length + 1
    kernel = torch.zeros(size, size)
    theta = math.radians(angle_deg)
    weights = torch.exp(-0.5 * (torch.arange(length + 1, dtype=torch.float32) / max(sigma, 1e-6)) ** 2)
    for i, w in enumerate(weights.tolist()):
        px = length + int(round(i * math.cos(theta)))
        py = length - int(round(i * math.sin(theta)))
        kernel[py, px] += w
    return kernel / kernel.sum()


def motion_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """One random direction per image (uniform in [-45, 45] degrees, as CIFAR-10-C)."""
    radius, sigma = _PARAMS["motion_blur"][severity - 1]
    scale = _scale(x)
    angles = (torch.rand(x.shape[0], generator=generator, device=x.device) * 90 - 45).tolist()
    # ImageMagick's radius is in pixels of the 32 px image but its Gaussian falls off within
    # about 3 sigma, so sigma (scaled) sets the effective length.
    out = [_conv_per_channel(img[None], _motion_kernel(min(radius, 3 * sigma) * scale, sigma * scale, a))
           for img, a in zip(x, angles)]
    return torch.cat(out)


def zoom_blur(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Average of centre zooms of the image (a camera zooming during exposure). As in the reference, the zoom
    list starts at 1.0 and the image is added once more: it weighs 2 / (zooms + 1)."""
    start, stop, step = _PARAMS["zoom_blur"][severity - 1]
    zooms = torch.arange(start, stop, step).tolist()
    h, w = x.shape[-2:]
    acc = x.clone()
    for z in zooms:
        zh, zw = int(math.ceil(h * z)), int(math.ceil(w * z))
        big = F.interpolate(x, size=(zh, zw), mode="bilinear", align_corners=False)
        top, left = (zh - h) // 2, (zw - w) // 2
        acc = acc + big[..., top: top + h, left: left + w]
    return acc / (len(zooms) + 1)


# ----------------------------------------------------------------- weather
def brightness(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Add ``c`` to the HSV value channel. With hue and saturation fixed, RGB is linear in V, so
    this scales each pixel by ``clip(V + c) / V`` (grey for black pixels)."""
    c = _PARAMS["brightness"][severity - 1]
    value = x.amax(dim=1, keepdim=True)
    new_value = (value + c).clamp(0, 1)
    scaled = x * new_value / value.clamp_min(1e-8)
    return torch.where(value > 1e-8, scaled, new_value.expand_as(x))


def _fractal_noise(n: int, h: int, w: int, decay: float, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    """Fractal (1/f-like) noise in [0, 1]: octaves of bilinearly upsampled noise, each octave's
    amplitude divided by ``decay`` (the plasma fractal's "wibble decay")."""
    out = torch.zeros(n, 1, h, w, device=device)
    amplitude, cells = 1.0, 2
    while cells <= max(h, w) * 2:
        noise = torch.rand(n, 1, cells, cells, generator=generator, device=device) - 0.5
        out += amplitude * F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)
        amplitude /= decay
        cells *= 2
    out = out - out.amin(dim=(2, 3), keepdim=True)
    return out / out.amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)


def fog(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    c, decay = _PARAMS["fog"][severity - 1]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    haze = _fractal_noise(x.shape[0], x.shape[2], x.shape[3], decay, generator, x.device).to(x.dtype)
    return (x + c * haze) * peak / (peak + c)


# ----------------------------------------------------------------- digital
def contrast(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Pull each channel toward its own mean (the reference's per-channel means: colours keep their balance)."""
    c = _PARAMS["contrast"][severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


def pixelate(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Down to ``c`` of the side and back up with PIL's ``BOX`` filter both ways, as CIFAR-10-C does.

    ``mode="area"`` averages overlapping spans instead (about 4-6x stronger at severity 1), and interpolation in
    float32 moves pixels at exact ties; the weights here are PIL's own (``_pil_box_weights``), so the result
    matches PIL to 1/255 at every size (PIL also rounds to 8 bits between the passes)."""
    c = _PARAMS["pixelate"][severity - 1]
    h, w = x.shape[-2:]
    sh, sw = max(1, int(h * c)), max(1, int(w * c))

    def weights(n_in: int, n_out: int) -> torch.Tensor:
        return torch.tensor(_pil_box_weights(n_in, n_out), device=x.device, dtype=x.dtype)

    small = torch.einsum("oh,nchw,pw->ncop", weights(h, sh), x, weights(w, sw))
    return torch.einsum("oh,nchw,pw->ncop", weights(sh, h), small, weights(sw, w))


@functools.lru_cache(maxsize=64)
def _pil_box_weights(n_in: int, n_out: int) -> tuple[tuple[float, ...], ...]:
    """The (n_out x n_in) weights of PIL's ``Image.resize(..., BOX)`` along one axis, computed as its
    ``precompute_coeffs`` does (double precision, box(x) = 1 for -1/2 < x <= 1/2, each row normalised): at ties
    PIL's float arithmetic decides, so only its own arithmetic reproduces it."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    inverse = 1.0 / filterscale
    rows = []
    for out in range(n_out):
        centre = (out + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), n_in)
        row = [0.0] * n_in
        for j in range(low, high):
            arg = (j - centre + 0.5) * inverse
            row[j] = 1.0 if -0.5 < arg <= 0.5 else 0.0
        total = sum(row)
        rows.append(tuple(v / total for v in row) if total else tuple(row))
    return tuple(rows)


def jpeg_compression(x: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Encode and decode with Pillow's JPEG at the CIFAR-10-C quality (as the authors did)."""
    import numpy as np
    from PIL import Image

    quality = _PARAMS["jpeg_compression"][severity - 1]
    if x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG compression needs 1 or 3 channels, got {x.shape[1]}")
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        out.append(torch.from_numpy(decoded.copy()).reshape(image.shape))
    return torch.stack(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype) / 255.0


CORRUPTIONS: dict[str, Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "motion_blur": motion_blur,
    "gaussian_blur": gaussian_blur,
    "zoom_blur": zoom_blur,
    "brightness": brightness,
    "fog": fog,
    "contrast": contrast,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}


RANDOM_CORRUPTIONS = frozenset({"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "motion_blur", "fog"})
"""The corruptions that draw random numbers: they are applied image by image, each with its own generator."""


def image_seed(seed: int, index: int) -> int:
    """The generator seed of the image at ``index`` of an evaluation set corrupted under ``seed``."""
    return (seed * 0x9E3779B97F4A7C15 + index) % (1 << 63)


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0, first_index: int = 0) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to a float batch in [0, 1].

    Deterministic and independent of how images are batched: image ``i`` of ``x`` is corrupted with a
    generator seeded by ``image_seed(seed, first_index + i)`` (pass the index of ``x[0]`` in the whole
    set as ``first_index``). The result keeps the input's shape, dtype and device and is clamped to [0, 1].
    """
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1..5, got {severity}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"corruptions take a float batch (N, C, H, W) in [0, 1], got {x.dtype} of shape "
                         f"{tuple(x.shape)}; convert uint8 images with x.float() / 255")
    work, apply = x.float(), CORRUPTIONS[name]
    if name in RANDOM_CORRUPTIONS:
        out = torch.cat([apply(work[i: i + 1], severity,
                               torch.Generator(device=x.device).manual_seed(image_seed(seed, first_index + i)))
                         for i in range(work.shape[0])]) if work.shape[0] else work
    else:
        out = apply(work, severity, torch.Generator(device=x.device).manual_seed(seed))
    return out.clamp(0, 1).to(x.dtype)


def parse_corruptions(text: str | None) -> list[str]:
    """``None``/``"all"`` -> every corruption; else a comma list of names or family names."""
    if text is None or text == "all":
        return list(CORRUPTIONS)
    names: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in FAMILIES:
            names.extend(FAMILIES[part])
        elif part in CORRUPTIONS:
            names.append(part)
        else:
            raise ValueError(f"unknown corruption {part!r}; choose from {', '.join(CORRUPTIONS)} "
                             f"or a family ({', '.join(FAMILIES)})")
    return list(dict.fromkeys(names))


# -------------------------------------------------------------- evaluation
def _ratio(own: float, base: float) -> float | None:
    """own / base; 1.0 when both are zero (as robust as the baseline); None when only the baseline's is zero."""
    if base == 0:
        return 1.0 if own == 0 else None
    return own / base


def _mean_defined(ratios: dict[str, float | None]) -> float | None:
    defined = [r for r in ratios.values() if r is not None]
    return sum(defined) / len(defined) if defined else None


@dataclass
class CorruptionResult:
    """Accuracy per corruption and severity, and the corruption errors derived from it."""

    clean_accuracy: float
    accuracy: dict[str, list[float]]
    """corruption name -> accuracy at severities 1..5."""
    samples: int
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, name: str) -> list[float]:
        return [1.0 - a for a in self.accuracy[name]]

    def mean_error(self) -> float:
        """Unnormalised mean corruption error: the mean of top-1 error over corruptions and severities."""
        errors = [e for name in self.accuracy for e in self.error(name)]
        return sum(errors) / len(errors)

    def corruption_errors(self, baseline: "CorruptionResult") -> dict[str, float]:
        """CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c} (Hendrycks & Dietterich 2019, eq. 1)."""
        self._check_baseline(baseline)
        return {name: _ratio(sum(self.error(name)), sum(baseline.error(name))) for name in self.accuracy}

    def _check_baseline(self, baseline: "CorruptionResult") -> None:
        """A baseline is comparable only on the same corruptions of the same images."""
        missing = sorted(set(self.accuracy) - set(baseline.accuracy))
        if missing:
            raise ValueError(f"the baseline has no results for {', '.join(missing)}; evaluate it on the same corruptions")
        if (baseline.samples, baseline.seed) != (self.samples, self.seed):
            raise ValueError(f"the baseline was evaluated on {baseline.samples} images with corruption seed "
                             f"{baseline.seed}, this model on {self.samples} with seed {self.seed}: an mCE compares "
                             "the same corrupted images, so evaluate both with the same --samples and --seed")

    def relative_corruption_errors(self, baseline: "CorruptionResult") -> dict[str, float | None]:
        """Relative CE_c: the accuracy lost to corruption c, summed over severities, over the baseline's loss
        (Hendrycks & Dietterich 2019, eq. 2; signed: a baseline that gains under a corruption flips it)."""
        self._check_baseline(baseline)
        out = {}
        for name in self.accuracy:
            base = sum(e - (1 - baseline.clean_accuracy) for e in baseline.error(name))
            own = sum(e - (1 - self.clean_accuracy) for e in self.error(name))
            # a baseline that gained accuracy under the corruption has no loss to compare with: a negative
            # denominator would flip the sign and read as "more robust" for a model that lost accuracy
            out[name] = _ratio(own, base) if base >= 0 else None
        return out

    def mce(self, baseline: "CorruptionResult") -> float | None:
        """Mean corruption error relative to ``baseline`` (1.0 = as robust as the baseline), over the corruptions
        where it is defined (``undefined_corruptions``); None when it is defined for none."""
        return _mean_defined(self.corruption_errors(baseline))

    def relative_mce(self, baseline: "CorruptionResult") -> float | None:
        """Relative mCE: how much accuracy is lost to corruption, relative to the baseline's loss."""
        return _mean_defined(self.relative_corruption_errors(baseline))

    def undefined_corruptions(self, baseline: "CorruptionResult") -> list[str]:
        """The corruptions an mCE leaves out: the baseline made no error (or lost nothing, for the relative mCE)
        where this model did, so the ratio has no value. Small ``--samples`` runs meet this on mild corruptions."""
        ratios, relative = self.corruption_errors(baseline), self.relative_corruption_errors(baseline)
        return sorted(name for name in self.accuracy if ratios[name] is None or relative[name] is None)

    def to_dict(self, baseline: "CorruptionResult | None" = None) -> dict[str, Any]:
        out: dict[str, Any] = {"clean_accuracy": self.clean_accuracy, "accuracy": self.accuracy,
                               "mean_error": self.mean_error(), "samples": self.samples, "seed": self.seed,
                               "severities": list(SEVERITIES), **self.extra}
        if baseline is not None:
            out["corruption_errors"] = self.corruption_errors(baseline)
            out["mce"] = self.mce(baseline)
            out["relative_mce"] = self.relative_mce(baseline)
            out["mce_undefined_for"] = self.undefined_corruptions(baseline)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CorruptionResult":
        return cls(clean_accuracy=float(data["clean_accuracy"]),
                   accuracy={k: list(map(float, v)) for k, v in data["accuracy"].items()},
                   samples=int(data.get("samples", 0)), seed=int(data.get("seed", 0)))


def corruption_accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        names: Sequence[str] | None = None, severities: Sequence[int] = SEVERITIES,
                        seed: int = 0, max_samples: int | None = None,
                        device: str | torch.device = "cpu") -> CorruptionResult:
    """Accuracy of ``model`` (taking pixels in [0, 1]) on every corruption and severity.

    Corruption ``c`` at ``severity`` uses seed ``seed + 10 * c + severity``, ``c`` the corruption's index in
    ``CORRUPTIONS`` (not in ``names``: fog must get the same noise whether it is evaluated alone or with
    ``all``, the baseline of an mCE), and each image draws from its own generator keyed by its position in
    the stream (``corrupt``'s ``first_index``): an unshuffled loader gives identical corrupted sets on every
    run, whatever its batch size.
    """
    names = list(names) if names is not None else list(CORRUPTIONS)
    order = list(CORRUPTIONS)
    model.eval()
    hits = {name: [0] * len(severities) for name in names}
    clean, seen = 0, 0
    with torch.no_grad():
        for x, y in batches:
            if max_samples is not None and seen >= max_samples:
                break
            if max_samples is not None:
                x, y = x[: max_samples - seen], y[: max_samples - seen]
            x, y = x.to(device).float(), y.to(device)
            if x.min() < 0 or x.max() > 1:
                raise ValueError("corruptions take images in [0, 1]; feed un-normalised pixels and wrap the model "
                                 "with Normalized(model, mean, std)")
            clean += (model(x).argmax(1) == y).sum().item()
            for name in names:
                ci = order.index(name) if name in order else 0  # an unknown name: corrupt() says so
                for si, severity in enumerate(severities):
                    xc = corrupt(x, name, severity, seed=seed + 10 * ci + severity, first_index=seen)
                    hits[name][si] += (model(xc).argmax(1) == y).sum().item()
            seen += y.shape[0]
    if seen == 0:
        raise ValueError("the evaluation set is empty; nothing to corrupt")
    return CorruptionResult(clean_accuracy=clean / seen, accuracy={n: [h / seen for h in hits[n]] for n in names},
                            samples=seen, seed=seed)
