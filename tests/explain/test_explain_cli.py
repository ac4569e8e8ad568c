"""The explain/robustness/calibrate/experiment/report commands end to end on tiny data."""

import json

import pytest
import torch

from resnets import create_model, save_weights
from resnets.cli import main
from resnets.data import make_image_folder
from resnets.weights import read_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


CLASSES = ["class_0", "class_1", "class_2"]


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=6, size=16)
    ckpt = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp_path / "m.safetensors",
                        {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 16,
                         "config": {"val_split": 0.5, "seed": 0}})
    return tmp_path, data, ckpt


def test_robustness_calibrate_gradcam_report(setup, capsys):
    tmp, data, ckpt = setup
    run = tmp / "run"
    assert main(["robustness", "--checkpoint", str(ckpt), "--data", str(data), "--steps", "2", "--eps", "0,8/255",
                 "--corruptions", "fog,jpeg_compression", "--out", str(run)]) == 0
    rob = json.loads((run / "robustness_pgd_linf.json").read_text())
    assert rob["samples"] == 18 and rob["epsilons"] == [0, 8 / 255]
    corr = json.loads((run / "corruptions.json").read_text())
    assert set(corr["accuracy"]) == {"fog", "jpeg_compression"} and len(corr["accuracy"]["fog"]) == 5
    before = ckpt.read_bytes()  # 9 validation images: the fit is reported, but never stored
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--store", "--out", str(run)]) == 2
    assert "fitted on 9 validation image(s), fewer than the 50" in capsys.readouterr().err
    assert ckpt.read_bytes() == before and "temperature" not in read_checkpoint(ckpt).metadata
    calibration = json.loads((run / "calibration.json").read_text())
    assert "temperature" in calibration and "fitted on (the scaled figures are optimistic)" in calibration["evaluated_on"]
    assert (run / "reliability.png").stat().st_size > 1000
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(data / "class_1"), "--class", "class_2",
                 "--out", str(run / "gradcam")]) == 0
    rows = json.loads((run / "gradcam" / "gradcam.json").read_text())
    assert len(rows) == 6 and all(r["explained_class"] == "class_2" for r in rows)
    assert main(["report", str(run)]) == 0
    text = (run / "report.html").read_text()
    assert "Grad-CAM gallery" in text and "Calibration" in text and "Corruptions" in text


def test_outputs_never_replace_a_baseline_a_figure_or_the_data(setup, capsys):
    tmp, data, ckpt = setup
    run = tmp / "run"
    run.mkdir()
    baseline, figure = run / "corruptions.json", run / "reliability.png"
    baseline.write_text('{"a": "baseline model"}')
    figure.write_bytes(b"a figure of the run")
    assert main(["robustness", "--checkpoint", str(ckpt), "--data", str(data), "--corruptions", "fog",
                 "--baseline", str(baseline), "--out", str(run)]) == 2
    assert "is the corruptions.json this run would write" in capsys.readouterr().err
    assert main(["report", str(run), "--screenshot", str(figure)]) == 2
    assert "is a figure of the run the report shows" in capsys.readouterr().err
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(data), "--out", str(data / "class_1")]) == 2
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(data / "cal")]) == 2
    assert capsys.readouterr().err.count("the image folder this command reads") == 2
    assert baseline.read_text() == '{"a": "baseline model"}' and figure.read_bytes() == b"a figure of the run"
    assert sorted(p.name for p in data.iterdir()) == CLASSES and not (run / "report.html").exists()


def test_gradflow_and_experiment_commands(setup):
    tmp, data, _ = setup
    out = tmp / "flow"
    assert main(["explain", "gradflow", "--model", "plain20,resnet20", "--steps", "1", "--batch-size", "4",
                 "--image-size", "16", "--out", str(out)]) == 0
    flow = json.loads((out / "gradflow.json").read_text())
    assert [len(v) for v in flow.values()] == [2, 2] and (out / "gradflow.png").exists()
    exp = tmp / "exp"
    assert main(["experiment", "degradation", "--data", str(data), "--depths", "8", "--out", str(exp),
                 "--budget", "epochs=1,batch_size=4,log_points=2,train_subset=all,val_subset=all"]) == 2  # no plain8
    assert main(["experiment", "degradation", "--data", str(data), "--depths", "20", "--out", str(exp),
                 "--budget", "epochs=1,batch_size=4,log_points=2,train_subset=all,val_subset=all,bf16=0"]) == 0
    result = json.loads((exp / "degradation.json").read_text())
    assert set(result["final"]) == {"plain20", "resnet20"} and (exp / "degradation.png").exists()


