"""ResNet: stem -> stages -> head, built from a ``ResNetSpec``.

The module tree and parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``fc``), so a torchvision state dict loads with no renaming. The timm-style API is here too:
``forward_features``, ``forward_head``, ``reset_classifier``, ``feature_info``,
``set_grad_checkpointing``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import block_class
from .layers import activation, norm, pool_layer
from .spec import ResNetSpec


class InputError(ValueError):
    """An input tensor of the wrong rank or channel count for this model."""


def _stem(spec: ResNetSpec) -> dict[str, nn.Module]:
    """The stem's modules by name; the pre-activation stems carry no norm (the first block's does)."""
    width, with_norm = spec.stem_width, not spec.is_preact
    parts: dict[str, nn.Module] = {}
    if spec.stem == "imagenet":
        parts["conv1"] = nn.Conv2d(spec.in_chans, width, 7, stride=2, padding=3, bias=False)
    elif spec.stem == "cifar":
        parts["conv1"] = nn.Conv2d(spec.in_chans, width, 3, stride=1, padding=1, bias=False)
    elif spec.stem == "patch":  # no norm: the conv is a (data-initialised) whitening filter with a bias
        parts["conv1"] = nn.Conv2d(spec.in_chans, width, 2, stride=1, padding=0, bias=True)
        parts["bn1"], parts["relu"], parts["maxpool"] = nn.Identity(), activation(spec), nn.Identity()
        return parts
    elif spec.stem == "deep":
        half = width // 2
        parts["conv1"] = nn.Sequential(
            nn.Conv2d(spec.in_chans, half, 3, stride=2, padding=1, bias=False), norm(spec, half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, stride=1, padding=1, bias=False), norm(spec, half), nn.ReLU(inplace=True),
            nn.Conv2d(half, width, 3, stride=1, padding=1, bias=False),
        )
    elif spec.conv_type == "3d":
        parts["conv1"] = nn.Conv3d(spec.in_chans, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
    else:  # (2+1)-D stem of torchvision's r2plus1d_18: 45 spatial filters, then a temporal conv
        parts["conv1"] = nn.Sequential(
            nn.Conv3d(spec.in_chans, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            norm(spec, 45), nn.ReLU(inplace=True),
            nn.Conv3d(45, width, (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        )
    parts["bn1"] = norm(spec, width) if with_norm else nn.Identity()
    parts["relu"] = nn.ReLU(inplace=True) if with_norm else nn.Identity()
    parts["maxpool"] = nn.MaxPool2d(3, stride=2, padding=1) if spec.stem in ("imagenet", "deep") else nn.Identity()
    return parts


class FeatureInfo(list):
    """``feature_info``: a list of ``{"num_chs", "reduction", "module"}`` dicts, one per feature level, that also
    answers timm's ``FeatureInfo`` calls, so code written for timm backbones (``feature_info.channels()``) runs
    on these unchanged."""

    def _get(self, key: str, idx: int | Sequence[int] | None) -> Any:
        if idx is None:
            return [level[key] for level in self]
        if isinstance(idx, int):
            return self[idx][key]
        return [self[i][key] for i in idx]

    def channels(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._get("num_chs", idx)

    def reduction(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._get("reduction", idx)

    def module_name(self, idx: int | Sequence[int] | None = None) -> Any:
        return self._get("module", idx)

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(level) for level in self]


def build_stages(spec: ResNetSpec) -> tuple[list[nn.Sequential], list[dict[str, Any]]]:
    """Build every stage and the feature info of each stage output in one pass.

    Strides past ``spec.output_stride`` become dilations (as torchvision's
    ``replace_stride_with_dilation``). Stochastic-depth rates rise linearly over blocks.
    """
    block = block_class(spec)
    total_blocks = sum(spec.layers)
    in_planes = spec.stem_width
    reduction = spec.stem_stride
    dilation = 1
    block_index = 0
    stages: list[nn.Sequential] = []
    info: list[dict[str, Any]] = []
    for stage, (n_blocks, planes, stride) in enumerate(zip(spec.layers, spec.stage_widths, spec.stage_strides)):
        first_dilation = dilation
        if reduction * stride > spec.effective_output_stride:
            dilation *= stride
            stride = 1
        else:
            reduction *= stride
        blocks = []
        for i in range(n_blocks):
            rate = spec.drop_path_rate * block_index / max(total_blocks - 1, 1)
            width = spec.block_widths[block_index] if spec.block_widths is not None else None
            blocks.append(block(spec, in_planes, planes, stride if i == 0 else 1, dilation=dilation,
                                first_dilation=first_dilation if i == 0 else dilation, drop_path=rate,
                                width=width))
            if block_index == 0 and spec.is_preact and spec.preact_first_activation:  # activate before the split
                blocks[-1].preactivated_shortcut = True
            in_planes = planes * block.expansion
            block_index += 1
        stages.append(nn.Sequential(*blocks))
        info.append({"num_chs": in_planes, "reduction": reduction, "module": f"layer{stage + 1}"})
    return stages, info


@contextlib.contextmanager
def _frozen_norm_stats(module: nn.Module) -> Iterator[None]:
    """Restore the BatchNorm running statistics of ``module`` on exit: activation checkpointing re-runs a
    block's forward during backward, and in train mode that second pass would update them a second time
    (with ``momentum=0.1``, 19% of the new statistics instead of 10%)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and m.running_mean is not None]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


