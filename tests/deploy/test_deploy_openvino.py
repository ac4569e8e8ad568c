"""OpenVINO: the compiled network equals the eager one (fp32) or agrees on top-1 (bf16), the IR export (fp32
and int8) is verified after writing and reloads with a dynamic batch, and bad requests are clear errors."""

import sys

import pytest
import torch

from resnets.cli import main
from resnets.deploy.bench import build_variants
from resnets.deploy.export import ExportError, export_model
from resnets.deploy.openvino import compile_openvino, export_openvino, openvino_bf16_supported
from resnets.deploy.quantize import CalibrationError

from deploy_helpers import cli_error, color_batch

SIZE = (3, 16, 16)


def test_fp32_equals_eager_at_any_batch(trained_tiny):
    compiled = compile_openvino(trained_tiny, "fp32", input_size=SIZE)
    for batch in (1, 5):
        x = torch.randn(batch, *SIZE)
        with torch.no_grad():
            want = trained_tiny(x)
        assert torch.allclose(compiled(x), want, atol=1e-4)
    fixed = compile_openvino(trained_tiny, "fp32", input_size=SIZE, batch=4)
    x = torch.randn(4, *SIZE)
    with torch.no_grad():
        assert torch.allclose(fixed(x), trained_tiny(x), atol=1e-4)


def test_bf16_agrees_on_top1_where_native_and_is_refused_elsewhere(trained_tiny):
    if not openvino_bf16_supported():  # OpenVINO would quietly run fp32: refused, naming the fix
        with pytest.raises(ExportError, match="no native bf16.*use precision='fp32'"):
            compile_openvino(trained_tiny, "bf16", input_size=SIZE)
        return
    images, labels = color_batch(64, seed=77)
    compiled = compile_openvino(trained_tiny, "bf16", input_size=SIZE)
    with torch.no_grad():
        want = trained_tiny(images)
    got = compiled(images)
    assert compiled.precision == "bf16" and not torch.equal(got, want)  # really ran in lower precision
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9


def test_int8_agrees_on_top1(trained_tiny):
    calibration = [color_batch(32, seed=900 + i)[0] for i in range(2)]
    compiled = compile_openvino(trained_tiny, "int8", input_size=SIZE, calibration_data=calibration)
    images, _ = color_batch(64, seed=78)
    with torch.no_grad():
        want = trained_tiny(images)
    got = compiled(images)
    assert not torch.allclose(got, want, atol=1e-3)  # really quantized
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9
    with pytest.raises(CalibrationError, match="calibration images"):
        compile_openvino(trained_tiny, "int8", input_size=SIZE)


def test_ir_export_is_verified_and_reloads_with_a_dynamic_batch(trained_tiny, tmp_path):
    import openvino

    report = export_openvino(trained_tiny, tmp_path / "m.xml", input_size=SIZE)
    assert report.format == "openvino" and report.max_abs_diff <= 1e-4 and report.top1_agreement == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]  # no staging folder left behind
    weights = sum(p.numel() for p in trained_tiny.parameters())
    assert (tmp_path / "m.bin").stat().st_size >= 4 * weights * 0.9  # fp32 weights, not compressed to fp16
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(tmp_path / "m.xml")), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(7, *SIZE)
    got = torch.from_numpy(compiled(x.numpy())[0])
    with torch.no_grad():
        assert torch.allclose(got, trained_tiny(x), atol=1e-4)


def test_int8_ir_has_int8_weights_runs_in_int8_and_agrees_on_top1(trained_tiny, tmp_path):
    import openvino

    calibration = [color_batch(32, seed=900 + i)[0] for i in range(2)]
    fp32 = export_openvino(trained_tiny, tmp_path / "fp32" / "m.xml", input_size=SIZE)
    report = export_openvino(trained_tiny, tmp_path / "int8" / "m.xml", input_size=SIZE, int8=True,
                             calibration_data=calibration)
    assert report.int8 and report.top1_agreement >= 2 / 3 and "wrote int8 openvino" in str(report)
    assert sorted(p.name for p in (tmp_path / "int8").iterdir()) == ["m.bin", "m.xml"]
    weights = sum(p.numel() for p in trained_tiny.parameters())
    int8_bin = (tmp_path / "int8" / "m.bin").stat().st_size
    assert int8_bin < 0.5 * (tmp_path / "fp32" / "m.bin").stat().st_size and int8_bin < 2 * weights
    assert fp32.bytes > report.bytes
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(tmp_path / "int8" / "m.xml")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    precisions = {op.get_rt_info()["runtimePrecision"].astype(str) for op in compiled.get_runtime_model().get_ops()
                  if "runtimePrecision" in op.get_rt_info()}
    assert precisions & {"i8", "u8"}, precisions  # the plugin runs quantized kernels, not a dequantized graph
    images, _ = color_batch(64, seed=79)
    got = torch.from_numpy(compiled(images.numpy())[0])
    with torch.no_grad():
        want = trained_tiny(images)
    assert not torch.allclose(got, want, atol=1e-3)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.9
    with pytest.raises(CalibrationError, match="int8 IR needs calibration images"):
        export_openvino(trained_tiny, tmp_path / "x.xml", input_size=SIZE, int8=True)