def test_user_errors_are_one_line(setup, capsys):
    tmp, data, ckpt = setup
    assert main(["robustness", "--checkpoint", str(ckpt), "--data", str(data), "--eps", "eight"]) == 2
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(tmp / "missing.jpg"), "--out", str(tmp)]) == 2
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(data), "--class", "zebra", "--out", str(tmp)]) == 2
    assert main(["report", str(tmp / "nothing")]) == 2
    assert main(["explain", "gradflow", "--model", "resnet20", "--data", str(data), "--num-classes", "5",
                 "--out", str(tmp / "flow")]) == 2
    err = capsys.readouterr().err
    assert "--num-classes 5 applies to random batches" in err
    assert "fractions like 8/255" in err and "does not exist" in err and "unknown class 'zebra'" in err


@pytest.mark.parametrize("fitted, stored", [(1.7, True), (196522.0, False), (0.01, False)])
def test_calibrate_stores_only_a_sane_temperature(setup, monkeypatch, capsys, fitted, stored):
    """A temperature outside [0.05, 20] is a broken fit, refused even when enough images were used."""
    import resnets.cli.robustness as robustness
    import resnets.evaluate.calibration as calibration

    tmp, data, ckpt = setup
    monkeypatch.setattr(robustness, "MIN_STORE_IMAGES", 1)
    monkeypatch.setattr(calibration, "fit_temperature", lambda logits, labels: fitted)
    code = main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--store", "--out", str(tmp / "cal")])
    assert code == (0 if stored else 2)
    assert read_checkpoint(ckpt).metadata.get("temperature") == (pytest.approx(fitted) if stored else None)
    if not stored:
        assert "outside [0.05, 20.0]" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--batch-size", "0"], "argument --batch-size: 0 is not a positive whole number"),
    (["calibrate", "--bins", "0"], "argument --bins: "),
    (["calibrate", "--samples", "0"], "argument --samples: "),
    (["robustness", "--samples", "0"], "argument --samples: "),
    (["robustness", "--batch-size", "-1"], "argument --batch-size: "),
    (["robustness", "--device", "gpu7"], "unknown device 'gpu7'"),
    (["eval", "--batch-size", "0"], "argument --batch-size: "),
    (["eval", "--device", "tpu"], "device"),
    (["predict", "--device", "tpu", "x.png"], "device"),
    (["explain", "gradcam", "--image-size", "-3", "x.png", "--out", "o"], "argument --image-size: "),
    (["explain", "gradflow", "--model", "resnet20", "--batch-size", "0", "--out", "o"], "argument --batch-size: "),
    (["explain", "gradflow", "--model", "resnet20", "--num-classes", "0", "--out", "o"], "argument --num-classes: "),
    (["explain", "gradflow", "--model", "resnet20", "--image-size", "0", "--out", "o"], "argument --image-size: "),
    (["experiment", "degradation", "--data", "d", "--out", "o", "--device", "tpu"], "device"),
])
def test_bad_numbers_and_devices_fail_at_parse_time(argv, message, capsys):
    if argv[0] in ("calibrate", "robustness", "eval"):
        argv = [*argv, "--checkpoint", "m.safetensors", "--data", "d"]
    elif argv[0] == "predict":
        argv = [*argv, "--checkpoint", "m.safetensors"]
    elif argv[:2] == ["explain", "gradcam"]:
        argv = [*argv, "--checkpoint", "m.safetensors"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_robustness_refuses_bad_eps_and_baseline(setup, capsys):
    tmp, data, ckpt = setup
    base = ["robustness", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp / "rob")]
    assert main([*base, "--eps", "2/255,,3"]) == 2
    assert "empty item" in capsys.readouterr().err
    assert main([*base, "--eps", "2/255,3"]) == 2
    assert "did you mean 3/255?" in capsys.readouterr().err
    assert main([*base, "--eps=-1/255"]) == 2
    assert ">= 0" in capsys.readouterr().err
    assert main([*base, "--eps", "0,3", "--norm", "l2", "--steps", "1", "--samples", "2"]) == 0  # L2: eps 3 is fine
    assert main([*base, "--eps", "0", "--baseline", str(tmp / "rob" / "robustness_pgd_l2.json")]) == 2
    assert "needs --corruptions" in capsys.readouterr().err
    summary = tmp / "summary.json"
    summary.write_text(json.dumps({"best_top1": 0.5}))
    assert main([*base, "--attack", "none", "--corruptions", "fog", "--baseline", str(summary)]) == 2
    err = capsys.readouterr().err
    assert "is not a corruptions result" in err and "corruptions.json" in err
    assert not (tmp / "rob" / "corruptions.json").exists()  # refused before any work
    assert main([*base, "--out", str(ckpt), "--eps", "0"]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    folder = tmp / "r20"  # a run folder is both the checkpoint and the --out
    folder.mkdir()
    (folder / "best.safetensors").write_bytes(ckpt.read_bytes())
    assert main(["robustness", "--checkpoint", str(folder), "--data", str(data), "--out", str(folder), "--attack",
                 "fgsm", "--eps", "0", "--samples", "2"]) == 0
    assert (folder / "robustness_fgsm_linf.json").exists()


def test_gradflow_checks_checkpoint_classes_against_data(setup, tmp_path, capsys):
    tmp, data, _ = setup
    two = save_weights(create_model("resnet20", num_classes=2, layers=(1, 1, 1)), tmp / "two.safetensors",
                       {"classes": ["class_0", "class_1"]})
    assert main(["explain", "gradflow", "--model", str(two), "--data", str(data), "--batch-size", "4",
                 "--out", str(tmp / "f")]) == 2
    assert "has 2 outputs but --data has 3 classes" in capsys.readouterr().err
    other = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp / "other.safetensors",
                         {"classes": ["a", "b", "c"]})
    assert main(["explain", "gradflow", "--model", str(other), "--data", str(data), "--batch-size", "4",
                 "--out", str(tmp / "f")]) == 2
    assert "trained on classes a, b, c" in capsys.readouterr().err
    assert not (tmp / "f").exists()