class ResNet(nn.Module):
    """A residual (or plain) network described entirely by ``spec``."""

    def __init__(self, spec: ResNetSpec) -> None:
        super().__init__()
        self.spec = spec
        for name, module in _stem(spec).items():
            self.add_module(name, module)
        stages, stage_info = build_stages(spec)
        self.stage_names = [f"layer{i + 1}" for i in range(len(stages))]
        for name, stage in zip(self.stage_names, stages):
            self.add_module(name, stage)
        stem_reduction = spec.stem_stride // 2 if spec.stem in ("imagenet", "deep") else spec.stem_stride
        self.feature_info = FeatureInfo(
            [{"num_chs": spec.stem_width, "reduction": stem_reduction, "module": "stem"}] + stage_info)
        self.num_features = spec.num_features
        # Pre-activation nets end with the norm + ReLU the last block did not apply.
        self.final_bn = norm(spec, self.num_features) if spec.is_preact else nn.Identity()
        self.final_relu = nn.ReLU(inplace=True) if spec.is_preact else nn.Identity()
        self.avgpool = pool_layer(spec)
        self.head_drop = nn.Dropout(spec.head_dropout) if spec.head_dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.num_features, spec.num_classes) if spec.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.init_weights()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """He (fan-out) init for convs, unit norms; optionally zero the last norm of every branch."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks():
            if hasattr(block, "reset_parameters"):  # blocks with an init of their own (conv_pool)
                block.reset_parameters()
        if self.spec.conv_type != "2d" and isinstance(self.fc, nn.Linear):  # torchvision's VideoResNet head
            nn.init.normal_(self.fc.weight, 0, 0.01)
            nn.init.zeros_(self.fc.bias)
        if self.spec.zero_init_last and self.spec.residual:
            for block in self.blocks():
                block.zero_init_last()

    @torch.no_grad()
    def init_patch_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the ``patch`` stem to whiten the 2x2 patches of ``images`` (normalised N x C x H x W).

        The filters are the eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue + eps),
        and their negatives, so the activation after the stem keeps both signs (Jordan 2024, after
        Coates & Ng 2011). Training usually freezes these weights (``whiten_stem`` in the recipe).
        """
        spec = self.spec
        patch_dim = spec.in_chans * 4
        if spec.stem != "patch" or spec.stem_width != 2 * patch_dim:
            raise ValueError(f"patch whitening needs stem='patch' with stem_width={2 * patch_dim} (2 x {patch_dim} "
                             f"patch values); this model has stem={spec.stem!r}, stem_width={spec.stem_width}")
        if images.ndim != 4 or images.shape[1] != spec.in_chans or min(images.shape[-2:]) < 2:
            raise ValueError(f"patch whitening needs a normalised N x {spec.in_chans} x H x W batch, "
                             f"got shape {tuple(images.shape)}")
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1)  # N, C, H-1, W-1, 2, 2
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, patch_dim).double()
        covariance = flat.T @ flat / flat.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        order = eigenvalues.argsort(descending=True)
        filters = (eigenvectors[:, order].T / torch.sqrt(eigenvalues[order] + eps)[:, None])
        filters = filters.reshape(patch_dim, spec.in_chans, 2, 2).to(self.conv1.weight.dtype)
        self.conv1.weight.copy_(torch.cat([filters, -filters]))

    def blocks(self) -> list[nn.Module]:
        return [b for name in self.stage_names for b in getattr(self, name)]

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, name) for name in self.stage_names]

    # --------------------------------------------------------------- forward
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing (timm's name): in training, each residual block keeps only its input
        and recomputes its inner activations during backward. Memory for activations drops to about one
        tensor per block, for about a third more compute per step; gradients and BatchNorm statistics are
        the same as without it (stochastic depth replays the same random draws), eager or under
        ``torch.compile``."""
        self.grad_checkpointing = bool(enable)

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return stage(x)
        compiling = torch.compiler.is_compiling()
        for block in stage:
            if compiling:  # the compiled graph recomputes activations only; buffer updates run once, in forward
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = checkpoint(block, x, use_reentrant=False,
                               context_fn=lambda block=block: (contextlib.nullcontext(), _frozen_norm_stats(block)))
        return x

    def check_input(self, x: torch.Tensor) -> None:
        rank = 4 if self.spec.conv_type == "2d" else 5
        layout = "(N, C, H, W)" if rank == 4 else "(N, C, T, H, W)"
        if x.ndim != rank:
            raise InputError(f"expected a {rank}-D batch {layout}, got shape {tuple(x.shape)}"
                             + ("; add a batch dimension with x.unsqueeze(0)" if x.ndim == rank - 1 else ""))
        if x.shape[1] != self.spec.in_chans:
            raise InputError(f"model takes {self.spec.in_chans} input channels, got {x.shape[1]} "
                             f"(shape {tuple(x.shape)}); create the model with in_chans={x.shape[1]} "
                             "or convert the images")
        if not (x.is_floating_point() or x.is_complex()):
            raise InputError(f"model takes floating-point images, got a {x.dtype} batch; convert it first, "
                             "e.g. x.float() / 255 and the normalisation the model was trained with")
        sides = [self.spec.final_side(s, temporal=(rank == 5 and i == 0)) for i, s in enumerate(x.shape[2:])]
        if min(sides) < 1:
            smallest = next(s for s in range(1, 4096) if self.spec.final_side(s) >= 1)
            raise InputError(f"input of shape {tuple(x.shape)} is too small for this model: its stem and pooling "
                             f"need a side of at least {smallest} px")
        if self.training and x.shape[0] == 1 and all(s == 1 for s in sides) and any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.modules()):
            raise InputError(f"a batch of one {'x'.join(map(str, x.shape[2:]))} input in training mode leaves "
                             "BatchNorm a single value per channel in the last stage (a 1x1 map); train on "
                             "batches of 2 or more or larger inputs, or call model.eval() for inference")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and stages (and the final norm of pre-activation nets): the unpooled feature map."""
        self.check_input(x)
        x = self.maxpool(self.forward_stem(x))
        for name in self.stage_names:
            x = self._run_stage(getattr(self, name), x)
        return self.final_relu(self.final_bn(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.head_drop(x)
        if pre_logits:
            return x
        x = self.fc(x)
        return x * self.spec.logit_scale if self.spec.logit_scale != 1.0 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def feature_indices(self, indices: int | Sequence[int] | None = None, option: str = "indices") -> tuple[int, ...]:
        """Levels of ``feature_info`` (0 = stem, 1.. = stages), sorted, as timm reads them: None is every stage,
        an int ``n`` the last ``n`` levels, and negative indices count from the deepest (-1)."""
        n = len(getattr(self, "all_feature_info", self.feature_info))
        if indices is None:
            return tuple(range(1, n))
        if isinstance(indices, int):
            if not 1 <= indices <= n:
                raise ValueError(f"{option}={indices}: this model has {n} feature levels, so ask for the last 1 to {n}")
            return tuple(range(n - indices, n))
        chosen = tuple(indices)
        bad = [i for i in chosen if not isinstance(i, int) or not -n <= i < n]
        if not chosen or bad:
            raise ValueError(f"{option} {chosen} out of range: this model has feature levels 0..{n - 1} "
                             f"(0 = stem, {', '.join(f'{i} = layer{i}' for i in range(1, n))}; -1 = the deepest)")
        return tuple(sorted({i % n for i in chosen}))

    def forward_intermediates(self, x: torch.Tensor, indices: int | Sequence[int] | None = None) -> list[torch.Tensor]:
        """Outputs of the chosen ``feature_info`` levels, shallow to deep (``feature_indices``: None = every stage,
        an int = the last n, negative = from the deepest)."""
        wanted = set(self.feature_indices(indices))
        self.check_input(x)
        outputs: list[torch.Tensor] = []
        x = self.forward_stem(x)
        if 0 in wanted:
            outputs.append(x)
        x = self.maxpool(x)
        last = max(wanted)
        for i, name in enumerate(self.stage_names, start=1):
            if i > last:
                break
            x = self._run_stage(getattr(self, name), x)
            if i == len(self.spec.layers):  # the network's last stage (a truncated backbone never reaches it)
                x = self.final_relu(self.final_bn(x))
            if i in wanted:
                outputs.append(x)
        return outputs

    # ------------------------------------------------------------------ head
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one (0 removes it); the spec follows.

        ``global_pool`` ("avg" or "max") also swaps the pooling, as timm's method of the same name does.
        """
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if global_pool is not None and global_pool not in ("avg", "max"):
            raise ValueError(f"global_pool={global_pool!r} is not supported; choose 'avg' or 'max' (forward_features "
                             "gives the unpooled feature map)")
        self.spec = self.spec.replace(num_classes=num_classes, head_pool=global_pool or self.spec.head_pool)
        self.avgpool = pool_layer(self.spec)
        if "classes" in getattr(self, "pretrained_cfg", {}):  # published category names belong to the old head
            self.pretrained_cfg = {k: v for k, v in self.pretrained_cfg.items() if k != "classes"}
        like = next(p for p in self.parameters() if p.is_floating_point())  # a bf16 or CUDA model gets its head there
        self.fc = (nn.Linear(self.num_features, num_classes).to(like.device, like.dtype) if num_classes > 0
                   else nn.Identity())

    def extra_repr(self) -> str:
        return f"spec: {self.spec.describe()}"


class ResNetFeatures(ResNet):
    """A backbone whose forward returns a list of stage outputs (timm's ``features_only``).

    It is a ``ResNet`` without a classifier, so parameter names are the full network's and its
    weights load directly; ``feature_info`` lists only the chosen levels.
    """

    def __init__(self, spec: ResNetSpec, out_indices: int | Sequence[int] | None = None) -> None:
        super().__init__(spec.replace(num_classes=0))
        levels = self.feature_info
        self.out_indices = self.feature_indices(out_indices, "out_indices")  # None: every stage (3 for CIFAR nets, 4 for ImageNet's)
        self.all_feature_info = levels
        # stages past the deepest level asked for would get no gradient (DistributedDataParallel fails on that
        # without find_unused_parameters) and cost memory: dropped, as timm does; their weights in a full
        # checkpoint are skipped on loading (unused_checkpoint_prefixes)
        deepest = max(self.out_indices)
        dropped = self.stage_names[deepest:]
        for name in dropped:
            delattr(self, name)
        self.stage_names = self.stage_names[:deepest]
        self.unused_checkpoint_prefixes = tuple(f"{name}." for name in dropped)
        if dropped and spec.is_preact:  # the final norm belongs to the last stage
            self.final_bn, self.final_relu = nn.Identity(), nn.Identity()
            self.unused_checkpoint_prefixes += ("final_bn.",)
        self.feature_info = FeatureInfo(levels[i] for i in self.out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return self.forward_intermediates(x, self.out_indices)
