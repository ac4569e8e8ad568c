"""Pieces of distributed training that need no process group: sharding, the learning-rate rule,
gradient accumulation, the torchrun environment, the launcher's command line and the fault drill."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from resnets.data import DataSplits, TensorImageDataset, make_loader, make_tensor_dataset
from resnets.train import ConfigError, ProcessContext, resolve_config
from resnets.train.distributed import (DistributedBatchNorm2d, FaultDrill, convert_batchnorm, fault_drill_from_env,
                                       init_process, restart_count)
from resnets.train.trainer import Trainer


def _dataset(count: int) -> TensorImageDataset:
    images = torch.randint(0, 256, (count, 3, 4, 4), dtype=torch.uint8)
    return TensorImageDataset(images, torch.arange(count) % 3, ["a", "b", "c"], name="t")


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("count", [24, 29])
def test_each_sample_once_per_epoch_across_ranks(world_size, count):
    dataset = _dataset(count)
    train = [make_loader(dataset, batch_size=2, train=True, rank=r, world_size=world_size, augment={})
             for r in range(world_size)]
    evaluation = [make_loader(dataset, batch_size=5, train=False, rank=r, world_size=world_size)
                  for r in range(world_size)]
    orders = []
    for epoch in range(3):
        shards = []
        for loader in train:
            loader.set_epoch(epoch)
            shards.append(loader.epoch_indices())
        seen = torch.cat(shards)
        assert len(set(seen.tolist())) == len(seen), "a sample went to two ranks"
        assert len(seen) == count - count % world_size  # at most world_size - 1 sit out, all ranks same length
        assert len({len(loader) for loader in train}) == 1
        orders.append(seen.tolist())
        everything = torch.cat([loader.epoch_indices() for loader in evaluation])
        assert sorted(everything.tolist()) == list(range(count))  # evaluation: every sample exactly once
    assert orders[0] != orders[1], "the order must change with the epoch"
    # the same (seed, epoch) gives the same shards: resumable and identical on every node
    again = make_loader(dataset, batch_size=2, train=True, rank=1, world_size=world_size, augment={})
    again.set_epoch(2)
    assert again.epoch_indices().tolist() == train[1].epoch_indices(2).tolist()


def test_the_trainer_shards_its_loaders_by_process_context():
    images, labels = make_tensor_dataset(classes=3, per_class=8, size=8)
    dataset = TensorImageDataset(images, labels, ["a", "b", "c"], name="s")
    splits = DataSplits(dataset, None, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3, 8, True)
    config = resolve_config(None, {"steps": 2, "batch_size": 3, "accum_steps": 2, "progress": False,
                                   "tensorboard": False, "augment": {}})
    shards = [Trainer(config, splits=splits, process=ProcessContext(rank=r, world_size=2)).train_loader
              for r in range(2)]
    assert [loader.batch_size for loader in shards] == [6, 6]  # batch_size x accum_steps per optimizer step
    first, second = (set(loader.epoch_indices(0).tolist()) for loader in shards)
    assert not first & second and len(first | second) == 24


def test_learning_rate_follows_the_global_batch():
    base = {"steps": 1, "lr": 0.1, "batch_size": 64}
    assert resolve_config(None, base).base_lr == pytest.approx(0.1)  # one process: the recipe's rate
    four = resolve_config(None, {**base, "world_size": 4})
    assert four.global_batch == 256 and four.base_lr == pytest.approx(0.4)
    accumulated = resolve_config(None, {**base, "world_size": 2, "accum_steps": 2})
    assert accumulated.global_batch == 256 and accumulated.base_lr == pytest.approx(0.4)
    per_256 = resolve_config(None, {**base, "world_size": 2, "lr_reference_batch": 256})
    assert per_256.base_lr == pytest.approx(0.1 * 128 / 256)  # Goyal et al.: lr per reference batch
    assert resolve_config(None, {**base, "world_size": 4, "lr_scaling": "none"}).base_lr == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="lr_scaling"):
        resolve_config(None, {**base, "lr_scaling": "sqrt"})
    with pytest.raises(ConfigError, match="accum_steps"):
        resolve_config(None, {**base, "accum_steps": 0})


def test_process_context_records_world_size_in_the_config():
    config = resolve_config(None, {"steps": 1, "world_size": 3})
    assert ProcessContext().configure(config).world_size == 1
    assert ProcessContext(rank=1, world_size=2).configure(config).world_size == 2


class _NormFree(nn.Module):
    """No BatchNorm: accumulated micro-batches must then equal one big batch exactly (up to rounding)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)


