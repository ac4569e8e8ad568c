import pytest
import torch

from resnets.data import (AugmentConfig, DataError, ImageFileDataset, TensorImageDataset, load_data,
                          load_eval_image, make_image_folder, make_loader, make_tensor_dataset)

AUGMENT = AugmentConfig(crop_padding=2, flip=True, cutout_size=4)


def _dataset(count_per_class=10, classes=3, size=8):
    images, labels = make_tensor_dataset(classes=classes, per_class=count_per_class, size=size)
    return TensorImageDataset(images, labels, [f"c{i}" for i in range(classes)], (0.3, 0.3, 0.3), (0.2, 0.2, 0.2))


def _epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(p, q) for (x, p), (y, q) in zip(a, b))


def test_batches_are_normalised_and_shaped():
    dataset = _dataset()
    loader = make_loader(dataset, batch_size=8, train=False, dtype=torch.bfloat16, channels_last=True)
    images, labels = next(iter(loader))
    assert images.dtype == torch.bfloat16 and images.shape == (8, 3, 8, 8) and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    expected = (dataset.images[:8].float() / 255 - 0.3) / 0.2
    assert torch.allclose(images.float(), expected, atol=0.05)
    assert len(loader) == 4 and sum(len(l) for _, l in loader) == 30  # eval keeps the last partial batch


def test_epoch_is_reproducible_and_set_epoch_changes_it():
    dataset = _dataset()
    first = _epoch(make_loader(dataset, batch_size=8, augment=AUGMENT, seed=3))
    again = _epoch(make_loader(dataset, batch_size=8, augment=AUGMENT, seed=3))
    assert _same(first, again) and len(first) == 3  # drop_last for training
    loader = make_loader(dataset, batch_size=8, augment=AUGMENT, seed=3)
    second_epoch = _epoch(loader, 1)
    assert not torch.equal(first[0][1], second_epoch[0][1])
    assert _same(_epoch(loader, 0), first)  # going back to epoch 0 reproduces it
    assert not _same(_epoch(make_loader(dataset, batch_size=8, augment=AUGMENT, seed=4)), first)


def test_skip_batches_equals_iterating():
    dataset = _dataset()
    loader = make_loader(dataset, batch_size=4, augment=AUGMENT, seed=1)
    full = _epoch(loader, 2)
    loader.set_epoch(2)
    loader.skip_batches(3)
    resumed = [(x.clone(), y.clone()) for x, y in loader]
    assert _same(resumed, full[3:])
    assert _same(_epoch(loader, 2), full)  # the skip applies to one iteration only


@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_covers_each_sample_once(drop_last):
    images = torch.arange(23, dtype=torch.uint8).view(23, 1, 1, 1).expand(23, 3, 2, 2).contiguous()
    dataset = TensorImageDataset(images, torch.arange(23), ["x"], (0.0,) * 3, (1 / 255,) * 3)
    seen = []
    for rank in range(2):
        loader = make_loader(dataset, batch_size=5, train=True, drop_last=drop_last, seed=7, rank=rank, world_size=2)
        loader.set_epoch(4)
        seen.append(torch.cat([labels for _, labels in loader]))
        for images_batch, labels in loader:  # images follow their labels through the shuffle
            assert torch.equal(images_batch[:, 0, 0, 0].round().long(), labels)
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    union = sorted(seen[0].tolist() + seen[1].tolist())
    if drop_last:
        assert len(seen[0]) == len(seen[1]) == 10  # equal steps per rank: 11 per rank -> 2 batches of 5
    else:
        assert union == list(range(23))


def test_streaming_loader_is_deterministic_across_workers(tmp_path):
    root = make_image_folder(tmp_path / "big", classes=2, per_class=5, size=72, fmt="jpg")
    splits = load_data(root, val_split=0, image_size=64, cache_dir=tmp_path / "cache")
    assert isinstance(splits.train, ImageFileDataset)
    augment = AugmentConfig(random_resized_crop=True, flip=True, cutout_size=8)
    single = make_loader(splits.train, batch_size=4, augment=augment, seed=2, workers=0)
    pooled = make_loader(splits.train, batch_size=4, augment=augment, seed=2, workers=2)
    first = _epoch(single, 1)
    assert _same(first, _epoch(pooled, 1)) and len(first) == 2
    assert first[0][0].shape == (4, 3, 64, 64)
    assert not _same(first, _epoch(single, 2))
    single.set_epoch(1)
    single.skip_batches(1)
    assert _same([(x, y) for x, y in single], first[1:])
    evaluation = make_loader(splits.train, batch_size=4, train=False, workers=0)
    assert _same(_epoch(evaluation), _epoch(evaluation, 5))  # evaluation ignores the epoch
    assert sum(len(y) for _, y in evaluation) == 10


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_leaves_the_global_rng_alone(tmp_path, workers):
    # a DataLoader iterator draws its base seed from the global RNG unless given a generator: dropout, drop_path
    # and adversarial starts then depended on where a run resumed and on --workers
    root = make_image_folder(tmp_path / "big", classes=2, per_class=4, size=72, fmt="jpg")
    splits = load_data(root, val_split=0, image_size=64, cache_dir=tmp_path / "cache")
    loader = make_loader(splits.train, batch_size=4, augment=AUGMENT, seed=2, workers=workers)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _epoch(loader, 0)
    _epoch(loader, 1)
    assert torch.equal(torch.get_rng_state(), before)


