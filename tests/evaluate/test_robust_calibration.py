"""Calibration: ECE of a calibrated toy is near 0; temperature scaling lowers NLL and is stored."""

import pytest
import torch

from resnets import create_model, save_weights
from resnets.evaluate.calibration import (calibration_report, expected_calibration_error, fit_temperature, nll,
                                          reliability_diagram, store_temperature)
from resnets.weights import read_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


def _calibrated_toy(n=20000, k=5, seed=0):
    """Labels drawn from the model's own softmax: calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2.0
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).flatten()
    return logits, labels


def test_ece_of_calibrated_toy_is_near_zero():
    logits, labels = _calibrated_toy()
    assert expected_calibration_error(torch.softmax(logits, 1), labels) < 0.02


def test_ece_of_overconfident_model_is_large_and_temperature_fixes_it():
    logits, labels = _calibrated_toy()
    hot = logits * 4.0  # same ranking, far too confident
    assert expected_calibration_error(torch.softmax(hot, 1), labels) > 0.1
    t = fit_temperature(hot, labels)
    assert t == pytest.approx(4.0, rel=0.1)
    assert nll(hot, labels, t) < nll(hot, labels) - 0.1
    report = calibration_report(hot, labels, t)
    assert report["ece_scaled"] < 0.03 < report["ece"]
    assert report["accuracy"] == pytest.approx(float((hot.argmax(1) == labels).float().mean()))


def test_reliability_diagram_and_stored_temperature(tmp_path):
    logits, labels = _calibrated_toy(2000)
    out = reliability_diagram(calibration_report(logits * 3, labels, 3.0), tmp_path / "rel.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5000
    model = create_model("resnet20", num_classes=10)
    for suffix in (".safetensors", ".pt"):
        ckpt = save_weights(model, tmp_path / f"m{suffix}", {"classes": ["a"] * 10})
        store_temperature(ckpt, 1.7)
        back = read_checkpoint(ckpt)
        assert back.metadata["temperature"] == pytest.approx(1.7)
        assert back.metadata["classes"] == ["a"] * 10
        assert set(back.state_dict) == set(model.state_dict())


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected probabilities"):
        expected_calibration_error(torch.rand(4, 3), torch.zeros(5, dtype=torch.long))
