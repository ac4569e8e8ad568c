"""Export is verified right after writing: ONNX (onnxruntime) and torch.export parity, dynamic
batch, int8 ONNX, and clear errors for unsupported formats, missing calibration or runtime."""

import sys

import pytest
import torch

from resnets.deploy.export import (ExportError, ExportVerificationError, _compare, export_model, export_onnx,
                                   export_program, fp32_logit_tolerance)
from resnets.deploy.quantize import CalibrationError

from deploy_helpers import color_batch

SIZE = (3, 16, 16)


def test_onnx_parity_and_dynamic_batch(trained_tiny, tmp_path):
    import onnxruntime

    report = export_onnx(trained_tiny, tmp_path / "m.onnx", input_size=SIZE)
    assert report.max_abs_diff <= 1e-4 and report.top1_agreement == 1.0 and report.verified_batch == 3
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, *SIZE)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        with torch.no_grad():
            assert torch.allclose(got, trained_tiny(x), atol=1e-4)


def test_exported_program_parity_and_dynamic_batch(trained_tiny, tmp_path):
    report = export_program(trained_tiny, tmp_path / "m.pt2", input_size=SIZE)
    assert report.max_abs_diff <= 1e-4
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.randn(1, *SIZE)
    with torch.no_grad():
        assert torch.allclose(program(x), trained_tiny(x), atol=1e-5)


def test_int8_onnx_is_smaller_and_agrees(trained_tiny, tmp_path):
    calibration = [color_batch(32, seed=900 + i)[0] for i in range(2)]
    fp32 = export_onnx(trained_tiny, tmp_path / "fp32.onnx", input_size=SIZE)
    int8 = export_onnx(trained_tiny, tmp_path / "int8.onnx", input_size=SIZE, int8=True,
                       calibration_data=calibration)
    assert int8.int8 and int8.bytes < 0.6 * fp32.bytes
    assert int8.max_abs_diff <= int8.tolerance
    # the fp32 graph the quantizer read was scratch: only the two files asked for are left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]


def test_fp32_tolerance_scales_with_large_logits(trained_tiny, tmp_path):
    """Logits of 1e6 (as deep nets give at random initialisation) carry rounding far above 1e-4 absolute; the
    check scales with them, and stays absolute for ordinary logits."""
    import copy

    loud = copy.deepcopy(trained_tiny)
    with torch.no_grad():
        loud.fc.weight.mul_(1e6)
        loud.fc.bias.mul_(1e6)
        scale = loud(torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(1))).abs().max().item()
    assert scale > 1e5
    report = export_onnx(loud, tmp_path / "loud.onnx", input_size=SIZE)
    assert report.tolerance == pytest.approx(1e-4 * scale) and report.max_abs_diff <= report.tolerance
    assert report.max_abs_diff > 1e-4  # an absolute 1e-4 would have rejected this exact export
    assert report.top1_agreement == 1.0
    assert fp32_logit_tolerance(torch.tensor([[0.5, -0.2]]), 1e-4) == 1e-4
    assert fp32_logit_tolerance(torch.tensor([[50.0, -0.2]]), 1e-4) == pytest.approx(5e-3)


def test_verification_fails_loudly_with_the_difference():
    with pytest.raises(ExportVerificationError, match=r"max \|diff\| = 0\.5"):
        _compare("probe", torch.zeros(2, 3), torch.full((2, 3), 0.5), 1e-4)
    with pytest.raises(ExportVerificationError):
        _compare("probe", torch.full((2, 3), float("nan")), torch.zeros(2, 3), 1e-4)


def test_bad_requests_are_clear_errors(trained_tiny, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="not supported; choose one of onnx, exported-program"):
        export_model(trained_tiny, tmp_path / "m.tflite", "tflite")
    with pytest.raises(CalibrationError, match="calibration"):
        export_onnx(trained_tiny, tmp_path / "q.onnx", input_size=SIZE, int8=True)
    with pytest.raises(CalibrationError, match="calibration"):
        export_program(trained_tiny, tmp_path / "q.pt2", input_size=SIZE, int8=True)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ExportError, match="pip install onnxruntime"):
        export_onnx(trained_tiny, tmp_path / "m.onnx", input_size=SIZE)