def test_gradcam_and_gradflow_refuse_a_file_as_out(setup, capsys):
    tmp, data, ckpt = setup
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(data / "class_1"), "--out", str(ckpt)]) == 2
    assert main(["explain", "gradflow", "--model", "resnet20", "--out", str(ckpt)]) == 2
    assert capsys.readouterr().err.count("is a file; give a folder") == 2


@pytest.mark.parametrize("budget, message", [
    ("epochs=none", "--budget epochs=none: epochs cannot be none; give a number"),
    ("bf16=maybe", "--budget bf16='maybe': use 1 or 0"),
    ("channels_last=perhaps", "--budget channels_last='perhaps': use 1 or 0"),
    ("epochs=x", "--budget epochs='x' is not a number"),
    ("batch_size=0", "--budget batch_size=0: needs a whole number >= 1"),
])
def test_experiment_refuses_bad_budgets_and_depths(setup, capsys, budget, message):
    tmp, data, _ = setup
    assert main(["experiment", "degradation", "--data", str(data), "--out", str(tmp / "e"), "--budget", budget]) == 2
    assert message in capsys.readouterr().err
    assert main(["experiment", "degradation", "--data", str(data), "--out", str(tmp / "e"), "--depths", "x"]) == 2
    assert "'x' is not a depth" in capsys.readouterr().err


