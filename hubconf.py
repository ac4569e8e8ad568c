"""torch.hub entry points, one per registered model, each taking ``create_model``'s keywords:
``torch.hub.load(REPO, "resnet50", weights="IMAGENET1K_V2")`` with this repository's GitHub ``owner/name``, or
``torch.hub.load(CHECKOUT, "resnet56", source="local")``. torch.hub runs this file from a checkout without
installing the package, so ``src/`` is put on the path first."""

import os
import sys

dependencies = ["torch", "numpy", "tqdm"]  # what building a model imports (weights add torchvision, safetensors)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from resnets import create_model, list_models  # noqa: E402


def _entry(name):
    def build(**kwargs):
        return create_model(name, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"resnets {name}: create_model({name!r}, **kwargs) (num_classes, in_chans, weights, ...)."
    return build


globals().update({name: _entry(name) for name in list_models()})
