"""`resnets train` argument errors are one-line user errors; recipes load, validate and state accuracy."""

from __future__ import annotations

import pytest

from resnets.cli import main
from resnets.train import ConfigError, list_recipes, load_recipe, parse_set, resolve_config


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("argv, words", [
    (["--recipe", "cifar-fats"], "unknown recipe 'cifar-fats'. Did you mean cifar-fast"),
    (["--recipe", "cifar-fast", "--model", "resnet21"], "unknown model 'resnet21'"),
    (["--recipe", "cifar-fast", "--set", "learning_rate=0.1"], "unknown training option 'learning_rate'"),
    (["--recipe", "cifar-fast", "--set", "lr"], "must look like key=value"),
    (["--recipe", "cifar-fast", "--set", "augment.flop=true"], "unknown augment option"),
    (["--recipe", "cifar-fast", "--set", "schedule=linear"], "schedule='linear' is unknown"),
    (["--recipe", "cifar-fast", "--set", "batch_size=many"], "batch_size='many'"),
    (["--recipe", "cifar-fast", "--data", "/nonexistent/images", "--no-progress"], "no dataset at /nonexistent/images"),
    (["--resume", "/nonexistent/run"], "no training checkpoint at"),
    (["--recipe", "cifar-fast", "--set", "compile_mode=fast"], "compile_mode='fast' is unknown"),
    (["--recipe", "cifar-fast", "--compile", "reduce-overhead"], "set progressive_min_size=null"),
    (["--recipe", "cifar-fast", "--set", "workers=-2"], "workers=-2 must be >= 0"),
    (["--recipe", "cifar-fast", "--set", "eval_batch_size=0"], "eval_batch_size=0 must be at least 1"),
    (["--recipe", "cifar-fast", "--epochs", "2", "--set", "steps=50"], "--epochs 2 and steps=50 both set the run"),
    (["--recipe", "he2015-cifar", "--epochs", "2", "--steps", "50"], "--epochs 2 and steps=50 both set the run"),
    (["--recipe", "cifar-fast", "--set", "epochs=.inf"], "epochs=inf must be a finite number"),
    (["--recipe", "cifar-fast", "--set", "augment.flip=1"], "augment.flip must be true, false or 'alternate', not 1"),
    (["--recipe", "cifar-fast", "--set", "lr=.nan"], "lr=nan must be a finite number"),
    (["--recipe", "he2015-cifar", "--set", "milestones=[1, .inf]"], "must be a finite number"),
])
def test_user_errors_are_one_line_with_exit_2(capsys, argv, words):
    code, err = run_cli(capsys, "train", *argv)
    assert code == 2
    assert words in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_dataset_smaller_than_one_batch_is_a_user_error(capsys, tmp_path, monkeypatch):
    from resnets.data import make_image_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6, size=8)
    code, err = run_cli(capsys, "train", "--model", "resnet20", "--data", str(data), "--epochs", "1",
                        "--batch-size", "64", "--no-progress")
    assert code == 2 and "make no full batch of 64: lower the batch size (--batch-size)" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_every_shipped_recipe_resolves_and_states_its_expected_accuracy():
    assert {"he2015-cifar", "cifar-fast", "imagenet", "imagenette"} <= set(list_recipes())
    for name in list_recipes():
        config = resolve_config(name)
        assert config.recipe == name and "%" in config.expected and config.description
    he = resolve_config("he2015-cifar")
    assert (he.batch_size, he.lr, he.steps, he.milestones, he.weight_decay, he.momentum) == (
        128, 0.1, 64000, [32000, 48000], 1e-4, 0.9)
    assert he.augment == {"crop_padding": 4, "pad_mode": "zeros", "flip": True} and he.val_split == 5000
    imagenet = resolve_config("imagenet", {"batch_size": 1024})
    assert imagenet.base_lr == pytest.approx(0.4) and imagenet.milestones == [30, 60, 80]