def test_experiment_names_a_damaged_record_and_the_budget_batch_size(setup, capsys):
    tmp, data, _ = setup
    out = tmp / "exp"
    out.mkdir()
    (out / "degradation.json").write_text("{not json")
    argv = ["experiment", "degradation", "--data", str(data), "--depths", "20", "--out", str(out), "--budget",
            "epochs=1,batch_size=4,train_subset=all,val_subset=all,bf16=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{out / 'degradation.json'} is damaged" in err and "not overwritten" in err
    assert (out / "degradation.json").read_text() == "{not json"
    record = json.dumps({"budget": {"epochs": 3.0}, "data": {}, "runs": {"plain20": []}, "final": {}})
    (out / "degradation.json").write_text(record)  # twins of another budget are kept, not replaced
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "records twins trained with another budget" in err and "epochs 3.0 -> 1.0" in err
    assert (out / "degradation.json").read_text() == record
    argv[-1] = "epochs=1,batch_size=512,train_subset=all,val_subset=all,bf16=0"
    argv[argv.index("--out") + 1] = str(tmp / "exp2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--budget batch_size=N" in err and "--batch-size" not in err


def test_gradcam_and_robustness_take_a_grayscale_checkpoint(setup, capsys):
    """A 1-channel model reads the RGB images as grey, as `resnets eval` does, not 'create it with in_chans=3'."""
    from resnets.evaluate import load_for_inference
    from resnets.evaluate.robustness import pixel_model_from_checkpoint

    tmp, data, _ = setup
    gray = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1), in_chans=1),
                        tmp / "gray.safetensors", {"classes": CLASSES, "mean": [0.5], "std": [0.25], "image_size": 16})
    assert main(["explain", "gradcam", "--checkpoint", str(gray), str(data / "class_0"), "--out", str(tmp / "g")]) == 0
    assert main(["robustness", "--checkpoint", str(gray), "--data", str(data), "--steps", "1", "--eps", "0,8/255",
                 "--corruptions", "jpeg_compression", "--samples", "4", "--out", str(tmp / "r")]) == 0
    pixels = torch.rand(2, 3, 16, 16)
    inference = load_for_inference(gray)
    mean, std = torch.tensor(inference.mean).view(1, 3, 1, 1), torch.tensor(inference.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = inference.model((pixels - mean) / std)
        assert torch.allclose(pixel_model_from_checkpoint(str(gray))[0](pixels), expected, atol=1e-5)


@pytest.mark.parametrize("meta, message", [
    ({"classes": ["a", "b"], "mean": [0.5] * 3, "std": [0.25] * 3}, "names 2 classes but its model has 3 outputs"),
    ({"classes": CLASSES, "mean": [0.5], "std": [0.25] * 3}, "one mean and one positive std per channel"),
    ({"classes": CLASSES, "mean": [0.5] * 3, "std": [0.0, 0.25, 0.25]}, "one mean and one positive std per channel"),
])
def test_gradcam_and_robustness_name_metadata_that_does_not_fit_the_model(setup, capsys, meta, message):
    tmp, data, _ = setup
    bad = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp / "bad.safetensors", meta)
    assert main(["explain", "gradcam", "--checkpoint", str(bad), str(data / "class_0"), "--out", str(tmp / "g")]) == 2
    assert main(["robustness", "--checkpoint", str(bad), "--data", str(data), "--attack", "fgsm", "--eps", "0",
                 "--out", str(tmp / "r")]) == 2
    assert capsys.readouterr().err.count(message) == 2


def test_gradflow_keeps_checkpoints_of_the_same_name_apart_and_takes_run_folders(setup):
    """runA/best.safetensors and runB/best.safetensors were both stored as 'best': the second replaced the first."""
    tmp, _, ckpt = setup
    for run in ("runA", "runB"):
        (tmp / run).mkdir()
        (tmp / run / "best.safetensors").write_bytes(ckpt.read_bytes())
    a, b = str(tmp / "runA" / "best.safetensors"), str(tmp / "runB")
    assert main(["explain", "gradflow", "--model", f"{a},{b},{a}", "--batch-size", "2", "--image-size", "8",
                 "--out", str(tmp / "f")]) == 0
    assert list(json.loads((tmp / "f" / "gradflow.json").read_text())) == ["best", "runB"]
    c = str(tmp / "runB" / "best.safetensors")
    assert main(["explain", "gradflow", "--model", f"{a},{c}", "--batch-size", "2", "--image-size", "8",
                 "--out", str(tmp / "g")]) == 0
    assert list(json.loads((tmp / "g" / "gradflow.json").read_text())) == [a, c]


