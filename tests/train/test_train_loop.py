"""The trainer on tiny in-memory data: determinism, stopping on a non-finite loss, atomic checkpoints,
weights-only last.pt, schedules, no-decay groups, time budgets, callbacks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from resnets import create_model
from resnets.data import DataSplits, TensorImageDataset, make_tensor_dataset
from resnets.train import (Callback, ConfigError, LRSchedule, NonFiniteLossError, TrainConfig, Trainer, load_training_checkpoint,
                           param_groups, resolve_config, train)
from resnets.train import checkpoint as checkpoint_module
from resnets.train import trainer as trainer_module
from resnets.train.trainer import probe_step_count
from resnets.weights import model_from_checkpoint

CLASSES = ["cat", "dog", "eel"]


def tiny_splits(size: int = 8) -> DataSplits:
    images, labels = make_tensor_dataset(classes=3, per_class=12, size=size, seed=0)
    val_images, val_labels = make_tensor_dataset(classes=3, per_class=4, size=size, seed=1)
    train_set = TensorImageDataset(images, labels, CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    val_set = TensorImageDataset(val_images, val_labels, CLASSES, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return DataSplits(train_set, val_set, CLASSES, train_set.mean, train_set.std, size, True)


def tiny_config(**changes) -> TrainConfig:
    values = dict(model="resnet20", data="memory", batch_size=12, epochs=2, lr=0.05, schedule="cosine",
                  augment={"translate": 1, "flip": True}, progress=False, tensorboard=False, workers=0)
    values.update(changes)
    return TrainConfig.from_dict(values)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_other_seed_differs():
    runs = [train(tiny_config(seed=seed, mixup_alpha=0.3, ema_decay=0.5, label_smoothing=0.1), splits=tiny_splits())
            for seed in (7, 7, 8)]
    a, b, c = (weights(r.model) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert runs[0].history == runs[1].history or [
        {k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds", "elapsed_minutes")}
        for r in runs[0].history] == [
        {k: v for k, v in r.items() if k not in ("images_per_s", "epoch_seconds", "elapsed_minutes")}
        for r in runs[1].history]


def test_run_folder_contents_and_weights_only_checkpoint(tmp_path):
    result = train(tiny_config(ema_decay=0.9, tta="flip"), tmp_path / "run", splits=tiny_splits())
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.safetensors", "summary.json"} <= {
        p.name for p in run.iterdir()}
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    body = torch.load(run / "last.pt", map_location="cpu", weights_only=True)  # no pickled objects
    for key in ("state_dict", "state_dict_ema", "optimizer", "scaler", "rng", "progress", "spec", "classes",
                "mean", "std", "config"):
        assert key in body
    assert body["progress"]["step"] == result.steps == 6 and body["classes"] == CLASSES
    assert resolve_config(None, body["config"]).ema_decay == 0.9  # the full resolved config
    model, ckpt = model_from_checkpoint(run / "best.safetensors")
    assert ckpt.metadata["classes"] == CLASSES and ckpt.metadata["std"] == [0.25, 0.25, 0.25]
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3)



def test_without_a_progress_bar_each_epoch_logs_a_line(capsys):
    """--no-progress (batch jobs, logs to a file) still says how the run goes, once per epoch."""
    train(tiny_config(), splits=tiny_splits())
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2
    assert lines[0].startswith("epoch 0 (step 3/6): loss ") and "val top-1" in lines[0] and "img/s" in lines[0]


def test_a_new_run_refuses_a_folder_that_holds_another_run(tmp_path):
    """train, finetune, prune and distill all start through the Trainer: none may overwrite a run."""
    run = tmp_path / "run"
    train(tiny_config(epochs=1), run, splits=tiny_splits())
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a run .*resnets train --resume"):
        train(tiny_config(epochs=1, seed=3), run, splits=tiny_splits())
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "best.safetensors").write_bytes((run / "best.safetensors").read_bytes())
    with pytest.raises(ConfigError, match=r"already holds a run \(best.safetensors\); choose another"):
        train(tiny_config(epochs=1), kept, splits=tiny_splits())
    (tmp_path / "empty").mkdir()
    train(tiny_config(epochs=1), tmp_path / "empty", splits=tiny_splits())  # an empty folder is fine


class _Stop(Exception):
    pass


class _StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.at = step

    def on_step_end(self, trainer, step, loss):
        if step == self.at:
            raise _Stop


def test_a_run_of_another_architecture_resumes_and_a_custom_loss_is_asked_for(tmp_path):
    """A pruned model (per-block widths) resumes from its checkpoint's spec, not from the config's model name;
    a distillation run's loss cannot come from the run folder, so resume says what to give it."""
    from resnets.train.trainer import resume

    config = tiny_config(epochs=2, checkpoint_every_steps=1)
    narrow = lambda: create_model("resnet20", num_classes=3, layers=(1, 1, 1))  # noqa: E731
    whole = train(config, tmp_path / "whole", splits=tiny_splits(), model=narrow())
    with pytest.raises(_Stop):
        train(config, tmp_path / "cut", splits=tiny_splits(), model=narrow(), callbacks=[_StopAt(4)])
    resumed = resume(tmp_path / "cut", splits=tiny_splits())
    a, b = weights(whole.model), weights(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def loss(trainer, images, labels):
        logits = trainer.forward_model(images)
        return nn.functional.cross_entropy(logits, labels), logits

    with pytest.raises(_Stop):
        train(config, tmp_path / "kd", splits=tiny_splits(), loss_fn=loss, callbacks=[_StopAt(2)])
    with pytest.raises(ConfigError, match=r"started with loss_fn \(function\) .*cannot rebuild"):
        resume(tmp_path / "kd", splits=tiny_splits())


def test_a_run_killed_at_an_epoch_end_resumes_to_the_same_metrics_and_sweeps_torn_saves(tmp_path, monkeypatch):
    """Killed after its epoch's last step was saved but before the epoch's record: the resumed record keeps that
    step's lr (not the base lr), and the temporary file of a save the kill cut short is removed."""
    from resnets.train.trainer import resume

    config = tiny_config(epochs=2, checkpoint_every_steps=1)
    whole = train(config, tmp_path / "whole", splits=tiny_splits())
    with monkeypatch.context() as patch:
        def killed(self, *args):
            raise _Stop

        patch.setattr(Trainer, "_end_epoch", killed)
        with pytest.raises(_Stop):
            train(config, tmp_path / "cut", splits=tiny_splits())
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["progress"]["batch_in_epoch"] == 3
    torn = tmp_path / "cut" / ".last.pt.k1ll3d.tmp.pt"
    torn.write_bytes(b"half a checkpoint")
    resumed = resume(tmp_path / "cut", splits=tiny_splits())
    assert [r["lr"] for r in resumed.history] == [r["lr"] for r in whole.history]
    assert not torn.exists()


def test_the_progress_bar_ends_on_the_last_epoch_not_the_next(capsys):
    train(tiny_config(progress=True), splits=tiny_splits())
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    last = [line for line in bar if "6/6" in line][-1]
    assert last.startswith("epoch 1:"), last


def test_last_validation_pass_also_gives_the_final_tta_result(monkeypatch):
    """The last epoch's validation and the final test-time-augmented evaluation are one pass over the data,
    and each result equals its own separate evaluation of the final weights."""
    from resnets.evaluate import evaluate

    calls = []
    for name in ("evaluate", "evaluate_with_plain"):
        real = getattr(trainer_module, name)
        monkeypatch.setattr(trainer_module, name,
                            lambda *a, name=name, real=real, **k: calls.append((name, k["tta"])) or real(*a, **k))
    trainer = Trainer(tiny_config(tta="flip-translate", ema_decay=0.5), splits=tiny_splits())
    result = trainer.fit()
    assert calls == [("evaluate", "none"), ("evaluate_with_plain", "flip-translate")]
    model, loader = trainer._eval_weights_model(), trainer.val_loader
    alone = {tta: evaluate(model, loader, 3, CLASSES, tta=tta) for tta in ("none", "flip-translate")}
    assert result.final.tta == "flip-translate" and result.final.confusion == alone["flip-translate"].confusion
    assert result.final.loss == pytest.approx(alone["flip-translate"].loss, rel=1e-6)
    assert result.history[-1]["val_top1"] == alone["none"].top1
    assert result.history[-1]["val_loss"] == pytest.approx(alone["none"].loss, rel=1e-6)

def test_crash_during_checkpoint_save_keeps_previous(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(epochs=1), tmp_path, splits=tiny_splits())
    trainer.fit()
    before = load_training_checkpoint(tmp_path / "last.pt")

    def torn_save(obj, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", torn_save)
    trainer.step += 1
    with pytest.raises(OSError, match="disk full"):
        trainer.save_last()
    after = load_training_checkpoint(tmp_path / "last.pt")
    assert after["progress"]["step"] == before["progress"]["step"]
    assert all(torch.equal(after["state_dict"][k], before["state_dict"][k]) for k in before["state_dict"])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_damaged_last_pt_is_named_without_torchs_weights_only_advice(tmp_path):
    from resnets.weights import CheckpointError

    (tmp_path / "last.pt").write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable training checkpoint") as caught:
        load_training_checkpoint(tmp_path / "last.pt")
    assert "weights_only" not in str(caught.value)  # torch's advice would have it loaded unsafely


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    def poisoned(trainer, images, targets):
        logits = trainer.forward_model(images)
        loss = nn.functional.cross_entropy(logits.float(), targets)
        return (loss * float("nan") if trainer.epoch >= 1 else loss), logits

    trainer = Trainer(tiny_config(epochs=3), tmp_path, splits=tiny_splits(), loss_fn=poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* step 4 of epoch 1.*last good checkpoint"):
        trainer.fit()
    body = load_training_checkpoint(tmp_path / "last.pt")
    assert body["progress"]["epoch"] == 1 and body["progress"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in body["state_dict"].values() if v.is_floating_point())


def test_step_schedule_at_iterations_cosine_and_onecycle_values():
    step = LRSchedule("step", 64000, milestones=(32000, 48000), gamma=0.1)
    assert [step(s) for s in (0, 31999, 32000, 47999, 48000, 63999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    he = resolve_config("he2015-cifar")
    schedule = LRSchedule.from_config(he, steps_per_epoch=351, total_steps=he.total_steps(351))
    assert schedule.total_steps == 64000 and schedule.milestones == (32000, 48000)
    cosine = LRSchedule("cosine", 110, warmup_steps=10, start=0.0, final=0.0)
    assert cosine(0) == 0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(1)
    assert cosine(60) == pytest.approx(0.5) and cosine(110) == pytest.approx(0)
    one = LRSchedule("onecycle", 100, peak_at=0.25, start=0.1, final=0.0)
    assert one(0) == pytest.approx(0.1) and one(25) == pytest.approx(1.0)
    assert one(62) == pytest.approx(1 - 37 / 75) and one(100) == pytest.approx(0.0)
    stretched = step.scaled_to(6400)
    assert stretched.milestones == (3200, 4800)


def test_error_warmup_applies_to_resnet110_only():
    config = resolve_config("he2015-cifar", {"model": "resnet110", "data": "memory"})
    assert config.error_warmup_lr == 0.01 and "resnet110" in config.error_warmup_models
    trainer = Trainer(config.replace(steps=2, progress=False, tensorboard=False, batch_size=12, workers=0),
                      splits=tiny_splits(), model=create_model("resnet20", num_classes=3))
    assert trainer.error_warmup_active and trainer.current_lr_factor() == pytest.approx(0.1)
    trainer.error_window = torch.tensor([10.0, 100.0], dtype=torch.float64)  # 10% error < 80%
    trainer.update_error_warmup()
    assert not trainer.error_warmup_active and trainer.current_lr_factor() == 1.0
    other = Trainer(config.replace(model="resnet20", steps=2, progress=False, tensorboard=False, batch_size=12),
                    splits=tiny_splits())
    assert not other.error_warmup_active


def test_no_decay_groups_hold_norm_weights_and_biases():
    model = create_model("resnet20", num_classes=3)
    groups = param_groups(model, weight_decay=5e-4, no_decay_norm_bias=True)
    by_name = {g["name"]: g for g in groups}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in by_name["no_decay"]["params"]}
    decay = {names[id(p)] for p in by_name["decay"]["params"]}
    assert by_name["no_decay"]["weight_decay"] == 0 and by_name["decay"]["weight_decay"] == 5e-4
    assert "bn1.weight" in no_decay and "fc.bias" in no_decay and "layer1.0.bn2.bias" in no_decay
    assert "conv1.weight" in decay and "fc.weight" in decay and not (decay & no_decay)
    assert len(decay | no_decay) == len(list(model.parameters()))
    trainer = Trainer(tiny_config(no_decay_norm_bias=True, weight_decay=5e-4), splits=tiny_splits())
    assert sorted(g["weight_decay"] for g in trainer.optimizer.param_groups) == [0.0, 5e-4]


def test_the_probe_times_fewer_steps_where_six_would_eat_the_budget():
    # 7.5 minutes with 0.8 s steps at 20 px (about 2 s at 32): 6 steps at each size would take 17 s, 3.8% of it
    assert probe_step_count(450, 0.8, [20, 32], 87) == 4
    assert probe_step_count(180, 0.95, [20, 32], 87) == 3  # never fewer than 3
    assert probe_step_count(180, 0.05, [20, 32], 87) == 6  # a fast machine affords the full probe
    assert probe_step_count(180, 0.05, [32], 2) == 3  # tiny epochs: at least 3, the loader wraps around
    trainer = Trainer(tiny_config(epochs=None, time_budget=0.05), splits=tiny_splits())
    trainer.fit_time_budget()
    assert 3 <= trainer.budget_fit["probe_steps"] <= 6


def test_time_budget_fits_the_run_and_leaves_the_model_untouched():
    trainer = Trainer(tiny_config(epochs=None, time_budget=0.05, schedule="step", milestones=[1, 2],
                                  milestone_unit="epochs"), splits=tiny_splits())
    initial = weights(trainer.model)
    trainer.fit_time_budget()
    assert trainer.config.steps == trainer.total_steps >= 1 and trainer.config.epochs is None
    assert trainer.budget_fit["step_seconds"] > 0
    assert trainer.budget_fit["setup_seconds"] >= trainer.budget_fit["probe_seconds"] > 0  # the probe spends budget
    fitted_seconds = trainer.total_steps * trainer.budget_fit["step_seconds"]
    assert fitted_seconds <= 0.05 * 60
    assert all(torch.equal(initial[k], v) for k, v in trainer.model.state_dict().items())
    # at epoch ends the run re-fits to the pace measured so far: slower shrinks it, faster stretches it (<= 1.5x)
    trainer.budget_fit.update(setup_seconds=0.0, final_eval_seconds=0.0, eval_seconds=0.0, fitted_steps=100)
    trainer.total_steps, trainer.step, trainer.elapsed = 100, 10, 2.0  # 0.2 s/step, 0.91 s of 2.91 left
    trainer.refit_time_budget()
    assert trainer.total_steps == trainer.config.steps == 14 and trainer.schedule.total_steps == 14
    trainer.elapsed = 0.01  # 1 ms/step: much faster than fitted
    trainer.refit_time_budget()
    assert trainer.total_steps == 150 and [r["total_steps"] for r in trainer.budget_fit["refits"]] == [14, 150]


def test_a_time_budget_fits_a_run_counted_in_steps_too():
    # he2015-cifar counts 64000 steps: --time-budget used to be ignored for it without a word
    class Fitted(Callback):
        def on_step_end(self, trainer, step, loss):
            assert trainer.budget_fit is not None, "the budget was not fitted: the run would take 6000 steps"

    trainer = Trainer(tiny_config(epochs=None, steps=6000, time_budget=0.02, schedule="step", milestones=[3000],
                                  milestone_unit="steps"), splits=tiny_splits(), callbacks=[Fitted()])
    result = trainer.fit()
    assert trainer.budget_fit is not None and trainer.budget_fit["nominal_steps"] == 6000
    assert result.steps == trainer.total_steps < 6000
    # the milestone scaled with the run: half of the fitted length, or, once passed, where a refit found it
    fitted, refits = trainer.budget_fit["fitted_steps"], trainer.budget_fit["refits"]
    milestone = trainer.config.milestones[0]
    halves = [fitted / 2] + [r["total_steps"] / 2 for r in refits]
    assert any(abs(milestone - half) <= 1 for half in halves), (milestone, fitted, refits)


def test_resume_refuses_data_that_changed_since_the_run_started(tmp_path):
    from resnets.weights import CheckpointError

    train(tiny_config(epochs=1), tmp_path / "run", splits=tiny_splits())
    fewer = tiny_splits()
    fewer.train = fewer.train.subset(torch.arange(30))  # images removed (or added) under a fixed normalisation
    with pytest.raises(CheckpointError, match="data changed since the run started"):
        trainer_module.resume(tmp_path / "run", splits=fewer)
    with pytest.raises(CheckpointError, match="trained on 8 px images"):
        trainer_module.resume(tmp_path / "run", splits=tiny_splits(size=12))


def test_time_budget_counts_the_evaluations_left_at_their_measured_cost():
    trainer = Trainer(tiny_config(epochs=None, time_budget=0.05), splits=tiny_splits())
    trainer.fit_time_budget()
    fit = trainer.budget_fit
    assert trainer.steps_per_epoch == 3 and fit["tta_views"] == 1
    # before the final pass (costed apart), a run makes one evaluation per epoch end
    assert trainer._evaluations_left(2) == 0 and trainer._evaluations_left(7) == 2
    trainer.config = trainer.config.replace(eval_every=2)
    assert trainer._evaluations_left(7) == 1 and trainer._evaluations_left(13) == 2
    # the final pass gives the plain and the TTA results: one more view where TTA leaves out the image as is
    for tta, views in (("none", 1), ("flip-translate", 6), ("10crop", 11)):
        trainer.config = trainer.config.replace(tta=tta)
        assert trainer._final_pass_views() == views
    trainer.config = trainer.config.replace(eval_every=1, tta="none")
    # a whole validation pass, once measured, replaces the probe's one-batch estimate
    trainer._note_evaluation_time(0.2)
    trainer._note_evaluation_time(0.2)
    assert fit["eval_seconds"] == 0.2 and fit["final_eval_seconds"] == 0.2
    assert fit["eval_seconds_spent"] == pytest.approx(0.4)
    # step 4 of 20 after 1.4 s, 0.4 of them training at the probe's 0.1 s/step (pace 1) and 1.0 evaluating
    # (the eval time of the test's own fit is set here): 1.51 s of 2.91 are left, 1.31 after the final pass.
    # 12 steps in all leave 8 steps (0.8 s) and evaluations at the ends of epochs 2 and 3 (0.4 s); 13 would
    # need 1.5 s. Counting the evaluations into the pace instead (3.5x the probe) would cut the run to 7 steps.
    fit.update(seconds_by_size={size: 0.1 for size in fit["seconds_by_size"]}, setup_seconds=0.0,
               final_eval_seconds=0.2, fitted_steps=20, eval_seconds_spent=1.0)
    trainer.total_steps, trainer.step, trainer.elapsed = 20, 4, 1.4
    trainer.refit_time_budget()
    assert trainer.total_steps == 12


def test_a_refit_follows_the_length_rank_0_broadcasts(monkeypatch):
    """Each process's clock differs; processes that picked their own lengths would part mid-run."""
    trainer = Trainer(tiny_config(epochs=None, time_budget=0.05), splits=tiny_splits())
    trainer.fit_time_budget()
    proposed = []
    monkeypatch.setattr(trainer.process, "broadcast_int", lambda value: proposed.append(value) or 17)
    trainer.budget_fit.update(setup_seconds=0.0, final_eval_seconds=0.0, eval_seconds=0.0, fitted_steps=20)
    trainer.total_steps, trainer.step, trainer.elapsed = 20, 4, 0.4
    trainer.refit_time_budget()
    assert proposed and proposed[0] != 17  # this process's own answer went to the broadcast
    assert trainer.total_steps == trainer.config.steps == 17 == trainer.schedule.total_steps


class StepClock:
    """Stands in for the trainer's `time` module: its clock moves only when a training step runs, so the time
    budget sees the same pace on a quiet machine and on one whose other jobs eat the cores."""

    def __init__(self, seconds_per_step: float):
        self.now, self.seconds_per_step = 0.0, seconds_per_step

    def perf_counter(self) -> float:
        return self.now

    def count_steps_of(self, trainer: Trainer, monkeypatch) -> None:
        real_step = trainer.train_step

        def step(images, labels):
            self.now += self.seconds_per_step
            return real_step(images, labels)

        monkeypatch.setattr(trainer, "train_step", step)


def test_time_budget_refits_within_an_epoch_as_well_as_at_its_end(monkeypatch):
    """A run of one or two epochs must still be corrected when the machine slows down mid-epoch."""
    clock = StepClock(seconds_per_step=0.25)  # a machine of fixed pace: the test does not depend on this one's load
    monkeypatch.setattr(trainer_module, "time", clock)
    trainer = Trainer(tiny_config(epochs=None, time_budget=0.2, batch_size=4), splits=tiny_splits())
    clock.count_steps_of(trainer, monkeypatch)
    calls = []
    real_refit = trainer.refit_time_budget

    def record(progress=None):
        calls.append((trainer.step, trainer.batch_in_epoch))
        return real_refit(progress)

    monkeypatch.setattr(trainer, "refit_time_budget", record)
    trainer.fit()
    spe = trainer.steps_per_epoch  # 9 batches of 4: re-fits after every 2nd step of an epoch, and at its end
    assert spe == 9 and trainer.budget_fit is not None
    assert trainer.budget_fit["step_seconds"] == 0.25 and trainer.total_steps > 2 * spe  # several epochs fitted
    mid_epoch = [(step, batch) for step, batch in calls if batch]  # the epoch end has reset its batch count
    assert mid_epoch and all(step % 2 == 0 and batch < spe for step, batch in mid_epoch)
    assert any(batch == 0 and step % spe == 0 for step, batch in calls)  # the epoch-end re-fit is still there


def test_a_resumed_time_budget_keeps_its_fit_and_refits(tmp_path):
    """last.pt carries the budget's fit through a weights-only load, so a resumed run re-fits to what is left."""
    trainer = Trainer(tiny_config(epochs=None, time_budget=1.0, schedule="step", milestones=[1, 2],
                                  milestone_unit="epochs", warmup=1, warmup_unit="epochs"), tmp_path / "run", splits=tiny_splits())
    trainer.fit_time_budget()
    trainer.step, trainer.elapsed = 2, 0.5
    trainer._prepare_run_dir()
    trainer.save_last()
    resumed = Trainer(trainer.config, tmp_path / "run", splits=tiny_splits())
    resumed.load_training_state(load_training_checkpoint(tmp_path / "run" / "last.pt"))
    assert resumed.budget_fit == trainer.budget_fit
    first, again = trainer._fitted_schedule, resumed._fitted_schedule
    assert (again.total_steps, again.milestones, again.warmup_steps) == (first.total_steps, first.milestones,
                                                                         first.warmup_steps)
    assert [again(s) for s in range(first.total_steps)] == [first(s) for s in range(first.total_steps)]
    resumed.budget_fit.update(setup_seconds=0.0, final_eval_seconds=0.0, fitted_steps=100)
    resumed.total_steps, resumed.elapsed = 100, 2.0  # 1 s/step at step 2: far slower than fitted -> shrink
    resumed.refit_time_budget()
    assert resumed.total_steps < 100 and resumed.budget_fit["refits"]

def test_callbacks_and_param_group_override_are_used():
    seen = {"batches": 0, "backward": 0, "epochs": []}

    class Spy(Callback):
        def on_batch(self, trainer, images, labels):
            seen["batches"] += 1
            return images * 0, labels  # e.g. an adversarial example generator

        def on_after_backward(self, trainer):
            seen["backward"] += int(all(p.grad is not None for p in trainer.model.fc.parameters()))

        def on_epoch_end(self, trainer, record):
            seen["epochs"].append(record["epoch"])

    def head_only(model):  # fine-tuning style groups: the head at 10x
        return [{"params": list(model.fc.parameters()), "lr_scale": 10.0, "name": "head"}]

    trainer = Trainer(tiny_config(), splits=tiny_splits(), callbacks=[Spy()], param_groups=head_only)
    body = weights(trainer.model)
    trainer.fit()
    assert seen == {"batches": 6, "backward": 6, "epochs": [0, 1]}
    changed = {k for k, v in trainer.model.state_dict().items() if not torch.equal(v, body[k]) and v.is_floating_point()}
    assert {"fc.weight", "fc.bias"} <= changed and "conv1.weight" not in changed
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.lr * 10)


def test_tensorboard_writer_gets_each_epoch_when_installed(tmp_path, monkeypatch):
    import sys
    import types

    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, key, value, step):
            scalars.append((key, step))

        def flush(self):
            pass

        def close(self):
            scalars.append(("closed", None))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    train(tiny_config(tensorboard=True), tmp_path, splits=tiny_splits())
    assert ("train_loss", 3) in scalars and ("val_top1", 6) in scalars and scalars[-1] == ("closed", None)


def test_compiled_training_step_learns_as_eager_does():
    """``compile=true`` trains the same model under torch.compile (Inductor on the CPU here): the losses it
    reports follow eager's and the weights land close (kernels differ, so not bitwise); the saved and
    evaluated model is the plain module, not the compiled wrapper."""
    eager = train(tiny_config(seed=3), splits=tiny_splits())
    compiled = train(tiny_config(seed=3, compile=True), splits=tiny_splits())
    for a, b in zip(eager.history, compiled.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
    flat = [torch.cat([v.flatten() for v in weights(run.model).values() if v.is_floating_point()])
            for run in (eager, compiled)]
    assert (flat[0] - flat[1]).norm() < 0.01 * flat[0].norm()  # measured: 0.4% after 6 steps
    assert not hasattr(compiled.model, "_orig_mod") and compiled.config.compile_mode == "default"


def test_precision_auto_is_bf16_only_where_native_and_emulated_bf16_warns(monkeypatch):
    import resnets.precision
    from resnets.precision import autocast_context, native_bf16

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(resnets.precision, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(resnets.precision, "bf16_speedup", lambda device="cpu": 2.2)  # an AMD EPYC's, measured
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        assert native_bf16("cpu") is native
        trainer = Trainer(tiny_config(precision="auto"), splits=tiny_splits())
        assert trainer.config.precision == ("bf16" if native else "fp32")  # what runs, and what the run records
        with autocast_context("cpu", "auto"):  # evaluation given an unresolved "auto" does the same
            assert torch.is_autocast_enabled("cpu") is native
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        Trainer(tiny_config(precision="bf16"), splits=tiny_splits())


def test_precision_auto_stays_fp32_where_native_bf16_is_slower(monkeypatch):
    """An Intel Xeon with AVX-512 BF16 but no AMX runs bf16 slower than fp32 (a matmul at 0.62x, resnet20's
    training at 0.71x), so ``auto`` must not take native bf16 for fast bf16; asking for bf16 there warns. Another
    CPU whose timed matmul is slow is treated alike."""
    import resnets.precision

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(resnets.precision, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.setattr(resnets.precision, "bf16_speedup", lambda device="cpu": 0.62)
    assert resnets.precision.native_bf16("cpu") and not resnets.precision.bf16_is_faster("cpu")
    assert Trainer(tiny_config(precision="auto"), splits=tiny_splits()).config.precision == "fp32"
    with pytest.warns(UserWarning, match="0.62x fp32's speed"):
        Trainer(tiny_config(precision="bf16"), splits=tiny_splits())


def test_an_intel_cpu_without_amx_keeps_fp32_without_a_timing_race(monkeypatch):
    # timed on a busy 2-core Xeon the ratio ranged 0.37-1.31x: 1 process in 12 chose bf16, and two runs of one
    # command (or two ranks of one run) trained in different precisions
    import resnets.precision

    def must_not_time(device="cpu"):
        raise AssertionError("timed a CPU whose answer is known")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(resnets.precision, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(resnets.precision, "bf16_speedup", must_not_time)
    for amx in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert resnets.precision.resolve_precision("auto", "cpu") == ("bf16" if amx else "fp32")


def test_bf16_speedup_times_this_cpu_once(monkeypatch):
    import resnets.precision
    from resnets.precision import bf16_is_faster, bf16_speedup, native_bf16

    with pytest.raises(ValueError, match="not a CPU"):
        bf16_speedup("cuda")
    if native_bf16("cpu"):
        ratio = bf16_speedup("cpu")
        assert 0.05 < ratio < 20 and bf16_speedup("cpu") == ratio  # a real timing, cached for the process
    else:  # emulated bf16 would take seconds to time, and the answer is known: never timed there
        def must_not_time(device="cpu"):
            raise AssertionError("bf16_speedup timed emulated bf16")

        monkeypatch.setattr(resnets.precision, "bf16_speedup", must_not_time)
        assert not bf16_is_faster("cpu")


def test_grad_checkpointing_trains_to_the_same_weights():
    runs = [train(tiny_config(seed=3, grad_checkpointing=flag, model_options={"drop_path_rate": 0.1}),
                  splits=tiny_splits()) for flag in (False, True)]
    assert runs[1].model.grad_checkpointing and not runs[0].model.grad_checkpointing
    a, b = (weights(r.model) for r in runs)
    for key in a:  # BatchNorm statistics included: the recompute in backward must not update them again
        assert torch.allclose(a[key].float(), b[key].float(), rtol=0, atol=1e-5), key
    from resnets.train import ProcessContext
    with pytest.raises(ConfigError, match="sync_bn"):
        Trainer(tiny_config(grad_checkpointing=True, sync_bn=True), splits=tiny_splits(),
                process=ProcessContext(rank=0, world_size=2))
    with pytest.raises(ConfigError, match="set_grad_checkpointing"):
        Trainer(tiny_config(grad_checkpointing=True), splits=tiny_splits(), model=nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)))


def test_a_schedule_the_run_cannot_reach_is_warned_about():
    """A recipe's milestones or warm-up kept while the run was shortened would leave the rate where it never
    should stay: say so before training."""
    with pytest.warns(UserWarning, match=r"milestones \[3, 9\] \(steps\) lie at or beyond the run's end \(6 steps\)"):
        Trainer(tiny_config(schedule="step", milestones=[3, 9], milestone_unit="steps"), splits=tiny_splits())
    with pytest.warns(UserWarning, match=r"warm-up \(9 steps\) is as long as the run or longer \(6 steps\)"):
        Trainer(tiny_config(schedule="cosine", warmup=3, warmup_unit="epochs"), splits=tiny_splits())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(tiny_config(schedule="cosine", warmup=1, warmup_unit="epochs"), splits=tiny_splits())


def test_every_training_seed_is_validated_on_the_same_held_out_images(tmp_path, monkeypatch):
    """The hold-out followed the training seed, so runs of seeds 0/1/2 were scored on different images."""
    from resnets.data import make_image_folder
    from resnets.train import resolve_config

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=10, size=8)
    held_out = []
    for seed in (0, 1):
        config = resolve_config(None, {"data": str(data), "epochs": 1, "val_split": 0.3, "seed": seed, "batch_size": 4})
        assert config.split_seed == 0 and config.held_out_seed == 0
        held_out.append(Trainer(config).splits.val.images.clone())
    assert torch.equal(*held_out)
    # a config written before split_seed existed (a run to resume) keeps the hold-out its seed chose
    old = TrainConfig.from_dict({"data": str(data), "epochs": 1, "val_split": 0.3, "seed": 1, "batch_size": 4})
    assert old.split_seed is None and old.held_out_seed == 1
    assert not torch.equal(Trainer(old).splits.val.images, held_out[0])


def test_resuming_on_another_number_of_processes_is_refused(tmp_path):
    # resumed on 1 process, a 2-process run halved its rate and kept its step count: it ended an epoch early
    from resnets.train.process import ProcessContext
    from resnets.train.trainer import resume
    from resnets.weights import CheckpointError

    class StopAfterOneEpoch(Callback):
        def on_epoch_end(self, trainer, record):
            raise KeyboardInterrupt

    trainer = Trainer(tiny_config(epochs=3), tmp_path, splits=tiny_splits(), process=ProcessContext(rank=0, world_size=2),
                      callbacks=[StopAfterOneEpoch()])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    with pytest.raises(CheckpointError, match="trained on 2 process\\(es\\) and is resumed on 1.*--nproc 2"):
        resume(tmp_path, splits=tiny_splits())
