"""Inputs a user can get wrong: odd image encodings, odd folder layouts, bad options. Each gets the right
pixels or a clear DataError."""

import numpy as np
import pytest
from PIL import Image

from resnets.cli import main
from resnets.data import DataError, load_data, load_eval, load_eval_image, make_image_folder, make_split_folder
from resnets.data.folder import decode_rgb, open_rgb


def _grey16(path, value=32768, mode="I;16", size=(8, 6)):
    pixels = np.full(size[::-1], value, np.uint16)
    image = Image.fromarray(pixels) if mode == "I;16" else Image.fromarray(pixels.astype(np.int32)).convert(mode)
    image.save(path)
    return path


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = _grey16(tmp_path / "grey16.png")
    assert Image.open(path).mode in ("I;16", "I")  # what Pillow makes of a 16-bit grayscale PNG
    pixels = decode_rgb(path)
    assert pixels.shape == (6, 8, 3) and abs(int(pixels[0, 0, 0]) - 127) <= 1  # was 255 (clipped)
    dark = decode_rgb(_grey16(tmp_path / "dark16.png", value=1000))
    assert int(dark.max()) <= 4


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16B", [0, 65535], [0, 255]),
    ("I", [0, 65535], [0, 255]),           # 16-bit data in a 32-bit container
    ("I", [10, 200], [10, 200]),           # 8-bit data: kept
    ("I", [-1000, 1000], [0, 255]),        # signed/wide: stretched over the image's own range
    ("F", [0.0, 1.0], [0, 255]),           # float in [0, 1]
    ("F", [0.0, 32768.0], [0, 128]),
])
def test_high_bit_depth_modes_scale_sensibly(tmp_path, monkeypatch, mode, values, expected):
    from resnets.data.folder import _to_8bit

    array = np.array([values], dtype=np.float32 if mode == "F" else np.int32)
    image = (Image.frombytes("I;16B", (2, 1), array.astype(">u2").tobytes()) if mode == "I;16B"
             else Image.fromarray(array.astype(np.float32) if mode == "F" else array, mode))
    assert image.mode == mode
    out = _to_8bit(image)
    assert out.mode == "L" and list(np.asarray(out)[0]) == expected