def test_loader_errors():
    dataset = _dataset()
    with pytest.raises(ValueError, match="rank"):
        make_loader(dataset, rank=2, world_size=2)
    with pytest.raises(DataError, match="no full batch of .*lower the batch size"):
        make_loader(dataset, batch_size=64, train=True)
    with pytest.raises(ValueError, match="cannot skip"):
        make_loader(dataset, batch_size=8).skip_batches(10)
    with pytest.raises(TypeError, match="load_data"):
        make_loader(list(range(10)))


def test_streaming_batch_path_matches_worker_path(tmp_path):
    """The accelerator path (uint8 from workers, normalised on the device) gives the same eval batches."""
    root = make_image_folder(tmp_path / "big", classes=2, per_class=3, size=80, fmt="jpg")
    splits = load_data(root, val_split=0, image_size=72, cache_dir=tmp_path / "cache")
    in_workers = _epoch(make_loader(splits.train, batch_size=3, train=False, workers=0, normalize_in_workers=True))
    on_device = _epoch(make_loader(splits.train, batch_size=3, train=False, workers=0, normalize_in_workers=False))
    for (a, la), (b, lb) in zip(in_workers, on_device):
        assert torch.equal(la, lb) and torch.allclose(a, b, atol=1e-4)
    augment = AugmentConfig(random_resized_crop=True, crop_padding=4, flip=True, cutout_size=8)
    for flag in (True, False):
        loader = make_loader(splits.train, batch_size=3, augment=augment, workers=0, normalize_in_workers=flag)
        batches = _epoch(loader, 3)
        assert _same(batches, _epoch(loader, 3)) and batches[0][0].shape == (3, 3, 72, 72)


def test_load_eval_image_prepares_a_file_as_the_eval_loader_does(tmp_path):
    """predict and explain see one image exactly as `eval` saw it in its batch (resize, centre crop)."""
    root = make_image_folder(tmp_path / "big", classes=2, per_class=2, size=90, fmt="png")
    splits = load_data(root, val_split=0, image_size=72, cache_dir=tmp_path / "cache")
    loader = make_loader(splits.train, batch_size=4, train=False, workers=0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    batch, _ = next(iter(loader))
    singles = torch.stack([load_eval_image(path, 72) for path in splits.train.paths])
    assert singles.dtype == torch.uint8 and singles.shape == (4, 3, 72, 72)
    assert torch.allclose(singles.float() / 255, batch, atol=1e-6)
    small = load_eval_image(splits.train.paths[0], 128)  # smaller than asked: scaled up, still square
    assert small.shape == (3, 128, 128)
    assert load_eval_image(splits.train.paths[0], None).shape == (3, 90, 90)
    # an image smaller than the size asked of a streamed set, and small images held in memory: as `eval` too
    for folder, side, size in (("up", 90, 128), ("small", 48, 32)):
        root = make_image_folder(tmp_path / folder, classes=2, per_class=2, size=side, fmt="png")
        splits = load_data(root, val_split=0, image_size=size, cache_dir=tmp_path / "cache")
        assert getattr(splits.train, "in_memory", False) == (folder == "small")
        loader = make_loader(splits.train, batch_size=4, train=False, workers=0, mean=(0.0, 0.0, 0.0),
                             std=(1.0, 1.0, 1.0), shuffle=False)
        batch, _ = next(iter(loader))
        files = sorted(root.rglob("*.png"))  # the folder's order: class folders, then files, sorted
        singles = torch.stack([load_eval_image(path, size) for path in files])
        assert torch.allclose(singles.float() / 255, batch, atol=1e-6), folder
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        load_eval_image(tmp_path / "broken.png", 72)
    with pytest.raises(DataError, match="does not exist"):
        load_eval_image(tmp_path / "missing.png", 72)