def test_gradcam_prepares_images_with_the_checkpoints_crop_fraction(setup, tmp_path):
    """A checkpoint's crop_fraction (published weights store one) was ignored: Grad-CAM explained a different crop
    than `resnets predict` classifies."""
    from resnets.data import load_eval_image
    from resnets.evaluate import load_for_inference

    tmp, _, _ = setup
    ckpt = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp / "crop.safetensors",
                        {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 16,
                         "crop_fraction": 0.5})
    image = next((make_image_folder(tmp / "big", classes=1, per_class=1, size=40) / "class_0").iterdir())
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(image), "--no-saliency",
                 "--out", str(tmp / "g")]) == 0
    row = json.loads((tmp / "g" / "gradcam.json").read_text())[0]
    inference = load_for_inference(ckpt)
    mean, std = torch.tensor(inference.mean).view(1, 3, 1, 1), torch.tensor(inference.std).view(1, 3, 1, 1)
    x = load_eval_image(image, 16, inference.crop_fraction)[None].float() / 255
    with torch.no_grad():
        probs = torch.softmax(inference.model((x - mean) / std), 1)[0]
    assert row["probability"] == pytest.approx(float(probs[CLASSES.index(row["explained_class"])]), abs=1e-5)


def test_robustness_and_calibrate_refuse_unnamed_outputs_that_do_not_fit_the_data(setup, capsys):
    """Without class names, 4 folders on a 3-output model scored the 4th class as always wrong, silently."""
    tmp, _, _ = setup
    four = make_image_folder(tmp / "four", classes=4, per_class=3, size=16)
    bare = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp / "bare.safetensors",
                        {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 16})
    assert main(["robustness", "--checkpoint", str(bare), "--data", str(four), "--attack", "fgsm", "--eps", "0",
                 "--out", str(tmp / "r")]) == 2
    assert main(["calibrate", "--checkpoint", str(bare), "--data", str(four), "--out", str(tmp / "r")]) == 2
    assert capsys.readouterr().err.count("stores no class names and has 3 outputs, but") == 2
    assert not (tmp / "r").exists()
    three = make_image_folder(tmp / "three", classes=3, per_class=3, size=16)  # counts agree: runs, and says how
    assert main(["robustness", "--checkpoint", str(bare), "--data", str(three), "--attack", "fgsm", "--eps", "0",
                 "--out", str(tmp / "r3")]) == 0
    assert "class folders are taken as its outputs in sorted order (class_0, class_1, class_2)" in \
        capsys.readouterr().err


def test_robustness_and_calibrate_crop_as_eval_does(setup, monkeypatch):
    """The checkpoint's crop_fraction (which `resnets eval` honours for large, streamed images) was ignored."""
    import resnets.data

    tmp, data, _ = setup
    ckpt = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp / "crop.safetensors",
                        {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 16,
                         "crop_fraction": 0.5, "config": {"val_split": 0.5, "seed": 0}})
    seen, make_loader = [], resnets.data.make_loader
    monkeypatch.setattr(resnets.data, "make_loader",
                        lambda *a, **k: seen.append(k.get("crop_fraction")) or make_loader(*a, **k))
    assert main(["robustness", "--checkpoint", str(ckpt), "--data", str(data), "--attack", "fgsm", "--eps", "0",
                 "--samples", "2", "--out", str(tmp / "r")]) == 0
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp / "r")]) == 0
    assert seen == [0.5, 0.5, 0.5]


def test_robustness_refuses_a_corruption_list_that_names_nothing(setup, capsys):
    tmp, data, ckpt = setup
    assert main(["robustness", "--checkpoint", str(ckpt), "--data", str(data), "--attack", "none",
                 "--corruptions", ",", "--out", str(tmp / "r")]) == 2
    assert "names no corruption" in capsys.readouterr().err


def test_experiment_keeps_twins_when_data_is_spelt_another_way(setup, monkeypatch, capsys):
    """--data data then --data ./data/ (or its absolute path) is the same data, not 'another budget or data'."""
    tmp, data, _ = setup
    monkeypatch.chdir(tmp)
    budget = "epochs=1,batch_size=4,log_points=1,train_subset=all,val_subset=all,bf16=0"
    argv = ["experiment", "degradation", "--depths", "20", "--out", "exp", "--budget", budget, "--data"]
    assert main([*argv, "data"]) == 0
    capsys.readouterr()
    for spelling in ("./data/", str(data)):
        assert main([*argv, spelling]) == 0
        assert capsys.readouterr().out.count("already trained with this budget") == 2


