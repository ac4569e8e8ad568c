"""Resume after SIGKILL: a run killed mid-epoch and resumed ends with the same metrics and weights as
an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resnets.data import make_image_folder
from resnets.weights import read_checkpoint

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from resnets.train import Callback, Trainer, resolve_config

    data, out, kill_at, every, variant = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

    class KillAt(Callback):
        def on_step_end(self, trainer, step, loss):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    config = resolve_config(None, dict(
        model="resnet20", data=data, val_split=0.25, batch_size=8, epochs=4, lr=0.05, schedule="cosine",
        warmup=2, nesterov=True, weight_decay=5e-4, no_decay_norm_bias=True, label_smoothing=0.1,
        mixup_alpha=0.4, ema_decay=0.8, augment={"translate": 1, "flip": True}, checkpoint_every_steps=every,
        progress=False, tensorboard=False, workers=0, seed=3))
    if variant == "airbench":  # the cifar-fast machinery: whitened stem, stem bias freeze, Lookahead, norm lr
        config = config.replace(model="resnet_airbench", model_options={"widths": [8, 16, 16]}, whiten_stem=True,
                                whiten_images=20, stem_bias_epochs=2, lookahead_every=3, norm_lr_scale=8.0,
                                ema_decay=0.0, mixup_alpha=0.0)
    Trainer(config, out, callbacks=[KillAt()] if kill_at else []).fit()
""")


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def _metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    volatile = ("images_per_s", "epoch_seconds", "elapsed_minutes")
    return [{k: v for k, v in r.items() if k not in volatile} for r in records]


def _reference(tmp_path_factory, variant: str, size: int):
    """The reference: the same run, never interrupted (checkpoint frequency does not change results)."""
    root = tmp_path_factory.mktemp(f"resume-{variant}")
    data = make_image_folder(root / "data", classes=3, per_class=16, size=size)
    script = root / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "RESNETS_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    full = _run([sys.executable, str(script), str(data), str(root / "full"), "0", "0", variant], env)
    assert full.returncode == 0, full.stderr
    return root, data, script, env, variant


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return _reference(tmp_path_factory, "resnet20", 8)


@pytest.fixture(scope="module")
def uninterrupted_airbench(tmp_path_factory):
    return _reference(tmp_path_factory, "airbench", 16)  # three pooling stages after the 2x2 stem need 16 px


@pytest.mark.parametrize("checkpoint_every, kill_at", [(0, 7), (3, 10)], ids=["epoch-checkpoint", "mid-epoch-checkpoint"])
def test_resume_after_sigkill_equals_uninterrupted_run(uninterrupted, tmp_path, checkpoint_every, kill_at):
    _check_resume(uninterrupted, tmp_path, checkpoint_every, kill_at)


def test_resume_with_lookahead_whitened_stem_and_stem_bias_freeze(uninterrupted_airbench, tmp_path):
    # killed in epoch 2 of 4: after the stem bias froze (epoch 2) and mid Lookahead period
    _check_resume(uninterrupted_airbench, tmp_path, 0, 10)


def _check_resume(reference, tmp_path, checkpoint_every: int, kill_at: int) -> None:
    root, data, script, env, variant = reference
    python = sys.executable

    killed = _run([python, str(script), str(data), str(tmp_path / "killed"), str(kill_at), str(checkpoint_every),
                   variant], env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    body = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert 0 < body["progress"]["step"] < kill_at  # the kill came after a checkpoint, before the end
    assert len(_metrics(tmp_path / "killed")) < len(_metrics(root / "full"))

    resumed = _run([python, "-m", "resnets", "train", "--resume", str(tmp_path / "killed"), "--no-progress"], env)
    assert resumed.returncode == 0, resumed.stderr

    assert _metrics(tmp_path / "killed") == _metrics(root / "full")
    for name in ("last.pt", "best.safetensors"):
        a = read_checkpoint(root / "full" / name).state_dict
        b = read_checkpoint(tmp_path / "killed" / name).state_dict
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"
    a = json.loads((root / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert a["final_val_top1"] == b["final_val_top1"] and a["steps"] == b["steps"] == 16
