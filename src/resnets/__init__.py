"""resnets: the ResNet family, faithful to the papers, on PyTorch.

Public API: ``create_model``, ``list_models``, ``ResNetSpec``, ``save_weights``, ``load_weights``,
``profile``.
"""

from .factory import create_model, resolve_spec
from .model import InputError, ResNet, ResNetFeatures
from .profile import profile
from .spec import ResNetSpec, SpecError
from .weights import (CheckpointError, load_weights, model_from_checkpoint, pretrained_config, read_checkpoint,
                      save_weights)
from .zoo import UnknownModelError, get_entry, get_spec, list_models, list_pretrained, pretrained_tags

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "InputError", "ResNet", "ResNetFeatures", "ResNetSpec", "SpecError", "UnknownModelError",
    "create_model", "get_entry", "get_spec", "list_models", "list_pretrained", "load_weights", "model_from_checkpoint",
    "pretrained_config", "pretrained_tags", "profile",
    "read_checkpoint", "resolve_spec", "save_weights", "optimize_for_inference",
]


def __getattr__(name: str):
    # Loaded on first use so that importing resnets does not import the quantization stack.
    if name == "optimize_for_inference":
        from .deploy.fuse import optimize_for_inference

        return optimize_for_inference
    raise AttributeError(f"module 'resnets' has no attribute {name!r}")
