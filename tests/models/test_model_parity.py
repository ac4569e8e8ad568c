"""Outputs identical to the peers' models after loading their weights (torchvision, timm)."""

import pytest
import timm
import torch
import torchvision

import resnets


def randomize_norm_stats(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so a swapped or misplaced norm cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def assert_same_outputs(peer: torch.nn.Module, ours: torch.nn.Module, x: torch.Tensor) -> None:
    peer.eval()
    ours.eval()
    with torch.no_grad():
        expected, got = peer(x), ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
               "resnext101_32x8d", "wide_resnet50_2"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_weights_give_identical_outputs(name):
    peer = getattr(torchvision.models, name)()
    randomize_norm_stats(peer)
    ours = resnets.create_model(name)
    resnets.load_weights(ours, peer.state_dict())
    assert list(ours.state_dict()) == list(peer.state_dict()) or set(ours.state_dict()) == set(peer.state_dict())
    assert_same_outputs(peer, ours, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_round_trip_ours_to_torchvision(name):
    ours = resnets.create_model(name)
    randomize_norm_stats(ours)
    peer = getattr(torchvision.models, name)()
    peer.load_state_dict(ours.state_dict())  # strict: the names are torchvision's
    assert_same_outputs(peer, ours, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("ours_name,timm_name", [("resnet50d", "resnet50d"), ("preact_resnet50", "resnetv2_50"),
                                                 ("se_resnet50", "seresnet50")])
def test_timm_weights_give_identical_outputs(ours_name, timm_name):
    peer = timm.create_model(timm_name, pretrained=False)
    randomize_norm_stats(peer)
    ours = resnets.create_model(ours_name)
    resnets.load_weights(ours, peer.state_dict())
    assert_same_outputs(peer, ours, torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_torchvision_video_weights_give_identical_outputs(name):
    peer = getattr(torchvision.models.video, name)()
    randomize_norm_stats(peer)
    ours = resnets.create_model(name)
    resnets.load_weights(ours, peer.state_dict())
    assert_same_outputs(peer, ours, torch.randn(1, 3, 4, 32, 32))


def test_wrapped_state_dict_prefixes_are_stripped():
    peer = torchvision.models.resnet18()
    wrapped = {f"module._orig_mod.{k}": v for k, v in peer.state_dict().items()}
    ours = resnets.create_model("resnet18")
    resnets.load_weights(ours, wrapped)
    assert_same_outputs(peer, ours, torch.randn(1, 3, 64, 64))