def test_gradflow_reads_data_as_grey_for_a_one_channel_checkpoint(setup):
    tmp, data, _ = setup
    gray = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1), in_chans=1),
                        tmp / "gray.safetensors", {"classes": CLASSES, "mean": [0.5], "std": [0.25]})
    assert main(["explain", "gradflow", "--model", str(gray), "--data", str(data), "--batch-size", "4",
                 "--steps", "1", "--out", str(tmp / "f")]) == 0
    assert [len(v) for v in json.loads((tmp / "f" / "gradflow.json").read_text()).values()] == [2]


def test_gradcam_into_the_same_folder_leaves_no_overlay_of_the_earlier_run(setup):
    """A second run explaining fewer images left the first run's extra overlays, which the report then showed."""
    tmp, data, ckpt = setup
    out = tmp / "cams"
    keep = out / "notes.png"  # not the command's: never removed
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(data / "class_1"), "--out", str(out)]) == 0
    keep.write_bytes(b"mine")
    first = sorted(p.name for p in out.glob("gradcam_0*.png"))
    assert len(first) == 6
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(data / "class_2" / "00000.png"),
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("gradcam_0*.png")) == ["gradcam_000_00000.png"]
    assert keep.read_bytes() == b"mine" and (out / "gradcam_gallery.png").is_file()
    assert [row["png"] for row in json.loads((out / "gradcam.json").read_text())] == [str(out / "gradcam_000_00000.png")]


def test_robustness_refuses_the_training_folder_and_takes_the_held_out_images(setup, capsys):
    tmp, data, _ = setup
    ckpt = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp / "trained.safetensors",
                        {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 16,
                         "config": {"val_split": 0.5, "seed": 0, "data": str(data)}})  # a run trained on data
    base = ["robustness", "--checkpoint", str(ckpt), "--data", str(data), "--steps", "1", "--eps", "0,8/255"]
    assert main([*base, "--out", str(tmp / "a")]) == 2
    assert "counts images it learned; pass --held-out" in capsys.readouterr().err
    assert main([*base, "--held-out", "--out", str(tmp / "b")]) == 0
    assert json.loads((tmp / "b" / "robustness_pgd_linf.json").read_text())["samples"] == 9  # half of 18 held out
    assert main([*base, "--include-training-images", "--out", str(tmp / "c")]) == 0
    assert json.loads((tmp / "c" / "robustness_pgd_linf.json").read_text())["samples"] == 18


def test_gradflow_reads_data_as_each_checkpoint_was_trained_and_says_as_loaded(tmp_path, monkeypatch, capsys):
    # --data batches were normalised with the folder's own statistics whatever the checkpoint recorded, and a
    # trained checkpoint's first measurement was printed as "at init"
    import resnets.explain.gradflow as gradflow_module
    from resnets import create_model, save_weights
    from resnets.cli import main
    from resnets.data import make_image_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=6, size=16)
    model = create_model("resnet20", num_classes=2, layers=(1, 1, 1))
    paths = []
    for offset in (0.0, 0.5):
        paths.append(save_weights(model, tmp_path / f"m{offset}.safetensors",
                                  {"classes": ["class_0", "class_1"], "mean": [offset] * 3, "std": [1.0] * 3}))
    seen = []
    measure = gradflow_module.measure_gradient_flow
    monkeypatch.setattr(gradflow_module, "measure_gradient_flow",
                        lambda m, x, y, step: seen.append(x.clone()) or measure(m, x, y, step=step))
    assert main(["explain", "gradflow", "--model", ",".join(map(str, paths)), "--data", str(data), "--steps", "0",
                 "--batch-size", "4", "--out", str(tmp_path / "gf")]) == 0
    assert "as loaded" in capsys.readouterr().out
    torch.testing.assert_close((seen[0] - seen[1]).mean().item(), 0.5, atol=1e-5, rtol=0)
