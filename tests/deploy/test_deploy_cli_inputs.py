"""Bad input to the deploy commands (export, quantize, bench, prune, distill) fails up front in one line, and
never writes over what the user made."""

import pytest
import torch

from resnets import ResNet, save_weights
from resnets.cli import main

from deploy_helpers import cli_error as _error, color_batch

TRAIN = ["--epochs", "1", "--batch-size", "8", "--val-split", "0.25", "--set", "workers=0", "--set", "progress=false",
         "--set", "tensorboard=false"]


def _parse_error(capsys, argv) -> str:
    """Run the CLI expecting argparse to refuse an option (exit 2); its stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture()
def run_folder(workspace, tmp_path):
    """A run folder as `resnets train` leaves it: best.safetensors and last.pt side by side."""
    _, _, checkpoint = workspace
    run = tmp_path / "r20"
    run.mkdir()
    (run / "best.safetensors").write_bytes(checkpoint.read_bytes())
    (run / "last.pt").write_bytes(b"user's last.pt")
    return run


def test_outputs_never_overwrite_the_inputs(workspace, run_folder, capsys):
    _, data, _ = workspace
    best, last = run_folder / "best.safetensors", run_folder / "last.pt"
    before = {p: p.read_bytes() for p in (best, last)}
    cases = [
        ["export", "--checkpoint", str(best), "--format", "onnx", "--out", str(best)],
        ["export", "--checkpoint", str(run_folder), "--format", "onnx", "--out", str(last)],
        ["quantize", "--checkpoint", str(best), "--data", str(data), "--out", str(last)],
        ["bench", "--checkpoint", str(best), "--json", str(best)],
        ["prune", "--checkpoint", str(best), "--data", str(data), "--out", str(run_folder), *TRAIN],
        ["distill", "--teacher", str(best), "--student", "resnet20", "--data", str(data), "--out", str(run_folder),
         *TRAIN],
    ]
    for argv in cases:
        assert "writing there would destroy it" in _error(capsys, argv), argv
    assert {p: p.read_bytes() for p in (best, last)} == before


def test_outputs_never_overwrite_another_run_or_the_data(workspace, run_folder, tmp_path, capsys):
    # the commands protected only the run they read: another run's checkpoint, or an image of --data, was lost
    _, data, checkpoint = workspace
    other = tmp_path / "other"
    other.mkdir()
    (other / "best.safetensors").write_bytes(b"another run's weights")
    (other / "config.yaml").write_text("model: resnet20\n")
    image = next(data.rglob("*.png"))
    lone_bin = tmp_path / "weights.bin"
    lone_bin.write_bytes(b"someone's weights")
    kept = [other / "best.safetensors", other / "config.yaml", image, lone_bin]
    before = {p: p.read_bytes() for p in kept}
    cases = [
        (["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(other / "best.safetensors")],
         "a file of the training run"),
        (["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(image)],
         "is not a .onnx file; writing there would destroy it"),
        (["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "model.pt2")],
         "writes a .onnx file"),
        (["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / "weights.xml")],
         "exists without an IR beside it"),
        (["export", "--checkpoint", str(checkpoint), "--int8", "--calib-data", str(data), "--format", "onnx",
          "--out", str(image.with_suffix(".onnx"))], "the image folder this command reads"),
        (["quantize", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(other / "best.safetensors")],
         "a file of the training run"),
        (["quantize", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(other / "config.yaml")],
         "a file of the training run"),
        (["bench", "--checkpoint", str(checkpoint), "--json", str(other / "best.safetensors")],
         "a file of the training run"),
        (["prune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(data / "runs"), *TRAIN],
         "the image folder this command reads"),
    ]
    for argv, words in cases:
        assert words in _error(capsys, argv), argv
    assert {p: p.read_bytes() for p in kept} == before
    assert not (data / "runs").exists()


def test_prune_and_distill_refuse_a_set_that_would_relabel_their_network(workspace, tmp_path, capsys):
    # `prune --set model=resnet56` trained the pruned resnet20 while config.yaml recorded resnet56
    _, data, checkpoint = workspace
    for argv in (["prune", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p")],
                 ["distill", "--teacher", str(checkpoint), "--student", "resnet20", "--out", str(tmp_path / "d")]):
        err = _error(capsys, [*argv, "--data", str(data), *TRAIN, "--set", "model=resnet56"])
        assert "--set model=... cannot change model here" in err, argv
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv, words", [
    (["prune", "--min-keep", "-1"], "argument --min-keep: -1 is not a fraction between 0 and 1"),
    (["prune", "--min-keep", "2"], "argument --min-keep: 2 is not a fraction between 0 and 1"),
    (["prune", "--target-macs", "1.5"], "argument --target-macs: 1.5 is not a fraction"),
    (["prune", "--workers", "-1"], "argument --workers: -1 is negative"),
    (["prune", "--batch-size", "0"], "argument --batch-size: 0 is not a positive whole number"),
    (["distill", "--epochs", "-1"], "argument --epochs: -1 is not a positive finite number"),
    (["distill", "--lr", "0"], "argument --lr: 0 is not a positive finite number"),
    (["distill", "--alpha", "2"], "argument --alpha: 2 is not a fraction between 0 and 1"),
    (["distill", "--temperature", "0"], "argument --temperature: 0 is not a positive"),
    (["prune", "--device", "gpu"], "unknown device 'gpu'"),
    (["quantize", "--calib-images", "0"], "argument --calib-images: 0 is not a positive whole number"),
    (["quantize", "--val-split", "1.5"], "argument --val-split: val_split (--val-split) 1.5 is neither a fraction"),
    (["export", "--tolerance", "-1"], "argument --tolerance: -1 is not a positive finite number"),
    (["export", "--calib-images", "0"], "argument --calib-images: 0 is not a positive whole number"),
    (["bench", "--rounds", "0"], "argument --rounds: 0 is not a positive whole number"),
    (["bench", "--batch", "0,2"], "give positive batch sizes"),
    (["bench", "--batch", "one"], "'one' must be comma-separated integers"),
])
def test_bad_numbers_fail_at_parse_time(workspace, tmp_path, capsys, argv, words):
    root, data, checkpoint = workspace
    required = {"prune": ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "o")],
                "distill": ["--teacher", str(checkpoint), "--student", "resnet20", "--data", str(data),
                            "--out", str(tmp_path / "o")],
                "quantize": ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "o.pt")],
                "export": ["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "o.onnx")],
                "bench": []}[argv[0]]
    assert words in _parse_error(capsys, [argv[0], *required, *argv[1:]])
    assert not list(tmp_path.iterdir())  # nothing written before the complaint


@pytest.mark.parametrize("opset", ["5", "13", "99"])
def test_export_refuses_an_opset_it_cannot_write(workspace, tmp_path, capsys, opset):
    _, _, checkpoint = workspace
    err = _error(capsys, ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--opset", opset,
                          "--out", str(tmp_path / "m.onnx")])
    assert f"--opset: ONNX opset {opset} is not supported" in err and "choose one from 18 to" in err
    assert not (tmp_path / "m.onnx").exists()


def _student(tmp_path, spec, name, **metadata):
    torch.manual_seed(1)
    return str(save_weights(ResNet(spec), tmp_path / name, metadata))


def test_distill_refuses_a_student_head_that_does_not_fit(workspace, tiny_spec, tmp_path, capsys):
    _, data, checkpoint = workspace
    classes = sorted(p.name for p in data.iterdir())
    swapped = _student(tmp_path, tiny_spec, "swapped.safetensors", classes=classes[::-1])
    three = _student(tmp_path, tiny_spec.replace(num_classes=3), "three.safetensors", classes=classes[:3])
    base = ["distill", "--teacher", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "kd"), *TRAIN]
    err = _error(capsys, [*base, "--student", swapped])
    assert f"trained on classes {classes[::-1]}" in err and "same order" in err and "--keep-head" not in err
    err = _error(capsys, [*base, "--student", three])
    assert "3-class head but the data has 4 classes" in err and "--student resnet20" in err
    assert not (tmp_path / "kd").exists()


def test_spec_less_state_dicts_ask_for_the_architecture_option(workspace, trained_tiny, tmp_path, capsys):
    _, data, checkpoint = workspace
    plain = tmp_path / "tv.pth"
    torch.save(trained_tiny.state_dict(), plain)
    err = _error(capsys, ["prune", "--checkpoint", str(plain), "--data", str(data), "--out", str(tmp_path / "p"),
                          *TRAIN])
    assert "--model NAME" in err and "create_model" not in err
    err = _error(capsys, ["distill", "--teacher", str(checkpoint), "--student", str(plain), "--data", str(data),
                          "--out", str(tmp_path / "kd"), *TRAIN])
    assert "--student-model NAME" in err and "create_model" not in err
    err = _error(capsys, ["distill", "--teacher", str(plain), "--student", "resnet20", "--data", str(data),
                          "--out", str(tmp_path / "kd"), *TRAIN])
    assert "--teacher-model NAME" in err
    for argv in (["export", "--checkpoint", str(plain), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                 ["quantize", "--checkpoint", str(plain), "--data", str(data), "--out", str(tmp_path / "q.int8.pt")],
                 ["bench", "--checkpoint", str(plain), "--batch", "1", "--precision", "fp32", "--rounds", "1"]):
        err = _error(capsys, argv)  # export, quantize and bench gave Python's create_model(...) advice
        assert "--model NAME" in err and "create_model" not in err, argv[0]


def test_export_and_bench_take_a_spec_less_state_dict_with_model(tmp_path, capsys):
    from resnets import create_model

    torch.save(create_model("resnet20", num_classes=4).state_dict(), tmp_path / "tv.pth")
    assert main(["export", "--checkpoint", str(tmp_path / "tv.pth"), "--model", "resnet20", "--format", "onnx",
                 "--out", str(tmp_path / "tv.onnx")]) == 0
    assert (tmp_path / "tv.onnx").is_file() and "max |diff|" in capsys.readouterr().out
    assert main(["bench", "--checkpoint", str(tmp_path / "tv.pth"), "--model", "resnet20", "--batch", "1",
                 "--precision", "fp32", "--rounds", "1", "--input-size", "32"]) == 0


def test_a_named_architecture_loads_a_spec_less_state_dict(tmp_path):
    from resnets import create_model
    from resnets.cli.args import load_network

    source = create_model("resnet20", num_classes=4).eval()
    torch.save(source.state_dict(), tmp_path / "tv.pth")
    model, metadata = load_network(str(tmp_path / "tv.pth"), "resnet20", "--checkpoint", "--model")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x), rtol=0, atol=0)
    assert metadata == {}


def test_int8_files_are_named_as_such(workspace, trained_tiny, tmp_path, capsys):
    from resnets.deploy import quantize_int8, save_quantized

    _, _, checkpoint = workspace
    int8 = save_quantized(quantize_int8(trained_tiny, [color_batch(8, seed=5)[0]]), tmp_path / "m.int8.pt")
    for argv in (["export", "--checkpoint", str(int8), "--format", "onnx", "--out", str(tmp_path / "m.onnx")],
                 ["bench", "--checkpoint", str(int8)]):
        err = _error(capsys, argv)
        assert "is an int8 model written by `resnets quantize`" in err and "load_quantized" in err
        assert "without a state dict" not in err


def test_bench_names_and_conflicts(workspace, capsys):
    _, _, checkpoint = workspace
    err = _error(capsys, ["bench", "--compare", "resnet20,resnt50", "--rounds", "1"])
    assert "unknown model 'resnt50'. Did you mean" in err and "resnet50" in err
    assert "not a torchvision classification model either" in err
    err = _error(capsys, ["bench", "--checkpoint", str(checkpoint), "--model", "resnet56"])
    assert "not --model resnet56" in err and "drop --model" in err


def test_bench_prints_a_dash_where_torchvision_has_no_twin():
    from resnets.deploy.bench import BenchRow, format_rows

    row = BenchRow(model="resnet20", variant="ours fp32 eager NCHW", batch=1, p50_ms=1.0, p90_ms=1.0,
                   images_per_s=1000.0, gflops=1.0, peak_share=0.1, speedup=None, params=1, macs=1)
    line = format_rows([row]).splitlines()[-1]
    assert line.endswith("| - |") and "nan" not in line
    assert format_rows([BenchRow(**{**row.as_dict(), "speedup": 1.5})]).endswith("| 1.50x |")


def test_openvino_weights_file_never_overwrites_a_bin_checkpoint(workspace, tmp_path, capsys):
    """OpenVINO IR writes NAME.bin beside NAME.xml: for a checkpoint named NAME.bin (Hugging Face's
    pytorch_model.bin) that is the input itself."""
    pytest.importorskip("openvino")
    _, _, checkpoint = workspace
    from resnets import model_from_checkpoint

    model, ckpt = model_from_checkpoint(checkpoint)
    source = save_weights(model, tmp_path / "pytorch_model.bin", ckpt.metadata)
    before = source.read_bytes()
    err = _error(capsys, ["export", "--checkpoint", str(source), "--format", "openvino",
                          "--out", str(tmp_path / "pytorch_model.xml")])
    assert "writing there would destroy it" in err and source.read_bytes() == before
    assert main(["export", "--checkpoint", str(source), "--format", "openvino"]) == 0
    assert source.read_bytes() == before and (tmp_path / "pytorch_model.openvino.xml").exists()
    assert (tmp_path / "pytorch_model.openvino.bin").exists()


def test_prune_to_no_macs_names_the_option(workspace, tmp_path, capsys):
    _, data, checkpoint = workspace
    err = _error(capsys, ["prune", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "p"),
                          "--target-macs", "0", *TRAIN])
    assert "--target-macs 0 keeps no MACs" in err and "target_macs_fraction" not in err
