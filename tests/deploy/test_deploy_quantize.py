"""INT8 post-training quantization: agrees with fp32, is smaller on disk, reloads, and refuses
to run without calibration data."""

import os

import pytest
import torch

from resnets import save_weights
from resnets.deploy import CalibrationError, load_quantized, quantize_int8, save_quantized

from deploy_helpers import color_batch


def _calibration():
    return [color_batch(32, seed=500 + i)[0] for i in range(4)]


def test_int8_agrees_with_fp32_and_its_file_is_smaller(trained_tiny, batch, tmp_path):
    x, labels = batch
    quantized = quantize_int8(trained_tiny, _calibration())
    with torch.no_grad():
        fp32, int8 = trained_tiny(x), quantized(x)
    agreement = (int8.argmax(1) == fp32.argmax(1)).float().mean().item()
    assert agreement >= 0.9, f"int8 top-1 agrees with fp32 on only {agreement:.0%} of the batch"
    assert (fp32.argmax(1) == labels).float().mean() >= 0.9, "the fixture model should have learned the task"
    assert quantized.calibration_images == 128
    save_weights(trained_tiny, tmp_path / "fp32.safetensors")
    save_quantized(quantized, tmp_path / "int8.pt")
    assert os.path.getsize(tmp_path / "int8.pt") < 0.6 * os.path.getsize(tmp_path / "fp32.safetensors")
    reloaded = load_quantized(tmp_path / "int8.pt")
    with torch.no_grad():
        assert torch.equal(reloaded(x), int8)
    # the residual adds are quantized ops, not float islands
    graph = str(quantized.net.graph)
    assert "quantized.add_relu" in graph or "quantized.add" in graph


def test_pt2e_flow_agrees_with_fp32(trained_tiny, batch):
    x, _ = batch
    quantized = quantize_int8(trained_tiny, _calibration(), flow="pt2e")
    with torch.no_grad():
        agreement = (quantized(x).argmax(1) == trained_tiny(x).argmax(1)).float().mean().item()
    assert agreement >= 0.9
    targets = {str(n.target) for n in quantized.net.graph.nodes}
    assert any("quantize_per_tensor" in t for t in targets)


def test_quantized_model_checks_its_input(trained_tiny):
    quantized = quantize_int8(trained_tiny, _calibration()[:1])
    with pytest.raises(ValueError, match="input channels"):
        quantized(torch.randn(1, 1, 16, 16))


def test_int8_without_calibration_data_is_a_clear_error(trained_tiny):
    with pytest.raises(CalibrationError, match="calibration"):
        quantize_int8(trained_tiny, None)
    with pytest.raises(CalibrationError, match="empty"):
        quantize_int8(trained_tiny, [])
    with pytest.raises(CalibrationError, match="at least 64"):
        quantize_int8(trained_tiny, _calibration()[:1], min_images=64)


def test_the_calibration_cap_counts_images_not_batches(trained_tiny):
    """The cap was checked before each batch, so 4 batches of 32 under a cap of 40 calibrated on 64 images."""
    assert quantize_int8(trained_tiny, _calibration(), max_images=40).calibration_images == 40
    assert quantize_int8(trained_tiny, _calibration(), max_images=40, flow="pt2e").calibration_images == 40
    # 128 images were given: "only 0 calibration images were given" blamed the data for the cap
    with pytest.raises(CalibrationError, match="max_images=0 is below min_images=1"):
        quantize_int8(trained_tiny, _calibration(), max_images=0)


def test_load_quantized_rejects_other_files(tmp_path, trained_tiny):
    save_weights(trained_tiny, tmp_path / "fp32.pt")
    with pytest.raises(ValueError, match="not an int8 model"):
        load_quantized(tmp_path / "fp32.pt")
