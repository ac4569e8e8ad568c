"""The `resnets train` options for several processes: the --nproc launcher's command for the ranks,
and the flags that only make sense together."""

from __future__ import annotations

import pytest

from resnets.train.distributed import namespace_to_argv, torchrun_args


def test_launcher_rebuilds_the_command_for_each_rank():
    from resnets.cli import build_parser

    parser = build_parser()
    argv = ["train", "--model", "resnet20", "--data", "d", "--out", "o", "--nproc", "2", "--max-restarts", "1",
            "--set", "lr=0.05", "--set", "augment.flip=false", "--sync-bn", "--accum-steps", "2", "--no-progress"]
    args = parser.parse_args(argv)
    command = namespace_to_argv(args.parser, args, drop=("nproc", "max_restarts"))
    assert "--nproc" not in command and "--max-restarts" not in command
    again = parser.parse_args(["train", *command])
    for name in ("model", "data", "out", "set", "sync_bn", "accum_steps", "no_progress"):
        assert getattr(again, name) == getattr(args, name), name
    assert again.nproc is None
    assert torchrun_args(2, ["train", *command], 1)[:5] == ["--standalone", "--nproc-per-node=2", "--max-restarts=1",
                                                           "--monitor-interval=0.5", "--module"]


def test_max_restarts_needs_nproc(capsys):
    from resnets.cli import main

    assert main(["train", "--model", "resnet20", "--data", "x", "--steps", "1", "--max-restarts", "1"]) == 2
    assert "--max-restarts goes with --nproc" in capsys.readouterr().err


def test_the_launcher_refuses_missing_data_before_starting_a_rank(tmp_path, monkeypatch, capsys):
    # Regression: a wrong --data failed in every rank, and --max-restarts K repeated the failure K times.
    from resnets.cli import main
    from resnets.train import distributed

    monkeypatch.setattr(distributed, "launch", lambda *a, **k: pytest.fail("the launcher started ranks"))
    assert main(["train", "--model", "resnet20", "--data", str(tmp_path / "missing"), "--steps", "1",
                 "--out", str(tmp_path / "run"), "--nproc", "2", "--max-restarts", "3"]) == 2
    assert f"no dataset at {tmp_path / 'missing'}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_interrupted_launcher_stops_with_one_line(monkeypatch, capsys):
    """Ctrl-C (or SIGTERM) on `resnets train --nproc N`: torchrun's agent raises SignalException after stopping
    the ranks; the launcher reports it in one line with the shell's status, not the agent's traceback."""
    import signal

    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from resnets.train.distributed import launch

    def interrupted(args):
        raise SignalException("Process 1 got signal: 2", sigval=signal.SIGINT)

    monkeypatch.setattr(torch.distributed.run, "run", interrupted)
    assert launch(2, ["train", "--model", "resnet20"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["resnets train: interrupted (SIGINT); the 2 processes were stopped"]


def test_a_restart_continues_only_the_checkpoint_its_own_job_wrote(tmp_path, monkeypatch, capsys):
    """A folder that already held a run made the first attempt fail; torchrun's restart then resumed that other
    run's last.pt under its old settings. The launcher now refuses the folder before starting any rank, and a
    restart continues a last.pt only when this job (TORCHELASTIC_RUN_ID) wrote it."""
    from resnets.cli import main
    from resnets.data import DataSplits, TensorImageDataset, make_tensor_dataset
    from resnets.train import TrainConfig, Trainer
    from resnets.train.distributed import own_checkpoint

    images, labels = make_tensor_dataset(classes=2, per_class=4, size=8, seed=0)
    data = TensorImageDataset(images, labels, ["a", "b"], (0.5,) * 3, (0.25,) * 3)
    splits = DataSplits(data, None, ["a", "b"], data.mean, data.std, 8, True)
    config = TrainConfig.from_dict({"model": "resnet20", "model_options": {"layers": [1, 1, 1]}, "data": "memory",
                                    "batch_size": 4, "steps": 1, "val_split": 0, "progress": False,
                                    "tensorboard": False, "workers": 0})
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-a")
    Trainer(config, tmp_path / "run", splits=splits).fit()
    assert own_checkpoint(tmp_path / "run") is not None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
    assert own_checkpoint(tmp_path / "run") is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --rdzv-id: cannot tell, continue as before
    assert own_checkpoint(tmp_path / "run") is not None
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert main(["train", "--model", "resnet20", "--data", str(tmp_path), "--steps", "1", "--out",
                 str(tmp_path / "run"), "--nproc", "2"]) == 2  # refused by the launcher: no rank starts
    assert "already holds a run" in capsys.readouterr().err


def test_errors_under_torchrun_name_the_rank_that_hit_them(tmp_path, monkeypatch, capsys):
    """Each rank prints its own error; the label tells one rank's failure from every rank's."""
    from resnets.cli import main

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("resnets eval [rank 1/2]: error: ")
    monkeypatch.setenv("WORLD_SIZE", "1")  # a group of one: nothing to tell apart
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("resnets eval: error: ")


def test_finetune_under_torchrun_is_refused_before_any_rank_writes(tmp_path, monkeypatch, capsys):
    # each rank trained its own copy into one folder; the second found the first's files and died mid-run
    from resnets.cli import main

    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(["finetune", "--from", str(tmp_path / "src.safetensors"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "run")]) == 2
    assert "runs in one process, and torchrun started 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
