"""ResNetSpec: the one typed, serializable description of every ResNet variant.

Every model in the zoo is a ``ResNetSpec``; variants differ by field values, never by
subclasses or strings parsed at run time. A spec validates itself on construction so an
impossible architecture fails here, with a message that says what to change, and not
deep inside a forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal

BlockKind = Literal["basic", "bottleneck", "preact_basic", "preact_bottleneck", "conv_pool"]
StemKind = Literal["imagenet", "cifar", "deep", "video", "patch"]
ShortcutKind = Literal["A", "B", "C", "D"]
StrideOn = Literal["3x3", "1x1"]
ConvType = Literal["2d", "3d", "2plus1d"]
Activation = Literal["relu", "gelu"]
HeadPool = Literal["avg", "max"]

BLOCK_KINDS = ("basic", "bottleneck", "preact_basic", "preact_bottleneck", "conv_pool")
STEM_KINDS = ("imagenet", "cifar", "deep", "video", "patch")
SHORTCUT_KINDS = ("A", "B", "C", "D")
STRIDE_ON = ("3x3", "1x1")
CONV_TYPES = ("2d", "3d", "2plus1d")
ACTIVATIONS = ("relu", "gelu")
HEAD_POOLS = ("avg", "max")
SMALL_INPUT_STEMS = ("cifar", "patch")
VIDEO_CLIP = (16, 112)  # frames and side of the Kinetics clips the video ResNets were trained on (Tran et al. 2018)
INT_FIELDS = ("stem_width", "groups", "width_per_group", "in_chans", "num_classes", "output_stride")
FLOAT_FIELDS = ("width_multiplier", "dropout", "drop_path_rate", "head_dropout", "se_ratio", "logit_scale",
                "norm_momentum")
BOOL_FIELDS = ("zero_init_last", "residual", "norm_scale")


class SpecError(ValueError):
    """An impossible or inconsistent architecture description."""


@dataclass(frozen=True)
class ResNetSpec:
    """A complete, validated description of one residual (or plain) network.

    Field meanings follow the papers: He et al. 2015 (basic/bottleneck blocks, shortcut
    options A/B/C), He et al. 2016 (pre-activation), Zagoruyko & Komodakis 2016 (wide nets,
    dropout in blocks), Xie et al. 2017 (ResNeXt groups), He et al. 2019 "Bag of Tricks"
    (deep stem "C", avg-pool shortcut "D"), Hu et al. 2018 (squeeze-excitation),
    Huang et al. 2016 (stochastic depth), Tran et al. 2018 (3-D and (2+1)-D video nets) and the fast
    CIFAR-10 nets of Page 2018 (ResNet-9) and Jordan 2024 (airbench): ``conv_pool`` blocks, a 2x2
    ``patch`` stem that training initialises as a whitening filter, scale-free norms, max-pool head.
    """

    block: BlockKind = "basic"
    """``conv_pool``: 3x3 conv at the input resolution, 2x2 max-pool in stride-2 stages, norm, activation,
    then a 3x3 conv-norm-activation branch added back (ResNet-9 / airbench layout)."""
    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    """Base width ("planes") of each stage; a bottleneck stage outputs 4x this."""
    stem: StemKind = "imagenet"
    """``patch``: a 2x2 convolution with bias and no padding (32 px in, 31 px out), then the activation;
    with ``stem_width = 2 x 4 x in_chans`` its weights can be a whitening of the data's 2x2 patches."""
    stem_width: int = 64
    shortcut: ShortcutKind = "B"
    stride_on: StrideOn = "3x3"
    """Where a bottleneck's downsampling stride sits: the 3x3 ("v1.5", torchvision) or
    the first 1x1 (the paper, "v1")."""
    strides: tuple[int, ...] | None = None
    """Stride of each stage's first block; default 1 for the first stage, 2 after."""
    groups: int = 1
    width_per_group: int = 64
    width_multiplier: float = 1.0
    """Multiplies every stage width (wide residual networks, k)."""
    dropout: float = 0.0
    """Dropout between the convolutions of each block (WRN)."""
    drop_path_rate: float = 0.0
    """Stochastic depth: survival falls linearly to 1 - rate at the last block."""
    head_dropout: float = 0.0
    se_ratio: float = 0.0
    """Squeeze-excitation reduction (1/16 in SENet); 0 disables it."""
    zero_init_last: bool = False
    """Start each residual branch at zero (Goyal et al.): post-activation blocks zero their last norm's scale,
    pre-activation blocks (which end on a convolution) that convolution's weights, as timm's ResNetV2."""
    preact_first_activation: bool = True
    """Pre-activation nets: the first block's identity path takes the activated stem output, as He et al. 2016
    (appendix) build it. A stored pre-activation spec without this field (saved before it existed) reads False:
    those nets passed the raw stem output, and their weights keep computing what they computed."""
    residual: bool = True
    """False gives the 'plain' twin: the same layers with no shortcuts."""
    conv_type: ConvType = "2d"
    output_stride: int | None = None
    """Total downsampling; None keeps the network's own, 8 or 16 replace later strides by dilation."""
    in_chans: int = 3
    num_classes: int = 1000
    block_widths: tuple[int, ...] | None = None
    """Inner width of each block, in order (pruned nets): a basic block's conv1 output, a
    bottleneck's conv1/conv2 width. None uses the width the stage implies."""
    act: Activation = "relu"
    """Activation of ``conv_pool`` blocks and the ``patch`` stem (the papers' blocks use ReLU)."""
    head_pool: HeadPool = "avg"
    """Global pooling before the classifier."""
    logit_scale: float = 1.0
    """Multiplies the logits (airbench: 1/9, a fixed softmax temperature)."""
    norm_scale: bool = True
    """False: every BatchNorm's scale stays at 1 and is not trained (only its shift is)."""
    norm_momentum: float = 0.1
    """BatchNorm running-statistics momentum (PyTorch's convention: the weight of the new batch)."""
    paper: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Normalise sequences coming from JSON/YAML (lists) into tuples so the spec stays hashable.
        # Wrong types (a string from YAML, a float count) would otherwise pass or fail deep inside torch.
        for name in ("layers", "widths", "strides", "block_widths"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (tuple, list)) or not all(
                    isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
                raise SpecError(f"{name}={value!r} must be a list of whole numbers "
                                "(one per stage; per block for block_widths)")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        for name in INT_FIELDS:
            value = getattr(self, name)
            if value is None and name == "output_stride":
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise SpecError(f"{name}={value!r} must be a whole number")
            object.__setattr__(self, name, int(value))
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise SpecError(f"{name}={value!r} must be a number")
            if not math.isfinite(value):
                raise SpecError(f"{name}={value!r} must be a finite number")
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name}={getattr(self, name)!r} must be true or false")
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise SpecError(message)

        need(self.block in BLOCK_KINDS, f"block={self.block!r} is unknown; choose one of {BLOCK_KINDS}")
        need(self.stem in STEM_KINDS, f"stem={self.stem!r} is unknown; choose one of {STEM_KINDS}")
        need(self.shortcut in SHORTCUT_KINDS, f"shortcut={self.shortcut!r} is unknown; choose one of {SHORTCUT_KINDS}")
        need(self.stride_on in STRIDE_ON, f"stride_on={self.stride_on!r} is unknown; choose one of {STRIDE_ON}")
        need(self.conv_type in CONV_TYPES, f"conv_type={self.conv_type!r} is unknown; choose one of {CONV_TYPES}")
        need(len(self.layers) > 0 and all(n >= 1 for n in self.layers),
             f"layers={self.layers} must list at least one stage, each with at least one block")
        need(len(self.widths) == len(self.layers),
             f"widths has {len(self.widths)} entries but layers has {len(self.layers)}: give one width per stage")
        need(all(w >= 1 for w in self.widths), f"widths={self.widths} must be positive")
        need(self.stem_width >= (2 if self.stem == "deep" else 1),
             f"stem_width={self.stem_width} must be at least {2 if self.stem == 'deep' else 1}")
        if self.strides is not None:
            need(len(self.strides) == len(self.layers),
                 f"strides has {len(self.strides)} entries but layers has {len(self.layers)}: give one stride per stage")
            need(all(s in (1, 2) for s in self.strides), f"strides={self.strides}: each stage stride must be 1 or 2")
        need(self.groups >= 1 and self.width_per_group >= 1, "groups and width_per_group must be at least 1")
        if self.groups > 1 or self.width_per_group != 64:
            need(self.is_bottleneck,
                 f"groups={self.groups}, width_per_group={self.width_per_group} need bottleneck blocks "
                 f"(ResNeXt / wide bottlenecks); with block={self.block!r} use width_multiplier to widen instead")
        need(self.width_multiplier > 0, "width_multiplier must be positive")
        need(all(w >= 1 for w in self.stage_widths),
             f"width_multiplier={self.width_multiplier} leaves a stage of widths {self.widths} with no channels "
             f"({self.stage_widths}); use a larger multiplier")
        if self.is_bottleneck and self.block_widths is None:  # ResNeXt: width * width_per_group / 64, per group
            inner = [self.bottleneck_width(w) for w in self.stage_widths]
            need(all(w >= 1 for w in inner),
                 f"widths={self.widths} with groups={self.groups}, width_per_group={self.width_per_group} leave a "
                 f"bottleneck without inner channels ({inner}: stage width x width_per_group / 64, rounded down, x "
                 "groups); use wider stages or a larger width_per_group")
        if self.shortcut == "A" and self.residual:  # zero padding can add channels, never remove them
            chans = (self.stem_width,) + self.stage_out_channels
            need(all(a <= b for a, b in zip(chans, chans[1:])),
                 f"shortcut='A' pads channels with zeros, so widths cannot shrink, but the stem and stages give "
                 f"{' -> '.join(map(str, chans))} channels; use shortcut='B' (projection) or a smaller stem_width")
        need(0.0 <= self.dropout < 1.0, f"dropout={self.dropout} must be in [0, 1)")
        need(0.0 <= self.head_dropout < 1.0, f"head_dropout={self.head_dropout} must be in [0, 1)")
        need(0.0 <= self.drop_path_rate < 1.0, f"drop_path_rate={self.drop_path_rate} must be in [0, 1)")
        need(0.0 <= self.se_ratio <= 1.0, f"se_ratio={self.se_ratio} must be in [0, 1]")
        need(self.in_chans >= 1, f"in_chans={self.in_chans} must be at least 1")
        need(self.num_classes >= 0, f"num_classes={self.num_classes} must be >= 0 (0 removes the classifier)")
        if self.output_stride is not None:
            need(self.output_stride in (1, 2, 4, 8, 16, 32),
                 f"output_stride={self.output_stride} must be a power of two such as 8, 16 or 32")
            need(self.stem_stride <= self.output_stride <= self.natural_stride,
                 f"output_stride={self.output_stride} must lie between the stem's stride {self.stem_stride} "
                 f"and this network's total stride {self.natural_stride}")
        if self.conv_type != "2d":
            need(self.stem == "video", f"conv_type={self.conv_type!r} needs stem='video'")
            need(self.shortcut in ("B", "C"), "video networks support projection shortcuts B or C only")
            need(self.output_stride in (None, self.natural_stride),
                 "video networks do not support dilation (output_stride)")
        else:
            need(self.stem != "video", "stem='video' needs conv_type='3d' or '2plus1d'")
        if self.block_widths is not None:
            need(len(self.block_widths) == sum(self.layers),
                 f"block_widths has {len(self.block_widths)} entries but the net has {sum(self.layers)} blocks: "
                 "give one inner width per block")
            need(all(w >= 1 and w % self.groups == 0 for w in self.block_widths),
                 f"block_widths={self.block_widths} must be positive multiples of groups={self.groups}")
            need(self.conv_type == "2d", "block_widths is supported for 2-D networks only")
        if self.se_ratio > 0:
            need(not self.is_preact, "squeeze-excitation is defined here for post-activation blocks only")
            need(self.conv_type == "2d", "squeeze-excitation is defined here for 2-D networks only; set se_ratio=0")
        need(self.act in ACTIVATIONS, f"act={self.act!r} is unknown; choose one of {ACTIVATIONS}")
        need(self.act == "relu" or self.block == "conv_pool" or self.stem == "patch",
             f"act={self.act!r} applies to conv_pool blocks and the patch stem; the {self.block} blocks use ReLU "
             "as in their papers")
        need(self.head_pool in HEAD_POOLS, f"head_pool={self.head_pool!r} is unknown; choose one of {HEAD_POOLS}")
        need(self.logit_scale > 0, f"logit_scale={self.logit_scale} must be positive")
        need(0.0 < self.norm_momentum <= 1.0, f"norm_momentum={self.norm_momentum} must be in (0, 1]")
        need(not (self.zero_init_last and not self.norm_scale and self.residual and not self.is_preact),
             "zero_init_last zeroes the scale of each branch's last BatchNorm, which norm_scale=False freezes: every "
             "branch would stay zero for good. Use one of the two")
        if self.block == "conv_pool":
            need(self.conv_type == "2d" and self.se_ratio == 0 and self.shortcut == "B" and self.block_widths is None
                 and self.output_stride is None,
                 "conv_pool blocks are 2-D, without squeeze-excitation, pruning widths or dilation, and their "
                 "shortcut is the pooled activation itself (leave shortcut='B')")
        if self.stem == "patch":
            need(self.conv_type == "2d", "the patch stem is 2-D only")

    # ------------------------------------------------------------ derived facts
    @property
    def is_preact(self) -> bool:
        return self.block.startswith("preact")

    @property
    def is_bottleneck(self) -> bool:
        return self.block.endswith("bottleneck")

    @property
    def expansion(self) -> int:
        return 4 if self.is_bottleneck else 1

    @property
    def stage_strides(self) -> tuple[int, ...]:
        if self.strides is not None:
            return self.strides
        return (1,) + (2,) * (len(self.layers) - 1)

    @property
    def stem_stride(self) -> int:
        return {"imagenet": 4, "deep": 4, "cifar": 1, "patch": 1, "video": 2}[self.stem]

    @property
    def default_image_size(self) -> int:
        """The input side the net was designed for: 32 px for CIFAR-style stems, 112 for video clips, else 224."""
        if self.stem == "video":
            return VIDEO_CLIP[1]
        return 32 if self.stem in SMALL_INPUT_STEMS else 224

    @property
    def default_input_size(self) -> tuple[int, ...]:
        """One input at ``default_image_size``: (channels, side, side), or (channels, frames, side, side) for a
        video net (Conv3d layers take clips)."""
        side = self.default_image_size
        if self.conv_type != "2d":
            return (self.in_chans, VIDEO_CLIP[0], side, side)
        return (self.in_chans, side, side)

    @property
    def natural_stride(self) -> int:
        total = self.stem_stride
        for s in self.stage_strides:
            total *= s
        return total

    @property
    def effective_output_stride(self) -> int:
        return self.output_stride or self.natural_stride

    def final_side(self, side: int, temporal: bool = False) -> int:
        """Side of the last feature map for an input side (``temporal``: a clip's length).

        Every downsampling here rounds up (padded strided convs and pools, ceil-mode average pools),
        except the patch stem (``side - 1``) and the 2x2 max-pools of ``conv_pool`` blocks (round down).
        """
        stage_stride = self.effective_output_stride // self.stem_stride
        if self.stem == "patch":
            side -= 1
        elif not temporal:
            side = -(-side // self.stem_stride)
        if self.block == "conv_pool":
            return max(side // stage_stride, 0)
        return max(-(-side // stage_stride), 0)

    @property
    def stage_widths(self) -> tuple[int, ...]:
        """Base width of each stage after the width multiplier."""
        return tuple(int(round(w * self.width_multiplier)) for w in self.widths)

    @property
    def stage_out_channels(self) -> tuple[int, ...]:
        return tuple(w * self.expansion for w in self.stage_widths)

    @property
    def stem_out_channels(self) -> int:
        return self.stem_width

    @property
    def num_features(self) -> int:
        return self.stage_out_channels[-1]

    @property
    def depth(self) -> int:
        """Weighted layers on the main path (stem convolutions, block convolutions, classifier): He et al.'s count
        for their nets (ResNet-50, ResNet-110); the WRN paper counts WRN-28-10 as 28 (6N+4, here 26) and ResNet-D
        keeps its base net's name (resnet50d: 52 here)."""
        per_block = 3 if self.is_bottleneck else 2
        stem = 3 if self.stem == "deep" else 1
        return stem + per_block * sum(self.layers) + 1

    def bottleneck_width(self, stage_width: int) -> int:
        """Inner width of a bottleneck (torchvision's rule, covers ResNeXt and wide nets)."""
        return int(stage_width * (self.width_per_group / 64.0)) * self.groups

    # --------------------------------------------------------------- serialize
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResNetSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec fields {unknown}; known fields are {sorted(known)}")
        if "preact_first_activation" not in data and str(data.get("block", "")).startswith("preact"):
            data = {**data, "preact_first_activation": False}  # saved before the field: the old first block
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ResNetSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError("spec JSON must be an object of field names to values")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "ResNetSpec":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            import difflib

            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            detail = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise SpecError(f"unknown model option {detail}; valid options are the ResNetSpec fields: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """A short human description, used in error messages about mismatched weights."""
        kind = self.block.replace("_", "-")
        net = "residual" if self.residual else "plain"
        g = f", groups {self.groups}x{self.width_per_group}d" if self.groups > 1 else ""
        return (f"{net} {kind} net with {'-'.join(map(str, self.layers))} blocks, "
                f"stage widths {'/'.join(map(str, self.stage_out_channels))}{g}, {self.stem} stem, "
                f"{self.in_chans} input channels, {self.num_classes} classes")
