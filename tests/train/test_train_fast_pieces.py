"""The cifar-fast machinery in the trainer: a whitened, frozen patch stem, its bias trained for a few
epochs only, Lookahead, the norm-shift learning-rate group, and Muon for the filters."""

from __future__ import annotations

import copy

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


def test_cifar_fast_muon_recipe_is_cifar_fast_with_muon_and_cheaper_steps_only():
    fast, muon = resolve_config("cifar-fast").to_dict(), resolve_config("cifar-fast-muon").to_dict()
    changed = {key for key in fast if fast[key] != muon[key]}
    assert changed == {"recipe", "description", "expected", "optimizer", "muon_lr", "muon_momentum",
                       "muon_ns_steps", "muon_normalize", "warmup_start", "final_lr", "model_options",
                       "progressive_min_size"}
    assert (muon["optimizer"], muon["muon_lr"], muon["muon_momentum"], muon["muon_ns_steps"]) == ("muon", 0.2, 0.6, 3)
    assert muon["muon_normalize"] and (muon["warmup_start"], muon["final_lr"]) == (1.0, 0.0)
    assert muon["model_options"] == {"widths": [32, 128, 128]} and muon["progressive_min_size"] == 16


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


def test_orthogonalize_pushes_every_singular_value_of_a_filter_bank_near_one():
    from resnets.train.optim import orthogonalize

    torch.manual_seed(0)
    wide = torch.randn(16, 8, 3, 3) * torch.logspace(-2, 0, 16).view(16, 1, 1, 1)  # conditioning about 100
    tall = torch.randn(40, 6) @ torch.diag(torch.logspace(-2, 0, 6))
    for matrix in (wide, tall):
        for dtype in (torch.bfloat16, torch.float32):
            result = orthogonalize(matrix, steps=5, dtype=dtype)
            assert result.shape == matrix.shape and result.dtype == dtype
            singular = torch.linalg.svdvals(result.float().reshape(len(matrix), -1))
            assert singular.min() > 0.6 and singular.max() < 1.25, (dtype, singular)
        before = torch.linalg.svdvals(matrix.reshape(len(matrix), -1))
        assert before.max() / before.min() > 50  # the input was far from orthogonal


def test_orthogonalize_uses_bf16_only_where_the_device_runs_it_faster(monkeypatch):
    import resnets.train.optim as optim

    matrix = torch.randn(8, 4, 3, 3)
    for faster, expected in ((True, torch.bfloat16), (False, torch.float32)):
        optim._newton_schulz_dtype.cache_clear()
        monkeypatch.setattr(optim, "bf16_is_faster", lambda device, faster=faster: faster)
        assert optim.orthogonalize(matrix, steps=1).dtype == expected
    optim._newton_schulz_dtype.cache_clear()


