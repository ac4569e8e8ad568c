"""`resnets finetune --resume` and `resnets distill --resume`: a run killed (SIGKILL) mid-epoch and resumed by
its own command ends with the same metrics and weights as an uninterrupted run (CPU), and `resnets train
--resume` points at the right command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnets import create_model
from resnets.cli import main
from resnets.data import make_image_folder
from resnets.weights import read_checkpoint, save_weights

CLASSES = ["class_0", "class_1", "class_2"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("command-resume")
    data = make_image_folder(root / "data", classes=3, per_class=16, size=8)
    torch.manual_seed(1)
    source = save_weights(create_model("resnet20", num_classes=10), root / "source.safetensors",
                          {"classes": [f"c{i}" for i in range(10)], "mean": [0.5] * 3, "std": [0.25] * 3})
    teacher = save_weights(create_model("resnet20", num_classes=3), root / "teacher.safetensors",
                           {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3})
    env = {**os.environ, "RESNETS_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("RESNETS_FAULT_KILL", None)
    return root, data, source, teacher, env


def _command(name: str, workspace, out: Path) -> list[str]:
    root, data, source, teacher, _ = workspace
    if name == "finetune":  # progressive unfreezing: the resumed epoch must unfreeze what the killed one had
        return ["finetune", "--from", str(source), "--data", str(data), "--out", str(out), "--epochs", "3",
                "--batch-size", "8", "--val-split", "0.25", "--freeze", "stem", "--unfreeze-every", "1",
                "--stage-lr", "layer1=0.3", "--bn", "eval", "--label-smoothing", "0.1"]
    return ["distill", "--teacher", str(teacher), "--student", "resnet20", "--data", str(data), "--out", str(out),
            "--epochs", "3", "--batch-size", "8", "--val-split", "0.25", "--temperature", "3", "--alpha", "0.7",
            "--set", "workers=0", "--set", "progress=false", "--set", "tensorboard=false"]


def _run(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnets", *argv], env=env, capture_output=True, text=True,
                          timeout=180)


def _metrics(run: Path) -> list[dict]:
    volatile = ("images_per_s", "epoch_seconds", "elapsed_minutes")
    return [{k: v for k, v in json.loads(line).items() if k not in volatile}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("command", ["finetune", "distill"])
def test_a_killed_run_resumed_by_its_command_equals_an_uninterrupted_one(workspace, tmp_path, command, capsys):
    env = workspace[-1]
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = _run(_command(command, workspace, full), env)
    assert done.returncode == 0, done.stderr
    cut = _run(_command(command, workspace, killed), {**env, "RESNETS_FAULT_KILL": "0:6"})  # 4 steps an epoch
    assert cut.returncode == -signal.SIGKILL, cut.stderr
    assert len(_metrics(killed)) == 1

    assert main(["train", "--resume", str(killed)]) == 2  # the trainer alone cannot rebuild the loss or groups
    assert f"resume it with `resnets {command} --resume {killed}`" in capsys.readouterr().err
    assert main([command, "--resume", str(killed), "--epochs", "5"]) == 2
    assert "drop --epochs (" in capsys.readouterr().err
    resumed = _run([command, "--resume", str(killed / "last.pt")], env)
    assert resumed.returncode == 0, resumed.stderr

    assert _metrics(killed) == _metrics(full)
    for name in ("last.pt", "best.safetensors"):
        a, b = read_checkpoint(full / name).state_dict, read_checkpoint(killed / name).state_dict
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"


def test_resume_errors_name_the_problem(workspace, tmp_path, capsys):
    root, data, source, teacher, _ = workspace
    assert main(["finetune", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "there is no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["distill", "--teacher", str(teacher), "--data", str(data)])
    assert exit_.value.code == 2
    assert "required: --student, --out (or --resume RUN)" in capsys.readouterr().err

    run = tmp_path / "trained"  # a plain training run: finetune cannot resume it, and says who can
    assert main(["train", "--model", "resnet20", "--data", str(data), "--epochs", "1", "--batch-size", "8",
                 "--no-progress", "--workers", "0", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["finetune", "--resume", str(run)]) == 2
    assert "no finetune.yaml" in (err := capsys.readouterr().err) and f"resnets train --resume {run}" in err

    from resnets.data import load_data
    from resnets.train import resume
    from resnets.train.checkpoint import CheckpointError

    other = load_data(data, val_split=0.25, normalization=((0.1, 0.1, 0.1), (0.2, 0.2, 0.2)))
    with pytest.raises(CheckpointError, match="normalised with mean/std"):
        resume(run, splits=other)  # Python callers rebuild the data themselves: a mismatch is named

    kd = tmp_path / "kd"  # the teacher a distillation started from has gone
    kd.mkdir()
    (kd / "last.pt").write_bytes((run / "last.pt").read_bytes())
    (kd / "distill.yaml").write_text(f"command: distill\nteacher: {tmp_path / 'gone.safetensors'}\n")
    assert main(["distill", "--resume", str(kd)]) == 2
    assert "gone.safetensors, which is not there any more" in capsys.readouterr().err
    (kd / "distill.yaml").write_text("command: finetune\n")
    assert main(["distill", "--resume", str(kd)]) == 2
    assert "is not a record of `resnets distill`" in capsys.readouterr().err


def test_a_finetune_that_fails_to_start_leaves_the_folder_free_for_the_corrected_command(workspace, tmp_path, capsys):
    root, data, source, teacher, _ = workspace
    out = tmp_path / "ft"
    common = ["finetune", "--from", str(source), "--data", str(data), "--out", str(out), "--epochs", "1"]
    assert main([*common, "--batch-size", "1000"]) == 2  # no full batch: refused before any work
    assert main([*common, "--batch-size", "8", "--augment", "bogus"]) == 2
    assert "no full batch" in capsys.readouterr().err
    assert not (out / "finetune.yaml").exists()  # its record used to block the retry ("already holds a run")
    assert main([*common, "--batch-size", "8"]) == 0
    assert (out / "finetune.yaml").is_file() and (out / "last.pt").is_file()
