"""`resnets eval` / `predict` / `report` on input a user can get wrong: outputs named like their inputs, binary
groups files, grayscale checkpoints and checkpoints without class names. Untrained tiny models: fast."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from resnets import create_model, save_weights
from resnets.cli import main
from resnets.data import make_image_folder

CLASSES = ["class_0", "class_1", "class_2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """A run-like folder: best.safetensors, a last.pt and a config, plus an image folder."""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=2, size=8)
    folder = tmp_path / "r20"
    folder.mkdir()
    best = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), folder / "best.safetensors",
                        {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 8})
    (folder / "last.pt").write_bytes(b"last checkpoint")
    (folder / "config.yaml").write_text("model: resnet20\n")
    return folder, best, data


def _eval(best, data, *extra):
    return main(["eval", "--checkpoint", str(best), "--data", str(data), "--workers", "0", *extra])


@pytest.mark.parametrize("option, target, message", [
    ("--json", "last.pt", "writing there would destroy it"),
    ("--json", "best.safetensors", "writing there would destroy it"),
    ("--json", "config.yaml", "writing there would destroy it"),
    ("--confusion-png", "best.safetensors", "writing there would destroy it"),
    ("--confusion-png", "new.pt", "is a checkpoint's name; give a .png file name"),
    ("--json", "notes.txt", "exists and is not a .json file"),
    ("--json", ".", "is a folder; give a file name"),
])
def test_eval_never_writes_over_a_run_file(run, capsys, option, target, message):
    folder, best, data = run
    (folder / "notes.txt").write_text("the user's own notes")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert _eval(best, data, option, str(folder / target)) == 2
    assert message in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_eval_writes_json_and_png_to_fresh_names(run, capsys):
    folder, best, data = run
    assert _eval(best, data, "--json", str(folder / "eval.json")) == 0
    assert json.loads((folder / "eval.json").read_text())["count"] == 6
    assert (folder / "eval.confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert _eval(best, data, "--json", str(folder / "eval.json")) == 0  # its own earlier result: overwritten


def test_eval_groups_file_that_is_an_image_is_a_clear_error(run, capsys):
    folder, best, data = run
    image = data / "class_0" / "00000.png"
    assert _eval(best, data, "--groups", str(image)) == 2
    err = capsys.readouterr().err
    assert "is not a CSV text file" in err and "'path' and 'group' columns" in err and "Traceback" not in err


def test_report_never_writes_over_a_run_file(run, capsys):
    folder, _, _ = run
    before = (folder / "best.safetensors").read_bytes()
    assert main(["report", str(folder), "--out", str(folder / "best.safetensors")]) == 2
    assert main(["report", str(folder), "--out", str(folder / "config.yaml")]) == 2
    assert main(["report", str(folder), "--out", str(folder)]) == 2
    assert main(["report", str(folder), "--screenshot", str(folder / "last.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("writing there would destroy it") == 3 and "is a folder" in err
    assert "choose another --screenshot" in err
    assert (folder / "best.safetensors").read_bytes() == before and not (folder / "report.html").exists()
    assert main(["report", str(folder), "--out", str(folder / "page.html")]) == 0


def test_predict_and_eval_take_a_grayscale_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=2, size=8)
    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=3, in_chans=1, layers=(1, 1, 1)).eval()
    ckpt = save_weights(net, tmp_path / "gray.safetensors",
                        {"classes": CLASSES, "mean": [0.5], "std": [0.25], "image_size": 8})
    image = data / "class_1" / "00000.png"
    assert main(["predict", "--checkpoint", str(ckpt), str(image), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    grey = torch.from_numpy(__import__("numpy").asarray(Image.open(image).convert("L"), dtype="float32"))
    with torch.no_grad():
        want = torch.softmax(net(((grey / 255 - 0.5) / 0.25)[None, None]), 1)[0]
    assert {t["class"]: t["probability"] for t in top} == {c: pytest.approx(float(p), abs=2e-2)
                                                          for c, p in zip(CLASSES, want)}
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--workers", "0"]) == 0
    assert '"count": 6' in capsys.readouterr().out


def test_predict_without_class_names_shows_indices(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", classes=3, per_class=1, size=8)
    ckpt = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp_path / "m.safetensors",
                        {"mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 8})
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "class_0" / "00000.png"), "--json"]) == 0
    captured = capsys.readouterr()
    assert {t["class"] for t in json.loads(captured.out)[0]["top"]} == {"0", "1", "2"}
    assert "stores no class names" in captured.err and "dataset folders" not in captured.err


def test_load_for_inference_in_python_gives_what_resnets_eval_prints(run, capsys):
    """The README's Python route (load_for_inference, load_eval, make_loader, evaluate) and the command agree."""
    from resnets.data import load_eval, make_loader
    from resnets.evaluate import LoadedModel, evaluate, load_for_inference
    from resnets.weights import CheckpointError

    _, best, data = run
    m = load_for_inference(best)
    assert isinstance(m, LoadedModel) and not m.model.training
    assert (m.classes, m.mean, m.std, m.image_size, m.crop_fraction) == (CLASSES, (0.5,) * 3, (0.25,) * 3, 8, 0.875)
    dataset = load_eval(data, m.classes, image_size=m.image_size, normalization=(m.mean, m.std))
    loader = make_loader(dataset, train=False, mean=m.mean, std=m.std, crop_fraction=m.crop_fraction, workers=0)
    result = evaluate(m.model, loader, len(m.classes), m.classes)
    assert _eval(best, data) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["count"], printed["top1"], printed["loss"]) == (6, result.top1, pytest.approx(result.loss, rel=1e-5))
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        load_for_inference(best, use_ema=True)