def test_a_recipe_can_extend_another_and_state_its_own_accuracy(tmp_path):
    (tmp_path / "base.yaml").write_text("description: base\nexpected: 50%\nepochs: 4\nlr: 0.3\n"
                                        "augment: {crop_padding: 4, flip: true}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ndescription: child\nexpected: 60%\nlr: 0.1\n"
                                         "augment: {flip: false}\n")
    (tmp_path / "grandchild.yaml").write_text("extends: child.yaml\nepochs: 2\n")
    child = resolve_config(tmp_path / "child.yaml")
    assert (child.recipe, child.description, child.expected, child.epochs, child.lr) == ("child", "child", "60%", 4, 0.1)
    assert child.augment == {"crop_padding": 4, "flip": False}  # mappings merge key by key, as --set does
    grandchild = load_recipe(tmp_path / "grandchild.yaml")
    assert grandchild["epochs"] == 2 and grandchild["lr"] == 0.1 and grandchild["recipe"] == "grandchild"
    assert "expected" not in grandchild  # a variant states its own accuracy or none
    shipped = tmp_path / "shipped.yaml"
    shipped.write_text("extends: he2015-cifar\nsteps: 100\n")
    assert resolve_config(shipped).milestones == [32000, 48000] and resolve_config(shipped).steps == 100

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself through a -> b -> a"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "missing.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml' does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "typo.yaml").write_text("extends: base.yaml\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown training option 'learning_rate'"):
        load_recipe(tmp_path / "typo.yaml")


def test_resume_refuses_flags_it_would_ignore_and_takes_the_checkpoint_path(capsys, tmp_path, monkeypatch):
    from resnets.data import make_image_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=8, size=8)
    run = tmp_path / "run"
    new_run = ["train", "--model", "resnet20", "--data", str(data), "--epochs", "1", "--batch-size", "4",
               "--no-progress", "--out", str(run)]
    assert run_cli(capsys, *new_run)[0] == 0
    code, err = run_cli(capsys, "train", "--resume", str(run), "--epochs", "3", "--lr", "0.5")
    assert code == 2 and "drop --epochs, --lr" in err and "Traceback" not in err
    code, err = run_cli(capsys, *new_run)
    assert code == 2 and "already holds a run" in err and f"--resume {run}" in err
    code, err = run_cli(capsys, "train", "--resume", str(run / "last.pt"), "--no-progress")
    assert code == 0, err  # the finished run resumes to its end at once


def test_finetune_into_a_run_folder_is_refused_before_it_writes_anything(capsys, tmp_path, monkeypatch):
    from resnets.data import make_image_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=8, size=8)
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--model", "resnet20", "--data", str(data), "--epochs", "1", "--batch-size", "4",
                   "--no-progress", "--out", str(run))[0] == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, err = run_cli(capsys, "finetune", "--from", str(run / "best.safetensors"), "--data", str(data),
                        "--epochs", "1", "--batch-size", "4", "--out", str(run))
    assert code == 2 and err.count("\n") == 1 and "writing there would destroy it" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "finetune.yaml").write_text("an earlier fine-tuning's record")
    code, err = run_cli(capsys, "finetune", "--from", str(run / "best.safetensors"), "--data", str(data),
                        "--epochs", "1", "--batch-size", "4", "--out", str(other))
    assert code == 2 and "already holds a run (finetune.yaml)" in err
    assert (other / "finetune.yaml").read_text() == "an earlier fine-tuning's record"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("argv, words", [
    (["--batch-size", "0"], "argument --batch-size: 0 is not a positive whole number"),
    (["--epochs", "-1"], "argument --epochs: -1 is not a positive finite number"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--workers", "-1"], "argument --workers: -1 is negative"),
])
def test_bad_numbers_and_devices_fail_at_parse_time(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "cifar-fast", *argv])
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_an_unwritable_or_blocked_output_is_one_line(capsys, tmp_path, monkeypatch):
    from resnets.data import make_image_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=8, size=8)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, "train", "--model", "resnet20", "--data", str(data), "--epochs", "1",
                        "--batch-size", "4", "--no-progress", "--out", str(blocker / "run"))
    assert code == 2 and "a file is in the way" in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_binary_file_as_recipe_is_a_one_line_error(capsys, tmp_path):
    image = tmp_path / "photo.yaml"
    image.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    code, err = run_cli(capsys, "train", "--recipe", str(image))
    assert code == 2 and "is not a text file" in err and "Traceback" not in err


def test_set_overrides_merge_and_type_check():
    overrides = parse_set(["lr=0.2", "augment.cutout_size=8", "model_options.drop_path_rate=0.1", "tta=flip"])
    config = resolve_config("cifar-fast", overrides)
    assert config.lr == 0.2 and config.augment["cutout_size"] == 8 and config.augment["crop_padding"] == 2
    assert config.model_options == {"drop_path_rate": 0.1} and config.tta == "flip"
    with pytest.raises(ConfigError, match="did you mean 'label_smoothing'"):
        parse_set(["label_smothing=0.1"])
    assert load_recipe("he2015-cifar")["steps"] == 64000


