"""The spec is the architecture: it validates, round-trips, and each field does what it says."""

import json

import pytest
import torch

import resnets
from resnets import ResNetSpec, SpecError
from resnets.layers import PadShortcut, Residual


def test_spec_round_trips_through_json():
    for name in resnets.list_models():
        spec = resnets.get_spec(name)
        assert ResNetSpec.from_json(spec.to_json()) == spec
        assert ResNetSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_create_model_from_spec_dict_and_overrides():
    spec = resnets.get_spec("resnet20").to_dict()
    model = resnets.create_model(spec, num_classes=7, drop_path_rate=0.1)
    assert model.spec.num_classes == 7 and model.spec.drop_path_rate == 0.1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("changes,words", [
    (dict(block="basic", groups=32, width_per_group=4), "need bottleneck blocks"),
    (dict(layers=(2, 2), widths=(64,)), "one width per stage"),
    (dict(block="triple"), "block='triple' is unknown"),
    (dict(shortcut="E"), "shortcut='E' is unknown"),
    (dict(dropout=1.5), "dropout=1.5"),
    (dict(output_stride=64), "output_stride=64"),
    (dict(layers=(0, 2, 2, 2)), "at least one block"),
])
def test_impossible_specs_say_what_is_wrong(changes, words):
    with pytest.raises(SpecError, match=words):
        resnets.get_spec("resnet18").replace(**changes)


def test_unknown_override_suggests_the_field():
    with pytest.raises(SpecError, match="did you mean 'drop_path_rate'"):
        resnets.create_model("resnet18", drop_path=0.1)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(resnets.UnknownModelError, match="Did you mean .*resnet50"):
        resnets.create_model("resnet05")
    with pytest.raises(KeyError):
        resnets.create_model("definitely_not_a_model")


def test_list_models_pattern_and_natural_order():
    names = resnets.list_models("resnet*")
    assert names.index("resnet20") < names.index("resnet110") < names.index("resnet1202")
    assert resnets.list_models("wrn*") == ["wrn_16_4", "wrn_16_8", "wrn_22_8", "wrn_28_10", "wrn_40_4"]
    assert resnets.list_models("no-such-*") == []


def test_stride_placement_v1_vs_v15():
    v15, v1 = resnets.create_model("resnet50"), resnets.create_model("resnet50_v1")
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)