def test_every_command_reads_a_checkpoint_without_statistics_alike(tmp_path):
    """eval/predict assumed mean 0.5 / std 0.25 and gradcam/robustness ImageNet's statistics for the same file:
    one reader now, ImageNet's (what converted torchvision/timm weights need), with a warning."""
    from resnets.evaluate import load_for_inference
    from resnets.evaluate.robustness import pixel_model_from_checkpoint

    torch.manual_seed(0)
    net = create_model("resnet20", num_classes=3, layers=(1, 1, 1)).eval()
    path = save_weights(net, tmp_path / "bare.safetensors", {"classes": CLASSES})
    with pytest.warns(UserWarning, match="does not record its input normalisation.*assuming ImageNet statistics"):
        loaded = load_for_inference(path)
    assert (loaded.mean, loaded.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = torch.rand(2, 3, 16, 16)
    mean, std = torch.tensor(loaded.mean).view(1, 3, 1, 1), torch.tensor(loaded.std).view(1, 3, 1, 1)
    with pytest.warns(UserWarning, match="assuming ImageNet"), torch.no_grad():
        assert torch.allclose(pixel_model_from_checkpoint(str(path))[0](pixels), net((pixels - mean) / std))
    grey = save_weights(create_model("resnet20", num_classes=3, in_chans=1, layers=(1, 1, 1)),
                        tmp_path / "grey.safetensors", {"classes": CLASSES})
    with pytest.warns(UserWarning, match="assuming ImageNet"):
        loaded = load_for_inference(grey)
    assert loaded.mean == pytest.approx((0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406,) * 3)


def test_eval_compares_two_checkpoints_on_the_same_images(run, tmp_path, capsys):
    folder, best, data = run
    torch.manual_seed(1)
    other = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp_path / "other.safetensors",
                         {"classes": CLASSES, "mean": [0.4] * 3, "std": [0.3] * 3, "image_size": 8})
    out = tmp_path / "metrics.json"
    assert _eval(best, data, "--compare", str(other), "--json", str(out)) == 0
    printed = capsys.readouterr().out
    assert "95% CI" in printed and "exact McNemar p = " in printed
    metrics = json.loads(out.read_text())
    compare = metrics["extra"]["compare"]
    assert compare["count"] == metrics["count"] == 6 and compare["checkpoint"] == str(other)
    assert compare["both"] + compare["first_only"] + compare["second_only"] + compare["neither"] == 6
    assert compare["difference"] == pytest.approx(metrics["top1"] - compare["top1"])
    assert metrics["top1_interval"][0] <= metrics["top1"] <= metrics["top1_interval"][1]
    # against itself: every image agrees, nothing to tell apart
    assert _eval(best, data, "--compare", str(best), "--json", str(tmp_path / "self.json")) == 0
    same = json.loads((tmp_path / "self.json").read_text())["extra"]["compare"]
    assert same["first_only"] == same["second_only"] == 0 and same["p_value"] == 1.0


