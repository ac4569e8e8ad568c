"""Structured pruning of the channels inside residual blocks, to a target share of MACs.

Only channels that no shortcut touches are removed: a basic block's conv1 outputs (= conv2 inputs)
and a bottleneck's two inner widths (conv1 outputs/conv2 inputs and conv2 outputs/conv3 inputs).
The channels tied across a stage by the residual adds keep their width, so the result is simply a
narrower dense ``ResNet`` whose spec records each block's inner width (``block_widths``): a normal
checkpoint, no masks.

Criteria: ``"l1"`` (L1 norm of each output filter, Li et al. 2017) or ``"bn"`` (|gamma| of the
BatchNorm after it, Liu et al. 2017 "network slimming"). Scores are divided by their layer's mean
so that layers compare fairly across the network; a greedy global ranking meets the
MAC target: the least important channel in the whole network goes first, one at a time, until the MACs
fit; every layer keeps at least ``min_keep`` of its channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

from ..blocks import BasicBlock, Bottleneck
from ..model import ResNet
from ..profile import profile

Criterion = Literal["l1", "bn"]
CRITERIA = ("l1", "bn")


class PruningError(ValueError):
    """A model or target that this pruner cannot handle."""


@dataclass
class PruneResult:
    model: ResNet
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    block_widths: tuple[int, ...]

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / self.macs_before

    def __str__(self) -> str:
        return (f"MACs {self.macs_before / 1e6:.1f}M -> {self.macs_after / 1e6:.1f}M ({self.macs_fraction:.1%}), "
                f"params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M")


def _inner_layers(block: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs whose output channels are prunable, in order."""
    if isinstance(block, Bottleneck):
        return [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    if isinstance(block, BasicBlock):
        return [(block.conv1, block.bn1)]
    raise PruningError(f"{type(block).__name__} blocks are not supported for pruning; prune post-activation "
                       "basic or bottleneck networks (resnet18/50, the CIFAR resnets, ...)")


def channel_scores(conv: nn.Conv2d, bn: nn.BatchNorm2d, criterion: Criterion) -> torch.Tensor:
    """Importance of each output channel of ``conv`` (higher is kept)."""
    if criterion == "l1":
        return conv.weight.detach().abs().flatten(1).sum(1)
    if criterion == "bn":
        return bn.weight.detach().abs()
    raise PruningError(f"criterion={criterion!r} is unknown; choose one of {CRITERIA}")


def _block_ranking(block: nn.Module, criterion: Criterion) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each inner layer's channels from most to least important, and the block's score per width slot.

    Slot ``j`` stands for the ``j``-th best channel of every inner layer of the block (a bottleneck's
    two inner layers share one width); its score is the mean of those channels' layer-normalised scores.
    """
    orders, slot_scores = [], []
    for conv, bn in _inner_layers(block):
        scores = channel_scores(conv, bn, criterion)
        normalised = scores / scores.mean().clamp_min(1e-12)
        order = torch.argsort(scores, descending=True, stable=True)
        orders.append(order)
        slot_scores.append(normalised[order])
    return orders, torch.stack(slot_scores).mean(0)


class _MacModel:
    """MACs of the network as a function of each block's inner width, from one profiled pass."""

    def __init__(self, model: ResNet, input_size: Sequence[int]) -> None:
        spatial: dict[nn.Module, int] = {}
        hooks = [m.register_forward_hook(lambda mod, _i, out: spatial.__setitem__(mod, out[0, 0].numel()))
                 for m in model.modules() if isinstance(m, nn.Conv2d)]
        try:
            self.total = profile(model, input_size).macs
        finally:
            for h in hooks:
                h.remove()
        self.terms: list[tuple[float, float]] = []  # (linear, quadratic) coefficient per block
        variable = 0
        for _, block in _named_blocks(model):
            convs = [block.conv1, block.conv2] + ([block.conv3] if isinstance(block, Bottleneck) else [])
            k = [c.kernel_size[0] * c.kernel_size[1] for c in convs]
            hw = [spatial[c] for c in convs]
            if isinstance(block, Bottleneck):
                linear = hw[0] * block.conv1.in_channels * k[0] + hw[2] * block.conv3.out_channels * k[2]
                quadratic = hw[1] * k[1]
            else:
                linear = hw[0] * block.conv1.in_channels * k[0] + hw[1] * block.conv2.out_channels * k[1]
                quadratic = 0
            width = block.conv1.out_channels
            variable += linear * width + quadratic * width * width
            self.terms.append((linear, quadratic))
        self.fixed = self.total - variable

    def block_macs(self, index: int, width: int) -> float:
        linear, quadratic = self.terms[index]
        return linear * width + quadratic * width * width


def _plan(model: ResNet, blocks: Sequence[nn.Module], criterion: Criterion, target_macs: float, min_keep: float,
          input_size: Sequence[int]) -> list[list[torch.Tensor]]:
    """Remove the globally least important width slots, one at a time, until the MACs fit."""
    import heapq

    macs = _MacModel(model, input_size)
    rankings = [_block_ranking(b, criterion) for b in blocks]
    widths = [b.conv1.out_channels for b in blocks]
    floors = [max(1, math.ceil(min_keep * w - 1e-9)) for w in widths]  # at least min_keep of each layer
    total = float(macs.total)
    heap = [(float(r[1][w - 1]), i) for i, (r, w) in enumerate(zip(rankings, widths)) if w > floors[i]]
    heapq.heapify(heap)
    while total > target_macs and heap:
        _, i = heapq.heappop(heap)
        total -= macs.block_macs(i, widths[i]) - macs.block_macs(i, widths[i] - 1)
        widths[i] -= 1
        if widths[i] > floors[i]:
            heapq.heappush(heap, (float(rankings[i][1][widths[i] - 1]), i))
    if total > target_macs:
        raise PruningError(f"cannot reach {target_macs / macs.total:.0%} of the MACs by pruning inner channels only "
                           f"(min_keep={min_keep}): the stem, shortcuts and residual-tied convolutions remain. "
                           "Ask for a larger fraction or a smaller min_keep (--min-keep)")
    return [[order[:w].sort().values for order in r[0]] for r, w in zip(rankings, widths)]


def _pruned_state(model: ResNet, plan: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for (name, block), keeps in zip(_named_blocks(model), plan):
        def take(key: str, index: torch.Tensor, dim: int = 0) -> None:
            state[f"{name}.{key}"] = state[f"{name}.{key}"].index_select(dim, index)

        def take_bn(bn: str, index: torch.Tensor) -> None:
            for part in ("weight", "bias", "running_mean", "running_var"):
                take(f"{bn}.{part}", index)

        first = keeps[0]
        take("conv1.weight", first)
        take_bn("bn1", first)
        take("conv2.weight", first, dim=1)
        if isinstance(block, Bottleneck):
            second = keeps[1]
            take("conv2.weight", second)
            take_bn("bn2", second)
            take("conv3.weight", second, dim=1)
    return state


def _named_blocks(model: ResNet) -> list[tuple[str, nn.Module]]:
    return [(f"{stage}.{i}", block) for stage in model.stage_names for i, block in enumerate(getattr(model, stage))]


def _build(model: ResNet, plan: list[list[torch.Tensor]]) -> ResNet:
    widths = tuple(len(keeps[0]) for keeps in plan)
    pruned = ResNet(model.spec.replace(block_widths=widths))
    pruned.load_state_dict(_pruned_state(model, plan))
    source = next(model.parameters())  # the copy lives where the original does, in its precision
    return pruned.to(device=source.device, dtype=source.dtype)


def prune_model(model: ResNet, target_macs_fraction: float = 0.5, criterion: Criterion = "l1",
                min_keep: float = 0.1, input_size: Sequence[int] | None = None) -> PruneResult:
    """A narrower copy of ``model`` with at most ``target_macs_fraction`` of its MACs (then fine-tune it)."""
    if not isinstance(model, ResNet):
        raise PruningError(f"prune_model takes a resnets ResNet, not {type(model).__name__}")
    if criterion not in CRITERIA:
        raise PruningError(f"criterion={criterion!r} is unknown; choose one of {CRITERIA}")
    if not 0.0 < target_macs_fraction < 1.0:
        raise PruningError(f"target_macs_fraction={target_macs_fraction} must be between 0 and 1 (0.5 halves the MACs)")
    if model.spec.groups != 1:
        raise PruningError("grouped (ResNeXt) bottlenecks are not supported for pruning")
    if model.spec.conv_type != "2d":
        raise PruningError(f"video networks (conv_type={model.spec.conv_type!r}) are not supported for pruning; "
                           "prune 2-D image networks")
    was_training = model.training
    model.eval()
    try:  # a refused target leaves the caller's model in the mode it came in
        blocks = [b for _, b in _named_blocks(model)]
        for block in blocks:
            _inner_layers(block)  # raises early on unsupported blocks
        before = profile(model, input_size)
        plan = _plan(model, blocks, criterion, target_macs_fraction * before.macs, min_keep, before.input_size)
        pruned = _build(model, plan)
        after = profile(pruned, before.input_size)
    finally:
        model.train(was_training)
    pruned.train(was_training)
    return PruneResult(pruned, before.macs, after.macs, before.params, after.params,
                       tuple(len(k[0]) for k in plan))