def test_normalization_takes_a_name_or_a_mean_std_pair():
    """prune and distill carry a folder-trained checkpoint's own (mean, std) into their training config."""
    pair = [[0.5, 0.4, 0.3], [0.2, 0.2, 0.25]]
    assert resolve_config("cifar-fast", {"normalization": pair}).normalization == pair
    assert resolve_config("cifar-fast", parse_set(["normalization=[[0.5,0.4,0.3],[0.2,0.2,0.25]]"])).normalization == pair
    assert resolve_config("cifar-fast", {"normalization": "imagenet"}).normalization == "imagenet"
    for bad in ([[0.5, 0.4], [0.2, 0.2]], [[0.5, 0.4, 0.3], [0.2, 0.0, 0.2]], [0.5, 0.2]):
        with pytest.raises(ConfigError, match="normalization="):
            resolve_config("cifar-fast", {"normalization": bad})


def test_a_run_saved_before_an_option_was_retired_still_loads():
    """Resuming an older run must not fail on an option it set to 'off'; a live value is refused, not dropped."""
    from resnets.train import TrainConfig
    saved = {**resolve_config("he2015-cifar").to_dict(), "bias_lr_scale": 1.0}
    assert TrainConfig.from_dict(saved).lr == 0.1
    with pytest.raises(ConfigError, match="bias_lr_scale=2.0 .* no longer supported.*norm_lr_scale"):
        TrainConfig.from_dict({**saved, "bias_lr_scale": 2.0})


def test_compile_flag_takes_an_optional_mode():
    from resnets.cli import build_parser
    from resnets.cli.train import _overrides

    parser = build_parser()
    plain = _overrides(parser.parse_args(["train", "--recipe", "he2015-cifar", "--compile"]))
    graphs = _overrides(parser.parse_args(["train", "--recipe", "he2015-cifar", "--compile", "reduce-overhead"]))
    assert (plain["compile"], plain["compile_mode"]) == (True, "default")
    assert (graphs["compile"], graphs["compile_mode"]) == (True, "reduce-overhead")
    assert "compile" not in _overrides(parser.parse_args(["train", "--recipe", "he2015-cifar"]))
    assert resolve_config("he2015-cifar", graphs).compile_mode == "reduce-overhead"


def test_grad_checkpointing_flag_sets_the_option():
    from resnets.cli import build_parser
    from resnets.cli.train import _overrides

    parser = build_parser()
    on = _overrides(parser.parse_args(["train", "--recipe", "he2015-cifar", "--model", "resnet1202",
                                       "--grad-checkpointing"]))
    assert resolve_config("he2015-cifar", on).grad_checkpointing is True
    assert "grad_checkpointing" not in _overrides(parser.parse_args(["train", "--recipe", "he2015-cifar"]))


def test_finetune_default_warm_up_leaves_a_short_run_room_to_decay():
    """A 1-epoch fine-tune with the old fixed 1-epoch warm-up spent every step warming up and never decayed."""
    from resnets.cli import build_parser
    from resnets.cli.finetune import _warmup_epochs

    def warmup(*flags: str) -> float:
        return _warmup_epochs(build_parser().parse_args(["finetune", "--from", "x", "--data", "y", "--out", "z",
                                                         *flags]))

    assert warmup() == 1.0  # 10 epochs by default: one to warm up, as before
    assert warmup("--epochs", "1") == 0.2 and warmup("--epochs", "3") == pytest.approx(0.6)
    assert warmup("--epochs", "1", "--warmup-epochs", "1") == 1.0  # asked for: kept (and the trainer warns)


def test_a_run_folder_inside_the_data_folder_is_refused(capsys, tmp_path, monkeypatch):
    # the run itself trained, but its folder became a class: neither a new run nor its resume could read the data
    from resnets.data import make_image_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6, size=8)
    code, err = run_cli(capsys, "train", "--model", "resnet20", "--data", str(data), "--epochs", "1",
                        "--out", str(data / "runs" / "r1"), "--no-progress")
    assert code == 2 and "is inside the data folder" in err and "Traceback" not in err
    assert sorted(p.name for p in data.iterdir()) == ["class_0", "class_1"]


