"""Multi-process training on CPU (gloo, 2 processes, torchrun): same weights as one process with the
same global batch, only rank 0 writes the run folder, and a rank killed mid-epoch under
torchrun's restarts is recovered from the last checkpoint to the uninterrupted result.

Equivalence and BatchNorm: the 2-process runs use ``--sync-bn`` (``DistributedBatchNorm2d`` on
gloo), so BatchNorm sees the same images as in the 1-process run; with gradient accumulation
(``--accum-steps 2``) each micro-batch is the same 8 images in both runs (the loader's rank-strided
shards interleave into the 1-process batch), and the DDP ``no_sync`` path is exercised. Tolerance:
1e-4 absolute on every weight and buffer after 6 SGD steps (seen: ~1e-6; sums over ranks are added
in another order); metrics to 1e-5 relative. The recovered run must equal the uninterrupted
2-process run to 1e-6 (replay is deterministic; only the order of float64 metric sums changes).

The fault run allows 2 restarts although the kill needs 1: about 1 run in 10 on this machine, a
rank of the restarted group aborts at exit ("terminate called without an active exception", after
training, summary and destroy_process_group; cause not found, see docs/distributed.md). A second
restart then resumes from the finished last.pt and only re-evaluates; the test still requires the
resume from step 3 and the uninterrupted result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resnets.data import make_image_folder
from resnets.train import resolve_config
from resnets.train.trainer import Trainer

TIMEOUT_S = 150
# 48 8x8 images, 12 held out: 36 train -> 2 steps per epoch of 16 (1 x 8 x accum 2, or 2 x 4 x accum 2)
SETTINGS = {"model": "resnet20", "steps": 6, "lr": 0.02, "lr_reference_batch": 16, "val_split": 0.25,
            "workers": 0, "augment": {}, "tensorboard": False, "progress": False, "checkpoint_every_steps": 1,
            "eval_batch_size": 8}
KILL_AT_STEP = 4  # mid-epoch 1; the last checkpoint before it is step 3 (epoch 1, batch 1)

AUDIT_HOOK = textwrap.dedent('''
    import os, sys
    _run_dir, _rank = os.environ.get("AUDIT_RUN_DIR"), os.environ.get("RANK")
    if _run_dir and _rank is not None:
        _run_dir = os.path.realpath(_run_dir)
        _log = open(os.path.join(os.environ["AUDIT_LOG_DIR"], f"rank{_rank}-{os.getpid()}.log"), "a", buffering=1)

        def _record(event, path):
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.realpath(os.fsdecode(path))
                if path == _run_dir or path.startswith(_run_dir + os.sep):
                    _log.write(f"{event} {path}\\n")

        def _hook(event, args):
            if event == "open":
                path, mode, flags = args
                if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                    _record(event, path)
            elif event in ("os.rename", "os.replace"):
                _record(event, args[1])
            elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
                _record(event, args[0])

        sys.addaudithook(_hook)
''')


def _cli_args(data: Path, out: Path) -> list[str]:
    args = ["train", "--data", str(data), "--out", str(out), "--sync-bn", "--accum-steps", "2", "--batch-size", "4"]
    for key, value in SETTINGS.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def _start(command: list[str], tmp: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "RESNETS_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join([str(tmp / "site"), os.environ.get("PYTHONPATH", "")]), **env}
    if "RESNETS_FAULT_KILL" not in env:
        environment.pop("RESNETS_FAULT_KILL", None)
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen) -> str:
    """Wait (bounded) for a launched run; its stdout and stderr. A run past the timeout is stopped."""
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun's agent stops its workers (own sessions) on SIGTERM
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        raise AssertionError(f"{process.args[:6]}... did not finish in {TIMEOUT_S} s:\n{stderr[-4000:]}") from None
    assert process.returncode == 0, f"{process.args[:6]}... failed ({process.returncode}):\n{stderr[-4000:]}"
    return stdout + stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One 1-process run (in this process) and two 2-process runs: uninterrupted, and killed + restarted."""
    tmp = tmp_path_factory.mktemp("dist")
    data = make_image_folder(tmp / "data", classes=3, per_class=16, size=8)
    (tmp / "site").mkdir()
    (tmp / "site" / "sitecustomize.py").write_text(AUDIT_HOOK)
    (tmp / "audit").mkdir()

    # 2 processes through the --nproc launcher, write-audited per rank
    two = tmp / "two"
    launched = _start([sys.executable, "-m", "resnets", "train", "--nproc", "2", *_cli_args(data, two)[1:]], tmp,
                      AUDIT_RUN_DIR=str(two), AUDIT_LOG_DIR=str(tmp / "audit"))

    # 2 processes under torchrun itself; rank 1 SIGKILLs itself after step 4 of the first attempt
    killed = tmp / "killed"
    recovered = _start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "--max-restarts", "2", "--monitor-interval", "0.5", "-m", "resnets", *_cli_args(data, killed)],
                       tmp, RESNETS_FAULT_KILL=f"1:{KILL_AT_STEP}")

    # 1 process, global batch 16 = 8 x accum 2, plain BatchNorm
    os.environ["RESNETS_CACHE"] = str(tmp / "cache")
    config = resolve_config(None, {**SETTINGS, "data": str(data), "batch_size": 8, "accum_steps": 2})
    Trainer(config, tmp / "one").fit()  # while the two launches run
    return {"tmp": tmp, "one": tmp / "one", "two": two, "killed": killed, "launched": _finish(launched),
            "recovered": _finish(recovered)}


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _compare_metrics(a: list[dict], b: list[dict], rel: float) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b] == [2, 4, 6]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_top1", "val_top1", "val_loss", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=rel, abs=1e-7), (key, ra, rb)


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    one, two = _state(runs["one"]), _state(runs["two"])
    assert one["config"]["world_size"] == 1 and two["config"]["world_size"] == 2
    assert one["config"]["batch_size"] * one["config"]["accum_steps"] == 16
    assert two["config"]["batch_size"] * two["config"]["accum_steps"] * 2 == 16
    assert two["progress"]["step"] == one["progress"]["step"] == 6
    worst = max((one["state_dict"][k].double() - two["state_dict"][k].double()).abs().max().item()
                for k in one["state_dict"])
    assert worst < 1e-4, f"largest weight/buffer difference {worst:.3g}"
    _compare_metrics(_metrics(runs["one"]), _metrics(runs["two"]), rel=1e-5)


