import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import DataError, load_data, load_eval, make_image_folder, make_split_folder, map_folder_classes
from resnets.data import cache as cache_module
from resnets.data.folder import stratified_split


def test_train_val_roots(tmp_path):
    root = make_split_folder(tmp_path / "data", classes=3, train_per_class=5, val_per_class=2, size=16)
    make_image_folder(root / "test", classes=3, per_class=1, size=16, seed=99)
    splits = load_data(root, cache_dir=tmp_path / "cache")
    assert splits.classes == ["class_0", "class_1", "class_2"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 6, 3)
    assert splits.in_memory and splits.image_size == 16
    assert splits.train.labels.bincount().tolist() == [5, 5, 5]
    assert splits.val.mean == splits.train.mean == splits.mean  # val normalised with training statistics
    # Pixel values survive the decode/cache round trip exactly (PNG is lossless).
    png = np.array(Image.open(root / "val" / "class_1" / "00000.png"))
    assert torch.equal(splits.val.images[2], torch.from_numpy(png).permute(2, 0, 1))


def test_stratified_split_is_proportional_seeded_and_disjoint():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = stratified_split(labels, 0.1, seed=3)
    assert len(val) == 10 and labels[val].bincount().tolist() == [5, 3, 2]
    assert set(train.tolist()).isdisjoint(val.tolist()) and len(train) + len(val) == 100
    again_train, again_val = stratified_split(labels, 0.1, seed=3)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(stratified_split(labels, 0.1, seed=4)[1], val)
    assert len(stratified_split(labels, 17, seed=0)[1]) == 17  # an exact count works too
    with pytest.raises(DataError):
        stratified_split(labels, 100, seed=0)


def test_stratified_split_gives_capped_classes_share_to_the_others():
    # Four one-image classes keep their image; the large class takes all 7 requested, not 6.
    labels = torch.tensor([0, 1, 2, 3] + [4] * 10)
    train, val = stratified_split(labels, 0.5, seed=0)
    assert len(val) == 7 and labels[val].tolist() == [4] * 7 and len(train) == 7
    with pytest.warns(UserWarning, match="holding out 10 images, not the 12 asked for"):  # 6 + 6 + 1: 5 + 5 + 0
        assert len(stratified_split(torch.tensor([0] * 6 + [1] * 6 + [2]), 12, seed=0)[1]) == 10
    # a long tail of one-image classes: one pass over them, not one per image to hand out (7.8 s before)
    import time

    tail = torch.tensor(list(range(5000)) + [5000] * 3000 + [5001] * 3000)
    start = time.perf_counter()
    assert len(stratified_split(tail, 0.1, seed=0)[1]) == 1100
    assert time.perf_counter() - start < 2.0


def test_single_folder_is_split(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=10, size=8)
    splits = load_data(root, val_split=0.2, seed=5, cache_dir=tmp_path / "cache")
    assert len(splits.train) == 16 and splits.val.labels.bincount().tolist() == [2, 2]
    assert splits.test is None


def test_class_mapping_by_name(tmp_path):
    root = make_image_folder(tmp_path / "eval", classes=2, per_class=2, size=8, names=["dog", "cat"])
    assert map_folder_classes(["ant", "cat", "dog"], root) == {"cat": 1, "dog": 2}
    dataset = load_eval(root, ["ant", "cat", "dog"], normalization=((0.5,) * 3, (0.2,) * 3), cache_dir=tmp_path / "c")
    assert dataset.classes == ["ant", "cat", "dog"] and sorted(dataset.labels.tolist()) == [1, 1, 2, 2]
    assert dataset.mean == (0.5, 0.5, 0.5)
    # Each image carries the label of its folder name: cat images are the synthetic class-1 pattern.
    cat_image = np.array(Image.open(root / "cat" / "00000.png"))
    position = [i for i in range(4) if torch.equal(dataset.images[i], torch.from_numpy(cat_image).permute(2, 0, 1))]
    assert dataset.labels[position[0]] == 1
    with pytest.raises(DataError, match="not trained on: dog"):
        map_folder_classes(["ant", "cat"], root)