def test_epochs_set_as_an_option_replaces_a_recipes_steps():
    # `--set epochs=1` on he2015-cifar (64,000 steps) started a 64,000-step run without a word
    assert resolve_config("he2015-cifar", {"epochs": 1}).steps is None
    assert resolve_config("imagenet", {}).warmup == 5 and resolve_config("imagenet", {}).warmup_unit == "epochs"
    # Goyal et al.'s gradual warm-up starts at the reference batch's rate: none at 256, 0.1 -> 0.4 at 1024
    from resnets.train.optim import LRSchedule

    for batch, start in ((256, 1.0), (1024, 0.25)):
        config = resolve_config("imagenet", {"batch_size": batch})
        assert LRSchedule.from_config(config, 100, 9000)(0) == pytest.approx(start)
    with pytest.raises(ConfigError, match="warmup_start='high' in recipe imagenet: give a factor in \\[0, 1\\], or 'lr'"):
        resolve_config("imagenet", {"warmup_start": "high"})
    with pytest.raises(ConfigError, match="epochs=1 and steps=5 both set the run length"):
        resolve_config("he2015-cifar", {"epochs": 1, "steps": 5})


def test_resume_and_recipe_paths_of_the_wrong_kind_say_what_they_are(capsys, tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.safetensors").write_bytes(b"weights")
    (tmp_path / "run" / "last.pt").write_text("hello, not a checkpoint")
    for argv, words in ((["--recipe", str(tmp_path / "recipes")], "is a folder; pass a recipe .yaml file"),
                        (["--resume", str(tmp_path / "run" / "best.safetensors")],
                         "is a file; resuming takes the run folder that holds last.pt"),
                        (["--resume", str(tmp_path / "run")], "not a PyTorch file (first bytes b'hello, n')")):
        code, err = run_cli(capsys, "train", *argv)
        assert code == 2 and words in err, argv


def test_finetune_refuses_a_warm_up_as_long_as_the_run_and_export_calibration_without_int8(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    code, err = run_cli(capsys, "finetune", "--from", "resnet18.IMAGENET1K_V1", "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "ft"), "--epochs", "1", "--warmup-epochs", "5")
    assert code == 2 and "--warmup-epochs 5 is not shorter than --epochs 1" in err
    code, err = run_cli(capsys, "export", "--checkpoint", "x.safetensors", "--format", "onnx",
                        "--calib-data", str(tmp_path))
    assert code == 2 and "--calib-data calibrates an int8 export; add --int8" in err


def test_a_val_split_that_a_val_tree_would_replace_is_refused(capsys, tmp_path, monkeypatch):
    # with DIR/val/ present, load_data validates on it and drops val_split: asking for both trained without a word
    from resnets.data import make_split_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_split_folder(tmp_path / "data", classes=2, train_per_class=6, val_per_class=2, size=8)
    for how in (["--val-split", "0.2"], ["--set", "val_split=0.2"]):
        code, err = run_cli(capsys, "train", "--model", "resnet20", "--data", str(data), "--epochs", "1", *how,
                            "--out", str(tmp_path / "run"), "--no-progress")
        assert code == 2 and "has a val/ tree, which is the validation set" in err and str(data / "train") in err
        assert not (tmp_path / "run").exists()


def test_a_relative_data_path_is_recorded_absolute_so_a_resume_can_start_elsewhere(capsys, tmp_path, monkeypatch):
    import yaml

    from resnets.data import make_image_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "work" / "data", classes=2, per_class=6, size=8)
    monkeypatch.chdir(tmp_path / "work")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet20", "--data", "data", "--epochs", "1", "--batch-size", "4",
                 "--out", str(run), "--no-progress", "--set", "workers=0"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(tmp_path / "work" / "data")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err


def test_command_records_keep_existing_paths_absolute_and_leave_other_words_alone(tmp_path, monkeypatch):
    import argparse

    from resnets.cli.resuming import recorded_args

    (tmp_path / "data").mkdir()
    (tmp_path / "train").mkdir()  # a folder that happens to share its name with --bn's value
    monkeypatch.chdir(tmp_path)
    record = recorded_args(argparse.Namespace(data="data", bn="train", source="resnet50.IMAGENET1K_V2",
                                              func=print, parser=None, resume=None))
    assert record == {"data": str(tmp_path / "data"), "bn": "train", "source": "resnet50.IMAGENET1K_V2"}


def test_another_model_than_the_recipes_does_not_inherit_its_model_options():
    # cifar-fast-muon narrows resnet_airbench_narrow to 32/128/128: --model resnet20 became a 1.7M-parameter net
    assert resolve_config("cifar-fast-muon", {}).model_options == {"widths": [32, 128, 128]}
    assert resolve_config("cifar-fast-muon", {"model": "resnet20"}).model_options == {}
    kept = resolve_config("cifar-fast-muon", {"model": "resnet_airbench", "model_options": {"drop_path_rate": 0.1}})
    assert kept.model_options == {"drop_path_rate": 0.1}
