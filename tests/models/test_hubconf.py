"""torch.hub entry points (hubconf.py at the repository root), loaded from this checkout as torch.hub would."""

import importlib.util
from pathlib import Path

import pytest
import torch

import resnets

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_model_is_a_hub_entry_taking_create_models_keywords():
    model = torch.hub.load(str(ROOT), "resnet56", source="local", num_classes=7, trust_repo=True)
    assert isinstance(model, resnets.ResNet) and model.spec == resnets.get_spec("resnet56").replace(num_classes=7)
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert set(resnets.list_models()) <= {name for name in dir(hubconf) if callable(getattr(hubconf, name))}
    with pytest.raises(RuntimeError, match="Cannot find callable resnet19"):
        torch.hub.load(str(ROOT), "resnet19", source="local", trust_repo=True)
