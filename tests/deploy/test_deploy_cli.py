"""The deploy commands end to end on tiny data, and their one-line errors for bad input."""

import json
import warnings

import pytest
import torch

from resnets import model_from_checkpoint
from resnets.cli import main
from resnets.deploy import load_quantized

from deploy_helpers import cli_error as _error


def _payload(path) -> dict:
    """What an int8 file saved by ``save_quantized`` holds beside the weights."""
    from resnets.deploy.quantize import _fx_quietly

    with _fx_quietly():
        return torch.load(path, weights_only=True)


def test_export_cli_writes_verified_files(workspace, capsys):
    root, _, checkpoint = workspace
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "exported-program",
                 "--out", str(root / "m.pt2")]) == 0
    assert "verified at batch 3" in capsys.readouterr().out and (root / "m.pt2").exists()


def test_export_cli_errors(workspace, capsys):
    _, _, checkpoint = workspace
    err = _error(capsys, ["export", "--checkpoint", str(checkpoint), "--format", "tflite"])
    assert "--format 'tflite' is not supported" in err and "onnx, exported-program" in err
    err = _error(capsys, ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--int8"])
    assert "--int8 needs calibration images" in err
    err = _error(capsys, ["export", "--checkpoint", "missing.safetensors", "--format", "onnx"])
    assert "does not exist" in err


def test_quantize_cli_reports_the_accuracy_change(workspace, capsys):
    root, data, checkpoint = workspace
    out = root / "tiny.int8.pt"
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert main(["quantize", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                     "--calib-images", "24", "--val-split", "0.25"]) == 0
        load_quantized(out)
    text = capsys.readouterr().out
    assert "post-training int8: top-1" in text and "points" in text and out.exists()
    # the int8 file carries the preprocessing it was calibrated and measured with (a deployer needs it)
    payload = _payload(out)
    assert payload["image_size"] == 16 and payload["classes"] == sorted(p.name for p in data.iterdir())
    assert len(payload["mean"]) == len(payload["std"]) == 3 and payload["calibration_images"] == 24
    # torch's notices about its FX quantization API are for resnets, not for the user, who cannot act on them
    assert not [str(w.message)[:80] for w in shown if "deprecat" in str(w.message).lower()]


def test_quantize_cli_runs_quantization_aware_training_when_ptq_loses_too_much(workspace, capsys):
    root, data, checkpoint = workspace
    out = root / "tiny.qat.pt"
    # a negative allowance forces the QAT path on this tiny task
    assert main(["quantize", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--calib-images", "24", "--val-split", "0.25", "--qat-epochs", "2", "--max-drop", "-100"]) == 0
    assert "quantization-aware training: top-1" in capsys.readouterr().out
    # it recorded 0 calibration images: the QAT observers' ranges come from the images QAT ran before freezing them
    payload = _payload(out)
    assert 0 < payload["calibration_images"] < payload["qat_images"] and payload["image_size"] == 16

    with torch.no_grad():
        assert load_quantized(out)(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_prune_and_distill_cli_write_normal_checkpoints(workspace, capsys, monkeypatch):
    import resnets.deploy.data

    root, data, checkpoint = workspace
    used = []
    load = resnets.deploy.data.load_deploy_data
    monkeypatch.setattr(resnets.deploy.data, "load_deploy_data",
                        lambda *a, **k: used.append((k["val_split"], k["seed"])) or load(*a, **k))
    common = ["--data", str(data), "--epochs", "1", "--batch-size", "8", "--val-split", "0.25",
              "--set", "workers=0", "--set", "progress=false", "--set", "tensorboard=false"]
    assert main(["prune", "--checkpoint", str(checkpoint), "--target-macs", "0.5", "--out", str(root / "pruned"),
                 *common, "--set", "seed=1"]) == 0
    import yaml

    # a training seed is not a split seed: the run holds out (and records) the split it measured on
    recorded = yaml.safe_load((root / "pruned" / "config.yaml").read_text())
    assert recorded["seed"] == 1 and recorded["split_seed"] == 0 and recorded["val_split"] == 0.25
    assert used == [(0.25, 0)]
    pruned, ckpt = model_from_checkpoint(root / "pruned" / "best.safetensors")
    assert ckpt.spec.block_widths is not None and pruned(torch.randn(1, 3, 16, 16)).shape == (1, 4)
    from resnets.profile import profile

    before = profile(model_from_checkpoint(checkpoint)[0], (3, 16, 16)).macs  # the checkpoint's 16 px, not 32
    assert f"MACs {before / 1e6:.1f}M ->" in capsys.readouterr().out
    assert main(["distill", "--teacher", str(checkpoint), "--student", "resnet20", "--out", str(root / "kd"),
                 "--temperature", "4", *common]) == 0
    student, ckpt = model_from_checkpoint(root / "kd" / "best.safetensors")
    assert ckpt.spec.layers == (3, 3, 3) and ckpt.spec.num_classes == 4
    assert "distilled resnet20" in capsys.readouterr().out


def test_train_based_cli_errors(workspace, capsys):
    root, data, checkpoint = workspace
    err = _error(capsys, ["prune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(root / "x")])
    assert "--epochs N or --time-budget" in err
    err = _error(capsys, ["prune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(root / "x"),
                          "--epochs", "1", "--target-macs", "0.001"])
    assert "cannot reach" in err
    err = _error(capsys, ["distill", "--teacher", str(checkpoint), "--student", "resnet20", "--data", str(data),
                          "--out", str(root / "y")])
    assert "--epochs N or --time-budget" in err


def test_bench_cli_times_against_torchvision(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", "resnet18", "--batch", "2", "--precision", "fp32,bf16", "--rounds", "2",
                 "--input-size", "32", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    variants = {r["variant"] for r in rows}
    assert "torchvision fp32 eager NCHW" in variants and "ours bf16 channels_last+folded" in variants
    assert all(r["p50_ms"] > 0 and r["gflops"] > 0 and r["peak_share"] > 0 for r in rows)
    assert next(r for r in rows if r["variant"] == "torchvision fp32 eager NCHW")["speedup"] == 1.0
    err = _error(capsys, ["bench", "--precision", "fp8"])
    assert "--precision 'fp8' is unknown" in err


def test_bench_times_the_bf16_peak_only_where_a_row_needs_it(monkeypatch):
    """Emulated bf16 (a CPU without AVX-512 BF16 or AMX) makes the 1024^3 peak matmul take seconds a round;
    an fp32-only run there skips it, and reports that it did."""
    from resnets import create_model
    from resnets.deploy import bench as bench_module

    model = create_model("resnet20").eval()
    monkeypatch.setattr(bench_module, "PEAK_SIZE", 128)  # emulated bf16 takes seconds at the real 1024
    for native in (False, True):
        monkeypatch.setattr(bench_module, "native_bf16", lambda *args, native=native: native)
        rows, env = bench_module.benchmark(model, "resnet20", [1], ("fp32",), rounds=1, baseline=False)
        assert (env["peak_bf16_gflops"] is not None) is native
        assert rows and all(r.peak_share > 0 for r in rows)


def test_bench_says_when_native_bf16_is_slower_than_fp32(monkeypatch):
    """An Intel Xeon with AVX-512 BF16 but no AMX ran ResNet-50 in bf16 at 0.81x torchvision's fp32: the table
    alone reads like a bug, so the bench says why."""
    import resnets.precision
    from resnets import create_model
    from resnets.deploy import bench as bench_module

    monkeypatch.setattr(bench_module, "PEAK_SIZE", 128)
    monkeypatch.setattr(resnets.precision, "native_bf16", lambda *args: True)
    monkeypatch.setattr(resnets.precision, "cpu_vendor", lambda: "AuthenticAMD")  # timed, not known
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(resnets.precision, "bf16_speedup", lambda device="cpu": 0.53)
    with pytest.warns(UserWarning, match="bf16 matmul ran at 0.53x fp32's speed.*expect the bf16 rows"):
        bench_module.benchmark(create_model("resnet20").eval(), "resnet20", [1], ("bf16",), rounds=1, baseline=False)


def test_quantization_aware_training_of_a_single_step(workspace, capsys):
    """36 training images, batch 128, one epoch: one QAT step, whose observers must run before they freeze."""
    root, data, checkpoint = workspace
    out = root / "tiny.qat1.pt"
    assert main(["quantize", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--calib-images", "8", "--val-split", "0.25", "--qat-epochs", "1", "--max-drop", "-100"]) == 0
    assert "quantization-aware training: top-1" in capsys.readouterr().out and out.exists()


def test_grey_models_calibrate_and_measure_on_grey_images(workspace, tiny_spec, capsys):
    """The data folders are read as RGB; a 1-channel model gets them as grey, with its 1-value statistics."""
    from resnets import ResNet, save_weights

    root, data, _ = workspace
    torch.manual_seed(0)
    grey = save_weights(ResNet(tiny_spec.replace(in_chans=1)), root / "grey.safetensors",
                        {"image_size": 16, "mean": [0.4], "std": [0.2],
                         "classes": sorted(p.name for p in data.iterdir())})
    assert main(["quantize", "--checkpoint", str(grey), "--data", str(data), "--out", str(root / "grey.int8.pt"),
                 "--calib-images", "8", "--val-split", "0.25"]) == 0
    assert "post-training int8: top-1" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(grey), "--format", "exported-program", "--int8", "--calib-data",
                 str(data), "--calib-images", "8", "--out", str(root / "grey.int8.pt2")]) == 0
    out = capsys.readouterr().out
    assert "wrote int8 exported-program" in out and "import torch.ao.quantization.fx._decomposed" in out
    # the trainer reads RGB: pruning or distilling a grey model is refused before any work, not after it
    for argv in (["prune", "--checkpoint", str(grey)], ["distill", "--teacher", str(grey), "--student", "resnet20"]):
        assert main([*argv, "--data", str(data), "--epochs", "1", "--out", str(root / "grey_run")]) == 2
        assert "1-channel model" in capsys.readouterr().err and not (root / "grey_run").exists()
