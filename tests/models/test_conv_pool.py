"""The fast CIFAR-10 pieces of the spec: conv_pool blocks, the patch stem and its whitening, scale-free
norms, the max-pool head and logit scale (resnet_airbench)."""

from __future__ import annotations

import pytest
import torch

import resnets
from resnets.deploy import fold_batchnorm
from resnets.spec import ResNetSpec, SpecError


def test_resnet_airbench_shapes_and_frozen_norm_scales():
    model = resnets.create_model("resnet_airbench").eval()
    x = torch.randn(2, 3, 32, 32)
    stages = model.forward_intermediates(x, [0, 1, 2, 3])
    assert [tuple(t.shape[1:]) for t in stages] == [(24, 31, 31), (64, 15, 15), (256, 7, 7), (256, 3, 3)]
    assert model(x).shape == (2, 10)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"layer{i}.0.bn{j}.weight" for i in (1, 2, 3) for j in (1, 2)}
    assert all(m.momentum == 0.4 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert ResNetSpec.from_json(model.spec.to_json()) == model.spec


def test_logit_scale_and_max_pool_head():
    model = resnets.create_model("resnet_airbench").eval()
    x = torch.randn(3, 3, 32, 32)
    features = model.forward_features(x)
    pooled = model.forward_head(features, pre_logits=True)
    assert torch.equal(pooled, features.amax(dim=(2, 3)))
    assert torch.allclose(model(x), model.fc(pooled) / 9, atol=1e-6)


def test_conv_pool_convs_start_as_partial_identity():
    block = resnets.create_model("resnet_airbench").layer2[0]
    w = block.conv1.weight  # 64 -> 256: the first 64 filters pass their input channel through
    assert torch.equal(w[:64, :, 1, 1], torch.eye(64)) and w[:64].abs().sum() == 64
    assert w[64:].abs().sum() > 0  # the rest keep PyTorch's random init
    assert torch.equal(block.conv2.weight[:256, :, 1, 1], torch.eye(256))


def test_patch_whitening_decorrelates_patches():
    model = resnets.create_model("resnet_airbench")
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g)
    images = torch.einsum("ij,njhw->nihw", mix, torch.randn(64, 3, 16, 16, generator=g))
    images = images + torch.nn.functional.avg_pool2d(images, 3, 1, 1) * 2  # correlate neighbouring pixels
    model.init_patch_whitening(images, eps=1e-8)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.conv1.weight)  # no bias
    first, second = out[:, :12], out[:, 12:]
    assert torch.equal(second, -first)  # the filters come in +/- pairs
    flat = first.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / flat.shape[0]
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)


def test_patch_whitening_errors_name_the_problem():
    with pytest.raises(ValueError, match="stem='patch' with stem_width=24"):
        resnets.create_model("resnet_airbench", stem_width=16).init_patch_whitening(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        resnets.create_model("resnet_airbench").init_patch_whitening(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="this model has stem='cifar'"):
        resnets.create_model("resnet20").init_patch_whitening(torch.randn(2, 3, 8, 8))


@pytest.mark.parametrize("changes, message", [
    ({"block": "basic", "act": "gelu", "stem": "cifar"}, "act='gelu' applies to conv_pool blocks"),
    ({"se_ratio": 0.25}, "conv_pool blocks are 2-D, without squeeze-excitation"),
    ({"head_pool": "median"}, "head_pool='median' is unknown"),
    ({"logit_scale": 0.0}, "logit_scale=0.0 must be positive"),
    ({"norm_momentum": 0.0}, "norm_momentum=0.0 must be in"),
])
def test_spec_rejects_impossible_fast_nets(changes, message):
    base = resnets.get_spec("resnet_airbench")
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        base.replace(**changes)


@pytest.mark.parametrize("norm_scale", [False, True])
def test_fold_batchnorm_is_exact_across_the_pool(norm_scale):
    torch.manual_seed(0)
    model = resnets.create_model("resnet_airbench", norm_scale=norm_scale)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            with torch.no_grad():
                m.bias.uniform_(-0.5, 0.5)
                if norm_scale:  # negative scales: max-pool does not commute, conv1/bn1 must stay unfolded
                    m.weight.uniform_(-1, 1)
    model.eval()
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(folded(x), model(x), atol=1e-5)
    left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert left == (3 if norm_scale else 0)
