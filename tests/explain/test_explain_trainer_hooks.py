"""The gradient-flow logger and adversarial training plugged into resnets.train.Trainer."""

import pytest
import torch

from resnets.data import make_image_folder
from resnets.evaluate.robustness import AdversarialTraining
from resnets.explain.gradflow import GradientFlowLogger, read_gradflow
from resnets.train import resolve_config
from resnets.train.trainer import Trainer


pytestmark = pytest.mark.usefixtures("one_thread")


SETTINGS = {"model": "resnet20", "steps": 4, "lr": 0.02, "val_split": 0.25, "workers": 0, "augment": {},
            "tensorboard": False, "progress": False, "batch_size": 8, "eval_batch_size": 8}


class _Spy(AdversarialTraining):
    def on_batch(self, trainer, images, labels):
        adv, labels = super().on_batch(trainer, images, labels)
        std = torch.tensor(trainer.splits.std).view(1, -1, 1, 1)
        moved = ((adv.float() - images.float()) * std).abs().amax().item()  # in pixel units
        self.moved = max(getattr(self, "moved", 0.0), moved)
        return adv, labels


def test_trainer_with_gradflow_and_adversarial_training(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=12, size=8)
    config = resolve_config(None, {**SETTINGS, "data": str(data)})
    spy = _Spy("fgsm_rs", eps=4 / 255)
    Trainer(config, tmp_path / "run", callbacks=[GradientFlowLogger(every=2), spy]).fit()
    records = read_gradflow(tmp_path / "run" / "gradflow.jsonl")
    assert [r["step"] for r in records] == [0, 2]
    assert all(len(r["param_grad"]) == 9 and min(r["param_grad"]) > 0 for r in records)
    assert 0 < spy.moved <= 4 / 255 + 1e-4
