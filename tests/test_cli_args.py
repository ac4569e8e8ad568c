"""The shared argument types and output checks of the command line (resnets.cli.args)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from resnets.cli import UserError
from resnets.cli.args import check_output, device, positive_int, val_split


def test_val_split_is_one_rule_a_fraction_or_a_whole_count():
    assert val_split("0.1") == 0.1 and val_split("500") == 500 and isinstance(val_split("500"), int)
    for bad in ("2.5", "-1", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            val_split(bad)


def test_numbers_and_devices():
    assert positive_int("3") == 3 and device("cpu") == "cpu"
    for function, bad in ((positive_int, "0"), (positive_int, "1.5"), (device, "gpu")):
        with pytest.raises(argparse.ArgumentTypeError):
            function(bad)


def test_outputs_spare_a_runs_files_but_may_replace_a_commands_own_earlier_output(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "last.pt", "config.yaml"):
        (run / name).write_bytes(b"the run's")
    (run / "model.int8.pt").write_bytes(b"an earlier quantize --out")
    best = run / "best.safetensors"
    assert check_output(run / "model.int8.pt", reads=[best]) == run / "model.int8.pt"
    assert check_output(run / "new.onnx", reads=[best]) == run / "new.onnx"
    for target in ("best.safetensors", "last.pt", "config.yaml"):
        with pytest.raises(UserError, match="writing there would destroy it"):
            check_output(run / target, reads=[best])
    with pytest.raises(UserError, match="writing there would destroy it"):
        check_output(run, reads=[best], directory=True)  # a run folder as another run's --out
    with pytest.raises(UserError, match="is a folder"):
        check_output(run, reads=[best])
    with pytest.raises(UserError, match="is a checkpoint's name"):
        check_output(tmp_path / "eval.pt", kind=".json")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not a .json file"):
        check_output(tmp_path / "notes.txt", kind=".json")


def test_no_output_lands_on_any_runs_files_read_or_not(tmp_path):
    # export/quantize/bench wrote over another run's checkpoint: only the run being read was protected
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "best.safetensors").write_bytes(b"another run's weights")
    (other / "config.yaml").write_text("model: resnet20\n")
    for kind in (None, ".json", (".pt", ".pth")):
        with pytest.raises(UserError, match="a file of the training run"):
            check_output(other / ("config.yaml" if kind == ".json" else "best.safetensors"), kind=kind)
    assert check_output(other / "model.onnx", kind=".onnx") == other / "model.onnx"  # a new file beside it is fine
    with pytest.raises(UserError, match="is not a .onnx file"):
        (tmp_path / "photo.png").write_bytes(b"png")
        check_output(tmp_path / "photo.png", kind=".onnx")


def test_nothing_is_written_into_an_image_tree_the_command_reads(tmp_path):
    tree = tmp_path / "tree"
    (tree / "cat").mkdir(parents=True)
    (tree / "cat" / "1.png").write_bytes(b"an image")
    for out, directory in ((tree / "cat" / "1.png", False), (tree / "cat" / "new.json", False), (tree / "runs", True),
                           (tree, True), (tree / "cat" / "overlays", True)):
        with pytest.raises(UserError, match="inside .*the image folder this command reads"):
            check_output(out, data=[tree], directory=directory, kind=None if directory else ".png")
    # its top level holds no images, and hidden folders are not read: both are fine, as is a name like cifar10
    assert check_output(tree / "eval.json", data=[tree], kind=".json") == tree / "eval.json"
    assert check_output(tree / ".runs" / "r1", data=[tree], directory=True) == tree / ".runs" / "r1"
    assert check_output(tmp_path / "out", data=[tree, "cifar10", None], directory=True) == tmp_path / "out"


def test_non_negative_float_refuses_nan_infinity_and_negatives():
    from resnets.cli.args import finite_float, non_negative_float

    assert finite_float("-100") == -100.0
    for bad in ("nan", "-inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            finite_float(bad)

    assert non_negative_float("0") == 0.0 and non_negative_float("1e-4") == 1e-4
    for bad in ("nan", "inf", "-1", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            non_negative_float(bad)


def test_an_output_where_nothing_can_be_written_fails_before_any_work(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    blocked.chmod(0o500)
    try:
        import os
        if os.access(blocked, os.W_OK):  # root ignores the mode; /proc refuses new files even to root
            blocked = Path("/proc")
        for directory, out in ((False, blocked / "eval.json"), (True, blocked / "run" / "sub")):
            with pytest.raises(UserError, match=f"nothing can be written in {blocked}"):
                check_output(out, directory=directory)
    finally:
        (tmp_path / "blocked").chmod(0o700)
    assert check_output(tmp_path / "new" / "deeper" / "eval.json") == tmp_path / "new" / "deeper" / "eval.json"