def test_an_onnx_file_in_another_opset_than_asked_is_refused_and_replaces_nothing(trained_tiny, tmp_path,
                                                                                  monkeypatch):
    """torch's exporter falls back to its own opset when it cannot convert a graph down; the written file is
    checked, and the file that was there before stays."""
    from resnets.deploy import export as export_module

    monkeypatch.setattr(export_module, "supported_opsets", lambda: range(5, 99))  # let 13 past the up-front check
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the user's earlier export")
    with pytest.raises(ExportError, match="wrote opset 18 .* not the 13 asked for"):
        export_onnx(trained_tiny, path, input_size=SIZE, opset=13)
    assert path.read_bytes() == b"the user's earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


def test_onnx_files_carry_the_opset_asked_for(trained_tiny, tmp_path):
    from resnets.deploy.export import check_opset, onnx_file_opset, supported_opsets

    newest = supported_opsets()[-1]
    export_onnx(trained_tiny, tmp_path / "m.onnx", input_size=SIZE, opset=newest, verify=False)
    assert onnx_file_opset(tmp_path / "m.onnx") == newest
    with pytest.raises(ExportError, match=f"choose one from 18 to {newest}"):
        check_opset(17)


def test_video_checkpoints_export_and_run_channels_last(tmp_path, capsys):
    """Video nets take (N, C, T, H, W) clips: the export traces one, and channels-last is channels_last_3d."""
    from resnets import create_model, save_weights
    from resnets.cli import main
    from resnets.deploy import make_inference_model

    torch.manual_seed(0)
    model = create_model("r3d_18", num_classes=3, layers=(1, 1), widths=(8, 16), stem_width=8).eval()
    checkpoint = save_weights(model, tmp_path / "r3d.safetensors", {"image_size": 16})
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx"]) == 0
    assert "wrote onnx" in capsys.readouterr().out and (tmp_path / "r3d.onnx").exists()
    clip = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(make_inference_model(model, "fp32", channels_last=True)(clip), model(clip))
    # what needs image folders (calibration, pruning, distillation) refuses a video net in one line
    from resnets.data import make_image_folder

    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=16)
    for argv in (["quantize", "--data", str(data), "--out", str(tmp_path / "q.int8.pt")],
                 ["export", "--format", "onnx", "--int8", "--calib-data", str(data), "--out", str(tmp_path / "q.onnx")],
                 ["prune", "--data", str(data), "--out", str(tmp_path / "p"), "--epochs", "1"]):
        assert main([argv[0], "--checkpoint", str(checkpoint), *argv[1:]]) == 2
        assert "video network" in capsys.readouterr().err, argv[0]
    assert main(["distill", "--teacher", str(checkpoint), "--student", "resnet20", "--data", str(data),
                 "--out", str(tmp_path / "d"), "--epochs", "1"]) == 2
    assert "video network" in capsys.readouterr().err


def test_int8_exports_take_image_label_pairs_as_calibration_data(trained_tiny, tmp_path):
    """Quantizing read (images, labels) batches, but the check that follows failed on them ("expected Tensor as
    element 0 in argument 0, but got tuple")."""
    pairs = [color_batch(16, seed=900 + i) for i in range(2)]
    report = export_onnx(trained_tiny, tmp_path / "int8.onnx", input_size=SIZE, int8=True, calibration_data=pairs)
    assert report.int8 and report.verified_batch == 16


def test_exported_programs_take_batches_above_1024(trained_tiny, tmp_path):
    """The batch dimension was declared with max=1024: a batch of 1025 failed the program's guard."""
    from resnets.deploy import quantize_int8

    export_program(trained_tiny, tmp_path / "m.pt2", input_size=SIZE)
    large = torch.randn(1025, *SIZE)
    with torch.no_grad():
        assert torch.export.load(str(tmp_path / "m.pt2")).module()(large).shape == (1025, 4)
        pt2e = quantize_int8(trained_tiny, [color_batch(8, seed=900)[0]], flow="pt2e")
        assert pt2e(large).shape == (1025, 4)


def test_export_leaves_the_callers_model_in_its_mode(trained_tiny, tmp_path):
    """Exporting put the caller's training model in eval mode, as a side effect."""
    from resnets import create_model
    from resnets.deploy import compile_openvino

    model = create_model(trained_tiny.spec)
    model.load_state_dict(trained_tiny.state_dict())
    model.train()
    model.bn1.eval()  # a frozen BatchNorm stays frozen
    for export in (lambda: export_onnx(model, tmp_path / "m.onnx", input_size=SIZE, verify=False),
                   lambda: export_program(model, tmp_path / "m.pt2", input_size=SIZE, verify=False),
                   lambda: compile_openvino(model, "fp32", input_size=SIZE)):
        export()
        assert model.training and not model.bn1.training and model.layer1.training


