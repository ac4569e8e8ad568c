import json

from resnets.cli import main
from resnets.data import make_image_folder


def test_data_command_reports_dataset_and_bad_files(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=5, size=8)
    (root / "class_1" / "broken.png").write_bytes(b"not a png")
    assert main(["data", "--data", str(root), "--val-split", "2", "--cache-dir", str(tmp_path / "c"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["class_0", "class_1"] and summary["in_memory"] is True
    assert (summary["train_size"], summary["val_size"]) == (8, 2)
    assert summary["unreadable_files"] == [str(root / "class_1" / "broken.png")]


def test_data_command_error_is_one_line(tmp_path, capsys):
    assert main(["data", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no dataset at" in err
