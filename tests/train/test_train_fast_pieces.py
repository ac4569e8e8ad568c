"""The cifar-fast machinery in the trainer: a whitened, frozen patch stem, its bias trained for a few
epochs only, Lookahead, and the norm-shift learning-rate group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnets import create_model, get_spec
from resnets.data import DataSplits, TensorImageDataset, make_tensor_dataset
from resnets.train import Callback, Trainer, TrainConfig, param_groups, resolve_config
from resnets.train.optim import Lookahead

CLASSES = ["cat", "dog", "eel"]


def splits16() -> DataSplits:
    images, labels = make_tensor_dataset(classes=3, per_class=12, size=16, seed=0)
    val_images, val_labels = make_tensor_dataset(classes=3, per_class=4, size=16, seed=1)
    train_set = TensorImageDataset(images, labels, CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    val_set = TensorImageDataset(val_images, val_labels, CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return DataSplits(train_set, val_set, CLASSES, train_set.mean, train_set.std, 16, True)


def fast_config(**changes) -> TrainConfig:
    values = dict(model="resnet_airbench", model_options={"widths": [8, 16, 16]}, data="memory", batch_size=12,
                  epochs=3, lr=0.2, momentum=0.85, nesterov=True, schedule="onecycle", whiten_stem=True,
                  whiten_images=30, stem_bias_epochs=1, lookahead_every=2, norm_lr_scale=4.0,
                  no_decay_norm_bias=True, augment={"translate": 1, "flip": True}, progress=False,
                  tensorboard=False, workers=0)
    values.update(changes)
    return TrainConfig.from_dict(values)


def test_cifar_fast_recipe_is_airbench_on_the_narrow_resnet_airbench():
    config = resolve_config("cifar-fast")
    assert config.model == "resnet_airbench_narrow" and config.whiten_stem and config.stem_bias_epochs == 3
    assert get_spec("resnet_airbench_narrow") == get_spec("resnet_airbench").replace(widths=(48, 192, 192))
    assert (config.batch_size, config.lr, config.momentum, config.lookahead_every, config.norm_lr_scale) == (
        512, 1.0, 0.85, 5, 64)
    assert config.lookahead_decay == pytest.approx(0.95 ** 5)


def test_whitened_stem_stays_frozen_and_its_bias_trains_for_the_first_epochs_only():
    biases = []

    class Watch(Callback):
        def on_epoch_end(self, trainer, record):
            biases.append(trainer.model.conv1.bias.detach().clone())

    splits = splits16()
    trainer = Trainer(fast_config(), splits=splits, callbacks=[Watch()])
    expected = create_model("resnet_airbench", num_classes=3, widths=[8, 16, 16])
    mean, std = torch.tensor(splits.mean).view(1, 3, 1, 1), torch.tensor(splits.std).view(1, 3, 1, 1)
    expected.init_patch_whitening((splits.train.images[:30].float() / 255 - mean) / std)
    whitened = trainer.model.conv1.weight.detach().clone()
    assert torch.allclose(whitened, expected.conv1.weight) and not trainer.model.conv1.weight.requires_grad
    trainer.fit()
    assert torch.equal(trainer.model.conv1.weight, whitened)
    assert not torch.equal(biases[0], torch.zeros_like(biases[0]))  # trained in epoch 0
    assert torch.equal(biases[1], biases[0]) and torch.equal(biases[2], biases[0])  # frozen from epoch 1


def test_whiten_stem_leaves_models_without_a_patch_stem_alone():
    trainer = Trainer(fast_config(model="resnet20", model_options={}), splits=splits16())
    assert trainer.model.conv1.weight.requires_grad
    trainer.fit()


def test_lookahead_pulls_weights_back_to_the_slow_average_on_schedule():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    look = Lookahead(model, every=2, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    look.step(model, step=0, total_steps=4)  # 1 step done: not a multiple of 2, nothing happens
    assert model.weight.item() == 1.0
    look.step(model, step=1, total_steps=4)  # 2 done: decay 0.5 * (2/4)^3 = 1/16
    assert model.weight.item() == pytest.approx(15 / 16) and look.state["weight"].item() == pytest.approx(15 / 16)
    with torch.no_grad():
        model.weight.fill_(2.0)
    look.step(model, step=2, total_steps=3)  # the last step always syncs, at the full decay
    assert model.weight.item() == pytest.approx(15 / 16 * 0.5 + 2.0 * 0.5)
    with pytest.raises(ValueError, match="every >= 1"):
        Lookahead(model, every=0, decay=0.5)


def test_norm_shifts_get_their_own_learning_rate_group():
    model = create_model("resnet_airbench")
    groups = {g["name"]: g for g in param_groups(model, 1e-3, no_decay_norm_bias=True, norm_lr_scale=64.0)}
    names = {id(p): n for n, p in model.named_parameters()}
    norm = {names[id(p)] for p in groups["norm"]["params"]}
    assert norm == {f"layer{i}.0.bn{j}.bias" for i in (1, 2, 3) for j in (1, 2)}
    assert groups["norm"]["lr_scale"] == 64.0 and groups["norm"]["weight_decay"] == 0.0
    assert {names[id(p)] for p in groups["no_decay"]["params"]} == {"conv1.bias", "fc.bias"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)


def test_distributed_runs_refuse_a_mid_run_freeze():
    from resnets.train import ConfigError
    from resnets.train.process import ProcessContext

    with pytest.raises(ConfigError, match="stem_bias_epochs=null"):
        Trainer(fast_config(), splits=splits16(), process=ProcessContext(rank=0, world_size=2))
