"""The explain/robustness/calibrate/experiment/report commands end to end on tiny data."""

import json

import pytest
import torch

from resnets import create_model, save_weights
from resnets.cli import main
from resnets.data import make_image_folder
from resnets.weights import read_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is much faster than two on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    assert main(["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--store", "--out", str(run)]) == 0
    cal = json.loads((run / "calibration.json").read_text())
    assert read_checkpoint(ckpt).metadata["temperature"] == pytest.approx(cal["temperature"])
    assert (run / "reliability.png").stat().st_size > 1000
    assert main(["explain", "gradcam", "--checkpoint", str(ckpt), str(data / "class_1"), "--class", "class_2",
                 "--out", str(run / "gradcam")]) == 0
    rows = json.loads((run / "gradcam" / "gradcam.json").read_text())
    assert len(rows) == 6 and all(r["explained_class"] == "class_2" for r in rows)
    assert main(["report", str(run)]) == 0
    text = (run / "report.html").read_text()
    assert "Grad-CAM gallery" in text and "Calibration" in text and "Corruptions" in text


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
    err = capsys.readouterr().err
    assert "fractions like 8/255" in err and "does not exist" in err and "unknown class 'zebra'" in err