def test_eval_refuses_the_training_tree_of_a_split_root_but_scores_its_val_tree(tmp_path, monkeypatch, capsys):
    from resnets.data import make_split_folder
    from resnets.data.sources import training_folder

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    root = make_split_folder(tmp_path / "root", classes=3, train_per_class=2, val_per_class=2, size=8)
    assert training_folder(root) == (root / "train").resolve() and training_folder("cifar10") is None
    ckpt = save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)), tmp_path / "m.safetensors",
                        {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 8,
                         "training_folder": str(training_folder(root))})
    assert _eval(ckpt, root) == 0  # the root's val/ tree
    assert _eval(ckpt, root / "train") == 2
    assert f"holds the images {ckpt} was trained on" in capsys.readouterr().err


def test_a_paired_comparison_refuses_two_runs_that_held_out_different_images(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=4, size=8)
    paths = []
    for seed in (0, 1):  # the same val_split and class balance, other images
        paths.append(save_weights(create_model("resnet20", num_classes=3, layers=(1, 1, 1)),
                                  tmp_path / f"seed{seed}.safetensors",
                                  {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 8,
                                   "config": {"val_split": 0.5, "split_seed": seed}}))
    assert _eval(paths[0], data, "--held-out", "--compare", str(paths[1])) == 2
    assert "scored on different images" in capsys.readouterr().err
    assert _eval(paths[0], data, "--held-out", "--compare", str(paths[0])) == 0


def test_only_data_classes_scores_among_the_classes_the_data_holds(tmp_path, monkeypatch, capsys):
    """A model that always says an absent class scores 0; restricted to the present classes it says class_0."""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=8, names=CLASSES[:2])
    net = create_model("resnet20", num_classes=3, layers=(1, 1, 1))
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.tensor([1.0, 0.0, 100.0]))  # class_2, absent from the data, always wins
    ckpt = save_weights(net, tmp_path / "m.safetensors", {"classes": CLASSES, "mean": [0.5] * 3, "std": [0.25] * 3,
                                                          "image_size": 8})
    for extra, top1 in (((), 0.0), (("--only-data-classes",), 0.5)):
        assert _eval(ckpt, data, *extra, "--tta", "flip", "--json", str(tmp_path / f"{len(extra)}.json")) == 0
        metrics = json.loads((tmp_path / f"{len(extra)}.json").read_text())
        assert metrics["top1"] == top1 and metrics["loss"] < float("inf")
    assert metrics["extra"]["only_data_classes"] == 2 and metrics["top5"] == 1.0


def test_a_bad_groups_file_is_refused_before_any_model_is_scored(run, tmp_path, monkeypatch, capsys):
    from resnets.cli import eval as eval_cli

    folder, best, data = run
    monkeypatch.setattr(eval_cli, "_score", lambda *a, **k: pytest.fail("scored before checking --groups"))
    assert _eval(best, data, "--groups", str(tmp_path)) == 2
    assert "is a folder; pass a CSV file" in capsys.readouterr().err
    assert _eval(best, data, "--groups", str(tmp_path / "missing.csv")) == 2
    assert "does not exist" in capsys.readouterr().err
