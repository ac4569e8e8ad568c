import pytest
import torch

from resnets.data import AugmentConfig, augment_batch, cutout, random_crop, random_flip, random_resized_crop


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _ramp(count=4, size=8):
    """Images whose pixel value encodes its column (0..size-1) and row (x 10)."""
    rows = torch.arange(size)[:, None] * 10
    cols = torch.arange(size)[None, :]
    return (rows + cols).to(torch.uint8).expand(count, 3, size, size).contiguous()


def test_flip_of_known_pattern():
    images = _ramp(64)
    flipped = random_flip(images, _gen())
    was_flipped = flipped[:, 0, 0, 0] == 7
    assert 10 < int(was_flipped.sum()) < 54  # about half
    assert torch.equal(flipped[was_flipped], images[was_flipped].flip(-1))
    assert torch.equal(flipped[~was_flipped], images[~was_flipped])


@pytest.mark.parametrize("mode", ["reflect", "zeros"])
def test_random_crop_is_a_shift_with_padding(mode):
    images = _ramp(32, 8) + 1  # +1 so zero padding is distinguishable from pixel 0
    out = random_crop(images, 2, _gen(1), mode)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for image, result in zip(images, out):
        # Recover the shift from a pixel known to be inside, then check the whole image.
        padded = torch.nn.functional.pad(image[None].float(), (2, 2, 2, 2), mode="reflect" if mode == "reflect"
                                         else "constant")[0]
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(padded[:, dy:dy + 8, dx:dx + 8], result.float())]
        assert matches, "the output is not a crop of the padded image"
    assert len({tuple(o[0, :2, 0].tolist()) for o in out}) > 5  # offsets vary across images


def test_translate_and_same_generator_same_batch():
    config = AugmentConfig(translate=2, flip=True)
    images = _ramp(16).float()
    assert torch.equal(augment_batch(images, config, _gen(5)), augment_batch(images, config, _gen(5)))
    assert not torch.equal(augment_batch(images, config, _gen(5)), augment_batch(images, config, _gen(6)))


def test_cutout_zeroes_a_square_of_the_right_size():
    images = torch.ones(50, 3, 16, 16)
    out = cutout(images, 4, _gen())
    erased = (out[:, 0] == 0).sum(dim=(1, 2))
    assert erased.max() == 16 and erased.min() >= 4  # full square inside, clipped at the border
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # same square on every channel


def test_random_resized_crop_shapes_and_full_scale_identity():
    images = torch.rand(6, 3, 20, 20)
    out = random_resized_crop(images, _gen(), 12)
    assert out.shape == (6, 3, 12, 12) and out.dtype == images.dtype
    assert out.min() >= 0 and out.max() <= 1
    same = random_resized_crop(images, _gen(), 20, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(same, images, atol=1e-5)
    with pytest.raises(TypeError):
        random_resized_crop(_ramp(), _gen())


def test_augment_keeps_shape_and_dtype():
    config = AugmentConfig(crop_padding=4, flip=True, cutout_size=8, random_resized_crop=True)
    images = torch.rand(8, 3, 32, 32)
    out = augment_batch(images, config, _gen())
    assert out.shape == images.shape and out.dtype == images.dtype
    uint8 = augment_batch(_ramp(8, 32), AugmentConfig(crop_padding=4, flip=True, cutout_size=8), _gen())
    assert uint8.dtype == torch.uint8 and uint8.shape == (8, 3, 32, 32)


def test_config_from_dict_and_validation():
    config = AugmentConfig.from_dict({"crop_padding": 4, "pad_mode": "zeros", "flip": True, "rrc_scale": [0.2, 1]})
    assert config.rrc_scale == (0.2, 1.0) and config == AugmentConfig.from_dict(config.to_dict())
    assert AugmentConfig.preset("he2015") == AugmentConfig(crop_padding=4, pad_mode="zeros", flip=True)
    with pytest.raises(ValueError, match="unknown augment option.*crop_pading"):
        AugmentConfig.from_dict({"crop_pading": 4})
    with pytest.raises(ValueError, match="pad_mode"):
        AugmentConfig(pad_mode="wrap")
    with pytest.raises(ValueError, match="set only one"):
        AugmentConfig(crop_padding=4, translate=2)
    with pytest.raises(ValueError, match="rrc_scale"):
        AugmentConfig(rrc_scale=(0.5, 2.0))


def test_alternating_flip_shows_each_image_both_ways_in_consecutive_epochs():
    from resnets.data import TensorImageDataset, make_loader

    images = torch.zeros(16, 3, 4, 4, dtype=torch.uint8)
    images[..., 0] = 255  # a bright left column: flipped images have it on the right
    dataset = TensorImageDataset(images, torch.arange(16) % 2, ["a", "b"])
    loader = make_loader(dataset, batch_size=4, train=True, augment={"flip": "alternate"}, device="cpu", seed=5,
                         workers=0, mean=(0.5,) * 3, std=(0.5,) * 3)

    def flipped_by_sample(epoch):
        loader.set_epoch(epoch)
        out = torch.cat([batch for batch, _ in loader])
        return dict(zip(loader.epoch_indices(epoch).tolist(), (out[:, 0, 0, -1] > 0).tolist()))

    first, second, third = (flipped_by_sample(e) for e in range(3))
    assert 0 < sum(first.values()) < 16  # epoch 0: a random half, or so
    assert all(second[i] != first[i] for i in first) and third == first
    with pytest.raises(ValueError, match="must be true, false or 'alternate'"):
        AugmentConfig(flip="sometimes")


def test_random_resized_crop_keeps_a_non_square_size_and_centres_the_fallback_as_torchvision():
    from resnets.data.augment import _sample_boxes

    images = torch.rand(3, 3, 8, 12)
    assert random_resized_crop(images, _gen()).shape == (3, 3, 8, 12)
    assert augment_batch(images, AugmentConfig(random_resized_crop=True), _gen()).shape == (3, 3, 8, 12)
    assert random_resized_crop(images, _gen(), (4, 6)).shape == (3, 3, 4, 6)
    # full area at ratio 4/3 does not fit a 10 x 16 image (h = round(sqrt(160 * 3/4)) = 11): the fallback box is
    # h = 10, w = round(10 * 4/3) = 13, left = (16 - 13) // 2 = 1 as in torchvision (not round(1.5) = 2)
    box = _sample_boxes(1, 10, 16, (1.0, 1.0), (4 / 3, 4 / 3), _gen())
    assert box.tolist() == [[1.0, 0.0, 14.0, 10.0]]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_random_resized_crop_of_a_half_precision_batch(dtype):
    # Regression: roi_align has no CPU kernel for bf16/fp16, so a bf16 batch raised inside torchvision.
    images = _ramp().float()
    want = random_resized_crop(images, _gen(), 12)
    got = random_resized_crop(images.to(dtype), _gen(), 12)
    assert got.dtype == dtype and got.shape == want.shape
    assert torch.allclose(got.float(), want, atol=0.05 * want.abs().max().item())