def test_bench_times_openvino_beside_torchvision(trained_tiny):
    variants = build_variants(trained_tiny, ["fp32", "bf16", "int8"], False, torch.randn(2, *SIZE), openvino=True)
    assert "openvino fp32" in variants and "openvino int8" in variants
    assert ("openvino bf16" in variants) == openvino_bf16_supported()
    assert variants["openvino fp32"](torch.randn(2, *SIZE)).shape == (2, 4)
    assert variants["openvino int8"](torch.randn(2, *SIZE)).shape == (2, 4)


def test_bad_requests_are_clear_errors(trained_tiny, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="ending in .xml"):
        export_openvino(trained_tiny, tmp_path / "m.onnx", input_size=SIZE)
    with pytest.raises(CalibrationError, match="int8 IR needs calibration images"):
        export_model(trained_tiny, tmp_path / "m.xml", "openvino", input_size=SIZE, int8=True)
    with pytest.raises(ExportError, match="precision 'fp16' is not supported; choose one of fp32, bf16, int8"):
        compile_openvino(trained_tiny, "fp16", input_size=SIZE)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(ExportError, match="pip install openvino"):
        compile_openvino(trained_tiny, "fp32", input_size=SIZE)


def test_export_cli_writes_openvino_ir(workspace, capsys):
    root, data, checkpoint = workspace
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out", str(root / "ir.xml")]) == 0
    assert "wrote openvino" in capsys.readouterr().out and (root / "ir.bin").exists()
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--int8", "--calib-data",
                 str(data), "--calib-images", "32", "--out", str(root / "ir8.xml")]) == 0
    assert "wrote int8 openvino" in capsys.readouterr().out
    assert (root / "ir8.bin").stat().st_size < (root / "ir.bin").stat().st_size / 2
    err = cli_error(capsys, ["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--int8"])
    assert "--int8 needs calibration images" in err


def test_bench_cli_without_openvino_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    err = cli_error(capsys, ["bench", "--model", "resnet20", "--batch", "1", "--precision", "fp32", "--rounds", "1",
                             "--input-size", "16", "--openvino"])
    assert "openvino is not installed: pip install openvino" in err and "Traceback" not in err


def test_optimize_for_inference_weighs_openvino(trained_tiny):
    from resnets.deploy import optimize_for_inference

    example = torch.randn(2, *SIZE)
    best, report = optimize_for_inference(trained_tiny, precision="fp32", example_input=example, openvino=True,
                                          return_report=True)
    openvino_row = next(c for c in report.candidates if c.description == "openvino fp32")
    assert openvino_row.safe  # fp32 OpenVINO reproduces the model, so it competes on speed alone
    with torch.no_grad():
        assert torch.allclose(best(example).float(), trained_tiny(example), atol=1e-3)


def test_bench_cli_calibrates_openvino_int8_at_the_timed_size(workspace, capsys):
    """The checkpoint was trained at 16 px, bench times 24 px: the calibration images must be 24 px too, as the
    int8 ONNX graph OpenVINO runs takes no other size."""
    _, data, checkpoint = workspace
    assert main(["bench", "--checkpoint", str(checkpoint), "--batch", "1", "--precision", "int8", "--rounds", "1",
                 "--input-size", "24", "--calib-data", str(data), "--openvino"]) == 0
    assert "| openvino int8 | 1 |" in capsys.readouterr().out


def test_optimize_for_inference_returns_an_openvino_model_that_takes_any_batch(trained_tiny, monkeypatch):
    """OpenVINO was compiled for the example's batch (2 by default): when it won, any other batch failed."""
    from resnets.deploy import fuse, optimize_for_inference

    def openvino_wins(variants, rounds, **kwargs):
        return {name: [0.001 if name.startswith("openvino") else 1.0] for name in variants}

    monkeypatch.setattr(fuse, "time_round_robin", openvino_wins)
    best = optimize_for_inference(trained_tiny, precision="fp32", example_input=torch.randn(2, *SIZE),
                                  openvino=True)
    assert best.description == "openvino fp32"
    x = torch.randn(5, *SIZE)
    with torch.no_grad():
        assert torch.allclose(best(x), trained_tiny(x), atol=1e-4)
