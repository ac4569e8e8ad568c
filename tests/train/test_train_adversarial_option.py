"""The ``adversarial`` recipe option: ``--set adversarial.method=fgsm_rs`` makes the trainer train on
adversarial batches through the ``AdversarialTraining`` callback."""

from __future__ import annotations

import pytest
import torch

from resnets.evaluate.robustness import AdversarialTraining
from resnets.train import Trainer, TrainConfig, parse_set, resolve_config
from resnets.train.config import ConfigError, apply_overrides

from test_train_loop import tiny_config, tiny_splits


def test_set_adversarial_keys_parse_and_merge():
    overrides = parse_set(["adversarial.method=fgsm_rs", "adversarial.eps=8/255", "epochs=1"])
    config = resolve_config(None, overrides)
    assert config.adversarial == {"method": "fgsm_rs", "eps": pytest.approx(8 / 255)}
    merged = apply_overrides({"adversarial": {"method": "pgd", "steps": 3}}, parse_set(["adversarial.steps=5"]))
    assert merged["adversarial"] == {"method": "pgd", "steps": 5}
    assert TrainConfig(epochs=1).adversarial == {}  # off by default


@pytest.mark.parametrize("value, message", [
    ({"method": "pdg"}, "adversarial.method='pdg'"),
    ({"eps": 0.03}, "adversarial.method=None"),
    ({"method": "pgd", "eps": 8}, "adversarial.eps=8"),
    ({"method": "pgd", "steps": 0}, "adversarial.steps=0"),
    ({"method": "pgd", "epsilon": 0.03}, "adversarial.epsilon is unknown"),
])
def test_bad_adversarial_settings_name_the_key(value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        TrainConfig(epochs=1, adversarial=value)


def test_trainer_appends_callback_and_trains_on_perturbed_batches():
    eps = 4 / 255
    trainer = Trainer(tiny_config(adversarial={"method": "fgsm_rs", "eps": eps}), splits=tiny_splits())
    [callback] = [c for c in trainer.callbacks if isinstance(c, AdversarialTraining)]
    assert (callback.method, callback.eps) == ("fgsm_rs", eps)
    images, labels = next(iter(trainer.train_loader))
    adv, same_labels = callback.on_batch(trainer, images, labels)
    std = torch.tensor(trainer.splits.std).view(1, -1, 1, 1)
    shift = ((adv - images) * std).abs()  # back in pixel units
    assert torch.equal(same_labels, labels) and shift.max() <= eps + 1e-5 and shift.mean() > eps / 10
    # A passed-in callback is not doubled; a clean twin trains to different weights.
    explicit = Trainer(tiny_config(adversarial={"method": "pgd"}), splits=tiny_splits(),
                       callbacks=[AdversarialTraining("pgd", 2 / 255, 2)])
    assert sum(isinstance(c, AdversarialTraining) for c in explicit.callbacks) == 1
    trainer.fit()
    clean = Trainer(tiny_config(), splits=tiny_splits())
    clean.fit()
    assert any(not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), clean.model.parameters()))
