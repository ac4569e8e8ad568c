"""Transfer learning: fine-tuning policies (freezing, BatchNorm behaviour, per-part learning rates,
progressive unfreezing), linear probes, pretrained sources, and FPN/detection backbones
(``resnets.detection``).
"""

from .loop import FinetuneHistory, LoopConfig, evaluate, run_finetune
from .policy import (BN_POLICIES, FinetuneConfig, PolicyError, ProgressiveUnfreezer, UnfreezeCallback,
                     apply_finetune_policy, lr_multipliers, part_names, parts_to_freeze, replace_head, set_bn_policy,
                     to_frozen_batchnorm, trainable_summary)
from .probe import ProbeResult, extract_features, fit_linear, linear_probe
from .source import SourceInfo, check_head, load_source

__all__ = [
    "BN_POLICIES", "FinetuneConfig", "FinetuneHistory", "LoopConfig", "PolicyError", "ProbeResult",
    "ProgressiveUnfreezer", "SourceInfo", "apply_finetune_policy", "check_head", "evaluate", "extract_features",
    "fit_linear", "linear_probe", "load_source", "lr_multipliers", "part_names", "parts_to_freeze", "replace_head",
    "run_finetune", "set_bn_policy", "to_frozen_batchnorm", "trainable_summary", "UnfreezeCallback",
]