@pytest.mark.parametrize("export_format, names", [("onnx", ["m.onnx"]), ("exported-program", ["m.pt2"]),
                                                   ("openvino", ["m.xml", "m.bin"])])
def test_a_file_that_fails_verification_is_not_kept(trained_tiny, tmp_path, monkeypatch, export_format, names):
    """The file was checked after it had replaced the earlier export under that name, and stayed there."""
    from resnets.deploy import export as export_module
    from resnets.deploy import openvino as openvino_module

    for module in (export_module, openvino_module):  # every check fails
        monkeypatch.setattr(module, "fp32_logit_tolerance", lambda want, tolerance: -1.0)
    fresh, earlier = tmp_path / "fresh", tmp_path / "earlier"
    earlier.mkdir()
    for name in names:
        (earlier / name).write_bytes(b"the user's earlier export")
    for folder in (fresh, earlier):
        with pytest.raises(ExportVerificationError, match="nothing was written"):
            export_model(trained_tiny, folder / names[0], export_format, input_size=SIZE)
    assert not fresh.exists() or not list(fresh.iterdir())
    assert sorted(p.name for p in earlier.iterdir()) == sorted(names)  # no temporary file left behind
    assert all((earlier / name).read_bytes() == b"the user's earlier export" for name in names)


def test_an_int8_program_is_checked_as_a_consumer_loads_it(trained_tiny, tmp_path, monkeypatch):
    """The int8 .pt2 was checked in this process, where torchao had registered the quantized_decomposed ops it
    calls; plain ``torch.export.load`` elsewhere failed. The check now loads it in a fresh Python process that
    imports torch and the documented module only: with a module that does not register them, it fails."""
    from pathlib import Path

    from resnets.deploy import export as export_module

    documented = export_module.PT2_INT8_IMPORT
    docs = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    assert f"import {documented}" in docs
    monkeypatch.setattr(export_module, "PT2_INT8_IMPORT", "math")
    with pytest.raises(ExportError, match="does not load in a fresh Python process with only `import torch; "
                                          "import math`.*quantized_decomposed"):
        export_program(trained_tiny, tmp_path / "q.pt2", input_size=SIZE, int8=True,
                       calibration_data=[color_batch(8, seed=900)[0]])
    assert not list(tmp_path.iterdir())


def test_onnx_files_carry_the_checkpoints_preprocessing(trained_tiny, tmp_path, capsys):
    """A deployer could not recover the normalisation, input size or class names from the exported file."""
    import json

    import onnx

    from resnets import save_weights
    from resnets.cli import main

    preprocessing = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.2], "image_size": 16, "classes": list("abcd")}
    checkpoint = save_weights(trained_tiny, tmp_path / "tiny.safetensors", {"model_name": "resnet20", **preprocessing})
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--no-verify"]) == 0
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "tiny.onnx")).metadata_props}
    assert props == preprocessing
    export_onnx(trained_tiny, tmp_path / "int8.onnx", input_size=SIZE, int8=True, verify=False,
                calibration_data=[color_batch(8, seed=900)[0]], metadata={"image_size": 16})
    assert {p.key: p.value for p in onnx.load(str(tmp_path / "int8.onnx")).metadata_props}["image_size"] == "16"


def test_exported_programs_and_openvino_ir_carry_the_preprocessing_too(trained_tiny, tmp_path):
    import json

    from resnets import save_weights
    from resnets.cli import main
    from resnets.deploy.export import PT2_METADATA_FILE

    preprocessing = {"mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.2], "image_size": 16, "classes": list("abcd")}
    checkpoint = save_weights(trained_tiny, tmp_path / "tiny.safetensors", {"model_name": "resnet20", **preprocessing})
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "exported-program", "--no-verify"]) == 0
    extra = {PT2_METADATA_FILE: ""}
    torch.export.load(tmp_path / "tiny.pt2", extra_files=extra)
    assert json.loads(extra[PT2_METADATA_FILE]) == preprocessing
    pytest.importorskip("openvino")
    import openvino

    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--no-verify"]) == 0
    graph = openvino.Core().read_model(str(tmp_path / "tiny.xml"))
    assert {key: json.loads(graph.get_rt_info(["resnets", key]).astype(str)) for key in preprocessing} == preprocessing
