"""Activation checkpointing (``set_grad_checkpointing``): the same loss, gradients and BatchNorm statistics
as without it, across block types; far less kept for backward; off in evaluation."""

from __future__ import annotations

import copy

import pytest
import torch

import resnets
from resnets import model as model_module

CASES = [("resnet20", {}), ("resnet18", {"drop_path_rate": 0.2}), ("resnet50", {"se_ratio": 0.25}),
         ("preact_resnet110", {}), ("resnext29_8x64d", {"widths": (16, 32, 64), "layers": (1, 1, 1)}),
         ("resnet_airbench_narrow", {})]


def _saved_bytes(model: torch.nn.Module, images: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images).sum().backward()
    return sum(storages.values())


def _step(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # the same stochastic-depth draws in both models
    loss = model(images).square().mean()
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name,fields", CASES, ids=[c[0] for c in CASES])
def test_checkpointed_step_equals_plain_step(name, fields):
    torch.manual_seed(0)
    plain = resnets.create_model(name, **fields).train()
    size = 32 if plain.spec.stem in ("cifar", "patch") else 64
    images = torch.randn(4, plain.spec.in_chans, size, size)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing()
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    assert torch.equal(_step(plain, images), _step(checkpointed, images))
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert (a.grad is None and b.grad is None) or torch.allclose(a.grad, b.grad, rtol=0, atol=1e-6), key
    stats = {k: v for k, v in plain.state_dict().items() if "running" in k or "num_batches" in k}
    assert stats and any(not torch.equal(v, before[k]) for k, v in stats.items())  # the step did update them
    other = checkpointed.state_dict()
    for key, value in stats.items():  # once, not twice (the recompute in backward must not count)
        assert torch.equal(value, other[key]), key


def test_checkpointing_keeps_far_less_for_backward_and_is_off_without_grad(monkeypatch):
    model = resnets.create_model("resnet56").train()
    images = torch.randn(8, 3, 32, 32)
    plain = _saved_bytes(model, images)
    model.set_grad_checkpointing(True)
    kept = _saved_bytes(model, images)
    assert kept < plain / 3, (kept, plain)  # block inputs only: about 1 tensor per block instead of ~7
    calls = []
    monkeypatch.setattr(model_module, "checkpoint", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        model.eval()(images)  # inference takes the plain path
    assert not calls
    model.set_grad_checkpointing(False)
    assert _saved_bytes(model.train(), images) == plain


def test_features_backbone_checkpoints_too():
    torch.manual_seed(0)
    plain = resnets.create_model("resnet18", features_only=True).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing()
    images = torch.randn(2, 3, 64, 64)
    outputs = [plain(images), checkpointed(images)]
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
    for features in outputs:
        sum(f.square().mean() for f in features).backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-6)


def test_compiled_checkpointed_model_matches_eager_and_counts_norm_statistics_once():
    # torch.compile cannot trace the statistics-restoring context, so compiled models checkpoint without it;
    # the compiled graph recomputes activations only, and the running statistics still update once.
    torch.manual_seed(0)
    eager = resnets.create_model("resnet20", layers=(1, 1, 1)).train()
    compiled = copy.deepcopy(eager)
    compiled.set_grad_checkpointing()
    images = torch.randn(8, 3, 32, 32)
    eager(images).square().mean().backward()
    torch.compile(compiled)(images).square().mean().backward()
    for a, b in zip(eager.parameters(), compiled.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5)
    for (key, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5), key  # num_batches_tracked: 1 and 1
