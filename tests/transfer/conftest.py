"""Settings for the transfer and detection tests."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Small detectors on small images: one thread is about ten times faster than two on a shared,
    oversubscribed CPU (the Mask R-CNN ResNet-50 step took 1.4 s with one thread, 15 s with two)."""
    yield
