"""Per-group accuracy and the worst-group gap, from a groups CSV."""

import pytest
import torch
from torch import nn

from resnets.data import make_image_folder
from resnets.evaluate.groups import GroupsFileError, evaluate_groups, group_accuracy, read_groups


pytestmark = pytest.mark.usefixtures("one_thread")


def test_group_accuracy_and_gap(tmp_path):
    csv = tmp_path / "groups.csv"
    csv.write_text("path,group\ncat/1.jpg,indoor\ncat/2.jpg,outdoor\ndog/3.jpg,outdoor\ndog/4.jpg,outdoor\n")
    groups = read_groups(csv)
    images = ["/data/val/cat/1.jpg", "/data/val/cat/2.jpg", "/data/val/dog/3.jpg", "/data/val/dog/4.jpg",
              "/data/val/dog/5.jpg"]
    report = group_accuracy(images, [True, False, True, False, True], groups)
    assert report.accuracy == {"indoor": 1.0, "outdoor": 1 / 3}
    assert report.worst_group == "outdoor" and report.unmatched == 1
    assert report.gap == pytest.approx(0.5 - 1 / 3) and report.spread == pytest.approx(2 / 3)
    assert "worst group 'outdoor'" in report.table()
    with pytest.raises(GroupsFileError, match="have no group"):
        group_accuracy(images, [True] * 5, groups, require_all=True)


def test_bad_groups_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file_name,colour\na.jpg,red\n")
    with pytest.raises(GroupsFileError, match="'path' and 'group'"):
        read_groups(bad)
    with pytest.raises(GroupsFileError, match="does not exist"):
        read_groups(tmp_path / "missing.csv")


def test_evaluate_groups_on_images(tmp_path):
    """A 'model' that always predicts class 0: group accuracy follows each group's class mix."""
    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=8)
    rows = ["path,group"] + [f"class_0/{i:05d}.png,a" for i in range(4)] + \
           [f"class_1/{i:05d}.png,{'a' if i < 2 else 'b'}" for i in range(4)]
    (tmp_path / "g.csv").write_text("\n".join(rows) + "\n")

    class AlwaysZero(nn.Module):
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1)

    report = evaluate_groups(AlwaysZero(), tmp_path / "g.csv", data, ["class_0", "class_1"], (0.5,) * 3, (0.25,) * 3, 8)
    assert report.accuracy == {"a": 4 / 6, "b": 0.0} and report.count == {"a": 6, "b": 2}
    assert report.worst_group == "b"


def test_eval_command_reports_groups(tmp_path, monkeypatch, capsys):
    import json

    from resnets import create_model, save_weights
    from resnets.cli import main

    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=8)
    ckpt = save_weights(create_model("resnet20", num_classes=2, layers=(1, 1, 1)), tmp_path / "m.safetensors",
                        {"classes": ["class_0", "class_1"], "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 8})
    (tmp_path / "g.csv").write_text("path,group\n" + "".join(f"class_{c}/{i:05d}.png,g{c}\n"
                                                            for c in range(2) for i in range(3)))
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--groups", str(tmp_path / "g.csv"),
                 "--json", str(out), "--workers", "0"]) == 0
    groups = json.loads(out.read_text())["extra"]["groups"]
    assert set(groups["per_group"]) == {"g0", "g1"} and sum(v["count"] for v in groups["per_group"].values()) == 6
    assert "worst group" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("path,group\nclass_0/nope.png,g0\n")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--groups", str(tmp_path / "bad.csv"),
                 "--workers", "0"]) == 2


def test_binary_groups_file_names_the_expected_format(tmp_path):
    image = tmp_path / "ok.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(GroupsFileError, match="is not a CSV text file.*'path' and 'group' columns"):
        read_groups(image)


def test_an_image_listed_in_two_groups_is_refused_not_dropped_from_one(tmp_path):
    # the dict kept the last row only: cat/1 left 'indoor' without a word, and indoor's accuracy changed
    csv = tmp_path / "groups.csv"
    csv.write_text("path,group\ncat/1.jpg,indoor\ncat/1.jpg,dark\ncat/2.jpg,indoor\n")
    with pytest.raises(GroupsFileError, match="groups.csv:3: cat/1.jpg is already in group 'indoor'"):
        read_groups(csv)
    csv.write_text("path,group\ncat/1.jpg,indoor\ncat/1.jpg,indoor\n")  # the same row twice is harmless
    assert read_groups(csv) == {"cat/1.jpg": "indoor"}


def test_groups_are_scored_as_the_whole_set_under_tta_and_only_data_classes(tmp_path, monkeypatch):
    import json

    from resnets import create_model, save_weights
    from resnets.cli import main

    class LeftMinusRight(nn.Module):
        """Class 0's logit is the left half's mean minus the right half's: a flip averages it away, and class 1's
        small constant wins."""

        def forward(self, x):
            s = x[..., : x.shape[-1] // 2].mean((1, 2, 3)) - x[..., x.shape[-1] // 2:].mean((1, 2, 3))
            return torch.stack([s, torch.full_like(s, 1e-3)], 1)

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=8)
    rows = ["path,group"] + [f"class_{c}/{i:05d}.png,{'a' if c == 0 or i < 2 else 'b'}" for c in range(2)
                             for i in range(4)]
    (tmp_path / "g.csv").write_text("\n".join(rows) + "\n")
    report = evaluate_groups(LeftMinusRight(), tmp_path / "g.csv", data, ["class_0", "class_1"], (0.5,) * 3,
                             (0.25,) * 3, 8, tta="flip")
    assert report.accuracy == {"a": 2 / 6, "b": 1.0}

    # a model whose head always prefers class_3, which --data does not hold: masked, every image is class_1
    monkeypatch.setenv("RESNETS_CACHE", str(tmp_path / "cache"))
    model = create_model("resnet20", num_classes=4, layers=(1, 1, 1))
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 1.0, 0.0, 5.0]))
    ckpt = save_weights(model, tmp_path / "m.safetensors", {"classes": [f"class_{c}" for c in range(4)],
                                                            "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": 8})
    (tmp_path / "all.csv").write_text("path,group\n" + "".join(f"class_{c}/{i:05d}.png,all\n"
                                                              for c in range(2) for i in range(4)))
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--groups", str(tmp_path / "all.csv"),
                 "--only-data-classes", "--tta", "flip", "--json", str(out), "--workers", "0"]) == 0
    report = json.loads(out.read_text())
    assert report["top1"] == 0.5 and report["extra"]["groups"]["per_group"]["all"]["accuracy"] == 0.5
