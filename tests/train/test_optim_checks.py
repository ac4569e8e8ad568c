"""Small hand-computed checks of the optimizer pieces: parameter groups given as generators, the time-budget
stretch of a warm-up, and progressive resizing ending at a full size that is not a multiple of the step."""

from __future__ import annotations

import pytest
from torch import nn

from resnets.train import LRSchedule, TrainConfig, build_optimizer
from resnets.train.resolution import ResolutionSchedule


def test_groups_given_as_generators_keep_their_parameters():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    config = TrainConfig.from_dict(dict(model="resnet20", data="memory", lr=0.1, epochs=1))
    optimizer = build_optimizer([{"params": model[0].parameters(), "lr_scale": 10.0},  # torch's own idiom
                                 {"params": model[1].weight}], config)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 1]
    assert optimizer.param_groups[0]["lr"] == 1.0


def test_a_stretched_warm_up_never_shrinks_to_nothing():
    # a one-cycle warm-up of 1 step in 100, fitted to 40 steps: still a 1-step warm-up, not a peak at 25%
    fitted = LRSchedule("onecycle", 100, warmup_steps=1, start=0.2).scaled_to(40)
    assert fitted.warmup_steps == 1 and fitted(1) == 1.0
    assert LRSchedule("cosine", 100).scaled_to(40).warmup_steps == 0
    assert LRSchedule("cosine", 100, warmup_steps=10).scaled_to(45).warmup_steps == 4  # 4.5: round half to even


def test_progressive_resizing_ends_at_the_full_size_when_it_is_no_multiple_of_the_step():
    jump = ResolutionSchedule(30, 20, 0.5, 0.5, size_step=4)  # 30 px: floors to 28
    assert [jump.size_at(s, 4) for s in range(4)] == [20, 20, 30, 30] and jump.sizes() == [20, 30]
    ramp = ResolutionSchedule(28, 16, 0.0, 0.5, size_step=8)
    assert [ramp.size_at(s, 8) for s in range(8)] == [16, 16, 16, 24, 28, 28, 28, 28]
    assert ramp.sizes() == [16, 24, 28]


def test_a_budget_refit_never_undoes_a_rate_drop_or_a_passed_peak():
    # rescaling every milestone moved one the run had passed back ahead of it: x10 the rate until it came again
    fitted = LRSchedule("step", 722, milestones=(361, 578))
    first = fitted.scaled_to(600)  # milestones (300, 480): the rate drops at step 300
    assert first(303) == pytest.approx(0.1)
    again = first.refitted(fitted, 613, step=303)
    assert again.milestones[0] == 300 and again(303) == pytest.approx(0.1) and again.milestones[1] == 491
    # onecycle: past its peak the run stays on the way down instead of climbing to a moved peak
    cycle = LRSchedule("onecycle", 1000, peak_at=0.23, start=0.2, final=0.07)
    later = cycle.refitted(cycle, 850, step=240)
    assert later.peak_step == 230 and later(240) <= cycle(230)
    early = cycle.refitted(cycle, 850, step=100)  # before the peak: all of it scales
    assert early.peak_step == round(0.23 * 850)


def test_muon_weight_decay_shrinks_the_filters_by_its_size():
    # added to the gradient before orthogonalizing, any decay gave the same step (its size normalised away)
    import torch

    from resnets.train.optim import MuonSGD

    steps = {}
    for decay in (1e-6, 1e-2):
        torch.manual_seed(0)
        filters = nn.Parameter(torch.randn(8, 4, 3, 3))
        before = filters.detach().clone()
        optimizer = MuonSGD([{"params": [filters], "orthogonalize": True}], lr=0.1, momentum=0.0,
                            weight_decay=decay)
        filters.grad = torch.zeros_like(filters)
        optimizer.step()
        steps[decay] = filters.detach() - before
        torch.testing.assert_close(filters.detach(), before * (1 - 0.1 * decay))
    assert not torch.allclose(steps[1e-6], steps[1e-2])
