"""The distillation loss: KL at temperature plus labels, and a training step that lowers the KL term."""

import copy

import pytest
import torch
from torch import nn

from resnets import ResNet
from resnets.deploy import DistillationLoss, distillation_kl, distillation_loss


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(8, 5)
    assert distillation_kl(logits, logits, 4.0).abs().item() < 1e-6
    assert distillation_kl(torch.randn(8, 5), logits, 4.0).item() > 0


def test_loss_mixes_soft_and_hard_terms():
    student, teacher, labels = torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    loss_soft, parts = distillation_loss(student, teacher, labels, temperature=2.0, alpha=1.0)
    assert torch.allclose(loss_soft, parts["kl"])
    loss_hard, parts = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.0)
    assert torch.allclose(loss_hard, nn.functional.cross_entropy(student, labels))
    soft_targets = nn.functional.one_hot(labels, 3).float()
    loss_mixed, _ = distillation_loss(student, teacher, soft_targets, temperature=2.0, alpha=0.0)
    assert torch.allclose(loss_mixed, loss_hard)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        distillation_kl(torch.randn(2, 3), torch.randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]), alpha=1.5)
    with pytest.raises(ValueError, match="same classes"):
        distillation_kl(torch.randn(2, 3), torch.randn(2, 4))


class _TrainerStub:
    """What the trainer passes to a loss hook: itself, with ``forward_model``."""

    def __init__(self, model):
        self.forward_model = model


def test_a_distillation_step_lowers_the_kl_term(trained_tiny, tiny_spec, batch):
    torch.manual_seed(1)
    student = ResNet(tiny_spec).train()
    teacher = copy.deepcopy(trained_tiny)
    hook = DistillationLoss(teacher, temperature=4.0, alpha=1.0)
    trainer = _TrainerStub(student)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    x, labels = batch
    kls = []
    for _ in range(6):
        loss, logits = hook(trainer, x, labels)
        assert logits.shape == (64, 4)
        kls.append(hook.last["kl"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert kls[-1] < 0.7 * kls[0], f"KL did not fall: {kls}"
    assert not teacher.training, "the teacher stays in eval mode"
    assert all(p.grad is None for p in teacher.parameters()), "the teacher is never trained"
    assert torch.equal(teacher.fc.weight, trained_tiny.fc.weight)


def test_the_trainers_label_smoothing_reaches_the_hard_term():
    """With label smoothing alone the trainer passes integer labels; the hook must smooth them."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    student = nn.Linear(6, 3)
    teacher = nn.Linear(6, 3)
    x, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    trainer = SimpleNamespace(forward_model=student, config=SimpleNamespace(label_smoothing=0.2))
    loss, logits = DistillationLoss(teacher, temperature=2.0, alpha=0.0)(trainer, x, labels)
    assert torch.allclose(loss, nn.functional.cross_entropy(logits, labels, label_smoothing=0.2))
