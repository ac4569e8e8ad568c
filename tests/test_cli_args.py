"""The shared argument types and output checks of the command line (resnets.cli.args)."""

from __future__ import annotations

import argparse

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
