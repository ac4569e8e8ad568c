"""Progressive resizing: the size schedule, the batch resize, the trainer using both, and the time budget's cost model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnets.train import Callback, ConfigError, Trainer
from resnets.train.resolution import ResolutionSchedule, resize_batch

from test_train_loop import tiny_config, tiny_splits, weights


def test_sizes_jump_or_ramp_in_fractions_of_the_run():
    jump = ResolutionSchedule(32, 24, 0.5, 0.5)
    assert [jump.size_at(step, 10) for step in range(10)] == [24] * 5 + [32] * 5
    assert jump.sizes() == [24, 32]
    ramp = ResolutionSchedule(32, 16, 0.25, 0.75, size_step=4)
    sizes = [ramp.size_at(step, 100) for step in range(100)]
    assert sizes[:26] == [16] * 26 and sizes[75:] == [32] * 25
    assert sizes == sorted(sizes) and set(sizes) == {16, 20, 24, 28, 32}
    assert ramp.size_at(50, 100) == 24  # halfway up the ramp
    assert ramp.sizes() == [16, 20, 24, 28, 32]
    assert ResolutionSchedule(32).sizes() == [32] and not ResolutionSchedule(32, 32).active
    assert ResolutionSchedule(32).size_at(0, 100) == 32


def test_cost_sums_the_per_size_step_times():
    schedule = ResolutionSchedule(32, 24, 0.5, 0.5)
    seconds = {24: 0.5, 32: 1.0}
    assert schedule.cost(seconds, 0, 10, 10) == pytest.approx(5 * 0.5 + 5 * 1.0)
    assert schedule.cost(seconds, 5, 10, 10) == pytest.approx(5.0)
    assert schedule.cost(seconds, 3, 3, 10) == 0.0
    assert ResolutionSchedule(32).cost({32: 0.2}, 0, 7, 7) == pytest.approx(1.4)


def test_resize_batch_downscales_and_keeps_channels_last():
    images = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    small = resize_batch(images, 24)
    assert small.shape == (4, 3, 24, 24) and small.is_contiguous(memory_format=torch.channels_last)
    assert resize_batch(images, 32) is images
    flat = torch.full((2, 3, 32, 32), 0.7)
    assert torch.allclose(resize_batch(flat, 16), torch.full((2, 3, 16, 16), 0.7))  # antialiased: a mean, no ringing


class SizeSpy(Callback):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_batch(self, trainer, images, labels):
        self.sizes.append(images.shape[-1])


def test_trainer_trains_early_steps_small_and_evaluates_at_full_size(capsys):
    spy = SizeSpy()
    config = tiny_config(epochs=2, progressive_min_size=8, progressive_ramp=[0.5, 0.5])
    trainer = Trainer(config, splits=tiny_splits(size=16), callbacks=[spy])
    result = trainer.fit()
    assert spy.sizes == [8, 8, 8, 16, 16, 16]  # 6 steps, the second half at the full 16 px
    assert result.final.count == 12 and np.isfinite(result.history[-1]["train_loss"])
    assert "progressive resizing: 8 -> 16 px, full size from 50% of the steps" in capsys.readouterr().err
    Trainer(tiny_config(epochs=1, progressive_min_size=16), splits=tiny_splits(size=16)).fit()
    assert "progressive resizing off: progressive_min_size=16 is not below the images' 16 px" in capsys.readouterr().err


def test_a_fractional_min_size_is_a_share_of_the_full_size():
    assert ResolutionSchedule.from_setting(32, 0.625).min_size == 20
    assert ResolutionSchedule.from_setting(224, 0.625).min_size == 140
    assert ResolutionSchedule.from_setting(32, 20).min_size == 20
    assert ResolutionSchedule.from_setting(32, 0.1).min_size == 8  # never below 8 px
    assert not ResolutionSchedule.from_setting(32, None).active
    spy = SizeSpy()
    Trainer(tiny_config(epochs=2, progressive_min_size=0.5, progressive_ramp=[0.5, 0.5]), splits=tiny_splits(size=16),
            callbacks=[spy]).fit()
    assert spy.sizes == [8, 8, 8, 16, 16, 16]


def test_time_budget_probes_each_size_and_refits_with_the_cost_model():
    config = tiny_config(epochs=None, time_budget=0.05, progressive_min_size=8, progressive_ramp=[0.5, 0.5])
    trainer = Trainer(config, splits=tiny_splits(size=16))
    initial = weights(trainer.model)
    trainer.fit_time_budget()
    fit = trainer.budget_fit
    assert set(fit["seconds_by_size"]) == {8, 16} and trainer._probe_size is None
    assert all(torch.equal(initial[k], v) for k, v in trainer.model.state_dict().items())
    assert trainer.total_steps * fit["step_seconds"] <= 0.05 * 60
    # the refit: 50 small steps were predicted to take 0.5 s and took 1 s, so the pace is 2x the probe's
    fit.update(seconds_by_size={8: 0.01, 16: 0.02}, setup_seconds=0.0, final_eval_seconds=0.0, eval_seconds=0.0,
               fitted_steps=100)
    trainer.total_steps, trainer.step, trainer.elapsed = 100, 50, 1.0
    remaining = 0.05 * 60 * 0.97 - 1.0
    expected = max(total for total in range(51, 151)
                   if 2 * sum(0.01 if step < 0.5 * total else 0.02 for step in range(50, total)) <= remaining)
    assert trainer.resolution.cost({8: 0.01, 16: 0.02}, 0, 50, 100) == pytest.approx(0.5)
    trainer.refit_time_budget()
    assert trainer.total_steps == expected == 97


def test_probe_times_the_end_sizes_and_interpolates_the_ramp_between():
    ramp = ResolutionSchedule(32, 20, 0.0, 0.7)
    assert ramp.sizes() == [20, 24, 28, 32] and ramp.probe_sizes() == [20, 32]
    assert ResolutionSchedule(32, 24, 0.5, 0.5).probe_sizes() == [24, 32]
    seconds = ramp.interpolate_step_seconds({20: 0.39, 32: 1.05})  # measured here: 24 px 0.57 s, 28 px 0.79 s
    assert seconds[20] == 0.39 and seconds[32] == 1.05
    assert seconds[24] == pytest.approx(0.39 + 0.66 * (576 - 400) / 624)
    assert abs(seconds[24] - 0.57) < 0.02 and abs(seconds[28] - 0.79) < 0.02
    assert ResolutionSchedule(32).interpolate_step_seconds({32: 0.2}) == {32: 0.2}
    config = tiny_config(epochs=None, time_budget=0.05, progressive_min_size=8, progressive_ramp=[0.0, 1.0])
    trainer = Trainer(config, splits=tiny_splits(size=16))
    spy = SizeSpy()
    trainer.callbacks.append(spy)
    trainer.fit_time_budget()
    fit = trainer.budget_fit
    assert fit["probed_sizes"] == [8, 16] and set(fit["seconds_by_size"]) == {8, 12, 16}
    assert set(spy.sizes) == {8, 16}  # no step spent timing 12 px
    assert min(fit["seconds_by_size"][8], fit["seconds_by_size"][16]) <= fit["seconds_by_size"][12] \
        <= max(fit["seconds_by_size"][8], fit["seconds_by_size"][16])


@pytest.mark.parametrize("changes, words", [
    ({"progressive_min_size": 4}, "progressive_min_size=4 must be whole pixels .at least 8. or a fraction"),
    ({"progressive_min_size": 12.5}, "progressive_min_size=12.5 must be whole pixels"),
    ({"progressive_min_size": 0}, "progressive_min_size=0 must be whole pixels"),
    ({"progressive_ramp": [0.7, 0.3]}, "progressive_ramp=[0.7, 0.3] must be [start, end]"),
    ({"progressive_ramp": [0.5]}, "progressive_ramp=[0.5] must be [start, end]"),
    ({"progressive_size_step": 0}, "progressive_size_step=0 must be >= 1"),
])
def test_bad_progressive_settings_are_refused_with_the_rule(changes, words):
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        tiny_config(**changes)