def _write_bad_and_odd_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    good = Image.fromarray(np.full((16, 16, 3), 200, np.uint8))
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "truncated.jpg", quality=90)
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) * 2 // 3])  # header intact, pixels cut off
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is not an image")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    good.convert("CMYK").save(folder / "cmyk.jpg")
    good.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    good.convert("L").save(folder / "gray.png")
    Image.fromarray(np.full((16, 16, 4), 200, np.uint8), "RGBA").save(folder / "rgba.png")


def test_bad_files_skipped_with_one_warning_and_modes_converted(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=3, size=16)
    _write_bad_and_odd_files(root / "class_0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_data(root, val_split=0, cache_dir=tmp_path / "cache")
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("skipped 3 unreadable image file(s)")
    for name in ("truncated.jpg", "empty.jpg", "notes.jpg"):
        assert name in messages[0]
    assert len(splits.train) == 6 + 4  # 6 synthetic + cmyk, palette, gray, rgba
    assert splits.train.images.shape[1:] == (3, 16, 16)
    assert (splits.train.labels == 0).sum() == 7
    # The converted images are all (close to) the RGB grey they were made from.
    converted = splits.train.images[:7].float()
    assert ((converted - 200).abs().amax(dim=(1, 2, 3)) <= 3).sum() == 4


def test_streaming_path_skips_and_replaces_bad_files(tmp_path):
    root = make_image_folder(tmp_path / "big", classes=2, per_class=3, size=80, fmt="jpg")
    _write_bad_and_odd_files(root / "class_1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_data(root, val_split=0, image_size=72, cache_dir=tmp_path / "cache")
    assert not splits.in_memory and splits.image_size == 72
    scan_warning = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(scan_warning) == 1 and "empty.jpg" in scan_warning[0] and "notes.jpg" in scan_warning[0]
    assert len(splits.train) == 3 + 3 + 5  # the truncated JPEG passes the header check
    from resnets.data import make_loader

    loader = make_loader(splits.train, batch_size=4, train=False, workers=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == 11
    assert all(images.shape[1:] == (3, 72, 72) for images, _ in batches)
    replaced = [str(w.message) for w in caught if "replaced" in str(w.message)]
    assert len(replaced) == 1 and "truncated.jpg" in replaced[0]


def test_symlinks_dangling_or_looping_neither_stop_nor_repeat_the_data(tmp_path):
    # a dangling link stopped the whole scan; a link back up the tree turned 8 images into 168, with 41 of 42
    # held-out images also in training
    root = make_image_folder(tmp_path / "d", classes=2, per_class=4, size=8)
    os.symlink(tmp_path / "nowhere.png", root / "class_0" / "broken.png")
    (root / "class_0" / "sub").mkdir()
    os.symlink("..", root / "class_0" / "sub" / "up")
    os.symlink(root / "class_1", root / "class_0" / "other")  # another class's folder: not class_0's images
    (root / "class_1" / "sub").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "class_1" / "sub" / "deep.png")
    os.symlink("../class_1/sub", root / "class_0" / "sub_of_1")  # walked before class_1: still class_1's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_data(root, val_split=0.25, seed=0, cache_dir=tmp_path / "cache")
    assert len(splits.train) + len(splits.val) == 9
    assert torch.cat([splits.train.labels, splits.val.labels]).bincount().tolist() == [4, 5]
    assert any("broken.png" in str(w.message) for w in caught)


def test_one_large_image_among_small_ones_does_not_move_the_folder_to_streaming(tmp_path):
    # the largest sampled side decided: a 100 px image among 32 px ones streamed everything at 224 px, but only
    # when its file name fell among the sampled headers
    import numpy as np
    from PIL import Image

    root = make_image_folder(tmp_path / "d", classes=2, per_class=20, size=32)
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(root / "class_0" / "0.png")  # sorts first: sampled
    with pytest.warns(UserWarning, match="mixes image sizes: 1 of .* larger than 64 px; treating it as small"):
        splits = load_data(root, val_split=0, cache_dir=tmp_path / "cache")
    assert splits.in_memory and splits.image_size == 32 and len(splits.train) == 41


def test_a_file_rewritten_with_its_old_size_and_mtime_is_decoded_again(tmp_path):
    # cp -p, rsync -t and tar restore mtimes: a key of (path, size, mtime) served the old pixels
    import time

    import numpy as np

    root = tmp_path / "bmp"
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 10 * (i + 1), np.uint8)).save(root / f"c{k}" / f"{i}.bmp")
    first = load_data(root, val_split=0, cache_dir=tmp_path / "cache").train
    target = root / "c0" / "0.bmp"
    stat = target.stat()
    time.sleep(0.05)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(target)  # BMP: the same size in bytes
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again = load_data(root, val_split=0, cache_dir=tmp_path / "cache").train
    assert int(first.images[0].float().mean()) == 10 and int(again.images[0].float().mean()) == 200


