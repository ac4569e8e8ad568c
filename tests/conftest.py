"""Shared test settings: deterministic, single-process-friendly torch."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