def test_cifar_option_a_shortcut_is_parameter_free_zero_padding():
    model = resnets.create_model("resnet20")
    shortcut = model.layer2[0].downsample
    assert isinstance(shortcut, PadShortcut) and not list(shortcut.parameters())
    x = torch.randn(1, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (1, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert (y[:, 16:] == 0).all()


def test_shortcut_options_b_c_d():
    b = resnets.create_model("resnet18")
    assert b.layer1[0].downsample is None and b.layer2[0].downsample is not None
    c = resnets.create_model("resnet18", shortcut="C")
    assert all(blk.downsample is not None for blk in c.blocks())
    d = resnets.create_model("resnet50d")
    assert isinstance(d.layer2[0].downsample[0], torch.nn.AvgPool2d)


def test_plain_twin_has_no_shortcuts():
    plain = resnets.create_model("plain20")
    assert all(blk.downsample is None and blk.add is None for blk in plain.blocks())
    assert not any(isinstance(m, Residual) for m in plain.modules())
    residual = resnets.create_model("resnet20")
    assert sum(isinstance(m, Residual) for m in residual.modules()) == 9


def test_zero_init_last_makes_every_block_start_as_identity():
    model = resnets.create_model("resnet56", zero_init_last=True).eval()
    block = model.layer1[1]
    x = torch.randn(2, 16, 8, 8).relu()
    torch.testing.assert_close(block(x), x)
    pre = resnets.create_model("preact_resnet164", zero_init_last=True).eval()
    blk = pre.layer2[3]
    x = torch.randn(2, blk.out_planes, 8, 8)
    torch.testing.assert_close(blk(x), x)


def test_a_preactivation_net_activates_before_its_first_split():
    # He et al. 2016 (appendix): the first activation comes right after conv1, before the two paths split; the
    # identity path of preact_resnet20/56/110's first block carried the stem's raw, signed output instead
    model = resnets.create_model("preact_resnet110", zero_init_last=True).eval()
    stem = model.conv1(torch.randn(2, 3, 32, 32))
    first = model.layer1[0]
    with torch.no_grad():
        torch.testing.assert_close(first(stem), first.relu(first.bn1(stem)))  # the branch is zero at init
        later = model.layer1[1]
        x = torch.randn(2, 16, 8, 8)
        torch.testing.assert_close(later(x), x)  # later identity shortcuts stay raw


def test_zero_init_of_a_preactivation_2plus1d_block_leaves_its_branch_trainable():
    # zeroing both convs of the (2+1)-D pair and the norm between gave every branch parameter a zero gradient
    model = resnets.create_model("r2plus1d_18", block="preact_basic", zero_init_last=True, num_classes=5,
                                 layers=(1, 1, 1, 1))
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    spatial, norm, _, temporal = model.layer1[0].conv2
    assert torch.count_nonzero(temporal.weight) == 0 and temporal.weight.grad.abs().sum() > 0
    assert torch.count_nonzero(spatial.weight) > 0 and norm.weight.abs().sum() > 0


def test_stochastic_depth_rates_rise_linearly_and_drop_in_training():
    model = resnets.create_model("resnet20", drop_path_rate=0.5)
    rates = [blk.drop_path.drop_prob if hasattr(blk.drop_path, "drop_prob") else 0.0 for blk in model.blocks()]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    blk = model.layer3[-1]
    x = torch.randn(64, 64, 4, 4)
    blk.eval()
    eval_out = blk(x)
    blk.train()
    outs = [blk.drop_path(torch.ones(64, 1, 1, 1)).flatten() for _ in range(3)]
    assert any((o == 0).any() for o in outs)  # some samples dropped in training
    assert torch.isfinite(eval_out).all()


def test_wide_and_dropout_fields():
    wrn = resnets.create_model("wrn_28_10", dropout=0.3)
    assert wrn.layer1[0].conv1.out_channels == 160
    assert isinstance(wrn.layer1[0].dropout, torch.nn.Dropout) and wrn.layer1[0].dropout.p == 0.3


def test_output_stride_uses_dilation():
    model = resnets.create_model("resnet50", output_stride=8, num_classes=0).eval()
    feats = model.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, 2048, 8, 8)
    assert model.layer4[1].conv2.dilation == (4, 4)


def test_model_api_head_and_features():
    model = resnets.create_model("resnet18", num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 512, 2, 2)
    torch.testing.assert_close(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, 512)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.spec.num_classes == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    assert [f["num_chs"] for f in model.feature_info] == [64, 64, 128, 256, 512]
    assert [f["reduction"] for f in model.feature_info] == [2, 4, 8, 16, 32]


def test_features_only_returns_stage_outputs():
    backbone = resnets.create_model("resnet50", features_only=True, out_indices=(2, 3, 4)).eval()
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [512, 1024, 2048]
    assert [f["reduction"] for f in backbone.feature_info] == [8, 16, 32]
    with pytest.raises(ValueError, match="out of range"):
        resnets.create_model("resnet50", features_only=True, out_indices=(5,))


def test_wrong_input_shape_is_explained():
    model = resnets.create_model("resnet20")
    with pytest.raises(resnets.InputError, match="add a batch dimension"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(resnets.InputError, match="in_chans=1"):
        model(torch.randn(2, 1, 32, 32))


@pytest.mark.parametrize("name,output_stride,side", [
    ("resnet50", 8, 64), ("resnet18d", 16, 72), ("resnet50d", 8, 72), ("resnet50_v1", 16, 64),
    ("resnet50_v1", 8, 72), ("preact_resnet164", 4, 32), ("resnet_fast", 4, 32), ("resnet20", 4, 32),
    ("resnext29_8x64d", 4, 32)])
def test_dilated_net_equals_the_strided_one_where_it_keeps_positions(name, output_stride, side):
    # output_stride turns strides into dilations: same parameters, and the strided net's feature map is the
    # dilated one's at every (stride)th position (ResNet-D's pool, v1 bottlenecks, width-keeping stages too)
    torch.manual_seed(0)
    strided = resnets.create_model(name, num_classes=0).eval()
    dilated = resnets.create_model(name, num_classes=0, output_stride=output_stride).eval()
    dilated.load_state_dict(strided.state_dict())  # strict: the same tensors
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        a, b = strided.forward_features(x), dilated.forward_features(x)
    step = strided.spec.natural_stride // output_stride
    torch.testing.assert_close(b[..., ::step, ::step], a, rtol=1e-4, atol=1e-4 * a.abs().max().item())


def test_features_only_defaults_to_every_stage_and_reads_indices_as_timm():
    # the default (1, 2, 3, 4) did not exist on 3-stage nets, so features_only=True failed on every CIFAR net
    cifar = resnets.create_model("resnet20", features_only=True)
    assert cifar.out_indices == (1, 2, 3) and [f["num_chs"] for f in cifar.feature_info] == [16, 32, 64]
    assert resnets.create_model("resnet18", features_only=True).out_indices == (1, 2, 3, 4)
    assert resnets.create_model("resnet18", features_only=True, out_indices=2).out_indices == (3, 4)
    net = resnets.create_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        deepest, = net.forward_intermediates(x, [-1])  # was [] without a word
        assert torch.equal(deepest, net.forward_features(x))
        assert [o.shape[1] for o in net.forward_intermediates(x, 2)] == [256, 512]
        assert [o.shape[1] for o in net.forward_intermediates(x)] == [64, 128, 256, 512]
    for bad in ([7], [], 9):
        with pytest.raises(ValueError, match="out of range|feature levels"):
            net.forward_intermediates(x, bad)


def test_spec_refuses_non_finite_numbers_and_a_frozen_zero_init():
    with pytest.raises(SpecError, match="width_multiplier=inf must be a finite number"):
        resnets.create_model("resnet20", width_multiplier=float("inf"))
    with pytest.raises(SpecError, match="norm_scale=False freezes"):
        resnets.create_model("resnet20", norm_scale=False, zero_init_last=True)
    with pytest.raises(SpecError, match="norm_scale=False freezes"):
        resnets.create_model("resnet_airbench", zero_init_last=True)
    resnets.create_model("preact_resnet20", norm_scale=False, zero_init_last=True)  # zeroes a trainable conv


def test_reset_classifier_keeps_the_models_dtype():
    model = resnets.create_model("resnet20").to(torch.bfloat16)
    model.reset_classifier(5)
    assert model.fc.weight.dtype == torch.bfloat16
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).shape == (2, 5)


def test_a_backbone_stops_at_its_deepest_level_and_takes_the_whole_networks_weights(tmp_path):
    # layers past the deepest out_index got no gradient (DDP fails on that) and cost 10.5M parameters of resnet18
    full = resnets.create_model("preact_resnet20").eval()
    path = resnets.save_weights(full, tmp_path / "full.safetensors")
    backbone = resnets.create_model("preact_resnet20", features_only=True, out_indices=(1, 2), weights=path).eval()
    assert not hasattr(backbone, "layer3") and "final_bn.weight" not in backbone.state_dict()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for got, want in zip(backbone(x), full.forward_intermediates(x, [1, 2]), strict=True):
            assert torch.equal(got, want)
    backbone.train()
    sum(o.sum() for o in backbone(x)).backward()
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)
    # saved, it comes back as the same cut backbone
    model, _ = resnets.model_from_checkpoint(resnets.save_weights(backbone, tmp_path / "backbone.safetensors"))
    assert model.out_indices == (1, 2) and model.feature_info.channels() == [16, 32]
    assert resnets.create_model("resnet18", features_only=True, out_indices=(1, 2)).feature_info.reduction() == [4, 8]


