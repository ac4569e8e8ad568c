"""Evaluation: metric arithmetic, test-time augmentation views, and `resnets eval` / `resnets predict`
on a checkpoint written by a tiny training run (folders matched to classes by name)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from resnets.cli import main
from resnets.data import DataSplits, TensorImageDataset, make_image_folder, make_loader, make_tensor_dataset
from resnets.evaluate import EvalSums, evaluate, evaluate_with_plain, tta_logits, tta_views
from resnets.train import TrainConfig, train
from resnets.weights import model_from_checkpoint

CLASSES = ["eel", "cat", "dog"]  # deliberately not alphabetical: folders must be matched by name
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class FixedLogits(nn.Module):
    """Returns a stored row of logits per call position (for exact metric arithmetic)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.position = logits, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.logits[self.position:self.position + x.shape[0]]
        self.position += x.shape[0]
        return out


def test_metrics_from_known_logits():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0],  # true 0: top-1 right
                           [3.0, 2.0, 1.0, 0.0, -1.0, -2.0],  # true 1: top-1 wrong, top-5 right
                           [3.0, 2.0, 1.0, 0.0, -1.0, -2.0],  # true 5: wrong in top-5 too
                           [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])   # true 5: right
    labels = torch.tensor([0, 1, 5, 5])
    loader = [(torch.zeros(2, 3, 4, 4), labels[:2]), (torch.zeros(2, 3, 4, 4), labels[2:])]
    result = evaluate(FixedLogits(logits), loader, num_classes=6)
    assert result.top1 == 0.5 and result.top5 == 0.75 and result.count == 4
    assert result.per_class_accuracy == {"0": 1.0, "1": 0.0, "2": None, "3": None, "4": None, "5": 0.5}
    assert result.confusion[5] == [1, 0, 0, 0, 0, 1] and result.confusion[1][0] == 1
    expected_loss = nn.functional.cross_entropy(logits, labels).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    doubled = EvalSums.zeros(6)
    doubled.add(logits, labels)
    assert doubled.reduce(lambda t: t * 2).result().count == 8  # reduction over processes is a sum


def test_tta_views_and_averaging():
    images = torch.randn(2, 3, 32, 32)
    assert [v.shape for v in tta_views(images, "flip")] == [images.shape] * 2
    assert len(tta_views(images, "flip-translate")) == 6
    crops = tta_views(images, "10crop")
    assert len(crops) == 10 and all(c.shape == (2, 3, 28, 28) for c in crops)
    assert torch.equal(crops[5], crops[0].flip(-1))
    up_left = tta_views(images, "flip-translate")[2]
    assert torch.equal(up_left[..., 1:, 1:], images[..., :-1, :-1])  # shifted by one pixel

    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))  # flip/shift-insensitive-ish
    for mode in ("flip", "10crop", "flip-translate"):
        assert tta_logits(pooled, images, mode).shape == (2, 4)
    assert torch.allclose(tta_logits(pooled, images, "flip"), pooled(images), atol=1e-6)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        tta_views(images, "rotate")



