"""Settings for the transfer and detection tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small detectors on small images: one thread is about ten times faster than two on a shared,
    oversubscribed CPU (the Mask R-CNN ResNet-50 step took 1.4 s with one thread, 15 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