def _rotated_jpeg(path, orientation=6):
    """A 64 x 32 (w x h) JPEG, left half red, right half blue, tagged with an EXIF orientation."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif)
    return path


def test_exif_orientation_applied_on_every_path(tmp_path):
    path = _rotated_jpeg(tmp_path / "phone.jpg")
    # Orientation 6: rotate 90 degrees clockwise to display, so the stored 64 x 32 shows as 32 wide, 64 high,
    # and the stored left (red) half ends up on top.
    image = open_rgb(path)
    assert image.size == (32, 64)
    pixels = np.asarray(image).astype(int)
    assert pixels[5, 16, 0] > 200 and pixels[5, 16, 2] < 60 and pixels[58, 16, 2] > 200
    assert tuple(load_eval_image(path, None).shape) == (3, 64, 32)  # predict / explain
    # Training cache (in-memory tensors) and streaming both decode through the same function.
    root = tmp_path / "d"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        _rotated_jpeg(root / name / "x.jpg")
    small = load_data(root, val_split=0, image_size=32, cache_dir=tmp_path / "c").train.images[0].int()
    assert small[0, 2, 16] > 200 and small[2, 29, 16] > 200  # red on top, blue below (square centre crop)
    streamed = load_data(root, val_split=0, image_size=72, cache_dir=tmp_path / "c")
    assert not streamed.in_memory and tuple(streamed.train[0][0].shape) == (3, 64, 32)


@pytest.mark.parametrize("names", [("Train", "Val"), ("training", "validation"), ("TRAIN", "valid")])
def test_split_folder_names_match_any_case(tmp_path, names):
    root = make_image_folder(tmp_path / "d" / names[0], classes=2, per_class=3, size=8).parent
    make_image_folder(root / names[1], classes=2, per_class=1, size=8, seed=1)
    splits = load_data(root, cache_dir=tmp_path / "c")
    assert splits.classes == ["class_0", "class_1"] and (len(splits.train), len(splits.val)) == (6, 2)
    assert len(load_eval(root, splits.classes, cache_dir=tmp_path / "c")) == 2  # evaluation finds Val/ too


def test_ambiguous_split_layouts_are_errors(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=2, size=8, names=["train", "bus"])
    with pytest.raises(DataError, match="train/ folder next to other folders \\(bus\\)"):
        load_data(root, cache_dir=tmp_path / "c")
    root = make_split_folder(tmp_path / "e", classes=2, train_per_class=2, val_per_class=1, size=8)
    make_image_folder(root / "validation", classes=2, per_class=1, size=8)
    with pytest.raises(DataError, match="several val split folders"):
        load_data(root, cache_dir=tmp_path / "c")
    only_val = make_image_folder(tmp_path / "f" / "val", classes=2, per_class=2, size=8).parent
    with pytest.raises(DataError, match="no train/ folder"):
        load_data(only_val, cache_dir=tmp_path / "c")


def test_training_needs_two_classes_but_evaluation_of_a_subset_works(tmp_path):
    one = make_image_folder(tmp_path / "one", classes=1, per_class=4, size=8, names=["cats"])
    with pytest.raises(DataError, match=r"one.* has 1 class folder\(s\) \(cats\).*at least 2 classes"):
        load_data(one, cache_dir=tmp_path / "c")
    root = make_split_folder(tmp_path / "split", classes=2, train_per_class=3, val_per_class=1, size=8)
    for file in (root / "train" / "class_1").iterdir():
        file.write_bytes(b"")  # class_1 has files, none readable
    with pytest.raises(DataError, match="only class_0 has readable images"):
        load_data(root, cache_dir=tmp_path / "c")
    dataset = load_eval(one, ["dogs", "cats"], cache_dir=tmp_path / "c")
    assert dataset.labels.tolist() == [1, 1, 1, 1]
    # among 3 classes, a class folder with no images, or none readable, would be an output nothing trains
    three = make_image_folder(tmp_path / "three", classes=3, per_class=3, size=8)
    (three / "class_3_empty").mkdir()
    with pytest.raises(DataError, match="without readable images: class_3_empty; add images"):
        load_data(three, cache_dir=tmp_path / "c")
    (three / "class_3_empty").rmdir()
    for file in (three / "class_2").iterdir():
        file.write_bytes(b"not an image")
    with pytest.raises(DataError, match="without readable images: class_2;"):
        load_data(three, cache_dir=tmp_path / "c")
    assert len(load_data(one, val_split=0, classes=["dogs", "cats"], cache_dir=tmp_path / "c").train) == 4


@pytest.mark.parametrize("val_split, message", [
    (2.5, "neither a fraction below 1 nor a whole count"), (-0.1, "negative"), (10, "at least as many images"),
    (float("nan"), "not a number"),
])
def test_bad_val_split_is_refused(tmp_path, val_split, message):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=5, size=8)
    with pytest.raises(DataError, match=message):
        load_data(root, val_split=val_split, cache_dir=tmp_path / "c")
    assert len(load_data(root, val_split=2.0, cache_dir=tmp_path / "c").val) == 2  # a whole float is a count


def test_bad_image_size_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=2, size=8)
    for size in (-5, 0, 2.5):
        with pytest.raises(DataError, match="not a positive whole number of pixels"):
            load_data(root, image_size=size, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="image_size=-5"):
        load_eval(root, image_size=-5, cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="image_size=-5"):
        load_eval_image(root / "class_0" / "00000.png", -5)


def test_cache_dir_that_is_a_file_is_refused(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=2, size=8)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="cache folder \\(--cache-dir\\) .*file is a file"):
        load_data(root, cache_dir=tmp_path / "file")
    with pytest.raises(DataError, match="lies under .*file, which is a file"):
        load_data(root, cache_dir=tmp_path / "file" / "sub")


def test_images_without_class_folders_say_so(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="holds 1 image\\(s\\) directly but no class folders"):
        load_data(tmp_path / "flat", cache_dir=tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders in"):
        load_data(tmp_path / "empty", cache_dir=tmp_path / "c")


def test_data_command_rejects_bad_values_in_one_line(tmp_path, capsys):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=5, size=8)
    with pytest.raises(SystemExit):  # the same rule at parse time as in the data layer
        main(["data", "--data", str(root), "--val-split", "2.5", "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert "argument --val-split" in err and "2.5" in err and "whole count" in err
    with pytest.raises(SystemExit):
        main(["data", "--data", str(root), "--image-size", "-5"])
    assert "positive whole number" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["data", "--data", str(root), "--cache-dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_cache_inside_the_data_folder_is_refused(tmp_path, capsys):
    # its tensors/ folder would have become a class of the dataset on the next scan
    root = make_image_folder(tmp_path / "d", classes=2, per_class=2, size=8)
    with pytest.raises(DataError, match="cache folder .* is inside the data folder"):
        load_data(root, cache_dir=root)
    assert main(["data", "--data", str(root), "--cache-dir", str(root / "cache")]) == 2
    assert "the image folder this command reads" in capsys.readouterr().err
    assert sorted(p.name for p in root.iterdir()) == ["class_0", "class_1"]
    load_data(root, cache_dir=root / ".cache")  # hidden folders are not read as classes
    # a cache folder where nothing can be written: the command reported success and cached nothing
    assert main(["data", "--data", str(root), "--cache-dir", "/proc/resnets-cache"]) == 2
    assert "--cache-dir /proc/resnets-cache: nothing can be written in /proc" in capsys.readouterr().err
