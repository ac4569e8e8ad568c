"""Corruptions: deterministic under a seed, shape/dtype/range kept, stronger with severity."""

import math
import pytest
import torch

from resnets.evaluate.corruptions import (CORRUPTIONS, FAMILIES, RANDOM_CORRUPTIONS, CorruptionResult, corrupt,
                                          corruption_accuracy, parse_corruptions)


pytestmark = pytest.mark.usefixtures("one_thread")


REQUIRED = {"gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "brightness",
            "contrast", "fog", "pixelate", "jpeg_compression"}


class Recorder(torch.nn.Module):
    """A two-class model that keeps every batch it is shown."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(x.shape[0], 2)


def _images(n=3, size=32):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_required_families_present():
    assert REQUIRED <= set(CORRUPTIONS)
    assert set(parse_corruptions("noise")) == set(FAMILIES["noise"])
    with pytest.raises(ValueError, match="unknown corruption"):
        parse_corruptions("snowstorm")


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruption_contract(name):
    x = _images()
    outs = [corrupt(x, name, s, seed=7) for s in range(1, 6)]
    for out in outs:
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    again = corrupt(x, name, 3, seed=7)
    assert torch.equal(again, outs[2]), "same seed must give the same corruption"
    change = [(o - x).abs().mean().item() for o in outs]
    assert change[-1] > 1e-3, f"severity 5 must change the image ({change})"
    assert change[-1] >= change[0], f"severity 5 must change the image more than severity 1 ({change})"


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_exactly_the_random_corruptions_depend_on_the_seed(name):
    x = _images()
    differs = not torch.equal(corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=2))
    assert differs == (name in RANDOM_CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(RANDOM_CORRUPTIONS))
def test_an_image_gets_the_same_corruption_in_any_batch(name):
    # Regression: the noise was drawn per batch, so `resnets robustness --batch-size` changed the results.
    x = _images(5)
    whole = corrupt(x, name, 4, seed=9)
    split = torch.cat([corrupt(x[:2], name, 4, seed=9), corrupt(x[2:], name, 4, seed=9, first_index=2)])
    assert torch.equal(whole, split)
    twins = corrupt(x[:1].repeat(2, 1, 1, 1), name, 4, seed=9)
    assert not torch.equal(twins[0], twins[1])  # each image draws its own numbers


def test_corruption_accuracy_does_not_depend_on_the_batch_size():
    x, y = _images(6, 16), torch.tensor([0, 1, 0, 1, 0, 1])
    whole, split = Recorder(), Recorder()
    corruption_accuracy(whole, [(x, y)], names=["shot_noise"], seed=5)
    corruption_accuracy(split, [(x[:4], y[:4]), (x[4:], y[4:])], names=["shot_noise"], seed=5)
    # each batch shows the model 6 inputs: clean, then severities 1-5
    assert all(torch.equal(a, torch.cat([b, c])) for a, b, c in zip(whole.seen, split.seen[:6], split.seen[6:]))


def test_dtype_and_larger_images_kept():
    x = _images(2, 64).to(torch.float64)
    for name in ("defocus_blur", "zoom_blur", "jpeg_compression"):
        out = corrupt(x, name, 5)
        assert out.dtype == torch.float64 and out.shape == x.shape


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="severity"):
        corrupt(_images(), "fog", 6)
    with pytest.raises(ValueError, match="float"):
        corrupt((_images() * 255).to(torch.uint8), "fog", 1)


def test_corruption_accuracy_and_mce():
    class MeanBrightness(torch.nn.Module):
        """Predicts 'bright' vs 'dark' from the mean pixel: noise barely hurts it, contrast does not either."""

        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([0.5 - m, m - 0.5], 1) * 100

    x = torch.cat([torch.full((4, 3, 16, 16), 0.2), torch.full((4, 3, 16, 16), 0.8)])
    y = torch.tensor([0] * 4 + [1] * 4)
    names = ["gaussian_noise", "brightness"]
    res = corruption_accuracy(MeanBrightness(), [(x, y)], names=names, seed=3)
    again = corruption_accuracy(MeanBrightness(), [(x, y)], names=names, seed=3)
    assert res.accuracy == again.accuracy
    assert res.clean_accuracy == 1.0 and res.accuracy["gaussian_noise"] == [1.0] * 5
    baseline = CorruptionResult(clean_accuracy=1.0, accuracy={n: [0.5] * 5 for n in names}, samples=8, seed=3)
    with pytest.raises(ValueError, match="evaluate both with the same --samples and --seed"):
        res.to_dict(CorruptionResult(1.0, baseline.accuracy, samples=8, seed=0))  # other noise: not paired
    d = res.to_dict(baseline)
    expected_mean = sum(1 - a for n in names for a in res.accuracy[n]) / 10
    assert d["mean_error"] == pytest.approx(expected_mean)
    assert d["mce"] == pytest.approx(sum(sum(1 - a for a in res.accuracy[n]) / 2.5 for n in names) / 2)
    assert CorruptionResult.from_dict(d).accuracy == res.accuracy


def test_a_corruption_gets_the_same_noise_alone_or_with_others():
    """Fog evaluated alone and as part of 'all' (a baseline's mCE run) must see the same corrupted images."""
    x, y = _images(2, 16), torch.tensor([0, 1])
    alone, together = Recorder(), Recorder()
    corruption_accuracy(alone, [(x, y)], names=["fog"], seed=3)
    corruption_accuracy(together, [(x, y)], names=["gaussian_noise", "fog"], seed=3)
    fog_alone, fog_together = alone.seen[1:], together.seen[6:]  # after the clean pass (and 5 noise severities)
    assert len(fog_alone) == len(fog_together) == 5
    assert all(torch.equal(a, b) for a, b in zip(fog_alone, fog_together))


def test_contrast_keeps_each_channels_own_mean():
    # one mean over all channels desaturated coloured images as well as flattening them (make_cifar_c.py: per channel)
    red = torch.stack([torch.full((32, 32), 0.8), torch.full((32, 32), 0.1), torch.full((32, 32), 0.1)])[None]
    red = red + 0.05 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = corrupt(red, "contrast", 5, seed=0)
    torch.testing.assert_close(out.mean(dim=(2, 3)), red.mean(dim=(2, 3)), atol=1e-5, rtol=0)


def test_blur_parameters_are_cifar_10_cs():
    from resnets.evaluate.corruptions import _PARAMS

    # make_cifar_c.py's motion blur; (10, 1) ... (12, 3) are Tiny-ImageNet-C's
    assert _PARAMS["motion_blur"] == ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))
    # zoom blur counts the image twice (once as itself, once as the 1.0 zoom): weight 2 / (zooms + 1)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    zooms = torch.arange(1.0, 1.06, 0.01).tolist()
    crops = [torch.nn.functional.interpolate(x, size=(int(math.ceil(32 * z)),) * 2, mode="bilinear",
                                             align_corners=False) for z in zooms]
    crops = [c[..., (c.shape[-1] - 32) // 2:(c.shape[-1] - 32) // 2 + 32, (c.shape[-1] - 32) // 2:
              (c.shape[-1] - 32) // 2 + 32] for c in crops]
    want = (x + sum(crops)) / (len(zooms) + 1)
    torch.testing.assert_close(corrupt(x, "zoom_blur", 1, seed=0), want.clamp(0, 1))


@pytest.mark.parametrize("side", [32, 17, 30])  # 17 and 30 put pixel centres exactly on span edges
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_pixelate_matches_cifar10c_pil_box_resizes(severity, side):
    # make_cifar_c.py: x.resize((int(32c),)*2, BOX).resize((32, 32), BOX); area + legacy nearest was 4-6x
    # stronger at severity 1, and the five severities about equally strong
    import numpy as np
    from PIL import Image

    from resnets.evaluate.corruptions import _PARAMS

    generator = torch.Generator().manual_seed(severity)
    x = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8, generator=generator), size=side, mode="bilinear")
    x = (x * 255).round() / 255
    ours = corrupt(x, "pixelate", severity)
    small = int(side * _PARAMS["pixelate"][severity - 1])
    for image, got in zip(x, ours):
        pil = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        pil = pil.resize((small, small), Image.BOX).resize((side, side), Image.BOX)
        want = torch.from_numpy(np.asarray(pil)).permute(2, 0, 1).float() / 255
        assert (got - want).abs().max() <= 1.01 / 255
