import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from resnets.data import DataError, load_data, load_eval, read_cifar_folder, safe_extract
from resnets.data import cifar as cifar_module
from resnets.data.cifar import CifarArchive, fetch_cifar


def _write_cifar10_folder(folder, per_batch=6, batches=2, test=4, seed=0):
    """A tiny cifar-10-batches-py folder in the official pickle format; returns the label arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    train_labels = []
    for index in range(1, batches + 1):
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[:, 0] = labels  # red value of the top-left pixel = label, to check the layout
        train_labels += labels
        with open(folder / f"data_batch_{index}", "wb") as handle:
            pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": []}, handle, protocol=2)
    test_labels = [int(v) for v in rng.integers(0, 10, test)]
    test_data = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"labels": test_labels, b"data": test_data}, handle, protocol=2)
    names = [n.encode() for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                  "truck"]]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, handle, protocol=2)
    return train_labels, test_labels


def _make_archive(tmp_path, members_from=None):
    source = tmp_path / "src"
    labels = _write_cifar10_folder(source / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), labels


def test_extracted_folder_loads_with_right_shapes_and_labels(tmp_path):
    train_labels, test_labels = _write_cifar10_folder(tmp_path / "cifar-10-batches-py")
    arrays = read_cifar_folder(tmp_path / "cifar-10-batches-py")
    assert arrays.train_images.shape == (12, 3, 32, 32) and arrays.train_images.dtype == torch.uint8
    assert arrays.train_labels.tolist() == train_labels and arrays.test_labels.tolist() == test_labels
    assert arrays.train_images[:, 0, 0, 0].tolist() == train_labels  # CHW layout of the 3072 bytes
    assert arrays.classes[0] == "airplane" and len(arrays.classes) == 10

    splits = load_data(tmp_path / "cifar-10-batches-py", val_split=0, cache_dir=tmp_path / "cache")
    assert splits.in_memory and splits.image_size == 32 and len(splits.train) == 12
    assert splits.val is splits.test and len(splits.test) == 4
    assert splits.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_archive_from_cache_download_and_checksum(tmp_path, monkeypatch):
    archive, md5, (train_labels, _) = _make_archive(tmp_path)
    monkeypatch.setitem(cifar_module.CIFAR_ARCHIVES, "cifar10",
                        CifarArchive(archive.as_uri(), "cifar-10-python.tar.gz", md5, "cifar-10-batches-py"))
    # "Download" through urllib from a file:// URL into the cache, verify, extract, load.
    splits = load_data("cifar10", val_split=0.25, seed=1, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-batches-py" / "batches.meta").is_file()
    assert len(splits.train) + len(splits.val) == 12 and len(splits.val) == 3
    assert splits.classes[9] == "truck"
    assert len(load_eval("cifar10", splits.classes, cache_dir=tmp_path / "cache")) == 4

    # A corrupted archive in a fresh cache: clear checksum message naming both digests.
    bad_cache = tmp_path / "bad" / "cifar10"
    bad_cache.mkdir(parents=True)
    (bad_cache / "cifar-10-python.tar.gz").write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DataError, match=f"checksum mismatch.*expected MD5 {md5}"):
        fetch_cifar("cifar10", tmp_path / "bad")


def test_offline_error_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setitem(cifar_module.CIFAR_ARCHIVES, "cifar10",
                        CifarArchive((tmp_path / "missing.tar.gz").as_uri(), "cifar-10-python.tar.gz", "0" * 32,
                                     "cifar-10-batches-py"))
    with pytest.raises(DataError, match="could not download .*pass --data DIR pointing at an extracted "
                                        "cifar-10-batches-py folder or an ImageFolder tree"):
        load_data("cifar10", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "cifar10").glob("*.tar.gz"))  # no partial archive left behind


def _tar_with(path, member_name, payload=b"x", kind=tarfile.REGTYPE, linkname=""):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member_name)
        info.type = kind
        info.linkname = linkname
        info.size = len(payload) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name,kind,link", [("../escape.txt", tarfile.REGTYPE, ""),
                                            ("/tmp/absolute-escape.txt", tarfile.REGTYPE, ""),
                                            ("ok/../../escape.txt", tarfile.REGTYPE, ""),
                                            ("link", tarfile.SYMTYPE, "/etc/passwd")])
def test_unsafe_archive_members_are_rejected(tmp_path, name, kind, link):
    archive = tmp_path / "evil.tar.gz"
    _tar_with(archive, name, kind=kind, linkname=link)
    destination = tmp_path / "out" / "inner"
    with pytest.raises(DataError, match="refusing to extract"):
        safe_extract(archive, destination)
    assert not (tmp_path / "out" / "escape.txt").exists() and not (destination / "link").exists()


def test_batch_files_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar10_folder(folder)

    class Exploit:
        def __reduce__(self):
            return (print, ("owned",))

    with open(folder / "data_batch_1", "wb") as handle:
        pickle.dump({b"labels": Exploit(), b"data": np.zeros((1, 3072), np.uint8)}, handle)
    with pytest.raises(DataError, match="not a readable CIFAR batch"):
        read_cifar_folder(folder)


def test_cifar100_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 3)):
        with open(folder / split, "wb") as handle:
            pickle.dump({b"fine_labels": [int(v) for v in rng.integers(0, 100, count)],
                         b"coarse_labels": [0] * count, b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)},
                        handle)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)], b"coarse_label_names": []}, handle)
    splits = load_data(folder, val_split=0, cache_dir=tmp_path / "cache")
    assert len(splits.classes) == 100 and len(splits.train) == 8 and len(splits.test) == 3
    assert splits.std == pytest.approx((0.2673, 0.2564, 0.2762))


def test_stray_batch_copies_and_malformed_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    train_labels, _ = _write_cifar10_folder(folder)
    (folder / "data_batch_1.bak").write_bytes((folder / "data_batch_1").read_bytes())  # not read as more data
    assert read_cifar_folder(folder).train_labels.tolist() == train_labels
    for batch, message in [({b"labels": [-1, 2], b"data": np.zeros((2, 3072), np.uint8)}, "negative label"),
                           ({b"labels": [1, 2], b"data": None}, "unreadable data or labels"),
                           ({b"labels": ["a", "b"], b"data": np.zeros((2, 3072), np.uint8)}, "unreadable data"),
                           ({b"labels": [1, 2], b"data": np.zeros((2, 3, 32, 32), np.uint8)}, "unreadable data")]:
        with open(folder / "data_batch_2", "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        with pytest.raises(DataError, match=message):
            read_cifar_folder(folder)
    (folder / "data_batch_2").unlink()
    (folder / "data_batch_2").mkdir()
    with pytest.raises(DataError, match="not a readable CIFAR batch"):
        read_cifar_folder(folder)
    (folder / "data_batch_2").rmdir()
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"labels": [], b"data": np.zeros((0, 3072), np.uint8)}, handle, protocol=4)
    assert len(read_cifar_folder(folder).test_labels) == 0  # an empty split is no crash in max()
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": 10}, handle, protocol=2)
    with pytest.raises(DataError, match="no list of class names"):
        read_cifar_folder(folder)