class CountingModel(nn.Module):
    """A small convolutional net that counts the images it is run on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.body(x)


@pytest.mark.parametrize("mode, views", [("none", 1), ("flip", 2), ("flip-translate", 6), ("10crop", 11)])
def test_one_pass_gives_the_tta_and_the_plain_results(mode, views):
    """A run's last validation pass and its final TTA pass share the image-as-is view: one pass, two results,
    each equal to its own separate evaluation."""
    generator = torch.Generator().manual_seed(3)
    loader = [(torch.randn(5, 3, 12, 12, generator=generator), torch.randint(0, 4, (5,), generator=generator))
              for _ in range(2)]
    model = CountingModel()
    with_tta, plain = evaluate_with_plain(model, loader, num_classes=4, tta=mode)
    assert model.images == 10 * views  # 10crop has no image-as-is view: one more
    assert (with_tta.tta, plain.tta) == (mode, "none")
    separate = {"tta": evaluate(model, loader, 4, tta=mode), "plain": evaluate(model, loader, 4)}
    for got, want in ((with_tta, separate["tta"]), (plain, separate["plain"])):
        assert got.confusion == want.confusion and got.loss == pytest.approx(want.loss, rel=1e-6)
    if mode != "none":  # the views change the logits, so the two results are not the same numbers
        assert with_tta.loss != pytest.approx(plain.loss, rel=1e-6)

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    images, labels = make_tensor_dataset(classes=3, per_class=16, size=8, seed=0)
    train_set = TensorImageDataset(images, labels, CLASSES, MEAN, STD)
    val_images, val_labels = make_tensor_dataset(classes=3, per_class=6, size=8, seed=5)
    val_set = TensorImageDataset(val_images, val_labels, CLASSES, MEAN, STD)
    config = TrainConfig(model="resnet20", data="memory", batch_size=16, epochs=4, lr=0.05, schedule="cosine",
                         progress=False, tensorboard=False, workers=0)
    train(config, root / "run", splits=DataSplits(train_set, val_set, CLASSES, MEAN, STD, 8, True))
    folder = make_image_folder(root / "eval", classes=3, per_class=6, size=8, seed=5, names=CLASSES)
    return root, folder, val_set


def test_eval_cli_matches_direct_evaluation(trained_run, capsys, monkeypatch):
    root, folder, val_set = trained_run
    monkeypatch.setenv("RESNETS_CACHE", str(root / "cache"))
    out = root / "metrics.json"
    assert main(["eval", "--checkpoint", str(root / "run" / "best.safetensors"), "--data", str(folder),
                 "--json", str(out), "--tta", "flip"]) == 0
    assert "without TTA (same pass): top-1" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["classes"] == CLASSES and report["count"] == 18 and report["tta"] == "flip"
    assert set(report["per_class_accuracy"]) == set(CLASSES)
    assert (root / "metrics.confusion.png").read_bytes()[:4] == b"\x89PNG"

    model, _ = model_from_checkpoint(root / "run" / "best.safetensors")
    loader = make_loader(val_set, batch_size=7, train=False, mean=MEAN, std=STD)  # labels in checkpoint order
    direct = evaluate(model, loader, 3, CLASSES, tta="flip")
    assert report["confusion"] == direct.confusion and report["top1"] == pytest.approx(direct.top1)
    assert report["loss"] == pytest.approx(direct.loss, rel=1e-5)
    plain = evaluate(model, loader, 3, CLASSES)  # the same pass also reports the accuracy without TTA
    assert report["extra"]["without_tta"]["top1"] == pytest.approx(plain.top1)
    assert report["extra"]["without_tta"]["loss"] == pytest.approx(plain.loss, rel=1e-5)


def test_eval_cli_rejects_unknown_class_folders(trained_run, tmp_path, capsys, monkeypatch):
    root, _, _ = trained_run
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    folder = make_image_folder(tmp_path / "other", classes=2, per_class=2, size=8, names=["cat", "zebra"])
    assert main(["eval", "--checkpoint", str(root / "run"), "--data", str(folder)]) == 2
    assert "zebra" in capsys.readouterr().err


def test_predict_prints_top_k_and_json(trained_run, capsys):
    root, folder, _ = trained_run
    images = [str(folder / "cat" / "00000.png"), str(folder / "dog" / "00001.png")]
    assert main(["predict", "--checkpoint", str(root / "run" / "best.safetensors"), *images, "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[0]}: ")
    assert main(["predict", "--checkpoint", str(root / "run" / "best.safetensors"), *images, "--json"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [len(i["top"]) for i in items] == [3, 3]
    probabilities = [t["probability"] for t in items[0]["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(1, abs=1e-5)
    assert {t["class"] for t in items[0]["top"]} == set(CLASSES)
    assert main(["predict", "--checkpoint", str(root / "run" / "best.safetensors"), "missing.png"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_predict_takes_folders_batches_and_keeps_going_past_a_bad_file(trained_run, tmp_path, capsys):
    root, folder, _ = trained_run
    checkpoint = str(root / "run" / "best.safetensors")
    every = sorted(str(path) for path in folder.rglob("*.png"))
    assert main(["predict", "--checkpoint", checkpoint, *every[:3], "--json", "--batch-size", "1"]) == 0
    one_at_a_time = json.loads(capsys.readouterr().out)
    assert main(["predict", "--checkpoint", checkpoint, str(folder), "--json", "--batch-size", "2"]) == 0
    batched = json.loads(capsys.readouterr().out)
    assert [item["image"] for item in batched] == every  # a folder: every image under it, sorted by path
    for alone, together in zip(one_at_a_time, batched):
        assert [t["class"] for t in alone["top"]] == [t["class"] for t in together["top"]]
        assert [t["probability"] for t in alone["top"]] == pytest.approx([t["probability"] for t in together["top"]],
                                                                         abs=1e-5)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["predict", "--checkpoint", checkpoint, every[0], str(bad), every[1], "--json"]) == 1
    captured = capsys.readouterr()
    items = json.loads(captured.out)
    assert [item["image"] for item in items] == [every[0], str(bad), every[1]]
    assert "top" in items[0] and "top" in items[2] and "cannot read" in items[1]["error"]
    assert "1 of 3 images could not be read" in captured.err
    (tmp_path / "empty").mkdir()
    assert main(["predict", "--checkpoint", checkpoint, str(tmp_path / "empty")]) == 2
    assert "no images under the folder" in capsys.readouterr().err


def test_logits_and_labels_outside_the_class_count_are_refused():
    sums = EvalSums.zeros(3)
    # a fourth output would be counted as another cell (true 0, predicted 3 -> row 1, column 0)
    with pytest.raises(ValueError, match="logits for 3 classes"):
        sums.add(torch.tensor([[0.0, 0.0, 0.0, 5.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        sums.add(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        sums.add(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([-1]))
    assert sums.result().count == 0


def test_eval_held_out_scores_exactly_the_images_the_run_validated_on(tmp_path, monkeypatch, capsys):
    """`make demo DATA=DIR` scored the run on DIR, whose other 90% it had trained on; --held-out takes the run's
    own validation split (val_split and split seed from its config) and gives the run's own validation result."""
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=3, per_class=10, size=8, names=CLASSES)
    assert main(["train", "--model", "resnet20", "--set", "model_options.layers=[1,1,1]", "--data", str(data),
                 "--epochs", "1", "--batch-size", "4", "--val-split", "0.3", "--seed", "3", "--workers", "0",
                 "--no-progress", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    low, high = summary["final_val_top1_interval"]  # 9 images: a wide interval, stated with the figure
    assert low <= summary["final_val_top1"] <= high and high - low > 0.25
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(data), "--held-out",
                 "--workers", "0"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["count"] == 9 and printed["top1"] == pytest.approx(summary["final_val_top1"])
    # without --held-out the training folder is refused: that accuracy would count the images it learned
    for checkpoint in ("last.pt", "best.safetensors"):
        assert main(["eval", "--checkpoint", str(tmp_path / "run" / checkpoint), "--data", str(data)]) == 2
        assert "counts images it learned; pass --held-out" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(data),
                 "--include-training-images"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 30  # on purpose: every image
    # a copy of the training folder elsewhere is the same images (the path check alone missed it) ...
    copied = tmp_path / "copied" / "data"
    shutil.copytree(data, copied)
    for checkpoint in ("last.pt", "best.safetensors"):
        assert main(["eval", "--checkpoint", str(tmp_path / "run" / checkpoint), "--data", str(copied)]) == 2
        assert f"{copied} is a copy of {data}" in capsys.readouterr().err
    # ... while other images under the same names (and, for these noise images, of nearly the same sizes) are
    other = make_image_folder(tmp_path / "other", classes=3, per_class=10, size=8, names=CLASSES, seed=1)
    assert sorted(f.relative_to(other) for f in other.rglob("*.png")) == sorted(f.relative_to(data) for f in data.rglob("*.png"))
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(other), "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 30
    # --held-out on them would call 9 of 30 unseen images "held out": refused; on the copy it is the same split
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(other), "--held-out"]) == 2
    assert "--held-out redraws the images" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(copied), "--held-out",
                 "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 9


