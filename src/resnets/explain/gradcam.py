"""Grad-CAM (Selvaraju et al. 2017) and input-gradient saliency (Simonyan et al. 2014).

Grad-CAM weights a layer's feature maps by the spatially averaged gradient of the class score
and keeps the positive part: a coarse map of where the evidence for that class is. The default
layer is the network's last spatial feature map: the last stage's output for post-activation
and plain nets, and the final norm + ReLU output for pre-activation nets (whose last stage
output has not been normalised yet). Maps are upsampled to the input's size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside wrappers such as ``Normalized`` (which keep it as ``.model``)."""
    while hasattr(model, "model") and isinstance(model.model, nn.Module) and not hasattr(model, "stage_names"):
        model = model.model
    return model


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last spatial feature map of a ResNet (ours, torchvision's or timm's)."""
    net = _unwrap(model)
    spec = getattr(net, "spec", None)
    if spec is not None and getattr(spec, "is_preact", False) and hasattr(net, "final_relu"):
        return net.final_relu
    names = getattr(net, "stage_names", None)
    if names:
        return getattr(net, names[-1])
    for name in ("layer4", "layer3", "stages", "features"):
        if hasattr(net, name):
            return getattr(net, name)
    raise ValueError(f"cannot pick a Grad-CAM layer for {type(net).__name__}; pass target_layer='NAME' "
                     "(a module name from model.named_modules())")


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    if layer is None:
        return default_target_layer(model)
    if isinstance(layer, nn.Module):
        return layer
    net = _unwrap(model)
    try:
        return net.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in net.named_children()]
        raise ValueError(f"model has no layer {layer!r}; top-level layers are {', '.join(names)} "
                         "(nested ones like 'layer4.1' work too)") from None


def _normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).view_as(maps)


def _targets(logits: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if target is None:
        return logits.argmax(1)
    if isinstance(target, int):
        index = torch.full((logits.shape[0],), target, dtype=torch.long, device=logits.device)
    else:
        index = torch.as_tensor(target, dtype=torch.long, device=logits.device).flatten()
    if index.numel() != logits.shape[0]:
        raise ValueError(f"{index.numel()} target classes for a batch of {logits.shape[0]}")
    if index.min() < 0 or index.max() >= logits.shape[1]:
        raise ValueError(f"target class out of range: the model has {logits.shape[1]} classes (0..{logits.shape[1] - 1})")
    return index


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
             layer: str | nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps ``(N, H, W)`` in [0, 1] at the input's size, and the class explained per image.

    ``target=None`` explains the predicted class. The model is evaluated as it is (call
    ``model.eval()`` first for inference behaviour); parameters' gradients are not touched.
    """
    module = resolve_layer(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        captured["act"] = output
        # the rest of the forward gets a copy: an in-place successor (bn1 -> ReLU(inplace=True)) would otherwise
        # turn the captured map into relu(bn1) and explain that layer instead
        return output.clone() if isinstance(output, torch.Tensor) else None

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # so the graph exists even with frozen parameters
            logits = model(x)
            if "act" not in captured:
                raise ValueError(f"target layer {type(module).__name__} was not run in the forward pass")
            classes = _targets(logits, target)
            score = logits.gather(1, classes[:, None]).sum()
            act = captured["act"]
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    if act.ndim != 4:
        raise ValueError(f"Grad-CAM needs a spatial (N, C, H, W) feature map, the target layer gives {tuple(act.shape)}")
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act.detach().float()).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return _normalise_maps(cam), classes.detach()


def saliency(model: nn.Module, x: torch.Tensor,
             target: int | Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-gradient saliency: ``max_c |d score / d x_c|`` per pixel, ``(N, H, W)`` in [0, 1]."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        classes = _targets(logits, target)
        (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), x)
    return _normalise_maps(grad.abs().amax(1).float()), classes.detach()


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.45, cmap: str = "jet") -> torch.Tensor:
    """Blend a heat map (H, W) in [0, 1] over an RGB image (3, H, W) in [0, 1]; returns (H, W, 3)."""
    from matplotlib import colormaps

    colours = torch.from_numpy(colormaps[cmap](heat.cpu().numpy())[..., :3]).float()
    rgb = image.detach().cpu().float().permute(1, 2, 0)
    if rgb.shape[-1] == 1:
        rgb = rgb.expand(-1, -1, 3)
    return ((1 - alpha) * rgb + alpha * colours).clamp(0, 1)


def save_explanation(path: str | os.PathLike, image: torch.Tensor, cam: torch.Tensor, sal: torch.Tensor | None = None,
                     title: str = "") -> Path:
    """One PNG: the image, the Grad-CAM overlay and (if given) the saliency map, side by side."""
    from ..report.figures import pyplot, save_figure

    plt = pyplot()

    panels = [("image", image.detach().cpu().float().permute(1, 2, 0).clamp(0, 1).numpy(), None),
              ("Grad-CAM", overlay(image, cam).numpy(), None)]
    if sal is not None:
        panels.append(("saliency", sal.cpu().numpy(), "gray"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (label, data, cmap) in zip(axes, panels):
        ax.imshow(data.squeeze() if data.shape[-1] == 1 else data, cmap=cmap)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def save_gallery(path: str | os.PathLike, images: torch.Tensor, cams: torch.Tensor, titles: Sequence[str],
                 columns: int = 4) -> Path:
    """A grid of Grad-CAM overlays (one per image) with a title each, as one PNG."""
    import math

    from ..report.figures import pyplot, save_figure

    plt = pyplot()

    n = images.shape[0]
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(2.4 * 2 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        axes[r][2 * c].imshow(images[i].cpu().float().permute(1, 2, 0).clamp(0, 1).numpy())
        axes[r][2 * c].set_title(titles[i], fontsize=8)
        axes[r][2 * c + 1].imshow(overlay(images[i], cams[i]).numpy())
        axes[r][2 * c + 1].set_title("Grad-CAM", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)