def test_gradient_accumulation_equals_the_large_batch_without_batchnorm():
    images, labels = make_tensor_dataset(classes=3, per_class=12, size=8)
    dataset = TensorImageDataset(images, labels, ["a", "b", "c"], name="s")
    splits = DataSplits(dataset, None, ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3, 8, True)
    weights = {}
    for batch, accum in ((12, 1), (4, 3), (6, 2)):
        torch.manual_seed(0)
        config = resolve_config(None, {"steps": 5, "batch_size": batch, "accum_steps": accum, "lr": 0.2,
                                       "lr_reference_batch": 12, "progress": False, "tensorboard": False,
                                       "augment": {}, "weight_decay": 5e-4})
        trainer = Trainer(config, splits=splits, model=_NormFree())
        assert trainer.config.global_batch == 12 and trainer.config.base_lr == pytest.approx(0.2)
        result = trainer.fit()
        weights[(batch, accum)] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        assert result.steps == 5
    reference = weights[(12, 1)]
    initial = {k: v for k, v in _seeded_norm_free().state_dict().items()}
    assert any((reference[k] - initial[k]).abs().max() > 1e-3 for k in reference), "training did not move"
    for key in reference:
        for other in ((4, 3), (6, 2)):
            torch.testing.assert_close(weights[other][key], reference[key], atol=1e-6, rtol=1e-5)


def _seeded_norm_free() -> nn.Module:
    torch.manual_seed(0)
    return _NormFree()


def test_distributed_batchnorm_is_plain_batchnorm_outside_a_process_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    reference.load_state_dict(model.state_dict())
    params_before = [id(p) for p in model.parameters()]
    convert_batchnorm(model, "cpu")
    assert type(model[1]) is DistributedBatchNorm2d and isinstance(model[1], nn.BatchNorm2d)
    assert [id(p) for p in model.parameters()] == params_before  # the optimizer's tensors are kept
    assert list(model.state_dict()) == list(reference.state_dict())  # checkpoints unchanged
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(model(x), reference(x))
    torch.testing.assert_close(model[1].running_var, reference[1].running_var)


def test_init_process_without_torchrun_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    process = init_process("cpu")
    assert type(process) is ProcessContext and process.world_size == 1 and restart_count() == 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert init_process("cpu").world_size == 1 and restart_count() == 2
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_process("cpu")


def test_fault_drill_parses_rank_and_step(monkeypatch):
    monkeypatch.delenv("RESNETS_FAULT_KILL", raising=False)
    assert fault_drill_from_env() == []
    monkeypatch.setenv("RESNETS_FAULT_KILL", "1:7")
    [drill] = fault_drill_from_env()
    assert isinstance(drill, FaultDrill) and (drill.rank, drill.step) == (1, 7)
    drill.on_epoch_start(None, 0)  # the other hooks do nothing
    monkeypatch.setenv("RESNETS_FAULT_KILL", "seven")
    with pytest.raises(ConfigError, match="RANK:STEP"):
        fault_drill_from_env()


def test_an_evaluation_set_smaller_than_the_process_count_is_named_as_such():
    """One validation image over two processes left rank 1 none; the error blamed the batch size and pointed at
    drop_last=False, which evaluation already uses."""
    from resnets.data import DataError

    with pytest.raises(DataError, match="1 evaluation image.s. over 2 processes leave process 1 none; every process "
                                        "needs at least one: hold out at least 2 images"):
        make_loader(_dataset(1), batch_size=500, train=False, rank=1, world_size=2)
    assert len(make_loader(_dataset(1), batch_size=500, train=False, rank=0, world_size=2)) == 1
    with pytest.raises(DataError, match="make no full batch of 4"):  # training: the batch is what is too big
        make_loader(_dataset(6), batch_size=4, train=True, rank=1, world_size=2)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_sync_batchnorm_keeps_the_fine_tuning_norm_policies(device):
    # torch's convert_sync_batchnorm builds new modules: a frozen stage's norms lost their policy and hook, so
    # under sync_bn on CUDA they normalised with batch statistics and their running statistics drifted. The
    # CUDA branch only builds modules, so it is checked on the CPU too.
    from resnets import create_model
    from resnets.transfer import FinetuneConfig, apply_finetune_policy

    model = create_model("resnet20", num_classes=10, layers=(1, 1, 1))
    apply_finetune_policy(model, FinetuneConfig(num_classes=3, freeze="layer1", bn="train"))
    converted = convert_batchnorm(model, device)
    assert converted is model and convert_batchnorm(model, device) is model  # in place; a second pass is a no-op
    synced = nn.SyncBatchNorm if device == "cuda" else DistributedBatchNorm2d
    assert type(model.layer2[0].bn1) is synced and type(model.layer1[0].bn1) is nn.BatchNorm2d
    frozen = model.layer1[0].bn1
    assert frozen.resnets_bn_policy == "frozen" and len(frozen._forward_pre_hooks) == 1
    if device == "cpu":
        stats = frozen.running_mean.clone()
        model.train()(torch.randn(2, 3, 16, 16))
        assert torch.equal(stats, frozen.running_mean) and not frozen.training