def test_accuracy_intervals_and_the_paired_test_match_textbook_values():
    from resnets.evaluate import compare_hits, wilson_interval
    from resnets.evaluate.compare import mcnemar_exact_p

    assert wilson_interval(1, 2) == pytest.approx((0.0945, 0.9055), abs=1e-4)  # Wilson 1927's worked case
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(4500, 5000)
    assert low < 0.9 < high and high - low == pytest.approx(0.0166, abs=5e-4)
    assert mcnemar_exact_p(0, 6) == pytest.approx(2 / 64)  # all six disagreements one way
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(100, 70) == pytest.approx(0.0259, abs=5e-4)

    first = torch.tensor([1, 1, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    second = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    paired = compare_hits([first[:3], first[3:]], second)  # batches or one tensor alike
    assert (paired.both, paired.first_only, paired.second_only, paired.neither) == (2, 3, 1, 2)
    assert paired.difference == pytest.approx(2 / 8)
    low, high = paired.difference_interval
    assert low < paired.difference < high and high - paired.difference == pytest.approx(1.959964 * (4 - 8 / 16) ** 0.5 / 8)
    with pytest.raises(ValueError, match="different numbers of images"):
        compare_hits(first, second[:5])


def test_a_nan_loss_is_written_as_json_null(tmp_path):
    # json.dumps writes NaN, which strict parsers (browsers, jq) reject: the whole report became unreadable
    sums = EvalSums.zeros(3)
    sums.add(torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 1]))
    path = sums.result(CLASSES).write_json(tmp_path / "eval.json")

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["loss"] is None and data["count"] == 2
