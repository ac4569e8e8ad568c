"""Fine-tuning policies: freezing freezes, BatchNorm policies survive .train(), head replacement
keeps everything else bit-identical, learning-rate groups, progressive unfreezing, errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets import create_model
from resnets.transfer import (FinetuneConfig, PolicyError, ProgressiveUnfreezer, apply_finetune_policy,
                              lr_multipliers, part_names, parts_to_freeze, to_frozen_batchnorm)
from resnets.transfer.policy import part_of


def tiny(name="resnet20", **kw):
    return create_model(name, **kw)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def sgd_step(model, groups, x, y, steps=2):
    opt = torch.optim.SGD(groups, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def batch(n=8, size=16, classes=5):
    return torch.randn(n, 3, size, size), torch.randint(0, classes, (n,))


def test_parts_and_freeze_ranges():
    model = tiny()
    assert part_names(model) == ["stem", "layer1", "layer2", "layer3", "head"]
    assert parts_to_freeze(model, "none") == []
    assert parts_to_freeze(model, "layer2") == ["stem", "layer1", "layer2"]
    assert parts_to_freeze(model, "all-but-head") == ["stem", "layer1", "layer2", "layer3"]
    preact = tiny("preact_resnet20")
    assert part_of("final_bn.weight", preact) == "layer3"


@pytest.mark.parametrize("freeze,bn", [("layer1", "train"), ("layer2", "eval"), ("all-but-head", "frozen")])
def test_frozen_parts_do_not_change_after_optimizer_steps(freeze, bn):
    model = tiny()
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=5, freeze=freeze, bn=bn, lr=0.5,
                                                         weight_decay=0.1))
    frozen = set(parts_to_freeze(model, freeze))
    before = snapshot(model)
    sgd_step(model, groups, *batch())
    after = model.state_dict()
    changed = {part_of(k, model) for k in after if not torch.equal(before[k], after[k])}
    assert not changed & frozen, f"frozen parts changed: {changed & frozen}"
    assert "head" in changed  # and the rest did train
    if freeze != "all-but-head":
        assert "layer3" in changed


def test_bn_eval_keeps_running_stats_but_trains_affine_even_after_train():
    model = tiny()
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=5, bn="eval", lr=0.5))
    model.train()  # the policy must survive this
    before = snapshot(model)
    sgd_step(model, groups, *batch())
    after = model.state_dict()
    stats = [k for k in after if "running_" in k or "num_batches" in k]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    affine = [k for k in after if k.endswith("bn1.weight")]
    assert any(not torch.equal(before[k], after[k]) for k in affine)


def test_bn_frozen_keeps_stats_and_affine():
    model = tiny()
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=5, bn="frozen", lr=0.5))
    model.train()
    before = snapshot(model)
    sgd_step(model, groups, *batch())
    after = model.state_dict()
    bn_keys = [k for k in after if ".bn" in k or k.startswith("bn1")]
    assert bn_keys and all(torch.equal(before[k], after[k]) for k in bn_keys)
    assert not torch.equal(before["layer1.0.conv1.weight"], after["layer1.0.conv1.weight"])


def test_bn_train_policy_updates_running_stats():
    model = tiny()
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=5, bn="train", lr=0.1))
    before = snapshot(model)
    sgd_step(model, groups, *batch(), steps=1)
    assert not torch.equal(before["layer2.0.bn1.running_mean"], model.state_dict()["layer2.0.bn1.running_mean"])


def test_frozen_batchnorm_swap_matches_eval_outputs():
    model = tiny().eval()
    x, _ = batch()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    expected = model(x)
    to_frozen_batchnorm(model).train()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), expected)


def test_head_replacement_keeps_the_rest_bit_identical():
    model = tiny()
    before = snapshot(model)
    apply_finetune_policy(model, FinetuneConfig(num_classes=7))
    after = model.state_dict()
    assert model.fc.out_features == 7 and model.spec.num_classes == 7
    assert set(before) == set(after)
    same_count = tiny()
    head = same_count.fc.weight.clone()
    apply_finetune_policy(same_count, FinetuneConfig(num_classes=10))
    assert not torch.equal(head, same_count.fc.weight)  # a new task with 10 classes still gets a fresh head
    for k in before:
        if not k.startswith("fc."):
            assert torch.equal(before[k], after[k]), k


def test_learning_rate_multipliers_and_layer_decay():
    model = tiny()
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=5, lr=0.1, head_lr_mult=10,
                                                         stage_lr_mults={"stem": 0.0, "layer1": 0.1}))
    lrs = {g["part"]: g["lr"] for g in groups}
    assert "stem" not in lrs  # multiplier 0 means frozen
    assert lrs["layer1"] == pytest.approx(0.01) and lrs["layer2"] == pytest.approx(0.1)
    assert lrs["head"] == pytest.approx(1.0)
    assert not model.conv1.weight.requires_grad
    decay = lr_multipliers(tiny(), FinetuneConfig(layer_decay=0.5))
    assert decay == {"layer3": 0.5, "layer2": 0.25, "layer1": 0.125, "stem": 0.0625, "head": 1.0}
    no_decay = [g for g in groups if g["name"].endswith("no_decay")]
    assert no_decay and all(g["weight_decay"] == 0 for g in no_decay)
    assert all(p.ndim <= 1 for g in no_decay for p in g["params"])


def test_progressive_unfreezing_unlocks_from_the_top():
    model = tiny()
    config = FinetuneConfig(num_classes=5, freeze="stem", lr=0.5)
    unfreezer = ProgressiveUnfreezer(model, config, epochs_per_part=2)
    assert unfreezer.schedule == ["layer3", "layer2", "layer1"]
    x, y = batch()
    opt = torch.optim.SGD(unfreezer.param_groups, momentum=0.9)

    def train_epoch():
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    seen = {}
    for epoch in range(7):
        unfreezer.step(epoch)
        before = snapshot(model)
        train_epoch()
        after = model.state_dict()
        seen[epoch] = {part_of(k, model) for k in after if not torch.equal(before[k], after[k])}
    assert seen[0] == {"head"} and seen[1] == {"head"}
    assert seen[2] == {"head", "layer3"}
    assert seen[4] == {"head", "layer3", "layer2"}
    assert seen[6] == {"head", "layer3", "layer2", "layer1"}  # never the stem: freeze="stem"


def test_errors_in_words():
    model = tiny()
    with pytest.raises(PolicyError, match="no such stage.*stem, layer1, layer2, layer3"):
        apply_finetune_policy(model, FinetuneConfig(freeze="layer4"))
    with pytest.raises(PolicyError, match="BatchNorm policy"):
        apply_finetune_policy(model, FinetuneConfig(bn="sometimes"))
    with pytest.raises(PolicyError, match="does not have"):
        apply_finetune_policy(model, FinetuneConfig(stage_lr_mults={"layer4": 0.1}))
    with pytest.raises(PolicyError, match="either layer_decay or stage_lr_mults"):
        apply_finetune_policy(model, FinetuneConfig(layer_decay=0.7, stage_lr_mults={"stem": 0.1}))
    headless = create_model("resnet20", num_classes=0)
    with pytest.raises(PolicyError, match="needs a classifier head"):
        apply_finetune_policy(headless, FinetuneConfig(freeze="all-but-head"))


def test_unfreeze_callback_drives_the_schedule_and_restores_it_on_resume():
    from resnets.transfer import UnfreezeCallback

    class FakeTrainer:
        def __init__(self):
            self.messages = []

        def log(self, message):
            self.messages.append(message)

    model = tiny()
    callback = UnfreezeCallback(ProgressiveUnfreezer(model, FinetuneConfig(num_classes=5), epochs_per_part=1))
    trainer = FakeTrainer()
    callback.on_epoch_start(trainer, 0)
    assert not model.layer3[0].conv1.weight.requires_grad and model.fc.weight.requires_grad
    callback.on_epoch_start(trainer, 1)
    assert model.layer3[0].conv1.weight.requires_grad and not model.layer2[0].conv1.weight.requires_grad
    assert trainer.messages == ["epoch 1: unfroze layer3"]  # 0-based, as the trainer's epoch lines
    resumed = tiny()
    UnfreezeCallback(ProgressiveUnfreezer(resumed, FinetuneConfig(num_classes=5))).on_epoch_start(trainer, 3)
    assert resumed.layer1[0].conv1.weight.requires_grad and not resumed.conv1.weight.requires_grad
    assert trainer.messages[-1] == "epoch 3: unfroze layer3, layer2, layer1"  # resumed mid-schedule


def test_a_part_with_lr_multiplier_zero_is_frozen_running_statistics_included():
    # Regression: stage_lr_mults={"stem": 0} left the stem's BatchNorm in `train`, so its running statistics
    # drifted although the stem never steps (also when progressive unfreezing "unlocked" such a part).
    model = tiny(num_classes=3, layers=(1, 1, 1))
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=3, stage_lr_mults={"stem": 0.0}, lr=0.1))
    progressive = tiny(num_classes=3, layers=(1, 1, 1))
    unfreezer = ProgressiveUnfreezer(progressive, FinetuneConfig(num_classes=3, stage_lr_mults={"layer1": 0.0}))
    for epoch in range(5):
        unfreezer.step(epoch)
    assert unfreezer.schedule == ["layer3", "layer2", "layer1", "stem"]  # the schedule's timing is unchanged
    x, y = batch(n=4, classes=3)
    for net, opt_groups, part in ((model, groups, "stem"), (progressive, unfreezer.param_groups, "layer1")):
        before = snapshot(net)
        sgd_step(net, opt_groups, x, y, steps=1)
        after = net.state_dict()
        assert not {k for k in after if part_of(k, net) == part and not torch.equal(before[k], after[k])}, part
        assert "layer2" in {part_of(k, net) for k in after if not torch.equal(before[k], after[k])}


def test_an_unfrozen_part_under_bn_train_uses_batch_statistics_without_another_model_train():
    # Regression: a locked part's norms were put in inference mode by the hook; unlocking it under bn="train"
    # left them there until the next model.train(), so a loop calling model.train() once never updated them.
    model = tiny(num_classes=3, layers=(1, 1, 1))
    unfreezer = ProgressiveUnfreezer(model, FinetuneConfig(num_classes=3, bn="train"), epochs_per_part=1)
    x, _ = batch(n=4, classes=3)
    model.train()
    unfreezer.step(0)
    model(x)
    assert unfreezer.step(1) == ["layer3"]
    before = model.layer3[0].bn1.running_mean.clone()
    model(x)
    assert model.layer3[0].bn1.training and not torch.equal(before, model.layer3[0].bn1.running_mean)


@pytest.mark.parametrize("config", [FinetuneConfig(stage_lr_mults={"stem": float("nan")}),
                                    FinetuneConfig(stage_lr_mults={"layer1": float("inf")}),
                                    FinetuneConfig(head_lr_mult=float("nan")), FinetuneConfig(lr=float("nan"))])
def test_non_finite_learning_rates_are_refused_in_words(config):
    # Regression: `--stage-lr stem=nan` passed the check (nan < 0 is False) and the run diverged at its first steps.
    with pytest.raises(PolicyError, match="finite|must be positive"):
        apply_finetune_policy(tiny(num_classes=3, layers=(1, 1, 1)), config)


def test_the_head_rate_set_twice_is_refused_and_either_way_alone_works():
    # Regression: --head-lr-mult 10 with --stage-lr head=0.5 silently trained the head at 5x.
    with pytest.raises(PolicyError, match="set twice"):
        apply_finetune_policy(tiny(num_classes=3, layers=(1, 1, 1)),
                              FinetuneConfig(head_lr_mult=10, stage_lr_mults={"head": 0.5}))
    for config in (FinetuneConfig(head_lr_mult=4), FinetuneConfig(stage_lr_mults={"head": 4})):
        assert lr_multipliers(tiny(num_classes=3, layers=(1, 1, 1)), config)["head"] == 4


def test_norm_scales_the_architecture_fixes_stay_fixed_under_every_policy():
    # resnet_airbench's norms have no trained scale (norm_scale=False): fine-tuning turned them into parameters
    from resnets.detection import fpn_backbone

    def fixed_scales_trained(model):
        return [n for n, p in model.named_parameters() if p.requires_grad and n.endswith("bn1.weight")
                and n.startswith("layer")]

    model = create_model("resnet_airbench_narrow", num_classes=10)
    assert not fixed_scales_trained(model)
    groups = apply_finetune_policy(model, FinetuneConfig(num_classes=3, bn="eval"))
    assert not fixed_scales_trained(model)
    fixed = {id(m.bn1.weight) for m in model.modules() if hasattr(m, "bn1") and hasattr(m, "conv2")}
    assert fixed and not fixed & {id(p) for g in groups for p in g["params"]}  # the optimizer never sees them
    unfreezer = ProgressiveUnfreezer(create_model("resnet_airbench_narrow"), FinetuneConfig(num_classes=3),
                                     epochs_per_part=1)
    unfreezer.step(5)
    assert not fixed_scales_trained(unfreezer.model)
    pyramid = fpn_backbone(create_model("resnet_airbench_narrow"), trainable_layers=4, norm="eval")
    assert not fixed_scales_trained(pyramid.body) and any(p.requires_grad for p in pyramid.body.parameters())