def test_muon_trains_the_filters_and_leaves_everything_else_to_sgd():
    from resnets.train import build_optimizer
    from resnets.train.optim import MuonSGD

    model = create_model("resnet_airbench", widths=[8, 16, 16])
    model.conv1.weight.requires_grad_(False)  # a frozen (whitened) stem stays out of every group
    config = fast_config(optimizer="muon", muon_lr=0.05, muon_momentum=0.6, muon_normalize=True)
    groups = param_groups(model, 1e-3, no_decay_norm_bias=True, norm_lr_scale=4.0, orthogonal_filters=True)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert by_name["filters"] == {f"layer{i}.0.conv{j}.weight" for i in (1, 2, 3) for j in (1, 2)}
    assert by_name["decay"] == {"fc.weight"}
    optimizer = build_optimizer(groups, config)
    assert isinstance(optimizer, MuonSGD)
    filters = next(g for g in optimizer.param_groups if g["name"] == "filters")
    assert filters["lr"] == pytest.approx(0.05) and filters["momentum"] == 0.6 and filters["weight_decay"] == 0.0

    # From the same weights, the SGD groups step exactly as torch.optim.SGD would; the filters move by an
    # orthogonalized step taken from weights rescaled to norm sqrt(out_channels).
    twin = create_model("resnet_airbench", widths=[8, 16, 16])
    twin.load_state_dict(model.state_dict())
    twin_params = dict(twin.named_parameters())
    reference = torch.optim.SGD([{"params": [twin_params[n] for n in by_name[name]], "lr": g["lr"],
                                  "weight_decay": g["weight_decay"]} for name, g in
                                 ((g["name"], g) for g in optimizer.param_groups) if name != "filters"],
                                lr=0.2, momentum=0.85, nesterov=True)
    images = torch.randn(6, 3, 16, 16)
    for net, opt in ((model, optimizer), (twin, reference)):
        net(images).logsumexp(1).mean().backward()
        opt.step()
    params = dict(model.named_parameters())
    for name in by_name["decay"] | by_name["norm"] | by_name["no_decay"]:
        assert torch.allclose(params[name], twin_params[name], atol=1e-6), name
    conv = params["layer2.0.conv2.weight"]
    assert not torch.allclose(conv, twin_params["layer2.0.conv2.weight"])
    step_size = (conv.norm() - 16 ** 0.5).abs() / 16 ** 0.5
    assert step_size < 0.1  # rescaled to sqrt(16) before the step; one 0.05-rate step moves it little


def test_muon_orthogonalizes_in_the_runs_recorded_precision_not_a_timing(monkeypatch):
    # a per-process timing chose bf16 or fp32 for Newton-Schulz, recorded nowhere: a resumed run could switch
    import resnets.train.optim
    from resnets.train import build_optimizer

    def must_not_time(device):
        raise AssertionError("timed the Newton-Schulz dtype")

    monkeypatch.setattr(resnets.train.optim, "_newton_schulz_dtype", must_not_time)
    model = create_model("resnet_airbench", widths=[8, 16, 16])
    groups = param_groups(model, 1e-3, orthogonal_filters=True)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        optimizer = build_optimizer(groups, fast_config(optimizer="muon", precision=precision))
        assert optimizer.ns_dtype == dtype
        model(torch.randn(2, 3, 16, 16)).sum().backward()
        optimizer.step()
    # a GPU keeps Muon's bf16 where it is native, whatever the run's precision (a property of the device, no timing)
    monkeypatch.setattr(resnets.train.optim, "resolve_precision", lambda precision, device: precision)
    on_gpu = build_optimizer(groups, fast_config(optimizer="muon", precision="fp32").replace(device="cuda"))
    assert on_gpu.ns_dtype is None


def test_a_muon_run_trains_and_unknown_optimizers_are_refused():
    from resnets.train import ConfigError

    result = Trainer(fast_config(optimizer="muon", muon_lr=0.05, muon_normalize=True, muon_ns_steps=3),
                     splits=splits16()).fit()
    assert result.final.loss == result.final.loss and result.steps == 9  # finite; 3 epochs of 3 steps
    with pytest.raises(ConfigError, match="optimizer='adam' is unknown"):
        fast_config(optimizer="adam")


def test_muon_state_round_trips_so_a_resumed_step_equals_the_uninterrupted_one():
    from resnets.train import build_optimizer

    config = fast_config(optimizer="muon", muon_lr=0.05, muon_momentum=0.6, muon_normalize=True)
    images = torch.randn(6, 3, 16, 16)

    def fresh():
        torch.manual_seed(0)
        model = create_model("resnet_airbench", widths=[8, 16, 16])
        return model, build_optimizer(param_groups(model, 1e-3, orthogonal_filters=True), config)

    def step(model, optimizer):
        optimizer.zero_grad()
        model(images).logsumexp(1).mean().backward()
        optimizer.step()

    model, optimizer = fresh()
    for _ in range(2):
        step(model, optimizer)
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    step(model, optimizer)
    resumed, resumed_optimizer = fresh()
    resumed.load_state_dict(saved[0])
    resumed_optimizer.load_state_dict(saved[1])
    step(resumed, resumed_optimizer)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