def test_cache_reused_and_invalidated(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=4, size=8)
    calls = []
    real_decode = cache_module.decode_entries
    monkeypatch.setattr(cache_module, "decode_entries", lambda *a, **k: calls.append(1) or real_decode(*a, **k))
    first = load_data(root, val_split=0, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and len(list((tmp_path / "cache" / "tensors").glob("*.safetensors"))) == 1
    cache_module.clear_memory_cache()  # force the disk path
    second = load_data(root, val_split=0, cache_dir=tmp_path / "cache")
    assert len(calls) == 1 and torch.equal(first.train.images, second.train.images)
    load_data(root, val_split=0, cache_dir=tmp_path / "cache")  # memory path
    assert len(calls) == 1
    # Rewriting one file (new content, new mtime) invalidates the key: decoded again, new pixels.
    target = root / "class_1" / "00000.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    third = load_data(root, val_split=0, cache_dir=tmp_path / "cache")
    assert len(calls) == 2 and int(third.train.images[4].sum()) == 0


def test_the_in_process_copies_are_bounded_least_recently_used_first(tmp_path):
    # a session trying several image sizes kept a decoded copy of every one
    root = make_image_folder(tmp_path / "d", classes=2, per_class=4, size=8)
    cache_module.clear_memory_cache()
    keys = []
    for size in range(8, 8 + cache_module.MEMORY_ENTRIES + 1):  # one more than it keeps
        load_data(root, val_split=0, image_size=size, cache_dir=tmp_path / "cache")
        keys.append(next(reversed(cache_module._MEMORY)))
        if size == 9:
            load_data(root, val_split=0, image_size=8, cache_dir=tmp_path / "cache")  # 8 px used again: kept
    assert len(cache_module._MEMORY) == cache_module.MEMORY_ENTRIES
    assert keys[0] in cache_module._MEMORY and keys[1] not in cache_module._MEMORY


def test_clear_errors_for_wrong_paths(tmp_path):
    with pytest.raises(DataError, match="no dataset at"):
        load_data(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_data(tmp_path / "empty")


def test_fixed_class_list_with_missing_folders(tmp_path):
    root = make_split_folder(tmp_path / "d", classes=2, train_per_class=3, val_per_class=1, size=8)
    splits = load_data(root, classes=["zebra", "class_1", "class_0"], cache_dir=tmp_path / "cache")
    assert splits.classes == splits.train.classes == splits.val.classes == ["zebra", "class_1", "class_0"]
    assert sorted(splits.train.labels.tolist()) == [1, 1, 1, 2, 2, 2]


def test_a_val_class_that_train_lacks_is_named_in_training_terms(tmp_path):
    root = make_split_folder(tmp_path / "data", classes=2, train_per_class=3, val_per_class=1, size=8)
    make_image_folder(root / "val", classes=1, per_class=1, size=8, names=["zebra"])
    with pytest.raises(DataError, match=r"class folder\(s\) that .*train lacks: zebra") as caught:
        load_data(root, cache_dir=tmp_path / "cache")
    assert "not trained on" not in str(caught.value)  # the evaluation message pointed at another model


def test_streamed_statistics_do_not_depend_on_which_split_filled_the_cache(tmp_path):
    root = make_image_folder(tmp_path / "big", classes=2, per_class=4, size=72, fmt="jpg")
    load_data(root, val_split=0.5, seed=0, cache_dir=tmp_path / "a")  # seed 0 holds out other files
    shared = load_data(root, val_split=0.5, seed=1, cache_dir=tmp_path / "a")
    alone = load_data(root, val_split=0.5, seed=1, cache_dir=tmp_path / "b")
    assert not shared.in_memory and shared.mean == alone.mean and shared.std == alone.std