def test_pre_activation_specs_saved_before_the_first_activation_existed_keep_their_function(tmp_path):
    # the first block's activated shortcut changed what a stored preact_resnet20 computes: an old file must rebuild
    # the old net, and loading it into today's net must be refused, not silently give other outputs
    from resnets import CheckpointError, ResNetSpec, model_from_checkpoint, save_weights

    stored = {k: v for k, v in resnets.get_spec("preact_resnet20").to_dict().items() if k != "preact_first_activation"}
    legacy = ResNetSpec.from_dict(stored)
    assert legacy.preact_first_activation is False and resnets.get_spec("preact_resnet20").preact_first_activation
    assert ResNetSpec.from_dict({k: v for k, v in resnets.get_spec("resnet20").to_dict().items()
                                 if k != "preact_first_activation"}) == resnets.get_spec("resnet20")
    old = resnets.create_model(legacy, zero_init_last=True).eval()
    stem = old.conv1(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(old.layer1[0](stem), stem)  # the raw stem output down the identity path
    path = save_weights(old, tmp_path / "old.safetensors")
    rebuilt, _ = model_from_checkpoint(path)
    assert rebuilt.spec.preact_first_activation is False
    with pytest.raises(CheckpointError, match="preact_first_activation=False"):
        resnets.create_model("preact_resnet20", weights=path)