def test_only_rank_zero_writes_the_run_folder(runs):
    logs = {path.name: path.read_text().splitlines() for path in (runs["tmp"] / "audit").glob("rank*.log")}
    rank0 = [line for name, lines in logs.items() if name.startswith("rank0-") for line in lines]
    rank1 = [line for name, lines in logs.items() if name.startswith("rank1-") for line in lines]
    assert any(name.startswith("rank1-") for name in logs), "rank 1 was not audited"
    assert any(line.endswith(os.sep + "last.pt") for line in rank0), "the audit saw no checkpoint write"
    assert any("metrics.jsonl" in line for line in rank0)
    assert rank1 == [], f"rank 1 wrote into the run folder: {rank1[:5]}"
    assert runs["launched"].count("run folder:") == 1, "only rank 0 reports"
    files = sorted(p.name for p in runs["two"].iterdir())
    assert files == ["best.safetensors", "config.yaml", "last.pt", "metrics.jsonl", "summary.json"]


def test_killed_rank_restarts_from_the_last_checkpoint_and_matches(runs):
    log = runs["recovered"]
    assert f"resuming at step {KILL_AT_STEP - 1} (epoch 1, batch 1)" in log, log[-3000:]
    killed, two = _state(runs["killed"]), _state(runs["two"])
    assert killed["progress"]["step"] == 6
    worst = max((killed["state_dict"][k].double() - two["state_dict"][k].double()).abs().max().item()
                for k in two["state_dict"])
    assert worst < 1e-6, f"recovered run differs from the uninterrupted one by {worst:.3g}"
    _compare_metrics(_metrics(runs["killed"]), _metrics(runs["two"]), rel=1e-6)
    summary = json.loads((runs["killed"] / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["final_val_top1"] == pytest.approx(
        json.loads((runs["two"] / "summary.json").read_text())["final_val_top1"])


# rank 1's clock runs CLOCK_SCALE times fast: it times every step as that much slower than rank 0 does
CLOCK_HOOK = textwrap.dedent('''
    import os, time
    if os.environ.get("RANK") == "1" and os.environ.get("CLOCK_SCALE"):
        _real, _scale = time.perf_counter, float(os.environ["CLOCK_SCALE"])
        _origin = _real()
        time.perf_counter = lambda: _origin + (_real() - _origin) * _scale
''')


def test_a_time_budget_over_processes_with_different_clocks_runs_rank_0s_plan(tmp_path):
    """Each process times its own steps; a process that followed its own clock would run another number of probe
    steps or another run length, and the processes would wait on each other's collectives forever. Rank 1's
    clock here runs 20x fast, so on its own it would time 3 probe steps (6 are affordable for rank 0) and fit a
    run a twentieth as long; every rank must follow rank 0's choices and the run must end."""
    data = make_image_folder(tmp_path / "data", classes=3, per_class=40, size=8)  # 90 train: 22 steps an epoch
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(CLOCK_HOOK)
    out = tmp_path / "budget"
    settings = {**SETTINGS, "steps": None, "epochs": 2, "checkpoint_every_steps": 0}
    args = ["train", "--data", str(data), "--out", str(out), "--batch-size", "2", "--time-budget", "0.25"]
    for key, value in settings.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    log = _finish(_start([sys.executable, "-m", "resnets", "train", "--nproc", "2", *args[1:]], tmp_path,
                         CLOCK_SCALE="20"))
    state = _state(out)
    fit = state["progress"]["budget_fit"]
    assert fit["probe_steps"] == 6, fit  # rank 0's count (rank 1 alone: 3)
    assert state["progress"]["step"] == state["config"]["steps"] >= fit["fitted_steps"] * 0.5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == state["progress"]["step"] and summary["final_val_top1"] is not None
    assert "time budget 0.25 min" in log


TRAINABLE_SET_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from resnets import create_model
    from resnets.data import load_data
    from resnets.train import TrainConfig, Trainer
    from resnets.train.distributed import distributed_session
    from resnets.transfer import FinetuneConfig, ProgressiveUnfreezer, UnfreezeCallback

    data, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    common = dict(data=data, val_split=12, image_size=16, batch_size=4, epochs=3, lr=0.05, lr_scaling="none",
                  warmup=0, seed=0, tensorboard=False, progress=False, augment={}, workers=0)
    with distributed_session("cpu") as process:
        splits = load_data(data, val_split=12, seed=0)
        # progressive unfreezing: layer3 joins at epoch 1, layer2 at epoch 2
        model = create_model("resnet20", num_classes=3, layers=(1, 1, 1))
        unfreezer = ProgressiveUnfreezer(model, FinetuneConfig(num_classes=3, lr=0.05), epochs_per_part=1)
        Trainer(TrainConfig(model="resnet20", **common), splits=splits, model=model,
                param_groups=unfreezer.param_groups, callbacks=[UnfreezeCallback(unfreezer)], process=process).fit()
        torch.save(model.state_dict(), f"{out}/unfreeze-rank{process.rank}.pt")
        # the whitened stem's bias trains for one epoch, then stays fixed
        model = create_model("resnet_airbench_narrow", num_classes=3)
        Trainer(TrainConfig(model="resnet_airbench_narrow", stem_bias_epochs=1, **common), splits=splits, model=model,
                process=process).fit()
        torch.save(model.state_dict(), f"{out}/stem-bias-rank{process.rank}.pt")
''')


def test_parameters_unfrozen_or_frozen_mid_run_stay_in_step_across_processes(tmp_path):
    """DDP all-reduces only the parameters that required grad when it was built: layers unfrozen later trained on
    each process's own gradients (the ranks drifted apart by ~1e-3), and freezing the stem bias was refused. The
    trainer re-wraps the model when the trainable set changes, so every rank ends with the same weights."""
    data = make_image_folder(tmp_path / "data", classes=3, per_class=12, size=16)  # 24 train: 3 steps of 2 x 4
    (tmp_path / "script.py").write_text(TRAINABLE_SET_SCRIPT)
    (tmp_path / "site").mkdir()
    _finish(_start([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(tmp_path / "script.py"), str(data), str(tmp_path)], tmp_path))
    for run in ("unfreeze", "stem-bias"):
        rank0, rank1 = (torch.load(tmp_path / f"{run}-rank{r}.pt", weights_only=True) for r in (0, 1))
        # parameters only: without sync_bn each rank's last forward updates its own running statistics
        weights = [k for k in rank0 if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        differing = [k for k in weights if not torch.equal(rank0[k], rank1[k])]
        assert not differing, (run, differing[:5])
