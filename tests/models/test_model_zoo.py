"""Every registered model builds, runs forward and backward, and has the published size."""

import math

import pytest
import torch

import resnets
from resnets.zoo import get_entry

# Exact counts where a reference implementation exists (torchvision / timm), else the paper's
# figure in millions (He et al. 2015 Table 6; He et al. 2016; WRN; ResNeXt).
EXACT_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
    "wide_resnet50_2": 68_883_240, "resnet50d": 25_576_264, "se_resnet50": 28_088_024,
    "preact_resnet50": 25_549_352, "preact_resnet101": 44_541_480, "preact_resnet152": 60_185_128,
    "r3d_18": 33_371_472, "r2plus1d_18": 31_505_325,
    # The paper's v1 stride placement moves a stride, not a weight.
    "resnet50_v1": 25_557_032,
}
PAPER_MILLIONS = {
    "resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7, "resnet1202": 19.4,
    "preact_resnet164": 1.7, "preact_resnet1001": 10.2, "wrn_28_10": 36.5, "resnext29_8x64d": 34.4,
}
WITHOUT_NORMS = {"preact_resnet1001"}  # the paper's 10.2M counts convolutions and classifier: 10.18M (+0.15M of BN)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(EXACT_PARAMS))
def test_exact_parameter_counts(name):
    assert n_params(resnets.create_model(name)) == EXACT_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_MILLIONS))
def test_paper_parameter_counts(name):
    model = resnets.create_model(name)
    norms = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                for p in m.parameters())
    millions = (n_params(model) - (norms if name in WITHOUT_NORMS else 0)) / 1e6
    published = PAPER_MILLIONS[name]
    # the papers round to 2 significant digits (0.27M) or 1 decimal (19.4M)
    assert math.isclose(millions, published, abs_tol=0.051 if published >= 1 else 0.0051), millions


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twin_has_same_parameters_as_option_a_resnet(depth):
    # Option A shortcuts are parameter-free, so the twins differ only in the shortcut wiring.
    assert n_params(resnets.create_model(f"plain{depth}")) == n_params(resnets.create_model(f"resnet{depth}"))


def test_published_macs():
    r18 = resnets.profile(resnets.create_model("resnet18"), (3, 224, 224))
    r50 = resnets.profile(resnets.create_model("resnet50"), (3, 224, 224))
    assert abs(r18.gmacs - 1.81) / 1.81 < 0.01
    assert abs(r50.gmacs - 4.09) / 4.09 < 0.01
    assert r50.params == 25_557_032
    # the paper's 3.8 GFLOPs (multiply-adds) for ResNet-50 with the stride on the first 1x1
    v1 = resnets.profile(resnets.create_model("resnet50_v1"), (3, 224, 224))
    assert abs(v1.gmacs - 3.86) < 0.02
    # SENet (Hu et al. 2018, Table 2): SE-ResNet-50 ~3.87 GFLOPs with its Caffe models' stride on the first 1x1
    se = resnets.profile(resnets.create_model("se_resnet50_v1"), (3, 224, 224))
    assert abs(se.gmacs - 3.87) < 0.02 and abs(se.params / 1e6 - 28.1) < 0.05


@pytest.mark.parametrize("name", ["resnet_airbench_narrow", "resnet20", "resnet18", "wrn_16_4"])
def test_profile_defaults_to_the_registered_input_size(name):
    # without input_size, profile measures the net at the size it is registered (and documented) for
    model = resnets.create_model(name)
    assert resnets.profile(model) == resnets.profile(model, get_entry(name).input_size)


def test_profile_of_a_video_net_uses_its_clip():
    model = resnets.create_model("r3d_18", in_chans=1)
    assert resnets.profile(model).input_size == (1, 16, 112, 112)


def _small_input(name: str, batch: int = 2) -> torch.Tensor:
    size = get_entry(name).input_size
    if len(size) == 4:  # video: a short, small clip
        return torch.randn(batch, size[0], 4, 32, 32)
    if size[-1] == 224:
        return torch.randn(batch, size[0], 32, 32)
    return torch.randn(batch, *size)


# The largest nets cost seconds each; run them with a batch of 2 as well (BatchNorm needs >1).
@pytest.mark.parametrize("name", resnets.list_models())
def test_every_model_forward_backward(name):
    model = resnets.create_model(name)
    model.train()
    x = _small_input(name)
    out = model(x)
    assert out.shape == (x.shape[0], model.spec.num_classes)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    # only scale-free norms (norm_scale=False) freeze anything, and only their scales
    assert all(n.endswith("weight") and "bn" in n for n in frozen) and (not frozen or not model.spec.norm_scale)


def test_cifar_preactivation_bottlenecks_stride_the_first_1x1_as_the_authors_code():
    # KaimingHe/resnet-1k-layers (resnet-pre-act.lua) strides the bottleneck's first 1x1
    block = resnets.create_model("preact_resnet164").layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)


def test_video_heads_start_as_torchvisions():
    # VideoResNet draws its classifier from N(0, 0.01) with a zero bias; ours kept nn.Linear's default
    head = resnets.create_model("r3d_18", num_classes=400).fc
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.05) and torch.count_nonzero(head.bias) == 0
